"""davae_ext: fused kernels and PyTorch modules for DA-VAE (Detail-Aligned VAE).

The package is in three layers, each importing only the ones below it:

- the kernel library: :mod:`.ops` (the compiled ops), :mod:`.reference` (their pure-PyTorch
  twins), :mod:`.channels`, the extension loader and backend switch (:func:`use_backend`);
- the models: :mod:`.nn` (drop-in modules) and :mod:`.models` (``DAVAE``, the widened SD3
  and FLUX transformers, the pipelines, the losses);
- :mod:`.training`: the training and data stack the scripts in ``train/`` run.

``import davae_ext`` loads the kernel library only; the models load on first use.
"""

from . import _backend, channels, ops, reference
from ._backend import build_info, get_backend, set_backend, use_backend
from .channels import join_channels, split_channels

__version__ = "0.1.0"

# The diffusers-based models are imported on first use (diffusers takes seconds to import).
_LAZY = {
    "DAVAE": "models.davae",
    "DAVAESD3Transformer2DModel": "models.sd3",
    "expand_transformer": "models.sd3",
    "DAVAEStableDiffusion3Pipeline": "models.pipeline",
    "DAVAEFluxTransformer2DModel": "models.flux",
    "expand_flux_transformer": "models.flux",
    "DAVAEFluxPipeline": "models.flux_pipeline",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'davae_ext' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["ops", "reference", "channels", "split_channels", "join_channels", "build_info", "use_backend", "set_backend", "get_backend", *_LAZY]

"""davae_ext: fused kernels and PyTorch modules for DA-VAE (Detail-Aligned VAE)."""

from . import _backend
from ._backend import build_info, get_backend, set_backend, use_backend

if _backend.EXT_LOADED:
    from . import _library  # noqa: F401  (fake kernels + autograd of the compiled ops)

from . import ops, reference  # noqa: E402

__version__ = "0.1.0"

# The diffusers-based models are imported on first use (diffusers takes seconds to import).
_LAZY = {
    "DAVAE": "davae",
    "DAVAESD3Transformer2DModel": "sd3",
    "expand_transformer": "sd3",
    "DAVAEStableDiffusion3Pipeline": "pipeline",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'davae_ext' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["ops", "reference", "build_info", "use_backend", "set_backend", "get_backend", *_LAZY]

"""davae_ext: fused kernels and PyTorch modules for DA-VAE (Detail-Aligned VAE)."""

from . import _backend
from ._backend import build_info, get_backend, set_backend, use_backend

if _backend.EXT_LOADED:
    from . import _library  # noqa: F401  (fake kernels + autograd of the compiled ops)

from . import ops, reference  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ops", "reference", "build_info", "use_backend", "set_backend", "get_backend"]

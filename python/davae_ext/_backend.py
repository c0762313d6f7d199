"""Loading the compiled extension, and choosing between the fused ops and the reference.

``import davae_ext`` never fails because of the extension: if ``_C`` is missing or was built
against another torch than the one running, a single warning says so (with both versions and the
command that fixes it) and every op runs on :mod:`davae_ext.reference`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

import torch

BACKENDS = ("fused", "reference")
FIX_COMMAND = "pip install --no-build-isolation --force-reinstall --no-deps ."


def _load_extension():
    """Returns (module or None, build config or None, reason it is not loaded or None)."""
    try:
        from . import _build_config as cfg
    except ImportError:
        return None, None, "the compiled extension davae_ext._C was not built with this install"
    if cfg.TORCH_VERSION != torch.__version__:
        return None, cfg, (
            f"davae_ext._C was built against torch {cfg.TORCH_VERSION} but torch "
            f"{torch.__version__} is running"
        )
    try:
        from . import _C
    except ImportError as exc:  # e.g. undefined symbols, missing CUDA libraries
        return None, cfg, f"davae_ext._C failed to load: {exc}"
    return _C, cfg, None


_C, _CONFIG, LOAD_ERROR = _load_extension()
EXT_LOADED: bool = _C is not None
CUDA_KERNELS: bool = bool(EXT_LOADED and _C.cuda_compiled())

if not EXT_LOADED:
    warnings.warn(
        f"davae_ext: {LOAD_ERROR}; every op falls back to the pure-PyTorch reference "
        f"(slower). Rebuild against the running torch with: {FIX_COMMAND}",
        RuntimeWarning,
        stacklevel=2,
    )


def _default_backend() -> str:
    name = os.environ.get("DAVAE_BACKEND", "fused").strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"DAVAE_BACKEND must be one of {BACKENDS}, got {name!r}")
    return name


_backend = _default_backend()
_warned_cuda_fallback = False


def get_backend() -> str:
    """The backend ops use now: ``"fused"`` (compiled kernels) or ``"reference"``."""
    return _backend


def set_backend(name: str) -> None:
    """Sets the backend for the whole process (default: env ``DAVAE_BACKEND``, else fused)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: ``with davae_ext.use_backend("reference"): ...``."""
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def use_fused(t: torch.Tensor) -> bool:
    """Whether an op on tensors like ``t`` runs the compiled kernel."""
    global _warned_cuda_fallback
    if _backend != "fused" or not EXT_LOADED:
        return False
    if t.is_cpu or (t.is_cuda and CUDA_KERNELS):  # (t.device builds a torch.device: slower)
        return True
    if not _warned_cuda_fallback:
        _warned_cuda_fallback = True
        warnings.warn(
            f"davae_ext: no compiled kernels for {t.device.type} tensors in this build; "
            "running the pure-PyTorch reference",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


def build_info() -> dict:
    """What was built and what is running."""
    return {
        "extension_loaded": EXT_LOADED,
        "load_error": LOAD_ERROR,
        "cpu_kernels": EXT_LOADED,
        "cuda_kernels": CUDA_KERNELS,
        # The CPU kernels' parallel_for compiled with OpenMP (else they run on one thread).
        "cpu_openmp": bool(getattr(_CONFIG, "CPU_OPENMP", False)) if _CONFIG else False,
        "cuda_archs": (_C.cuda_archs() if EXT_LOADED else (_CONFIG.CUDA_ARCHS if _CONFIG else "")) or None,
        "torch_built_against": _C.built_torch_version() if EXT_LOADED else (_CONFIG.TORCH_VERSION if _CONFIG else None),
        "torch_running": torch.__version__,
        "torch_cuda_running": torch.version.cuda,
        "backend": _backend,
    }

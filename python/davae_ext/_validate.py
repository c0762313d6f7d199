"""Input checks of the reference ops and the fake (meta) kernels, in Python.

The fused ops' eager calls are checked once, by the C++ host checks (``csrc/checks.cpp``); these
are the same checks with the same wording for the two places C++ does not run: the pure-PyTorch
reference and the fake kernels that ``torch.compile`` and ``torch.export`` trace with. Every check
raises ``ValueError`` (shapes, values, devices) or ``TypeError`` (dtypes) with a message naming the
op, the argument, and the expected and actual shape, dtype or device; shape conditions go through
``torch._check_value``, so symbolic sizes are checked (or guarded) rather than specialised.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch

ORDERS = ("base_first", "detail_first")
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class LatentShape(NamedTuple):
    B: int
    C: int
    D: int
    H: int
    W: int


class PatchShape(NamedTuple):
    B: int
    C: int
    D: int
    H: int
    W: int
    p: int
    N: int

    @property
    def T(self) -> int:
        return (self.H // self.p) * (self.W // self.p)


def _is_int(x) -> bool:
    """A Python int or a symbolic int (under torch.compile / export), not a bool."""
    return isinstance(x, (int, torch.SymInt)) and not isinstance(x, bool)


def _shape_str(shape: Sequence[int]) -> str:
    return "[" + ", ".join("*" if s is None or s < 0 else str(int(s)) for s in shape) + "]"


def _tensor(op: str, name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: '{name}' must be a torch.Tensor, got {type(t).__name__}")
    ok = t.dtype in _FLOAT_DTYPES or (t.dtype == torch.float64 and t.device.type == "cpu")
    if not ok:
        raise TypeError(
            f"{op}: '{name}' has unsupported dtype {t.dtype}; expected one of torch.float32, "
            f"torch.float16, torch.bfloat16 (torch.float64 on CPU only)"
        )
    return t


def _latent(op: str, name: str, t, layout: str) -> torch.Tensor:
    _tensor(op, name, t)
    if t.dim() != 4:
        raise ValueError(f"{op}: '{name}' must be a 4-D tensor {layout}, got shape {_shape_str(t.shape)}")
    return t


def autocast_dtype(t: torch.Tensor) -> Optional[torch.dtype]:
    """torch.autocast's dtype when it is on for t's device (CPU and CUDA, where the ops have
    autocast rules, csrc/autocast.cpp), else None."""
    device = t.device.type
    return torch.get_autocast_dtype(device) if device in ("cpu", "cuda") and torch.is_autocast_enabled(device) else None


def _autocast_unifies(t: torch.Tensor, ref: torch.Tensor) -> bool:
    """Under torch.autocast for their device, the ops whose inputs must share a dtype cast them to
    one first (csrc/autocast.cpp), as the eager ops they replace do."""
    return autocast_dtype(t) is not None and t.is_floating_point() and ref.is_floating_point()


def same_dtype_device(op: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.dtype != ref.dtype and not _autocast_unifies(t, ref):
        raise TypeError(f"{op}: '{name}' must have dtype {ref.dtype} (same as '{ref_name}'), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{op}: '{name}' must be on device {ref.device} (same as '{ref_name}'), got {t.device}")


def _check(ok, message) -> None:
    """ValueError(message()) unless ok (a bool, or a symbolic bool under torch.compile)."""
    torch._check_value(ok, message)


def _shape(op: str, name: str, t: torch.Tensor, expected: Sequence[int], why: str) -> None:
    def message():
        return f"{op}: '{name}' must have shape {_shape_str(expected)}{why}, got {_shape_str(t.shape)}"

    _check(t.dim() == len(expected), message)
    for size, e in zip(t.shape, expected):
        if e >= 0:
            _check(size == e, message)


def int_arg(op: str, name: str, value) -> None:
    """An int argument of an op (the dispatcher would take a bool as one); its range is the
    op's to check."""
    if not _is_int(value):
        raise ValueError(f"{op}: '{name}' must be a positive int, got {value!r}")


def order_flag(op: str, order: str) -> bool:
    """``order`` -> ``detail_first`` flag of the compiled ops."""
    if order not in ORDERS:
        raise ValueError(f"{op}: 'order' must be one of {ORDERS}, got {order!r}")
    return order == "detail_first"


def reduction_code(op: str, reduction: str) -> int:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: 'reduction' must be one of {tuple(REDUCTIONS)}, got {reduction!r}")
    return REDUCTIONS[reduction]


def base_detail(op: str, base, detail) -> LatentShape:
    """base [B, C, H, W] and detail [B, D, H, W] with the same dtype and device."""
    _latent(op, "base", base, "[B, C, H, W]")
    _latent(op, "detail", detail, "[B, D, H, W]")
    same_dtype_device(op, "detail", detail, "base", base)
    B, C, H, W = base.shape
    _shape(op, "detail", detail, (B, -1, H, W), " (batch and spatial size of 'base')")
    _check(C > 0, lambda: f"{op}: 'base' must have at least one channel, got shape {_shape_str(base.shape)}")
    _check(detail.shape[1] > 0,
           lambda: f"{op}: 'detail' must have at least one channel, got shape {_shape_str(detail.shape)}")
    return LatentShape(B, C, detail.shape[1], H, W)


def groups(op: str, C: int, D: int) -> int:
    """r = D / C, the size of a projection group."""
    int_arg(op, "base_channels", C)
    _check(C > 0, lambda: f"{op}: 'base_channels' must be a positive int, got {C!r}")
    _check(D % C == 0, lambda: (
        f"{op}: the detail channel count D={D} must be a multiple of the base channel count "
        f"C={C} (Proj averages groups of D/C detail channels)"
    ))
    return D // C


def project(op: str, detail, base_channels: int) -> LatentShape:
    _latent(op, "detail", detail, "[B, D, H, W]")
    B, D, H, W = detail.shape
    groups(op, base_channels, D)
    return LatentShape(B, base_channels, D, H, W)


def align(op: str, detail, base) -> LatentShape:
    s = base_detail(op, base, detail)
    groups(op, s.C, s.D)
    return s


def _patch_params(op: str, s: LatentShape, ref: torch.Tensor, ref_name: str, weight, bias, pos_embed,
                  patch_size: int) -> PatchShape:
    """What both patch embeds check past their latents (C++: check_patch_params)."""
    p = patch_size
    int_arg(op, "patch_size", p)
    _check(p > 0, lambda: f"{op}: 'patch_size' must be a positive int, got {p!r}")
    _check(s.H % p == 0 and s.W % p == 0,
           lambda: f"{op}: the latent height and width ({s.H}, {s.W}) must be multiples of 'patch_size'={p}")
    _tensor(op, "weight", weight)
    same_dtype_device(op, "weight", weight, ref_name, ref)
    if weight.dim() != 4:
        raise ValueError(
            f"{op}: 'weight' must be a 4-D Conv2d weight [hidden, C + D, p, p], got shape {_shape_str(weight.shape)}"
        )
    N = weight.shape[0]
    _shape(op, "weight", weight, (N, s.C + s.D, p, p), " (Conv2d layout [hidden, C + D, p, p])")
    ps = PatchShape(s.B, s.C, s.D, s.H, s.W, p, N)
    if bias is not None:
        _tensor(op, "bias", bias)
        same_dtype_device(op, "bias", bias, ref_name, ref)
        _shape(op, "bias", bias, (N,), " (hidden size of 'weight')")
    if pos_embed is not None:
        _tensor(op, "pos_embed", pos_embed)
        same_dtype_device(op, "pos_embed", pos_embed, ref_name, ref)
        _shape(op, "pos_embed", pos_embed, (1, ps.T, N), " ([1, tokens, hidden])")
    return ps


def patch_embed(op: str, base, detail, weight, bias: Optional[torch.Tensor],
                pos_embed: Optional[torch.Tensor], patch_size: int) -> PatchShape:
    """detail_patch_embed's inputs."""
    return _patch_params(op, base_detail(op, base, detail), base, "base", weight, bias, pos_embed, patch_size)


def latent_patch_embed(op: str, latent, weight, bias: Optional[torch.Tensor],
                       pos_embed: Optional[torch.Tensor], patch_size: int) -> PatchShape:
    """patch_embed's inputs: one latent [B, C, H, W] (a PatchShape with D = 0)."""
    _latent(op, "latent", latent, "[B, C, H, W]")
    B, C, H, W = latent.shape
    _check(C > 0, lambda: f"{op}: 'latent' must have at least one channel, got shape {_shape_str(latent.shape)}")
    return _patch_params(op, LatentShape(B, C, 0, H, W), latent, "latent", weight, bias, pos_embed, patch_size)

"""How the new detail slices of a widened layer start (Sec. 4.1 of the paper)."""

from __future__ import annotations

import math

import torch

INITS = ("zero", "random", "repeat_average")


def check_init(owner: str, init: str) -> None:
    if init not in INITS:
        raise ValueError(f"{owner}: 'init' must be one of {INITS}, got {init!r}")


def check_channels(owner: str, name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{owner}: '{name}' must be a positive int, got {value!r}")
    return value


def detail_slice(base: torch.Tensor, detail_channels: int, dim: int, init: str, divide: bool) -> torch.Tensor:
    """New weights for `detail_channels` detail channels along `dim`, given the pretrained `base`
    weights (with C channels along `dim`).

    zero: all zeros (the warm start: the widened layer equals the pretrained one at step 0).
    random: PyTorch's default Linear/Conv init (kaiming-uniform with a = sqrt(5)) for the slice.
    repeat_average: detail channel d copies base channel d // r (r = D / C, the groups of Proj);
    with divide=True (input side) divided by r, so a detail group equal to r copies of its base
    channel contributes as much as that base channel does.
    """
    C = base.shape[dim]
    shape = list(base.shape)
    shape[dim] = detail_channels
    if init == "zero":
        return base.new_zeros(shape)
    if init == "random":
        out = torch.empty(shape, dtype=torch.float32, device=base.device)
        # fan_in of the widened layer's weight: for dim=1 (conv in-channels) the in-channels of
        # the new slice times the kernel; for rows of a Linear the base fan-in.
        fan_in = math.prod(shape[1:]) if dim == 1 else base.shape[1]
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        return out.uniform_(-bound, bound).to(base.dtype)
    if detail_channels % C:
        raise ValueError(
            f"init='repeat_average' needs the detail channel count D={detail_channels} to be a multiple "
            f"of the base channel count C={C}"
        )
    r = detail_channels // C
    repeated = base.repeat_interleave(r, dim=dim)
    return repeated / r if divide else repeated

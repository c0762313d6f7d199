"""The channel order of a DA-VAE latent, in one place.

A latent (or a weight over its channels) holds C base and D detail channels along one dimension,
base first (the paper's layout) or detail first (the official SD3 checkpoints'). Everything that
takes a latent apart or puts one together goes through these two functions; the fused
:func:`davae_ext.ops.latent_concat` is :func:`join_channels` for 4-D latents without the copy of
its inputs' gradients.
"""

from __future__ import annotations

import torch

from . import _validate


def split_channels(x: torch.Tensor, base_channels: int, order: str = "base_first",
                   dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(base, detail)``: views of the C base and the remaining detail channels of ``x`` along
    ``dim``."""
    detail_first = _validate.order_flag("split_channels", order)
    total = x.shape[dim]
    if not 0 < base_channels < total:
        raise ValueError(f"split_channels: 'base_channels' must be in [1, {total - 1}] for {total} channels "
                         f"along dim {dim}, got {base_channels}")
    if detail_first:
        detail, base = x.split((total - base_channels, base_channels), dim)
    else:
        base, detail = x.split((base_channels, total - base_channels), dim)
    return base, detail


def join_channels(base: torch.Tensor, detail: torch.Tensor, order: str = "base_first", dim: int = 1) -> torch.Tensor:
    """``base`` and ``detail`` concatenated along ``dim`` in ``order`` (the inverse of
    :func:`split_channels`)."""
    detail_first = _validate.order_flag("join_channels", order)
    return torch.cat((detail, base) if detail_first else (base, detail), dim=dim)


__all__ = ["split_channels", "join_channels"]

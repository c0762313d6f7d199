"""Modules over the base + detail latent: concatenation, projection Proj and the alignment loss."""

from __future__ import annotations

import torch
from torch import nn

from .. import _validate, ops
from ._init import check_channels


class LatentConcat(nn.Module):
    """``[base (B, C, H, W), detail (B, D, H, W)] -> (B, C + D, H, W)`` in ``order``
    ("base_first", the paper's, or "detail_first", the official SD3 checkpoints')."""

    def __init__(self, order: str = "base_first"):
        super().__init__()
        _validate.order_flag("LatentConcat", order)
        self.order = order

    def forward(self, base: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        return ops.latent_concat(base, detail, self.order)

    def extra_repr(self) -> str:
        return f"order={self.order!r}"


class DetailProjection(nn.Module):
    """Proj of Eq. 4: ``detail (B, D, H, W) -> (B, C, H, W)``, the mean of contiguous groups of
    D / C detail channels. Parameter-free."""

    def __init__(self, base_channels: int):
        super().__init__()
        check_channels("DetailProjection", "base_channels", base_channels)
        self.base_channels = base_channels

    def forward(self, detail: torch.Tensor) -> torch.Tensor:
        return ops.detail_project(detail, self.base_channels)

    def extra_repr(self) -> str:
        return f"base_channels={self.base_channels}"


class DetailAlignLoss(nn.Module):
    """``|| Proj(detail) - base ||^2`` (Eq. 3). Pass ``base.detach()`` for the paper's stop-gradient
    target. reduction: "mean" (the paper's), "sum" or "none"."""

    def __init__(self, base_channels: int, reduction: str = "mean"):
        super().__init__()
        check_channels("DetailAlignLoss", "base_channels", base_channels)
        _validate.reduction_code("DetailAlignLoss", reduction)
        self.base_channels = base_channels
        self.reduction = reduction

    def forward(self, detail: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        if base.dim() == 4 and base.shape[1] != self.base_channels:
            raise ValueError(
                f"DetailAlignLoss: 'base' must have {self.base_channels} channels, got shape {list(base.shape)}"
            )
        return ops.detail_align_loss(detail, base, self.reduction)

    def extra_repr(self) -> str:
        return f"base_channels={self.base_channels}, reduction={self.reduction!r}"

"""Pure-PyTorch DA-VAE latent ops: the fallback when the compiled kernels are unavailable, and
the oracle the kernels are tested against. Same signatures as :mod:`davae_ext.ops`; written for
clarity, not speed.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import _validate
from .channels import join_channels

__all__ = ["latent_concat", "detail_project", "detail_align_loss", "detail_patch_embed", "patch_embed"]


def latent_concat(base: torch.Tensor, detail: torch.Tensor, order: str = "base_first") -> torch.Tensor:
    """base: (B, C, H, W), detail: (B, D, H, W) -> (B, C + D, H, W) (Eq. 1)."""
    _validate.order_flag("latent_concat", order)
    _validate.base_detail("latent_concat", base, detail)
    return join_channels(base, detail, order)


def detail_project(detail: torch.Tensor, base_channels: int) -> torch.Tensor:
    """detail: (B, D, H, W) -> (B, C, H, W); channel c = mean of detail channels [c*r, (c+1)*r) (Eq. 4)."""
    B, C, D, H, W = _validate.project("detail_project", detail, base_channels)
    return detail.reshape(B, C, D // C, H, W).mean(dim=2)


def detail_align_loss(detail: torch.Tensor, base: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """|| Proj(detail) - base ||^2 (Eq. 3); detail: (B, D, H, W), base: (B, C, H, W)."""
    _validate.reduction_code("detail_align_loss", reduction)
    s = _validate.align("detail_align_loss", detail, base)
    return F.mse_loss(detail_project(detail, s.C), base, reduction=reduction)


def detail_patch_embed(
    base: torch.Tensor,
    detail: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    pos_embed: Optional[torch.Tensor] = None,
    patch_size: int = 2,
    order: str = "base_first",
) -> torch.Tensor:
    """conv2d(cat(base, detail), weight, bias, stride=p).flatten(2).transpose(1, 2) + pos_embed.

    base: (B, C, H, W), detail: (B, D, H, W), weight: (N, C + D, p, p), bias: (N,),
    pos_embed: (1, T, N) with T = (H / p)(W / p) -> (B, T, N).
    """
    _validate.patch_embed("detail_patch_embed", base, detail, weight, bias, pos_embed, patch_size)
    return _conv_tokens(latent_concat(base, detail, order), weight, bias, pos_embed, patch_size)


def patch_embed(
    latent: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    pos_embed: Optional[torch.Tensor] = None,
    patch_size: int = 2,
) -> torch.Tensor:
    """conv2d(latent, weight, bias, stride=p).flatten(2).transpose(1, 2) + pos_embed.

    latent: (B, C, H, W), weight: (N, C, p, p), bias: (N,), pos_embed: (1, T, N) -> (B, T, N).
    """
    _validate.latent_patch_embed("patch_embed", latent, weight, bias, pos_embed, patch_size)
    return _conv_tokens(latent, weight, bias, pos_embed, patch_size)


def _conv_tokens(x, weight, bias, pos_embed, patch_size):
    tokens = F.conv2d(x, weight, bias, stride=patch_size).flatten(2).transpose(1, 2)
    # .to(tokens.dtype): under torch.autocast the conv gives the autocast dtype and the sum stays in
    # it, as in diffusers' PatchEmbed (a no-op otherwise: every input has one dtype).
    return tokens if pos_embed is None else (tokens + pos_embed).to(tokens.dtype)

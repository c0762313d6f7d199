"""The fused DA-VAE latent ops.

Each function validates its inputs, then runs the compiled kernel for the tensors' device
(``torch.ops.davae_ext.*``, with autograd, ``torch.compile`` and ``torch.export`` support) or,
when the backend is ``"reference"`` or no kernel exists for that device, the pure-PyTorch twin in
:mod:`davae_ext.reference`. Both give the same results to floating-point tolerance.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _backend, _validate, reference

__all__ = ["latent_concat", "detail_project", "detail_align_loss", "detail_patch_embed"]


def latent_concat(base: torch.Tensor, detail: torch.Tensor, order: str = "base_first") -> torch.Tensor:
    """Concatenate base and detail latents along channels (Eq. 1).

    base: (B, C, H, W), detail: (B, D, H, W) -> (B, C + D, H, W).
    order: "base_first" (the paper's layout) or "detail_first" (the official SD3 checkpoints').
    """
    detail_first = _validate.order_flag("latent_concat", order)
    _validate.base_detail("latent_concat", base, detail)
    if _backend.use_fused(base):
        return torch.ops.davae_ext.latent_concat(base, detail, detail_first)
    return reference.latent_concat(base, detail, order)


def detail_project(detail: torch.Tensor, base_channels: int) -> torch.Tensor:
    """Parameter-free channel-wise projection Proj (Eq. 4).

    detail: (B, D, H, W) -> (B, C, H, W) with C = base_channels; channel c is the mean of detail
    channels [c*r, (c+1)*r), r = D / C.
    """
    _validate.project("detail_project", detail, base_channels)
    if _backend.use_fused(detail):
        return torch.ops.davae_ext.detail_project(detail, base_channels)
    return reference.detail_project(detail, base_channels)


def detail_align_loss(detail: torch.Tensor, base: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Alignment loss || Proj(detail) - base ||^2 (Eq. 3), without materialising Proj(detail).

    detail: (B, D, H, W), base: (B, C, H, W). reduction: "mean" | "sum" -> scalar, "none" ->
    (B, C, H, W). Gradients flow to both inputs; detach ``base`` for a stop-gradient target.
    The reduction is deterministic (same bits on every run).
    """
    code = _validate.reduction_code("detail_align_loss", reduction)
    _validate.align("detail_align_loss", detail, base)
    if _backend.use_fused(detail):
        return torch.ops.davae_ext.detail_align_loss(detail, base, code)
    return reference.detail_align_loss(detail, base, reduction)


def detail_patch_embed(
    base: torch.Tensor,
    detail: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    pos_embed: Optional[torch.Tensor] = None,
    patch_size: int = 2,
    order: str = "base_first",
) -> torch.Tensor:
    """Patch embedding of the concatenated latent, without materialising the concatenation.

    Equals ``conv2d(cat(base, detail), weight, bias, stride=p).flatten(2).transpose(1, 2) + pos_embed``.
    base: (B, C, H, W), detail: (B, D, H, W), weight: (N, C + D, p, p) (a Conv2d weight, e.g.
    diffusers' ``PatchEmbed.proj.weight``), bias: (N,) or None, pos_embed: (1, T, N) or None
    -> (B, T, N) with T = (H / p) * (W / p).
    """
    detail_first = _validate.order_flag("detail_patch_embed", order)
    _validate.patch_embed("detail_patch_embed", base, detail, weight, bias, pos_embed, patch_size)
    if _backend.use_fused(base):
        return torch.ops.davae_ext.detail_patch_embed(
            base, detail, weight, bias, pos_embed, patch_size, detail_first
        )
    return reference.detail_patch_embed(base, detail, weight, bias, pos_embed, patch_size, order)

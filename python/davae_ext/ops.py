"""The fused DA-VAE latent ops.

Each function validates its inputs, then runs the compiled kernel for the tensors' device
(``torch.ops.davae_ext.*``, with autograd, ``torch.compile`` and ``torch.export`` support) or,
when the backend is ``"reference"`` or no kernel exists for that device, the pure-PyTorch twin in
:mod:`davae_ext.reference`. Both give the same results to floating-point tolerance.

The fused path is built for per-call cost (these ops are small: at SD3 sizes a CUDA kernel runs
for a few microseconds, so host overhead decides the op's time): it calls the op's overload
directly and lets the C++ host checks (``csrc/checks.cpp``, the same checks) validate. Only when
those reject an input does the Python validation run again, to raise the same error worded with
``torch`` dtype names. Under ``torch.compile`` the Python checks run first, as they cost nothing
at run time there.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _backend, _validate, reference

_ops = torch.ops.davae_ext if _backend.EXT_LOADED else None

__all__ = ["latent_concat", "detail_project", "detail_align_loss", "detail_patch_embed"]


def _call(first, check, fused, fallback):
    """fused() when the compiled op runs for tensors like ``first``, else fallback(); validated
    by ``check()`` (which raises) as the module docstring says."""
    use_fused = isinstance(first, torch.Tensor) and _backend.use_fused(first)
    if use_fused and not torch.compiler.is_compiling():
        try:
            return fused()
        except (TypeError, ValueError, RuntimeError):
            check()  # raises the same error in the Python wording; anything else propagates
            raise
    check()
    return fused() if use_fused else fallback()


def latent_concat(base: torch.Tensor, detail: torch.Tensor, order: str = "base_first") -> torch.Tensor:
    """Concatenate base and detail latents along channels (Eq. 1).

    base: (B, C, H, W), detail: (B, D, H, W) -> (B, C + D, H, W).
    order: "base_first" (the paper's layout) or "detail_first" (the official SD3 checkpoints').
    """
    detail_first = _validate.order_flag("latent_concat", order)
    check = lambda: _validate.base_detail("latent_concat", base, detail)  # noqa: E731
    return _call(base, check, lambda: _ops.latent_concat.default(base, detail, detail_first),
                 lambda: reference.latent_concat(base, detail, order))


def detail_project(detail: torch.Tensor, base_channels: int) -> torch.Tensor:
    """Parameter-free channel-wise projection Proj (Eq. 4).

    detail: (B, D, H, W) -> (B, C, H, W) with C = base_channels; channel c is the mean of detail
    channels [c*r, (c+1)*r), r = D / C.
    """
    check = lambda: _validate.project("detail_project", detail, base_channels)  # noqa: E731
    if isinstance(base_channels, bool):  # the op's int would take a bool; the Python check rejects it
        check()
    return _call(detail, check, lambda: _ops.detail_project.default(detail, base_channels),
                 lambda: reference.detail_project(detail, base_channels))


def detail_align_loss(detail: torch.Tensor, base: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Alignment loss || Proj(detail) - base ||^2 (Eq. 3), without materialising Proj(detail).

    detail: (B, D, H, W), base: (B, C, H, W). reduction: "mean" | "sum" -> scalar, "none" ->
    (B, C, H, W). Gradients flow to both inputs; detach ``base`` for a stop-gradient target.
    The reduction is deterministic (same bits on every run).
    """
    code = _validate.reduction_code("detail_align_loss", reduction)
    check = lambda: _validate.align("detail_align_loss", detail, base)  # noqa: E731
    return _call(detail, check, lambda: _ops.detail_align_loss.default(detail, base, code),
                 lambda: reference.detail_align_loss(detail, base, reduction))


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
    check = lambda: _validate.patch_embed(  # noqa: E731
        "detail_patch_embed", base, detail, weight, bias, pos_embed, patch_size
    )
    if isinstance(patch_size, bool):  # the op's int would take a bool; the Python check rejects it
        check()
    return _call(
        base,
        check,
        lambda: _ops.detail_patch_embed.default(base, detail, weight, bias, pos_embed, patch_size, detail_first),
        lambda: reference.detail_patch_embed(base, detail, weight, bias, pos_embed, patch_size, order),
    )

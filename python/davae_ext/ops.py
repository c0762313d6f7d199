"""The fused DA-VAE latent ops.

Each function runs the compiled kernel for the tensors' device (``torch.ops.davae_ext.*``, with
autograd, ``torch.compile`` and ``torch.export`` support) or, when the backend is
``"reference"`` or no kernel exists for that device, the pure-PyTorch twin in
:mod:`davae_ext.reference`. Both give the same results to floating-point tolerance.

Latents are read in place through their strides whenever their H x W planes are contiguous:
channel-slice views of one latent, batch-strided views and the pieces of ``torch.split`` cost no
copy. The fused path validates its inputs once, in the C++ host checks (``csrc/checks.cpp``; the
fake kernels check the same under ``torch.compile``); these functions only turn the string
arguments into the ops' flags and reject a ``bool`` where an int is expected, which the
dispatcher would accept.

Each op's Python side is here: the public function, then the fake kernels of its forward and
backward schemas. Its schema, host checks, kernels, autograd and autocast rule are C++
(``csrc/``, see ``docs/design.md``), its reference twin is :mod:`davae_ext.reference`.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _backend, _validate, reference

_ops = torch.ops.davae_ext if _backend.EXT_LOADED else None


def _register_fake(name: str):
    """Registers a fake (meta) kernel of ``davae_ext::<name>``: the shapes ``torch.compile`` and
    ``torch.export`` trace with (only when the extension, and so the op's schema, is loaded)."""
    if _ops is None:
        return lambda fn: fn
    return torch.library.register_fake(f"davae_ext::{name}")


def _grads(grad, shapes_and_needed):
    """The backward ops' outputs: each gradient asked for, else an empty [0] tensor."""
    return tuple(grad.new_empty(shape if needed else (0,)) for shape, needed in shapes_and_needed)

__all__ = ["latent_concat", "detail_project", "detail_align_loss", "detail_patch_embed", "patch_embed"]


def _fused(first) -> bool:
    """Whether the compiled op runs for inputs like ``first`` (a non-tensor goes to the reference,
    whose checks say what is wrong)."""
    return isinstance(first, torch.Tensor) and _backend.use_fused(first)


def latent_concat(base: torch.Tensor, detail: torch.Tensor, order: str = "base_first") -> torch.Tensor:
    """Concatenate base and detail latents along channels (Eq. 1).

    base: (B, C, H, W), detail: (B, D, H, W) -> (B, C + D, H, W).
    order: "base_first" (the paper's layout) or "detail_first" (the official SD3 checkpoints').
    The gradients are views of the output's gradient, as ``torch.cat``'s are.
    """
    detail_first = _validate.order_flag("latent_concat", order)
    if _fused(base):
        return _ops.latent_concat.default(base, detail, detail_first)
    return reference.latent_concat(base, detail, order)



@_register_fake("latent_concat")
def _latent_concat_fake(base, detail, detail_first=False):
    B, C, D, H, W = _validate.base_detail("latent_concat", base, detail)
    return base.new_empty((B, C + D, H, W))


def detail_project(detail: torch.Tensor, base_channels: int) -> torch.Tensor:
    """Parameter-free channel-wise projection Proj (Eq. 4).

    detail: (B, D, H, W) -> (B, C, H, W) with C = base_channels; channel c is the mean of detail
    channels [c*r, (c+1)*r), r = D / C.
    """
    _validate.int_arg("detail_project", "base_channels", base_channels)
    if _fused(detail):
        return _ops.detail_project.default(detail, base_channels)
    return reference.detail_project(detail, base_channels)



@_register_fake("detail_project")
def _detail_project_fake(detail, base_channels):
    B, C, D, H, W = _validate.project("detail_project", detail, base_channels)
    return detail.new_empty((B, C, H, W))


@_register_fake("detail_project_backward")
def _detail_project_backward_fake(grad, detail_channels):
    B, C, H, W = grad.shape
    _validate.groups("detail_project_backward", C, detail_channels)
    return grad.new_empty((B, detail_channels, H, W))


def detail_align_loss(detail: torch.Tensor, base: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Alignment loss || Proj(detail) - base ||^2 (Eq. 3), without materialising Proj(detail).

    detail: (B, D, H, W), base: (B, C, H, W). reduction: "mean" | "sum" -> scalar, "none" ->
    (B, C, H, W). Gradients flow to both inputs; detach ``base`` for a stop-gradient target.
    The reduction is deterministic (same bits on every run).
    """
    code = _validate.reduction_code("detail_align_loss", reduction)
    if _fused(detail):
        return _ops.detail_align_loss.default(detail, base, code)
    return reference.detail_align_loss(detail, base, reduction)



@_register_fake("detail_align_loss")
def _detail_align_loss_fake(detail, base, reduction=1):
    B, C, D, H, W = _validate.align("detail_align_loss", detail, base)
    return base.new_empty((B, C, H, W) if reduction == 0 else ())


@_register_fake("detail_align_loss_backward")
def _detail_align_loss_backward_fake(grad, detail, base, reduction=1):
    _validate.align("detail_align_loss_backward", detail, base)
    return torch.empty_like(detail), torch.empty_like(base)


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
    -> (B, T, N) with T = (H / p) * (W / p). For a latent that is already one tensor, use
    :func:`patch_embed` (its gradient is one tensor too).
    """
    detail_first = _validate.order_flag("detail_patch_embed", order)
    _validate.int_arg("detail_patch_embed", "patch_size", patch_size)
    if _fused(base):
        return _ops.detail_patch_embed.default(base, detail, weight, bias, pos_embed, patch_size, detail_first)
    return reference.detail_patch_embed(base, detail, weight, bias, pos_embed, patch_size, order)



@_register_fake("detail_patch_embed")
def _detail_patch_embed_fake(base, detail, weight, bias, pos_embed, patch_size, detail_first=False):
    s = _validate.patch_embed("detail_patch_embed", base, detail, weight, bias, pos_embed, patch_size)
    return base.new_empty((s.B, s.T, s.N))


@_register_fake("detail_patch_embed_backward")
def _detail_patch_embed_backward_fake(grad, base, detail, weight, patch_size, detail_first, output_mask):
    s = _validate.patch_embed("detail_patch_embed_backward", base, detail, weight, None, None, patch_size)
    need_input, need_weight, need_bias, need_pos = output_mask
    return _grads(grad, [(base.shape, need_input), (detail.shape, need_input), (weight.shape, need_weight),
                         ((s.N,), need_bias), ((1, s.T, s.N), need_pos)])


def patch_embed(
    latent: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    pos_embed: Optional[torch.Tensor] = None,
    patch_size: int = 2,
) -> torch.Tensor:
    """Patch embedding of one latent (base and detail concatenated already, as a DA-VAE
    transformer's ``pos_embed(latent)`` receives it), in one gather and one GEMM with the bias
    and positional embedding in its epilogue.

    Equals ``conv2d(latent, weight, bias, stride=p).flatten(2).transpose(1, 2) + pos_embed``.
    latent: (B, C, H, W), weight: (N, C, p, p), bias: (N,) or None, pos_embed: (1, T, N) or None
    -> (B, T, N). Its gradient with respect to ``latent`` is one tensor, written once.
    """
    _validate.int_arg("patch_embed", "patch_size", patch_size)
    if _fused(latent):
        return _ops.patch_embed.default(latent, weight, bias, pos_embed, patch_size)
    return reference.patch_embed(latent, weight, bias, pos_embed, patch_size)


@_register_fake("patch_embed")
def _patch_embed_fake(latent, weight, bias, pos_embed, patch_size):
    s = _validate.latent_patch_embed("patch_embed", latent, weight, bias, pos_embed, patch_size)
    return latent.new_empty((s.B, s.T, s.N))


@_register_fake("patch_embed_backward")
def _patch_embed_backward_fake(grad, latent, weight, patch_size, output_mask):
    s = _validate.latent_patch_embed("patch_embed_backward", latent, weight, None, None, patch_size)
    need_latent, need_weight, need_bias, need_pos = output_mask
    return _grads(grad, [(latent.shape, need_latent), (weight.shape, need_weight), ((s.N,), need_bias),
                         ((1, s.T, s.N), need_pos)])

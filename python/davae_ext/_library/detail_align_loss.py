import torch

from .. import _validate

_op = torch.ops.davae_ext


@torch.library.register_fake("davae_ext::detail_align_loss")
def _fake(detail, base, reduction=1):
    B, C, D, H, W = _validate.align("detail_align_loss", detail, base)
    return base.new_empty((B, C, H, W) if reduction == 0 else ())


@torch.library.register_fake("davae_ext::detail_align_loss_backward")
def _fake_backward(grad, detail, base, reduction=1):
    _validate.align("detail_align_loss_backward", detail, base)
    return torch.empty_like(detail), torch.empty_like(base)


def _setup_context(ctx, inputs, output):
    detail, base, reduction = inputs
    ctx.save_for_backward(detail, base)
    ctx.reduction = reduction


def _backward(ctx, grad):
    detail, base = ctx.saved_tensors
    d_detail, d_base = _op.detail_align_loss_backward(grad, detail, base, ctx.reduction)
    need_detail, need_base = ctx.needs_input_grad[:2]
    return (d_detail if need_detail else None), (d_base if need_base else None), None


torch.library.register_autograd("davae_ext::detail_align_loss", _backward, setup_context=_setup_context)

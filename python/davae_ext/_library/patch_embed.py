import torch

from .. import _validate

_op = torch.ops.davae_ext


@torch.library.register_fake("davae_ext::detail_patch_embed")
def _fake(base, detail, weight, bias, pos_embed, patch_size, detail_first=False):
    s = _validate.patch_embed("detail_patch_embed", base, detail, weight, bias, pos_embed, patch_size)
    return base.new_empty((s.B, s.T, s.N))


@torch.library.register_fake("davae_ext::detail_patch_embed_backward")
def _fake_backward(grad, base, detail, weight, patch_size, detail_first, output_mask):
    s = _validate.patch_embed("detail_patch_embed_backward", base, detail, weight, None, None, patch_size)
    need_input, need_weight, need_bias, need_pos = output_mask

    def make(shape, needed):
        return grad.new_empty(shape if needed else (0,))

    return (
        make(base.shape, need_input),
        make(detail.shape, need_input),
        make(weight.shape, need_weight),
        make((s.N,), need_bias),
        make((1, s.T, s.N), need_pos),
    )


def _setup_context(ctx, inputs, output):
    base, detail, weight, bias, pos_embed, patch_size, detail_first = inputs
    ctx.save_for_backward(base, detail, weight)
    ctx.patch_size = patch_size
    ctx.detail_first = detail_first
    ctx.has_bias = bias is not None
    ctx.has_pos = pos_embed is not None


def _backward(ctx, grad):
    base, detail, weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [
        bool(need[0] or need[1]),
        bool(need[2]),
        bool(ctx.has_bias and need[3]),
        bool(ctx.has_pos and need[4]),
    ]
    d_base, d_detail, d_weight, d_bias, d_pos = _op.detail_patch_embed_backward(
        grad, base, detail, weight, ctx.patch_size, ctx.detail_first, mask
    )
    return (
        d_base if need[0] else None,
        d_detail if need[1] else None,
        d_weight if mask[1] else None,
        d_bias if mask[2] else None,
        d_pos if mask[3] else None,
        None,
        None,
    )


torch.library.register_autograd("davae_ext::detail_patch_embed", _backward, setup_context=_setup_context)

import torch

from .. import _validate


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


import torch

from .. import _validate


def _grads(grad, shapes_and_needed):
    """The backward ops' outputs: each gradient asked for, else an empty [0] tensor."""
    return tuple(grad.new_empty(shape if needed else (0,)) for shape, needed in shapes_and_needed)


@torch.library.register_fake("davae_ext::detail_patch_embed")
def _fake(base, detail, weight, bias, pos_embed, patch_size, detail_first=False):
    s = _validate.patch_embed("detail_patch_embed", base, detail, weight, bias, pos_embed, patch_size)
    return base.new_empty((s.B, s.T, s.N))


@torch.library.register_fake("davae_ext::detail_patch_embed_backward")
def _fake_backward(grad, base, detail, weight, patch_size, detail_first, output_mask):
    s = _validate.patch_embed("detail_patch_embed_backward", base, detail, weight, None, None, patch_size)
    need_input, need_weight, need_bias, need_pos = output_mask
    return _grads(grad, [(base.shape, need_input), (detail.shape, need_input), (weight.shape, need_weight),
                         ((s.N,), need_bias), ((1, s.T, s.N), need_pos)])


@torch.library.register_fake("davae_ext::patch_embed")
def _fake_latent(latent, weight, bias, pos_embed, patch_size):
    s = _validate.latent_patch_embed("patch_embed", latent, weight, bias, pos_embed, patch_size)
    return latent.new_empty((s.B, s.T, s.N))


@torch.library.register_fake("davae_ext::patch_embed_backward")
def _fake_latent_backward(grad, latent, weight, patch_size, output_mask):
    s = _validate.latent_patch_embed("patch_embed_backward", latent, weight, None, None, patch_size)
    need_latent, need_weight, need_bias, need_pos = output_mask
    return _grads(grad, [(latent.shape, need_latent), (weight.shape, need_weight), ((s.N,), need_bias),
                         ((1, s.T, s.N), need_pos)])

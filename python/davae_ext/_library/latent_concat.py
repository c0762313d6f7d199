import torch

from .. import _validate


@torch.library.register_fake("davae_ext::latent_concat")
def _fake(base, detail, detail_first=False):
    B, C, D, H, W = _validate.base_detail("latent_concat", base, detail)
    return base.new_empty((B, C + D, H, W))


@torch.library.register_fake("davae_ext::latent_concat_backward")
def _fake_backward(grad, base_channels, detail_first=False):
    B, CD, H, W = grad.shape
    torch._check(0 < base_channels < CD, lambda: f"base_channels must be in [1, {CD - 1}]")
    return grad.new_empty((B, base_channels, H, W)), grad.new_empty((B, CD - base_channels, H, W))


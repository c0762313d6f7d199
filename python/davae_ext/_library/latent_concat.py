import torch

from .. import _validate


@torch.library.register_fake("davae_ext::latent_concat")
def _fake(base, detail, detail_first=False):
    B, C, D, H, W = _validate.base_detail("latent_concat", base, detail)
    return base.new_empty((B, C + D, H, W))

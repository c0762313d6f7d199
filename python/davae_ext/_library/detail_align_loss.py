import torch

from .. import _validate


@torch.library.register_fake("davae_ext::detail_align_loss")
def _fake(detail, base, reduction=1):
    B, C, D, H, W = _validate.align("detail_align_loss", detail, base)
    return base.new_empty((B, C, H, W) if reduction == 0 else ())


@torch.library.register_fake("davae_ext::detail_align_loss_backward")
def _fake_backward(grad, detail, base, reduction=1):
    _validate.align("detail_align_loss_backward", detail, base)
    return torch.empty_like(detail), torch.empty_like(base)


import torch

from .. import _validate


@torch.library.register_fake("davae_ext::detail_project")
def _fake(detail, base_channels):
    B, C, D, H, W = _validate.project("detail_project", detail, base_channels)
    return detail.new_empty((B, C, H, W))


@torch.library.register_fake("davae_ext::detail_project_backward")
def _fake_backward(grad, detail_channels):
    B, C, H, W = grad.shape
    _validate.groups("detail_project_backward", C, detail_channels)
    return grad.new_empty((B, detail_channels, H, W))


"""DetailProjOut: the DiT output head widened to base + detail channels."""

from __future__ import annotations

import torch
from torch import nn

from .. import _validate
from ..channels import join_channels
from ._init import check_channels, check_init, detail_slice


def _interleave(base: torch.Tensor, detail: torch.Tensor, patch_size: int, order: str) -> torch.Tensor:
    """Rows (or bias entries) laid out per patch position with the channel index fastest, as
    diffusers' unpatchify reads them: row (py * p + px) * (C + D) + channel."""
    pp = patch_size * patch_size
    b = base.reshape(pp, -1, *base.shape[1:])
    d = detail.reshape(pp, -1, *detail.shape[1:])
    return join_channels(b, d, order).reshape(-1, *base.shape[1:])


class DetailProjOut(nn.Linear):
    """``Linear(hidden, p * p * (C + D))`` predicting base + detail channels per token, in the
    per-patch channel order of diffusers' unpatchify (``(p, q, c)``, channel fastest). A subclass
    of ``nn.Linear``: state-dict keys, LoRA targeting and ``F.linear`` speed are unchanged. There
    is nothing to fuse here, so it has no ``fused`` switch."""

    def __init__(self, in_features: int, base_channels: int, detail_channels: int, patch_size: int,
                 bias: bool = True, order: str = "base_first", device=None, dtype=None):
        check_channels("DetailProjOut", "base_channels", base_channels)
        check_channels("DetailProjOut", "detail_channels", detail_channels)
        check_channels("DetailProjOut", "patch_size", patch_size)
        _validate.order_flag("DetailProjOut", order)
        super().__init__(in_features, patch_size * patch_size * (base_channels + detail_channels), bias=bias,
                         device=device, dtype=dtype)
        self.base_channels, self.detail_channels = base_channels, detail_channels
        self.patch_size, self.order = patch_size, order

    @classmethod
    def from_linear(cls, linear: nn.Linear, base_channels: int, detail_channels: int, patch_size: int,
                    init: str = "zero", order: str = "base_first") -> "DetailProjOut":
        """Widen a pretrained ``Linear(hidden, p * p * C)``: its rows go to the base channels of
        every patch position, the detail rows start as ``init`` (zero: predict 0 for the detail
        channels, so the model starts as the pretrained one)."""
        check_init("DetailProjOut.from_linear", init)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"DetailProjOut.from_linear: 'linear' must be an nn.Linear, got {type(linear).__name__}")
        pp = patch_size * patch_size
        if linear.out_features != pp * base_channels:
            raise ValueError(
                f"DetailProjOut.from_linear: 'linear' must have p*p*C = {pp}*{base_channels} = {pp * base_channels} "
                f"output features, got {linear.out_features}"
            )
        new = cls(linear.in_features, base_channels, detail_channels, patch_size, bias=linear.bias is not None,
                  order=order, device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            w = linear.weight.detach().reshape(pp, base_channels, -1)  # [p*p, C, hidden]
            w_detail = torch.stack([detail_slice(w[i], detail_channels, 0, init, divide=False) for i in range(pp)])
            new.weight.copy_(_interleave(w.reshape(-1, w.shape[-1]), w_detail.reshape(-1, w.shape[-1]), patch_size, order))
            if linear.bias is not None:
                b = linear.bias.detach().reshape(pp, base_channels)
                if init == "random":
                    b_detail = torch.zeros(pp, detail_channels, dtype=b.dtype, device=b.device)
                else:
                    b_detail = torch.stack([detail_slice(b[i], detail_channels, 0, init, divide=False) for i in range(pp)])
                new.bias.copy_(_interleave(b.reshape(-1), b_detail.reshape(-1), patch_size, order))
        return new

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, base_channels={self.base_channels}, detail_channels={self.detail_channels}, "
                f"patch_size={self.patch_size}, order={self.order!r}")

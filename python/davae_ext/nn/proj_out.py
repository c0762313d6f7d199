"""DetailProjOut: the DiT output head widened to base + detail channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validate
from ..channels import join_channels, split_channels
from ._init import check_channels, check_init, detail_slice


def _interleave(base: torch.Tensor, detail: torch.Tensor, blocks: int, order: str) -> torch.Tensor:
    """Rows (or bias entries) laid out per patch position with the channel index fastest, as
    diffusers' and DiT's unpatchify read them: row ((py * p + px) * G + g) * (C + D) + channel for
    output group g (``blocks`` = p * p * G)."""
    b = base.reshape(blocks, -1, *base.shape[1:])
    d = detail.reshape(blocks, -1, *detail.shape[1:])
    return join_channels(b, d, order).reshape(-1, *base.shape[1:])


class DetailProjOut(nn.Linear):
    """``Linear(hidden, p * p * G * (C + D))`` predicting base + detail channels per token, in the
    per-patch channel order of diffusers' and DiT's unpatchify (``(p, q, c)``, channel fastest).
    ``groups`` G = 2 is a learned-sigma head (DiT): per patch position the prediction's C + D
    channels, then the variance's C + D, each in ``order``. A subclass of ``nn.Linear``:
    state-dict keys and LoRA targeting are unchanged.

    fused=True (default) is one ``F.linear`` over the interleaved rows; fused=False computes the
    base rows and the detail rows as two ``F.linear`` calls and interleaves their outputs: with
    zero detail rows, the pretrained head's arithmetic bit for bit (a GEMM with more output rows
    may round differently)."""

    def __init__(self, in_features: int, base_channels: int, detail_channels: int, patch_size: int,
                 bias: bool = True, order: str = "base_first", device=None, dtype=None, groups: int = 1,
                 fused: bool = True):
        check_channels("DetailProjOut", "base_channels", base_channels)
        check_channels("DetailProjOut", "detail_channels", detail_channels)
        check_channels("DetailProjOut", "patch_size", patch_size)
        check_channels("DetailProjOut", "groups", groups)
        _validate.order_flag("DetailProjOut", order)
        super().__init__(in_features, patch_size * patch_size * groups * (base_channels + detail_channels), bias=bias,
                         device=device, dtype=dtype)
        self.base_channels, self.detail_channels = base_channels, detail_channels
        self.patch_size, self.order, self.groups, self.fused = patch_size, order, groups, fused

    @classmethod
    def from_linear(cls, linear: nn.Linear, base_channels: int, detail_channels: int, patch_size: int,
                    init: str = "zero", order: str = "base_first", groups: int = 1,
                    fused: bool = True) -> "DetailProjOut":
        """Widen a pretrained ``Linear(hidden, p * p * G * C)``: its rows go to the base channels
        of every patch position (and output group), the detail rows start as ``init`` (zero:
        predict 0 for the detail channels, so the model starts as the pretrained one)."""
        check_init("DetailProjOut.from_linear", init)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"DetailProjOut.from_linear: 'linear' must be an nn.Linear, got {type(linear).__name__}")
        blocks = patch_size * patch_size * groups
        if linear.out_features != blocks * base_channels:
            what = "p*p*C" if groups == 1 else f"p*p*{groups}C"
            raise ValueError(
                f"DetailProjOut.from_linear: 'linear' must have {what} = {blocks * base_channels} output features "
                f"(p={patch_size}, C={base_channels}), got {linear.out_features}"
            )
        new = cls(linear.in_features, base_channels, detail_channels, patch_size, bias=linear.bias is not None,
                  order=order, device=linear.weight.device, dtype=linear.weight.dtype, groups=groups, fused=fused)
        with torch.no_grad():
            w = linear.weight.detach().reshape(blocks, base_channels, -1)  # [p*p*G, C, hidden]
            w_detail = torch.stack([detail_slice(w[i], detail_channels, 0, init, divide=False) for i in range(blocks)])
            new.weight.copy_(_interleave(w.reshape(-1, w.shape[-1]), w_detail.reshape(-1, w.shape[-1]), blocks, order))
            if linear.bias is not None:
                b = linear.bias.detach().reshape(blocks, base_channels)
                if init == "random":
                    b_detail = torch.zeros(blocks, detail_channels, dtype=b.dtype, device=b.device)
                else:
                    b_detail = torch.stack([detail_slice(b[i], detail_channels, 0, init, divide=False)
                                            for i in range(blocks)])
                new.bias.copy_(_interleave(b.reshape(-1), b_detail.reshape(-1), blocks, order))
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return F.linear(x, self.weight, self.bias)
        C, D = self.base_channels, self.detail_channels
        blocks = self.weight.shape[0] // (C + D)
        w_base, w_detail = split_channels(self.weight.unflatten(0, (blocks, C + D)), C, self.order)
        b_base = b_detail = None
        if self.bias is not None:
            b_base, b_detail = split_channels(self.bias.unflatten(0, (blocks, C + D)), C, self.order)
            b_base, b_detail = b_base.flatten(), b_detail.flatten()
        y_base = F.linear(x, w_base.flatten(0, 1), b_base).unflatten(-1, (blocks, C))
        y_detail = F.linear(x, w_detail.flatten(0, 1), b_detail).unflatten(-1, (blocks, D))
        return join_channels(y_base, y_detail, self.order, dim=-1).flatten(-2)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, base_channels={self.base_channels}, detail_channels={self.detail_channels}, "
                f"patch_size={self.patch_size}, order={self.order!r}, groups={self.groups}, fused={self.fused}")

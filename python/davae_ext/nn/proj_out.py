"""DetailProjOut: the DiT output head widened to base + detail channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validate
from ..channels import join_channels, split_channels
from ._init import check_channels, check_init, detail_slice


LAYOUTS = ("patch_major", "channel_major")


def _check_layout(owner: str, layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"{owner}: 'layout' must be one of {LAYOUTS}, got {layout!r}")
    return layout


def _blocks_first(t: torch.Tensor, channels: int, layout: str) -> torch.Tensor:
    """Rows (dim 0) of ``t`` as [blocks, channels, ...]: a view for "patch_major" (diffusers' SD3
    and DiT unpatchify, row ``block * channels + c``), a transposed view for "channel_major"
    (FLUX's latent packing, row ``c * blocks + block``)."""
    if layout == "patch_major":
        return t.unflatten(0, (-1, channels))
    return t.unflatten(0, (channels, -1)).transpose(0, 1)


def _rows(t: torch.Tensor, layout: str) -> torch.Tensor:
    """Inverse of :func:`_blocks_first`: [blocks, channels, ...] -> rows in ``layout``."""
    return (t if layout == "patch_major" else t.transpose(0, 1)).flatten(0, 1)


class DetailProjOut(nn.Linear):
    """``Linear(hidden, p * p * G * (C + D))`` predicting base + detail channels per token. Its
    rows follow ``layout``: "patch_major" is the per-patch channel order of diffusers' SD3 and
    DiT unpatchify (``(p, q, c)``, channel fastest); "channel_major" is FLUX's packing
    (``(c, p, q)``, channel slowest: what ``FluxPipeline._unpack_latents`` reads).
    ``groups`` G = 2 is a learned-sigma head (DiT): per patch position the prediction's C + D
    channels, then the variance's C + D, each in ``order``. A subclass of ``nn.Linear``:
    state-dict keys and LoRA targeting are unchanged.

    fused=True (default) is one ``F.linear`` over the interleaved rows; fused=False computes the
    base rows and the detail rows as two ``F.linear`` calls and interleaves their outputs: with
    zero detail rows, the pretrained head's arithmetic bit for bit (a GEMM with more output rows
    may round differently)."""

    def __init__(self, in_features: int, base_channels: int, detail_channels: int, patch_size: int,
                 bias: bool = True, order: str = "base_first", device=None, dtype=None, groups: int = 1,
                 fused: bool = True, layout: str = "patch_major"):
        check_channels("DetailProjOut", "base_channels", base_channels)
        check_channels("DetailProjOut", "detail_channels", detail_channels)
        check_channels("DetailProjOut", "patch_size", patch_size)
        check_channels("DetailProjOut", "groups", groups)
        _validate.order_flag("DetailProjOut", order)
        _check_layout("DetailProjOut", layout)
        super().__init__(in_features, patch_size * patch_size * groups * (base_channels + detail_channels), bias=bias,
                         device=device, dtype=dtype)
        self.base_channels, self.detail_channels = base_channels, detail_channels
        self.patch_size, self.order, self.groups, self.fused = patch_size, order, groups, fused
        self.layout = layout

    @classmethod
    def from_linear(cls, linear: nn.Linear, base_channels: int, detail_channels: int, patch_size: int,
                    init: str = "zero", order: str = "base_first", groups: int = 1,
                    fused: bool = True, layout: str = "patch_major") -> "DetailProjOut":
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
                  order=order, device=linear.weight.device, dtype=linear.weight.dtype, groups=groups, fused=fused,
                  layout=_check_layout("DetailProjOut.from_linear", layout))
        with torch.no_grad():
            w = _blocks_first(linear.weight.detach(), base_channels, layout)  # [p*p*G, C, hidden]
            w_detail = torch.stack([detail_slice(w[i], detail_channels, 0, init, divide=False) for i in range(blocks)])
            new.weight.copy_(_rows(join_channels(w, w_detail, order), layout))
            if linear.bias is not None:
                b = _blocks_first(linear.bias.detach(), base_channels, layout)
                if init == "random":
                    b_detail = torch.zeros(blocks, detail_channels, dtype=b.dtype, device=b.device)
                else:
                    b_detail = torch.stack([detail_slice(b[i], detail_channels, 0, init, divide=False)
                                            for i in range(blocks)])
                new.bias.copy_(_rows(join_channels(b, b_detail, order), layout))
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return F.linear(x, self.weight, self.bias)
        C, D, layout = self.base_channels, self.detail_channels, self.layout
        w_base, w_detail = split_channels(_blocks_first(self.weight, C + D, layout), C, self.order)
        b_base = b_detail = None
        if self.bias is not None:
            b_base, b_detail = split_channels(_blocks_first(self.bias, C + D, layout), C, self.order)
            b_base, b_detail = _rows(b_base, layout), _rows(b_detail, layout)
        # Each part in its own rows' layout, then joined per block: [..., rows] -> [rows, ...]
        # moves the feature dim first so the same row helpers apply.
        y_base = F.linear(x, _rows(w_base, layout), b_base).movedim(-1, 0)
        y_detail = F.linear(x, _rows(w_detail, layout), b_detail).movedim(-1, 0)
        y = join_channels(_blocks_first(y_base, C, layout), _blocks_first(y_detail, D, layout), self.order)
        return _rows(y, layout).movedim(0, -1).contiguous()

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, base_channels={self.base_channels}, detail_channels={self.detail_channels}, "
                f"patch_size={self.patch_size}, order={self.order!r}, groups={self.groups}, fused={self.fused}, "
                f"layout={self.layout!r}")

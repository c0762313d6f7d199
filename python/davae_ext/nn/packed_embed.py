"""FLUX's latent packing and ``DetailPackedEmbed``, its ``x_embedder`` widened to base + detail
channels.

FLUX pipelines pack a latent [B, C, H, W] into tokens [B, H/2 * W/2, 4C] (2 x 2 pixel-unshuffle
with the channel slowest: feature ``c * 4 + 2 * py + px``) and the transformer's ``x_embedder`` is
a ``Linear(4C, hidden)`` over them. That Linear's weight, viewed as [hidden, C, 2, 2], is a 2 x 2
patch convolution's: packing followed by the Linear is the gather + GEMM of
:func:`davae_ext.ops.patch_embed` with no positional table, which ``DetailPackedEmbed`` runs on an
unpacked latent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validate, ops
from ..channels import join_channels, split_channels
from ._init import check_channels, check_init, detail_slice

PACK = 2  # FLUX packs 2 x 2 latent pixels per token


def pack_latents(latent: torch.Tensor, pack: int = PACK) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H / p) * (W / p), C * p * p] in FLUX's order (``FluxPipeline._pack_latents``)."""
    if latent.dim() != 4 or latent.shape[-2] % pack or latent.shape[-1] % pack:
        raise ValueError(f"pack_latents: 'latent' must have shape [B, C, H, W] with H and W multiples of {pack}, "
                         f"got {list(latent.shape)}")
    B, C, H, W = latent.shape
    x = latent.reshape(B, C, H // pack, pack, W // pack, pack).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // pack) * (W // pack), C * pack * pack)


def unpack_latents(tokens: torch.Tensor, height: int, width: int, pack: int = PACK) -> torch.Tensor:
    """Inverse of :func:`pack_latents` for a ``height`` x ``width`` latent."""
    if tokens.dim() != 3 or height % pack or width % pack or tokens.shape[1] != (height // pack) * (width // pack) \
            or tokens.shape[2] % (pack * pack):
        raise ValueError(f"unpack_latents: 'tokens' must have shape [B, {(height // pack) * (width // pack)}, "
                         f"C * {pack * pack}] for a {height} x {width} latent, got {list(tokens.shape)}")
    B, _, F_ = tokens.shape
    C = F_ // (pack * pack)
    x = tokens.reshape(B, height // pack, width // pack, C, pack, pack).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, C, height, width)


class DetailPackedEmbed(nn.Linear):
    """``Linear(p * p * (C + D), hidden)`` over FLUX-packed tokens of a C + D channel latent.

    The input is either the packed tokens [B, T, p * p * (C + D)] (what a FLUX pipeline passes
    the transformer) or the latent itself [B, C + D, H, W] (packing done here). fused=True runs
    one GEMM over the packed tokens, or the fused patch-embed kernel on a latent (no packed copy
    is made). fused=False runs the base and the detail features as two ``F.linear`` calls: with a
    zero detail slice, the pretrained ``x_embedder``'s arithmetic bit for bit. A subclass of
    ``nn.Linear``: the state-dict keys are ``x_embedder``'s.
    """

    def __init__(self, base_channels: int, detail_channels: int, embed_dim: int, bias: bool = True,
                 order: str = "base_first", fused: bool = True, pack: int = PACK, device=None, dtype=None):
        check_channels("DetailPackedEmbed", "base_channels", base_channels)
        check_channels("DetailPackedEmbed", "detail_channels", detail_channels)
        check_channels("DetailPackedEmbed", "pack", pack)
        _validate.order_flag("DetailPackedEmbed", order)
        super().__init__(pack * pack * (base_channels + detail_channels), embed_dim, bias=bias, device=device,
                         dtype=dtype)
        self.base_channels, self.detail_channels, self.pack = base_channels, detail_channels, pack
        self.order, self.fused = order, fused

    @classmethod
    def from_linear(cls, linear: nn.Linear, detail_channels: int, init: str = "zero", order: str = "base_first",
                    fused: bool = True, pack: int = PACK) -> "DetailPackedEmbed":
        """Widen a pretrained ``x_embedder`` ``Linear(p * p * C, hidden)``: its columns go to the
        base channels, the detail columns start as ``init`` (as a patch conv's input channels)."""
        check_init("DetailPackedEmbed.from_linear", init)
        if not isinstance(linear, nn.Linear) or linear.in_features % (pack * pack):
            raise TypeError(f"DetailPackedEmbed.from_linear: 'linear' must be an nn.Linear with a multiple of "
                            f"{pack * pack} input features, got {type(linear).__name__} "
                            f"{getattr(linear, 'in_features', '')}")
        C = linear.in_features // (pack * pack)
        new = cls(C, detail_channels, linear.out_features, bias=linear.bias is not None, order=order, fused=fused,
                  pack=pack, device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            w = linear.weight.detach().unflatten(1, (C, pack * pack))  # a patch conv's [N, C, p * p]
            w_detail = detail_slice(w, detail_channels, dim=1, init=init, divide=True)
            new.weight.copy_(join_channels(w, w_detail, order).flatten(1))
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        return new

    def _check(self, x: torch.Tensor) -> None:
        C, D, pp = self.base_channels, self.detail_channels, self.pack * self.pack
        ok = (x.dim() == 3 and x.shape[-1] == pp * (C + D)) or (
            x.dim() == 4 and x.shape[1] == C + D and x.shape[2] % self.pack == 0 and x.shape[3] % self.pack == 0)
        if not ok:
            raise ValueError(f"DetailPackedEmbed: the input must be packed tokens [B, T, {pp * (C + D)}] or a latent "
                             f"[B, {C + D}, H, W] with H and W multiples of {self.pack} (C={C} base + D={D} detail "
                             f"channels), got {list(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        if self.fused:
            if x.dim() == 4:
                w = self.weight.to(x.dtype).unflatten(1, (-1, self.pack, self.pack))
                b = None if self.bias is None else self.bias.to(x.dtype)
                return ops.patch_embed(x, w, b, None, self.pack)
            return F.linear(x, self.weight, self.bias)
        if x.dim() == 4:
            x = pack_latents(x, self.pack)
        pp = self.pack * self.pack
        x_base, x_detail = split_channels(x.unflatten(-1, (-1, pp)), self.base_channels, self.order, dim=-2)
        w_base, w_detail = split_channels(self.weight.unflatten(1, (-1, pp)), self.base_channels, self.order)
        return F.linear(x_base.flatten(-2), w_base.flatten(1), self.bias) + F.linear(x_detail.flatten(-2),
                                                                                      w_detail.flatten(1))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, base_channels={self.base_channels}, detail_channels={self.detail_channels}, "
                f"pack={self.pack}, order={self.order!r}, fused={self.fused}")

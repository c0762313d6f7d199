"""DetailPatchEmbed: diffusers' ``PatchEmbed`` widened to base + detail channels."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validate, ops
from ..channels import join_channels, split_channels
from ._init import check_channels, check_init, detail_slice


def _sincos_pos_embed(embed_dim: int, grid_size, base_size: int, interpolation_scale: float) -> torch.Tensor:
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    return get_2d_sincos_pos_embed(
        embed_dim, grid_size, base_size=base_size, interpolation_scale=interpolation_scale, output_type="pt"
    )


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype the fused op computes in for input t: torch.autocast's when it is on for t's
    device (the op casts to it, csrc/autocast.cpp, as Conv2d would; float64 it leaves alone),
    else t's own."""
    autocast = _validate.autocast_dtype(t)
    return autocast if autocast is not None and t.dtype != torch.float64 else t.dtype


class DetailPatchEmbed(nn.Module):
    """Patch embedding of a base + detail latent, a drop-in for diffusers' ``PatchEmbed``.

    ``proj`` is one ``Conv2d(C + D, embed_dim, p, stride=p)`` whose input channels follow
    ``order``, and ``pos_embed`` is the same sin-cos table with the same SD3 centre-crop
    (``pos_embed_max_size``) or re-computation behaviour, so state dicts and attribute names match
    diffusers'. ``forward(latent)`` takes the concatenated latent ``(B, C + D, H, W)`` as diffusers
    calls it; ``forward(base, detail)`` takes the two parts, so the concatenation never exists.
    Returns ``(B, (H / p) * (W / p), embed_dim)``.

    fused=True runs :func:`davae_ext.ops.patch_embed` on the latent (or
    :func:`davae_ext.ops.detail_patch_embed` on the two parts): one gather read in place and one
    GEMM with the bias and positional embedding in its epilogue, and, backward, one latent gradient
    written once; fused=False runs plain PyTorch as two convolutions, one per part, added (with a
    zero detail slice this equals the pretrained ``PatchEmbed`` bit for bit). The two agree to
    floating-point rounding.
    """

    def __init__(
        self,
        height: int = 224,
        width: int = 224,
        patch_size: int = 16,
        base_channels: int = 16,
        detail_channels: int = 16,
        embed_dim: int = 768,
        bias: bool = True,
        interpolation_scale: float = 1,
        pos_embed_type: Optional[str] = "sincos",
        pos_embed_max_size: Optional[int] = None,
        order: str = "base_first",
        fused: bool = True,
    ):
        super().__init__()
        check_channels("DetailPatchEmbed", "base_channels", base_channels)
        check_channels("DetailPatchEmbed", "detail_channels", detail_channels)
        check_channels("DetailPatchEmbed", "patch_size", patch_size)
        _validate.order_flag("DetailPatchEmbed", order)
        self.base_channels, self.detail_channels = base_channels, detail_channels
        self.order, self.fused = order, fused
        self.patch_size = patch_size
        self.pos_embed_max_size = pos_embed_max_size
        self.flatten, self.layer_norm, self.norm = True, False, None
        self.proj = nn.Conv2d(base_channels + detail_channels, embed_dim, kernel_size=(patch_size, patch_size),
                              stride=patch_size, bias=bias)
        self.height, self.width = height // patch_size, width // patch_size
        self.base_size = height // patch_size
        self.interpolation_scale = interpolation_scale
        if pos_embed_type is None:
            self.pos_embed = None
        elif pos_embed_type == "sincos":
            grid = pos_embed_max_size or int(((height // patch_size) * (width // patch_size)) ** 0.5)
            table = _sincos_pos_embed(embed_dim, grid, self.base_size, interpolation_scale)
            self.register_buffer("pos_embed", table.float().unsqueeze(0), persistent=bool(pos_embed_max_size))
        else:
            raise ValueError(f"DetailPatchEmbed: unsupported pos_embed_type {pos_embed_type!r}")

    # -- construction from a pretrained embedder --------------------------------------------------
    @classmethod
    def from_patch_embed(cls, patch_embed: nn.Module, detail_channels: int, init: str = "zero",
                         order: str = "base_first", fused: bool = True) -> "DetailPatchEmbed":
        """Widen a pretrained embedder: diffusers' ``PatchEmbed``, any module with a ``proj``
        Conv2d (DiT-style ``x_embedder``), or a bare ``Conv2d`` with kernel == stride. The
        pretrained weight and bias go into the base slice; the detail slice starts as ``init``."""
        check_init("DetailPatchEmbed.from_patch_embed", init)
        check_channels("DetailPatchEmbed.from_patch_embed", "detail_channels", detail_channels)
        conv = patch_embed if isinstance(patch_embed, nn.Conv2d) else getattr(patch_embed, "proj", None)
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(
                "DetailPatchEmbed.from_patch_embed: 'patch_embed' must be a Conv2d or have a Conv2d "
                f"'proj' attribute, got {type(patch_embed).__name__} with proj={type(conv).__name__}"
            )
        p = conv.kernel_size[0]
        if conv.kernel_size != (p, p) or conv.stride != (p, p) or conv.padding not in ((0, 0), "valid") \
                or conv.groups != 1 or conv.dilation != (1, 1):
            raise ValueError(
                "DetailPatchEmbed.from_patch_embed: the patch conv must have a square kernel equal to its stride, "
                f"no padding, groups or dilation; got kernel {conv.kernel_size}, stride {conv.stride}"
            )
        if getattr(patch_embed, "layer_norm", False):
            raise NotImplementedError("DetailPatchEmbed.from_patch_embed: PatchEmbed(layer_norm=True) is not supported")
        table = getattr(patch_embed, "pos_embed", None) if conv is not patch_embed else None
        grid_h = getattr(patch_embed, "height", 1) if table is not None else 1
        grid_w = getattr(patch_embed, "width", 1) if table is not None else 1
        C = conv.in_channels
        max_size = getattr(patch_embed, "pos_embed_max_size", None) if table is not None else None
        # Built without a table: the pretrained one is carried over as it is below (computing a
        # fresh sin-cos table first would cost as much memory again, 0.9 GB at SD3.5-Medium's size).
        new = cls(
            height=grid_h * p, width=grid_w * p, patch_size=p, base_channels=C, detail_channels=detail_channels,
            embed_dim=conv.out_channels, bias=conv.bias is not None,
            interpolation_scale=getattr(patch_embed, "interpolation_scale", 1), pos_embed_type=None,
            pos_embed_max_size=max_size, order=order, fused=fused,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            w_base = conv.weight.detach()
            w_detail = detail_slice(w_base, detail_channels, dim=1, init=init, divide=True)
            new.proj.weight.copy_(join_channels(w_base, w_detail, order))
            if conv.bias is not None:
                new.proj.bias.copy_(conv.bias)
            if table is not None:
                del new.pos_embed  # the None placeholder, replaced by the pretrained buffer's values exactly
                new.register_buffer("pos_embed", table.detach().clone(), persistent=bool(max_size))
                new.base_size = getattr(patch_embed, "base_size", new.base_size)
        return new

    # -- forward ----------------------------------------------------------------------------------
    def _check_latent(self, latent: torch.Tensor) -> None:
        C, D = self.base_channels, self.detail_channels
        if latent.dim() != 4 or latent.shape[1] != C + D:
            raise ValueError(
                f"DetailPatchEmbed: the latent must have shape [B, {C + D}, H, W] (C={C} base + D={D} detail "
                f"channels), got {list(latent.shape)}"
            )

    def cropped_pos_embed(self, height: int, width: int) -> torch.Tensor:
        """Centre crop of the sin-cos table for a latent of height x width (SD3 behaviour)."""
        if self.pos_embed_max_size is None:
            raise ValueError("`pos_embed_max_size` must be set for cropping.")
        h, w = height // self.patch_size, width // self.patch_size
        if h > self.pos_embed_max_size or w > self.pos_embed_max_size:
            raise ValueError(
                f"DetailPatchEmbed: a {h} x {w} token grid exceeds pos_embed_max_size={self.pos_embed_max_size}"
            )
        top, left = (self.pos_embed_max_size - h) // 2, (self.pos_embed_max_size - w) // 2
        table = self.pos_embed.reshape(1, self.pos_embed_max_size, self.pos_embed_max_size, -1)
        return table[:, top: top + h, left: left + w, :].reshape(1, -1, table.shape[-1])

    def _pos_table(self, height: int, width: int, device) -> torch.Tensor:
        if self.pos_embed_max_size:
            return self.cropped_pos_embed(height, width)
        h, w = height // self.patch_size, width // self.patch_size
        if (h, w) != (self.height, self.width):
            table = _sincos_pos_embed(self.pos_embed.shape[-1], (h, w), self.base_size, self.interpolation_scale)
            return table.float().unsqueeze(0).to(device)
        return self.pos_embed

    def _pos_for(self, height: int, width: int, device, dtype: Optional[torch.dtype] = None) -> Optional[torch.Tensor]:
        """The positional embedding of a height x width latent, contiguous, in ``dtype`` (default:
        the table's). SD3's centre crop (or a re-computed table) is a copy of T x N values; the
        result is cached per (size, dtype, device) and per version of the ``pos_embed`` buffer, so
        a sampling or training loop does not copy it on every call (at 2048 px, T x N = 4096 x 1536).
        In-place changes and ``load_state_dict`` bump the buffer's version and so invalidate it."""
        if self.pos_embed is None:
            return None
        dtype = dtype or self.pos_embed.dtype
        table = self.pos_embed
        if torch.compiler.is_compiling() or table.requires_grad or table.is_inference():
            return self._pos_table(height, width, device).to(dtype)  # nothing to cache (or traced)
        # One cache per table object and version: a replaced buffer (``.to()``, assignment) or an
        # in-place change (``load_state_dict`` copies in place) starts a fresh one.
        state = self.__dict__.get("_pos_cache")
        if state is None or state[0] is not table or state[1] != table._version:
            state = self.__dict__["_pos_cache"] = (table, table._version, {})
        entries, key = state[2], (height, width, dtype, torch.device(device))
        pos = entries.get(key)
        if pos is None:
            if len(entries) >= 8:  # a handful of resolutions (aspect-ratio buckets)
                entries.clear()
            pos = entries[key] = self._pos_table(height, width, device).to(dtype).contiguous()
        return pos

    def _apply(self, fn, *args, **kwargs):
        self.__dict__.pop("_pos_cache", None)  # .to() / .cuda() / .half(): do not hold the old table
        return super()._apply(fn, *args, **kwargs)

    def forward(self, latent: torch.Tensor, detail: Optional[torch.Tensor] = None) -> torch.Tensor:
        if detail is None:
            self._check_latent(latent)
            base = None
        else:
            base = latent
            for name, t, n in (("base", base, self.base_channels), ("detail", detail, self.detail_channels)):
                if t.dim() != 4 or t.shape[1] != n:
                    raise ValueError(f"DetailPatchEmbed: '{name}' must have shape [B, {n}, H, W], got {list(t.shape)}")
        height, width = latent.shape[-2:]
        bias = self.proj.bias
        if self.fused:
            dtype = latent.dtype
            # Under autocast the op computes in the autocast dtype: the cached table in that dtype
            # saves the op a cast of T x N values per call (the weight's cast it caches itself).
            pos = self._pos_for(height, width, latent.device, _compute_dtype(latent))
            weight, bias = self.proj.weight.to(dtype), None if bias is None else bias.to(dtype)
            if base is None:  # one latent: read in place, its gradient written as one tensor
                return ops.patch_embed(latent, weight, bias, pos, self.patch_size)
            return ops.detail_patch_embed(base, detail, weight, bias, pos, self.patch_size, self.order)
        if base is None:
            base, detail = split_channels(latent, self.base_channels, self.order)
        pos = self._pos_for(height, width, latent.device)
        w_base, w_detail = split_channels(self.proj.weight, self.base_channels, self.order)
        x = F.conv2d(base, w_base, bias, stride=self.patch_size) + F.conv2d(detail, w_detail, None, stride=self.patch_size)
        x = x.flatten(2).transpose(1, 2)
        return x if pos is None else (x + pos).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"base_channels={self.base_channels}, detail_channels={self.detail_channels}, "
                f"patch_size={self.patch_size}, order={self.order!r}, fused={self.fused}")

"""FLUX-class transformers widened to a DA-VAE latent: ``DAVAEFluxTransformer2DModel`` and
``expand_flux_transformer``, the zero-init warm start of a pretrained ``FluxTransformer2DModel``.

FLUX works on packed tokens: a latent [B, C, H, W] becomes [B, H/2 * W/2, 4C] (2 x 2 pixels per
token, channel slowest), ``x_embedder`` is ``Linear(4C, hidden)`` and ``proj_out``
``Linear(hidden, 4C)`` in the same order. Widened, both hold 4 (C + D) features in that order
(:class:`~davae_ext.nn.DetailPackedEmbed`, :class:`~davae_ext.nn.DetailProjOut` with
``layout="channel_major"``); a 1024 px image on a DA-VAE (spatial factor 16) is 32 x 32 tokens,
as FLUX sees a 512 px image.
"""

from __future__ import annotations

import inspect

import torch
from diffusers import FluxTransformer2DModel, ModelMixin  # noqa: F401
from diffusers.configuration_utils import register_to_config

from .. import _validate
from ..nn import DetailPackedEmbed, DetailProjOut, set_fused
from ..nn._init import check_channels
from ..nn.packed_embed import PACK, pack_latents, unpack_latents
from ._widen import check_arguments, widen

__all__ = ["DAVAEFluxTransformer2DModel", "expand_flux_transformer", "flux_predict"]
# ModelMixin is imported for diffusers' pipeline loader (see models/sd3.py).

_FLUX_ARGS = [n for n in inspect.signature(FluxTransformer2DModel.__init__).parameters if n != "self"]

class DAVAEFluxTransformer2DModel(FluxTransformer2DModel):
    """``FluxTransformer2DModel`` whose latent has C base + D detail channels.

    ``in_channels`` / ``out_channels`` in the config are packed totals, 4 (C + D) (what
    ``FluxPipeline`` reads: it allocates ``in_channels // 4`` latent channels); ``detail_channels``
    is D, ``channel_order`` the latent layout. ``x_embedder`` takes the packed tokens or, through
    the fused patch-embed kernel, the latent [B, C + D, H, W] itself; every other module and
    state-dict key is FLUX's.
    """

    @register_to_config
    def __init__(
        self,
        patch_size: int = 1,
        in_channels: int = 128,
        out_channels: int | None = None,
        num_layers: int = 19,
        num_single_layers: int = 38,
        attention_head_dim: int = 128,
        num_attention_heads: int = 24,
        joint_attention_dim: int = 4096,
        pooled_projection_dim: int = 768,
        guidance_embeds: bool = False,
        axes_dims_rope: tuple = (16, 56, 56),
        detail_channels: int = 16,
        channel_order: str = "base_first",
        fused: bool = True,
    ):
        owner = "DAVAEFluxTransformer2DModel"
        check_channels(owner, "detail_channels", detail_channels)
        _validate.order_flag(owner, channel_order)
        if patch_size != 1:
            raise ValueError(f"{owner}: 'patch_size' must be 1 (FLUX's; the 2 x 2 packing is the pipeline's), "
                             f"got {patch_size}")
        pp = PACK * PACK
        total_out = out_channels or in_channels
        base_in, base_out = in_channels - pp * detail_channels, total_out - pp * detail_channels
        if base_in <= 0 or base_out <= 0 or base_in % pp or base_out % pp:
            raise ValueError(f"{owner}: in_channels ({in_channels}) and out_channels ({total_out}) are the packed "
                             f"totals {pp} (C + D) and must exceed {pp} x detail_channels ({pp * detail_channels}) "
                             "by a multiple of 4")
        super().__init__(
            patch_size=patch_size, in_channels=base_in, out_channels=base_out, num_layers=num_layers,
            num_single_layers=num_single_layers, attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads, joint_attention_dim=joint_attention_dim,
            pooled_projection_dim=pooled_projection_dim, guidance_embeds=guidance_embeds,
            axes_dims_rope=axes_dims_rope,
        )
        self.register_to_config(in_channels=in_channels, out_channels=out_channels)
        self.out_channels = total_out
        self.x_embedder = DetailPackedEmbed(base_in // pp, detail_channels, self.inner_dim, order=channel_order,
                                            fused=fused)
        self.proj_out = DetailProjOut(self.inner_dim, base_out // pp, detail_channels, PACK, order=channel_order,
                                      fused=fused, layout="channel_major")

    @property
    def base_channels(self) -> int:
        """C, the base latent channels (not packed)."""
        return self.config.in_channels // (PACK * PACK) - self.config.detail_channels

    def set_fused(self, fused: bool) -> None:
        """The fused (one GEMM / kernel) or split (exact step-0) path of both widened layers."""
        set_fused(self, fused)


def expand_flux_transformer(
    transformer: FluxTransformer2DModel,
    detail_channels: int,
    init: str = "zero",
    order: str = "base_first",
    fused: bool = True,
    share_weights: bool = False,
) -> DAVAEFluxTransformer2DModel:
    """Widen a pretrained ``FluxTransformer2DModel`` to C + D latent channels (the warm start).

    Every pretrained weight is kept (cloned, or shared with ``share_weights=True``);
    ``x_embedder`` gets 4 D new input features and ``proj_out`` 4 D new output features, in the
    packed order, initialised by ``init`` ("zero": at step 0 the model is the pretrained one on the
    base channels and predicts 0 for the detail channels; "random"; "repeat_average"). Returns a
    model on the same device and dtype, in train/eval mode as the input.
    """
    owner = "expand_flux_transformer"
    check_arguments(owner, transformer, FluxTransformer2DModel, DAVAEFluxTransformer2DModel, detail_channels, init,
                    order)
    cfg = {k: transformer.config[k] for k in _FLUX_ARGS if k in transformer.config}
    if cfg.get("patch_size", 1) != 1:
        raise ValueError(f"{owner}: only patch_size 1 (FLUX.1's) is supported, got {cfg['patch_size']}")
    pp = PACK * PACK
    base_in = cfg["in_channels"]
    base_out = cfg.get("out_channels") or base_in
    cfg.update(in_channels=base_in + pp * detail_channels, out_channels=base_out + pp * detail_channels)
    widened = {
        "x_embedder": DetailPackedEmbed.from_linear(transformer.x_embedder, detail_channels, init, order, fused),
        "proj_out": DetailProjOut.from_linear(transformer.proj_out, base_out // pp, detail_channels, PACK, init, order,
                                              fused=fused, layout="channel_major"),
    }
    return widen(transformer, DAVAEFluxTransformer2DModel,
                 dict(cfg, detail_channels=detail_channels, channel_order=order, fused=fused), widened, share_weights,
                 owner)


def flux_predict(transformer: FluxTransformer2DModel, latent: torch.Tensor, prompt_embeds: torch.Tensor,
                 pooled: torch.Tensor, sigmas: torch.Tensor, guidance: torch.Tensor | None = None,
                 unwrapped: FluxTransformer2DModel | None = None, unpacked: bool = False) -> torch.Tensor:
    """The velocity a FLUX(-class) transformer predicts for ``latent`` [B, C', h, w] at noise levels
    ``sigmas`` [B] (FLUX's timestep), as a latent of the same shape: packed as ``FluxPipeline``
    packs it, with its RoPE ids (token grid for the image, zeros for the text) and ``guidance``
    [B] for a guidance-distilled model. ``unpacked=True`` hands a widened transformer the latent
    itself, which its fused ``x_embedder`` gathers with the patch-embed kernel instead of a packed
    copy; measured against pack + Linear at FLUX.1's sizes on the CPU it does not win (0.91-1.07x,
    bench/bench_flux.py), so the default packs. ``unwrapped`` is the model itself when
    ``transformer`` wraps it (DistributedDataParallel)."""
    from diffusers import FluxPipeline

    B, _, h, w = latent.shape
    img_ids = FluxPipeline._prepare_latent_image_ids(B, h // PACK, w // PACK, latent.device, latent.dtype)
    txt_ids = torch.zeros(prompt_embeds.shape[1], 3, device=latent.device, dtype=latent.dtype)
    model = unwrapped if unwrapped is not None else transformer
    x_embedder = model.x_embedder
    if unpacked and not (isinstance(x_embedder, DetailPackedEmbed) and x_embedder.fused):
        raise ValueError("flux_predict: unpacked=True needs a widened transformer with a fused x_embedder")
    tokens = latent if unpacked else pack_latents(latent)
    if model.config.guidance_embeds and guidance is None:
        raise ValueError("flux_predict: the transformer is guidance-distilled (guidance_embeds=True); pass 'guidance'")
    out = transformer(tokens, prompt_embeds, pooled, sigmas, img_ids, txt_ids,
                      guidance if model.config.guidance_embeds else None).sample
    return unpack_latents(out, h, w)

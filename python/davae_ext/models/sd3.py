"""The SD3 / SD3.5 transformer widened to a DA-VAE latent (Sec. 4.1): ``DAVAESD3Transformer2DModel``
and ``expand_transformer``, the zero-init warm start of a pretrained ``SD3Transformer2DModel``."""

from __future__ import annotations

import inspect

from diffusers import ModelMixin, SD3Transformer2DModel  # noqa: F401
from diffusers.configuration_utils import register_to_config

from .. import _validate
from ..nn import DetailPatchEmbed, DetailProjOut
from ..nn._init import check_channels
from ._widen import check_arguments, widen

__all__ = ["DAVAESD3Transformer2DModel", "expand_transformer"]
# ModelMixin is imported here because diffusers' pipeline loader looks up its base classes in the
# module a component was saved from (davae_ext.models.sd3) to pick the component's loading method.

_SD3_ARGS = [n for n in inspect.signature(SD3Transformer2DModel.__init__).parameters if n != "self"]


class DAVAESD3Transformer2DModel(SD3Transformer2DModel):
    """``SD3Transformer2DModel`` whose latent has C base + D detail channels.

    ``in_channels`` / ``out_channels`` in the config are the totals C + D (what the pipeline
    allocates); ``detail_channels`` is D and ``channel_order`` the latent layout ("base_first",
    the paper's, or "detail_first", the official SD3 checkpoints'). ``pos_embed`` is a
    :class:`~davae_ext.nn.DetailPatchEmbed` and ``proj_out`` a :class:`~davae_ext.nn.DetailProjOut`;
    every other module and state-dict key is SD3's, so LoRA targets, ``save_pretrained`` /
    ``from_pretrained`` and checkpoint tools work as for the stock model.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 128,
        patch_size: int = 2,
        in_channels: int = 32,
        num_layers: int = 18,
        attention_head_dim: int = 64,
        num_attention_heads: int = 18,
        joint_attention_dim: int = 4096,
        caption_projection_dim: int = 1152,
        pooled_projection_dim: int = 2048,
        out_channels: int = 32,
        pos_embed_max_size: int = 96,
        dual_attention_layers: tuple = (),
        qk_norm: str | None = None,
        detail_channels: int = 16,
        channel_order: str = "base_first",
        fused: bool = True,
    ):
        check_channels("DAVAESD3Transformer2DModel", "detail_channels", detail_channels)
        _validate.order_flag("DAVAESD3Transformer2DModel", channel_order)
        total_out = out_channels if out_channels is not None else in_channels
        base_in, base_out = in_channels - detail_channels, total_out - detail_channels
        if base_in <= 0 or base_out <= 0:
            raise ValueError(
                f"DAVAESD3Transformer2DModel: in_channels ({in_channels}) and out_channels ({total_out}) are the "
                f"base + detail totals and must exceed detail_channels ({detail_channels})"
            )
        # The stock constructor with the base channel counts. It registers those in the config;
        # the totals, which this class's own registration wrote before, are written back after.
        super().__init__(
            sample_size=sample_size, patch_size=patch_size, in_channels=base_in, num_layers=num_layers,
            attention_head_dim=attention_head_dim, num_attention_heads=num_attention_heads,
            joint_attention_dim=joint_attention_dim, caption_projection_dim=caption_projection_dim,
            pooled_projection_dim=pooled_projection_dim, out_channels=base_out, pos_embed_max_size=pos_embed_max_size,
            dual_attention_layers=dual_attention_layers, qk_norm=qk_norm,
        )
        self.register_to_config(in_channels=in_channels, out_channels=out_channels)
        self.out_channels = total_out
        self.pos_embed = DetailPatchEmbed(
            height=sample_size, width=sample_size, patch_size=patch_size, base_channels=base_in,
            detail_channels=detail_channels, embed_dim=self.inner_dim, pos_embed_max_size=pos_embed_max_size,
            order=channel_order, fused=fused,
        )
        self.proj_out = DetailProjOut(self.inner_dim, base_out, detail_channels, patch_size, order=channel_order,
                                      fused=fused)

    @property
    def base_channels(self) -> int:
        return self.config.in_channels - self.config.detail_channels


def expand_transformer(
    transformer: SD3Transformer2DModel,
    detail_channels: int,
    init: str = "zero",
    order: str = "base_first",
    fused: bool = True,
    share_weights: bool = False,
) -> DAVAESD3Transformer2DModel:
    """Widen a pretrained ``SD3Transformer2DModel`` to C + D latent channels (the warm start).

    Every pretrained weight is kept (cloned, or shared with ``share_weights=True`` to save memory
    on large models); ``pos_embed.proj`` gets D new input channels and ``proj_out`` D new output
    channels per patch position, initialised by ``init``: "zero" (the paper's: the model equals
    the pretrained one at step 0 on the base channels and predicts 0 for the detail channels),
    "random" (the paper's "w/o zero-init" ablation) or "repeat_average". Returns a model on the
    same device and dtype, in train/eval mode as the input.
    """
    check_arguments("expand_transformer", transformer, SD3Transformer2DModel, DAVAESD3Transformer2DModel,
                    detail_channels, init, order)

    cfg = {k: transformer.config[k] for k in _SD3_ARGS if k in transformer.config}
    base_in = cfg["in_channels"]
    base_out = cfg.get("out_channels") or base_in
    cfg.update(in_channels=base_in + detail_channels, out_channels=base_out + detail_channels)
    widened = {
        "pos_embed": DetailPatchEmbed.from_patch_embed(transformer.pos_embed, detail_channels, init, order, fused),
        "proj_out": DetailProjOut.from_linear(transformer.proj_out, base_out, detail_channels, cfg["patch_size"], init,
                                              order, fused=fused),
    }
    return widen(transformer, DAVAESD3Transformer2DModel,
                 dict(cfg, detail_channels=detail_channels, channel_order=order, fused=fused), widened, share_weights,
                 "expand_transformer")

"""Class-conditional DiTs widened to a DA-VAE latent (Sec. 4.1, the paper's ImageNet system).

Two layouts:

- diffusers' ``DiTTransformer2DModel`` (``pos_embed`` a ``PatchEmbed``, head ``proj_out_2``):
  :func:`expand_dit` returns a :class:`DAVAEDiTTransformer2DModel`, which saves and loads with
  ``save_pretrained`` / ``from_pretrained`` like the stock model;
- the DiT / SiT / LightningDiT layout most research code uses (``x_embedder.proj`` a ``Conv2d``,
  ``final_layer.linear`` a ``Linear``, unpatchify in ``(p, p, C)`` order): :func:`expand_dit_modules`
  widens the two modules in place, given their attribute paths. The widened state dict is that of
  the same class built with ``in_channels = C + D``.

In both, the new input channels of the patch embedder and the new output rows of the head start
as ``init`` ("zero": at step 0 the base-channel prediction is the pretrained model's and the
detail prediction 0). A learned-sigma head (``out = 2 C`` per patch position: the prediction,
then the variance interpolation) is widened per half: per patch position ``[prediction (C + D),
variance (C + D)]``, each half in ``order``, which is where DiT's ``chunk(2, dim=1)`` and
diffusers' ``split(C + D, dim=1)`` look. The variance half's detail rows start as ``init`` too;
flow-matching fine-tuning (SiT's convention, and :mod:`davae_ext.training.finetune_dit`) reads
only the prediction half, so the variance half keeps its pretrained base rows and zero detail rows.
"""

from __future__ import annotations

import inspect
from typing import Optional, Sequence

from diffusers import DiTTransformer2DModel, ModelMixin  # noqa: F401  (read by the pipeline loader)
from diffusers.configuration_utils import register_to_config
from torch import nn

from .. import _validate
from ..nn import DetailPatchEmbed, DetailProjOut
from ..nn._init import check_channels, check_init
from ._widen import check_arguments, widen

__all__ = ["DAVAEDiTTransformer2DModel", "expand_dit", "expand_dit_modules", "head_groups"]
# ModelMixin is imported for diffusers' pipeline loader (see models/sd3.py).

_DIT_ARGS = [n for n in inspect.signature(DiTTransformer2DModel.__init__).parameters if n != "self"]


def head_groups(out_features: int, patch_size: int, base_channels: int, owner: str) -> int:
    """1 for a head predicting p * p * C values per token, 2 for a learned-sigma head (p * p * 2C);
    otherwise a ValueError saying the head does not match the latent."""
    pp = patch_size * patch_size
    for groups in (1, 2):
        if out_features == pp * groups * base_channels:
            return groups
    raise ValueError(
        f"{owner}: the output head does not match the latent: it has {out_features} output features; a latent of "
        f"C={base_channels} channels with patch size {patch_size} needs p*p*C = {pp * base_channels} or, with a "
        f"learned sigma, p*p*2C = {2 * pp * base_channels}"
    )


def check_multiple(owner: str, detail_channels: int, base_channels: int) -> None:
    if detail_channels % base_channels:
        raise ValueError(f"{owner}: 'detail_channels' ({detail_channels}) must be a multiple of the model's "
                         f"{base_channels} latent channels (a DA-VAE's alignment averages groups of D / C)")


class DAVAEDiTTransformer2DModel(DiTTransformer2DModel):
    """``DiTTransformer2DModel`` whose latent has C base + D detail channels.

    ``in_channels`` is the total C + D and ``out_channels`` the total of the head (C + D, or
    2 (C + D) with a learned sigma); ``detail_channels`` is D and ``channel_order`` the latent
    layout. ``pos_embed`` is a :class:`~davae_ext.nn.DetailPatchEmbed` and ``proj_out_2`` a
    :class:`~davae_ext.nn.DetailProjOut`; every other module and key is the stock model's."""

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 72,
        in_channels: int = 16,
        out_channels: Optional[int] = None,
        num_layers: int = 28,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        attention_bias: bool = True,
        sample_size: int = 32,
        patch_size: int = 2,
        activation_fn: str = "gelu-approximate",
        num_embeds_ada_norm: Optional[int] = 1000,
        upcast_attention: bool = False,
        norm_type: str = "ada_norm_zero",
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-5,
        detail_channels: int = 12,
        channel_order: str = "base_first",
        fused: bool = True,
    ):
        owner = "DAVAEDiTTransformer2DModel"
        check_channels(owner, "detail_channels", detail_channels)
        _validate.order_flag(owner, channel_order)
        total_out = in_channels if out_channels is None else out_channels
        base_in = in_channels - detail_channels
        groups, rest = divmod(total_out, in_channels)
        if base_in <= 0 or rest or groups not in (1, 2):
            raise ValueError(
                f"{owner}: in_channels ({in_channels}) is the base + detail total and must exceed detail_channels "
                f"({detail_channels}); out_channels ({total_out}) must be in_channels or 2 x in_channels (learned sigma)"
            )
        super().__init__(
            num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim, in_channels=base_in,
            out_channels=groups * base_in, num_layers=num_layers, dropout=dropout, norm_num_groups=norm_num_groups,
            attention_bias=attention_bias, sample_size=sample_size, patch_size=patch_size,
            activation_fn=activation_fn, num_embeds_ada_norm=num_embeds_ada_norm, upcast_attention=upcast_attention,
            norm_type=norm_type, norm_elementwise_affine=norm_elementwise_affine, norm_eps=norm_eps,
        )
        # The stock constructor registered the base counts; the totals go back into the config.
        self.register_to_config(in_channels=in_channels, out_channels=out_channels)
        self.out_channels = total_out
        self.pos_embed = DetailPatchEmbed(
            height=sample_size, width=sample_size, patch_size=patch_size, base_channels=base_in,
            detail_channels=detail_channels, embed_dim=self.inner_dim, order=channel_order, fused=fused,
        )
        self.proj_out_2 = DetailProjOut(self.inner_dim, base_in, detail_channels, patch_size, order=channel_order,
                                        groups=groups, fused=fused)

    @property
    def base_channels(self) -> int:
        return self.config.in_channels - self.config.detail_channels

    @property
    def learned_sigma(self) -> bool:
        return self.out_channels == 2 * self.config.in_channels


def expand_dit(
    transformer: DiTTransformer2DModel,
    detail_channels: int,
    init: str = "zero",
    order: str = "base_first",
    fused: bool = True,
    share_weights: bool = False,
) -> DAVAEDiTTransformer2DModel:
    """Widen a pretrained diffusers ``DiTTransformer2DModel`` to C + D latent channels (the warm
    start). Every pretrained weight is kept (cloned, or shared with ``share_weights``); the patch
    embedder gets D new input channels and ``proj_out_2`` D new output channels per patch position
    (and per half of a learned-sigma head), initialised by ``init`` ("zero", "random": the paper's
    "w/o zero-init" ablation, or "repeat_average"). Returns a model on the same device and dtype,
    in train / eval mode as the input."""
    owner = "expand_dit"
    check_arguments(owner, transformer, DiTTransformer2DModel, DAVAEDiTTransformer2DModel, detail_channels, init, order)

    cfg = {k: transformer.config[k] for k in _DIT_ARGS if k in transformer.config}
    C, p = cfg["in_channels"], cfg["patch_size"]
    check_multiple(owner, detail_channels, C)
    groups = head_groups(transformer.proj_out_2.out_features, p, C, owner)
    cfg.update(in_channels=C + detail_channels,
               out_channels=None if cfg.get("out_channels") is None else groups * (C + detail_channels))
    widened = {
        "pos_embed": DetailPatchEmbed.from_patch_embed(transformer.pos_embed, detail_channels, init, order, fused),
        "proj_out_2": DetailProjOut.from_linear(transformer.proj_out_2, C, detail_channels, p, init, order, groups,
                                                fused),
    }
    return widen(transformer, DAVAEDiTTransformer2DModel,
                 dict(cfg, detail_channels=detail_channels, channel_order=order, fused=fused), widened, share_weights,
                 owner)


def _parent(model: nn.Module, path: str, owner: str) -> tuple[nn.Module, str]:
    parent_path, _, name = path.rpartition(".")
    try:
        parent = model.get_submodule(parent_path) if parent_path else model
        getattr(parent, name)
    except AttributeError:
        raise ValueError(f"{owner}: the model has no module at {path!r}") from None
    return parent, name


def expand_dit_modules(
    model: nn.Module,
    detail_channels: int,
    embedder: str = "x_embedder",
    head: str = "final_layer.linear",
    init: str = "zero",
    order: str = "base_first",
    fused: bool = True,
    channel_attributes: Sequence[str] = ("in_channels", "out_channels"),
) -> nn.Module:
    """Widen, in place, a DiT / SiT / LightningDiT-layout model for D detail channels; returns it.

    ``embedder`` is the attribute path of the patch embedder: a module with a ``proj`` Conv2d
    whose output is flattened to tokens (timm's ``PatchEmbed``, without a norm), replaced by a
    :class:`~davae_ext.nn.DetailPatchEmbed` without a positional table (``fused`` as given), or the
    Conv2d itself, replaced by the widened Conv2d. ``head`` is the output Linear
    (``p * p * C`` or, learned sigma, ``p * p * 2C`` features, unpatchified in ``(p, p, C)``
    order), replaced by a :class:`~davae_ext.nn.DetailProjOut`. The integer attributes named in
    ``channel_attributes`` that the model has (research DiTs read ``self.out_channels`` to
    unpatchify) are set to the new totals. Raises ValueError when the head does not match the
    latent or D is not a multiple of C."""
    owner = "expand_dit_modules"
    check_channels(owner, "detail_channels", detail_channels)
    check_init(owner, init)
    _validate.order_flag(owner, order)
    emb_parent, emb_name = _parent(model, embedder, owner)
    head_parent, head_name = _parent(model, head, owner)
    emb, linear = getattr(emb_parent, emb_name), getattr(head_parent, head_name)
    conv = emb if isinstance(emb, nn.Conv2d) else getattr(emb, "proj", None)
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"{owner}: {embedder!r} must be a Conv2d or have a Conv2d 'proj', got {type(emb).__name__}")
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"{owner}: {head!r} must be an nn.Linear, got {type(linear).__name__}")
    C, p = conv.in_channels, conv.kernel_size[0]
    check_multiple(owner, detail_channels, C)
    groups = head_groups(linear.out_features, p, C, owner)
    if conv is not emb:
        norm = getattr(emb, "norm", None)
        if not (norm is None or isinstance(norm, nn.Identity)) or not getattr(emb, "flatten", True):
            raise NotImplementedError(f"{owner}: {embedder!r} has a norm or keeps the spatial layout; pass the path of "
                                      "its Conv2d instead (the plain widened convolution)")
    widened = DetailPatchEmbed.from_patch_embed(conv if conv is emb else emb, detail_channels, init, order, fused)
    setattr(emb_parent, emb_name, widened.proj if conv is emb else widened)
    setattr(head_parent, head_name, DetailProjOut.from_linear(linear, C, detail_channels, p, init, order, groups,
                                                                          fused))
    totals = {"in_channels": C + detail_channels, "out_channels": groups * (C + detail_channels)}
    for name in channel_attributes:
        if isinstance(getattr(model, name, None), int) and name in totals:
            setattr(model, name, totals[name])
    return model

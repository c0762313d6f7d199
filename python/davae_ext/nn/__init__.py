"""Drop-in ``torch.nn`` modules for DA-VAE latents and the widened DiT input / output layers.

The modules run :mod:`davae_ext.ops`: the compiled kernels, or their pure-PyTorch reference
under ``davae_ext.use_backend("reference")`` (or where no kernel exists). ``DetailPatchEmbed``
also takes ``fused=False``, which computes differently: two convolutions, one per part, the
pretrained ``PatchEmbed``'s arithmetic bit for bit at a zero detail slice; ``DetailPackedEmbed``
and ``DetailProjOut(layout="channel_major")`` are the same for FLUX's packed tokens.
"""

from torch import nn

from .latent import DetailAlignLoss, DetailProjection, LatentConcat
from .packed_embed import DetailPackedEmbed, pack_latents, unpack_latents
from .patch_embed import DetailPatchEmbed
from .proj_out import DetailProjOut


def set_fused(model: nn.Module, fused: bool) -> None:
    """Every widened layer in ``model`` (``DetailPatchEmbed``, ``DetailPackedEmbed``,
    ``DetailProjOut``) on the fused path, or on the split one (the pretrained arithmetic at a zero
    detail slice)."""
    for module in model.modules():
        if isinstance(module, (DetailPatchEmbed, DetailPackedEmbed, DetailProjOut)):
            module.fused = fused


__all__ = ["LatentConcat", "DetailProjection", "DetailAlignLoss", "DetailPatchEmbed", "DetailProjOut", "DetailPackedEmbed",
           "pack_latents", "unpack_latents", "set_fused"]

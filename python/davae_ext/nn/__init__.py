"""Drop-in ``torch.nn`` modules for DA-VAE latents and the widened DiT input / output layers.

Each module that wraps a fused op takes ``fused: bool``: True runs :mod:`davae_ext.ops` (the
compiled kernels, or their reference when unavailable), False runs plain PyTorch. Both give the
same results to floating-point tolerance.
"""

from .latent import DetailAlignLoss, DetailProjection, LatentConcat
from .patch_embed import DetailPatchEmbed
from .proj_out import DetailProjOut

__all__ = ["LatentConcat", "DetailProjection", "DetailAlignLoss", "DetailPatchEmbed", "DetailProjOut"]

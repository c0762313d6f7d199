"""Sampling a FLUX-class model at twice the resolution with the same tokens:
``DAVAEFluxPipeline``, diffusers' ``FluxPipeline`` holding a widened transformer
(:class:`~davae_ext.models.flux.DAVAEFluxTransformer2DModel`) and a :class:`~davae_ext.DAVAE`.

Everything but the decode is diffusers' code path: the text encoders, the guidance embedding of a
guidance-distilled model (``guidance_scale``), true CFG (``true_cfg_scale`` with a negative
prompt), the resolution-dependent timestep shift (from the token count), RoPE ids from the token
grid, generators and callbacks. Latents are C + D channels on the DA-VAE grid (spatial factor 16
on FLUX's f8 VAE), packed 2 x 2 per token as FLUX packs them; on decode they are unpacked, the
detail slice de-normalised with the DA-VAE's statistics and the DA-VAE decoder maps them to the
image. ``output_type="latent"`` returns the packed normalised latent, as ``FluxPipeline`` does
(:meth:`DAVAEFluxPipeline.unpack` gives the [B, C + D, h, w] one).
"""

from __future__ import annotations

from typing import Optional

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from ..nn.packed_embed import PACK, unpack_latents
from .davae import DAVAE
from .flux import DAVAEFluxTransformer2DModel
from .pipeline import _CALL_DEFAULTS, DAVAEPipelineMixin

__all__ = ["DAVAEFluxPipeline"]


class DAVAEFluxPipeline(DAVAEPipelineMixin, FluxPipeline):
    """``height`` / ``width`` are the output image's, multiples of twice the DA-VAE's spatial
    factor (32 on FLUX's VAE); the default is 1024 px (a 32 x 32 token grid). ``sampling_defaults``
    may also hold ``max_sequence_length``, the T5 length the model was fine-tuned with."""

    call_defaults = {**_CALL_DEFAULTS, "max_sequence_length": "max_sequence_length"}

    def __init__(self, scheduler: FlowMatchEulerDiscreteScheduler, vae: DAVAE, text_encoder, tokenizer,
                 text_encoder_2, tokenizer_2, transformer: DAVAEFluxTransformer2DModel, image_encoder=None,
                 feature_extractor=None):
        DiffusionPipeline.__init__(self)
        self.check_components("DAVAEFluxPipeline", vae, transformer, DAVAEFluxTransformer2DModel,
                              transformer.config.in_channels // (PACK * PACK))
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                              tokenizer_2=tokenizer_2, transformer=transformer, scheduler=scheduler,
                              image_encoder=image_encoder, feature_extractor=feature_extractor)
        self.vae_scale_factor = vae.spatial_factor
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor * PACK)
        self.tokenizer_max_length = tokenizer.model_max_length if tokenizer is not None else 77
        self.default_sample_size = 1024 // self.vae_scale_factor
        self.patch_size = PACK  # latent pixels per token side

    @classmethod
    def from_flux_pipeline(cls, pipe: FluxPipeline, transformer: DAVAEFluxTransformer2DModel,
                           davae: DAVAE) -> "DAVAEFluxPipeline":
        """The base pipeline's text encoders, tokenizers and scheduler with the DA-VAE parts."""
        return cls(scheduler=pipe.scheduler, vae=davae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                   text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2, transformer=transformer)

    def unpack(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed tokens of a ``height`` x ``width`` image -> the latent [B, C + D, h, w]."""
        f = self.vae_scale_factor
        return unpack_latents(latents, height // f, width // f)

    @torch.no_grad()
    def __call__(self, prompt=None, *args, height: Optional[int] = None, width: Optional[int] = None,
                 output_type: str = "pil", return_dict: bool = True, **kwargs):
        return self.run_and_decode(prompt, args, kwargs, height, width, output_type, return_dict, FluxPipelineOutput,
                                   self.unpack)

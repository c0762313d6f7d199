"""Sampling at ``scale`` times the resolution with the same tokens (paper Sec. 5):
``DAVAEStableDiffusion3Pipeline``, diffusers' ``StableDiffusion3Pipeline`` holding an expanded
transformer (:class:`~davae_ext.models.sd3.DAVAESD3Transformer2DModel`) and a :class:`~davae_ext.DAVAE`.

Latents have C + D channels on the DA-VAE grid (spatial factor ``scale * f``); base and detail
channels are denoised jointly; on decode only the detail slice is de-normalised (the DA-VAE's
own statistics), then the DA-VAE decoder maps the raw latent to the image. Everything else
(classifier-free guidance, negative prompts, ``prompt_embeds``, generators, the scheduler,
callbacks, ``output_type``) is diffusers' own code path.

``sampling_defaults`` (saved as ``sampling_defaults.json`` beside ``model_index.json``) holds the
number of steps, guidance scale and negative prompt the pipeline was trained to be sampled with;
a call uses them for any of the three it is not given.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput

from .davae import DAVAE
from .sd3 import DAVAESD3Transformer2DModel


SAMPLING_DEFAULTS_FILE = "sampling_defaults.json"
_CALL_DEFAULTS = {"steps": "num_inference_steps", "guidance": "guidance_scale", "negative_prompt": "negative_prompt"}


class DAVAEPipelineMixin:
    """What the DA-VAE text-to-image pipelines (SD3, FLUX) share: the component checks, the
    ``sampling_defaults`` side file, the call defaults and the DA-VAE decode."""

    sampling_defaults: dict = {}
    call_defaults = _CALL_DEFAULTS  # sampling_defaults key -> the call's keyword

    @staticmethod
    def check_components(owner: str, vae, transformer, transformer_cls, latent_channels: int) -> None:
        """``vae`` is a DA-VAE, ``transformer`` a ``transformer_cls`` whose ``latent_channels`` and
        channel order are the DA-VAE's."""
        if not isinstance(vae, DAVAE):
            raise TypeError(f"{owner}: 'vae' must be a davae_ext.DAVAE, got {type(vae).__name__}")
        if not isinstance(transformer, transformer_cls):
            raise TypeError(f"{owner}: 'transformer' must be a {transformer_cls.__name__} (see davae_ext.models), "
                            f"got {type(transformer).__name__}")
        total = vae.base_channels + vae.detail_channels
        if latent_channels != total or transformer.config.detail_channels != vae.detail_channels:
            raise ValueError(f"{owner}: the transformer has {latent_channels} latent channels "
                             f"({transformer.config.detail_channels} detail); the DA-VAE has {total} "
                             f"({vae.detail_channels} detail)")
        if transformer.config.channel_order != vae.config.order:
            raise ValueError(f"{owner}: channel order differs: transformer {transformer.config.channel_order!r}, "
                             f"DA-VAE {vae.config.order!r}")

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.sampling_defaults:
            with open(os.path.join(save_directory, SAMPLING_DEFAULTS_FILE), "w") as f:
                json.dump(self.sampling_defaults, f, indent=1)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        path = os.path.join(str(pretrained_model_name_or_path), SAMPLING_DEFAULTS_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                pipe.sampling_defaults = json.load(f)
        return pipe

    def with_call_defaults(self, args: tuple, kwargs: dict) -> dict:
        """``kwargs`` with the stored steps, guidance and negative prompt where a call gives none."""
        if not args:  # positional arguments after the prompt would shadow these keywords
            for key, name in self.call_defaults.items():
                given = name in kwargs or (key == "negative_prompt" and "negative_prompt_embeds" in kwargs)
                if not given and self.sampling_defaults.get(key):
                    kwargs[name] = self.sampling_defaults[key]
        return kwargs

    def check_size(self, height: int, width: int, patch: int) -> None:
        multiple = self.vae_scale_factor * patch
        if height % multiple or width % multiple:
            raise ValueError(f"{type(self).__name__}: height and width must be multiples of {multiple} "
                             f"(DA-VAE factor {self.vae_scale_factor} x patch size {patch}), got {height} x {width}")

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised C + D latent [B, C + D, h, w] -> image in [-1, 1] (unclamped)."""
        raw = self.vae.denormalize_latents(latents.to(self.vae.dtype))
        return self.vae.decode(raw).sample

    def run_and_decode(self, prompt, args: tuple, kwargs: dict, height: Optional[int], width: Optional[int],
                       output_type: str, return_dict: bool, output_cls, to_latent=None):
        """The base pipeline's call up to the latent (the default size, checked; the stored call
        defaults), then the DA-VAE decode of ``to_latent(latents, height, width)`` (default: the
        latents as they are) unless ``output_type="latent"``."""
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        self.check_size(height, width, self.patch_size)
        kwargs = self.with_call_defaults(args, kwargs)
        latents = super().__call__(prompt, *args, height=height, width=width, output_type="latent", return_dict=True,
                                   **kwargs).images
        if output_type == "latent":
            images = latents
        else:
            latents = to_latent(latents, height, width) if to_latent else latents
            images = self.image_processor.postprocess(self.decode_latents(latents), output_type=output_type)
        self.maybe_free_model_hooks()
        return output_cls(images=images) if return_dict else (images,)


class DAVAEStableDiffusion3Pipeline(DAVAEPipelineMixin, StableDiffusion3Pipeline):
    """``height`` / ``width`` are the output image's; they must be multiples of the DA-VAE's
    spatial factor times the transformer's patch size. ``output_type="latent"`` returns the
    normalised C + D latent the transformer produced."""

    def __init__(self, transformer: DAVAESD3Transformer2DModel, scheduler: FlowMatchEulerDiscreteScheduler,
                 vae: DAVAE, text_encoder, tokenizer, text_encoder_2, tokenizer_2, text_encoder_3, tokenizer_3,
                 image_encoder=None, feature_extractor=None):
        # The text encoders and tokenizers have no defaults (diffusers treats parameters with a
        # default as options, not components); pass None for any of them to use prompt_embeds.
        DiffusionPipeline.__init__(self)
        self.check_components("DAVAEStableDiffusion3Pipeline", vae, transformer, DAVAESD3Transformer2DModel,
                              transformer.config.in_channels)
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                              text_encoder_3=text_encoder_3, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                              tokenizer_3=tokenizer_3, transformer=transformer, scheduler=scheduler,
                              image_encoder=image_encoder, feature_extractor=feature_extractor)
        self.vae_scale_factor = vae.spatial_factor
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.tokenizer_max_length = tokenizer.model_max_length if tokenizer is not None else 77
        self.default_sample_size = transformer.config.sample_size
        self.patch_size = transformer.config.patch_size

    @classmethod
    def from_sd3_pipeline(cls, pipe: StableDiffusion3Pipeline, transformer: DAVAESD3Transformer2DModel,
                          davae: DAVAE) -> "DAVAEStableDiffusion3Pipeline":
        """The base pipeline's text encoders, tokenizers and scheduler with the DA-VAE parts."""
        return cls(transformer=transformer, scheduler=pipe.scheduler, vae=davae, text_encoder=pipe.text_encoder,
                   tokenizer=pipe.tokenizer, text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2,
                   text_encoder_3=pipe.text_encoder_3, tokenizer_3=pipe.tokenizer_3)

    @torch.no_grad()
    def __call__(self, prompt=None, *args, height: Optional[int] = None, width: Optional[int] = None,
                 output_type: str = "pil", return_dict: bool = True, **kwargs):
        return self.run_and_decode(prompt, args, kwargs, height, width, output_type, return_dict,
                                   StableDiffusion3PipelineOutput)

"""Class-conditional sampling with a DiT on a DA-VAE latent (the paper's ImageNet system, Sec. 5):
:class:`DAVAEDiTPipeline`.

The same pipeline serves the native model (a ``DiTTransformer2DModel`` on a plain
``AutoencoderKL``) and the widened one (:class:`~davae_ext.models.dit.DAVAEDiTTransformer2DModel`
on a :class:`~davae_ext.DAVAE`), so the two can be compared at the same output resolution.

Sampler: Euler on the rectified-flow ODE ``dx/dsigma = v``, with ``v = eps - x0`` the model's
prediction at timestep ``1000 sigma`` (``x_sigma = (1 - sigma) x0 + sigma eps``), from sigma = 1
(noise) to 0 on the grid ``sigma = 1 - t'``, ``t' = s t / (1 + (s - 1) t)`` for ``t`` uniform in
[0, 1] (the ImageNet code's time warp, ``s = time_warp``; 1 = uniform). Classifier-free guidance
``v_u + g (v_c - v_u)`` on every channel, applied where ``t' >= cfg_start`` (the ImageNet code:
4.0 from 0.2); the unconditional branch uses the null class ``num_embeds_ada_norm``. A
learned-sigma model's variance half is not used.

Side files beside ``model_index.json`` (read by ``from_pretrained``):
``sampling_defaults.json`` (steps, guidance, cfg_start, time_warp used when a call does not give
them), ``classes.json`` (class names) and, for a native model, ``latent_stats.json`` (the
per-channel mean and std its latents were standardised with).
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence, Union

import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput

from .davae import DAVAE
from .dit import DAVAEDiTTransformer2DModel

FALLBACK_SAMPLING = {"steps": 50, "guidance": 4.0, "cfg_start": 0.2, "time_warp": 0.3}
SIDE_FILES = {"sampling_defaults": "sampling_defaults.json", "classes": "classes.json",
              "latent_stats": "latent_stats.json"}


def sigma_grid(steps: int, time_warp: float = 1.0, device=None) -> torch.Tensor:
    """``steps + 1`` noise levels from 1 to 0: ``1 - t'``, ``t' = s t / (1 + (s - 1) t)`` on a
    uniform ``t`` grid (``s = time_warp``; s < 1 spends more steps near the noise end)."""
    if steps < 1 or time_warp <= 0:
        raise ValueError(f"sigma_grid: need steps >= 1 and time_warp > 0, got {steps} and {time_warp}")
    t = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64, device=device)
    warped = time_warp * t / (1.0 + (time_warp - 1.0) * t)
    return (1.0 - warped).float()


class DAVAEDiTPipeline(DiffusionPipeline):
    """``transformer``: a (widened) ``DiTTransformer2DModel``; ``vae``: the matching
    :class:`~davae_ext.DAVAE` or, for a native model, an ``AutoencoderKL``. ``height`` / ``width``
    are the output image's (default: the transformer's sample size times the VAE's factor)."""

    model_cpu_offload_seq = "transformer->vae"

    def __init__(self, transformer: DiTTransformer2DModel, vae: Union[DAVAE, AutoencoderKL]):
        super().__init__()
        widened = isinstance(transformer, DAVAEDiTTransformer2DModel)
        if widened != isinstance(vae, DAVAE) or not isinstance(vae, (DAVAE, AutoencoderKL)):
            raise TypeError("DAVAEDiTPipeline: a DAVAEDiTTransformer2DModel needs a DAVAE and a DiTTransformer2DModel an "
                            f"AutoencoderKL; got {type(transformer).__name__} and {type(vae).__name__}")
        channels = vae.base_channels + vae.detail_channels if widened else vae.config.latent_channels
        if transformer.config.in_channels != channels:
            raise ValueError(f"DAVAEDiTPipeline: the transformer has {transformer.config.in_channels} latent channels, "
                             f"the VAE {channels}")
        if widened and transformer.config.channel_order != vae.config.order:
            raise ValueError(f"DAVAEDiTPipeline: channel order differs: transformer {transformer.config.channel_order!r}, "
                             f"DA-VAE {vae.config.order!r}")
        self.register_modules(transformer=transformer, vae=vae)
        self.vae_scale_factor = vae.spatial_factor if widened else 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.sampling_defaults: dict = {}
        self.classes: list = []
        self.latent_stats: dict = {}

    # -- side files --------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        for attr, name in SIDE_FILES.items():
            if getattr(self, attr):
                with open(os.path.join(save_directory, name), "w") as f:
                    json.dump(getattr(self, attr), f, indent=1)

    def read_side_files(self, folder) -> None:
        """The side files of a pipeline folder, those that exist."""
        for attr, name in SIDE_FILES.items():
            path = os.path.join(str(folder), name)
            if os.path.isfile(path):
                with open(path) as f:
                    setattr(self, attr, json.load(f))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        pipe.read_side_files(pretrained_model_name_or_path)
        return pipe

    # -- latents -------------------------------------------------------------------------------------
    @property
    def null_class(self) -> int:
        return self.transformer.config.num_embeds_ada_norm

    @property
    def latent_channels(self) -> int:
        return self.transformer.config.in_channels

    def _stats(self, like: torch.Tensor):
        mean = torch.tensor(self.latent_stats["mean"], dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        std = torch.tensor(self.latent_stats["std"], dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        return mean, std

    @torch.no_grad()
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the latent the transformer sees (native VAE: posterior mean, the
        VAE's shift / scale, then ``latent_stats``; DA-VAE: :meth:`DAVAE.diffusion_latents`)."""
        images = images.to(self.vae.device, self.vae.dtype)
        if isinstance(self.vae, DAVAE):
            return self.vae.diffusion_latents(images)
        z = self.vae.encode(images).latent_dist.mean
        z = (z - (self.vae.config.shift_factor or 0.0)) * (self.vae.config.scaling_factor or 1.0)
        if self.latent_stats:
            mean, std = self._stats(z)
            z = (z - mean) / std
        return z

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The transformer's latent -> images in [-1, 1] (unclamped)."""
        latents = latents.to(self.vae.dtype)
        if isinstance(self.vae, DAVAE):
            return self.vae.decode(self.vae.denormalize_latents(latents)).sample
        if self.latent_stats:
            mean, std = self._stats(latents)
            latents = latents * std + mean
        latents = latents / (self.vae.config.scaling_factor or 1.0) + (self.vae.config.shift_factor or 0.0)
        return self.vae.decode(latents).sample

    def velocity(self, latents: torch.Tensor, sigma: float, labels: torch.Tensor) -> torch.Tensor:
        """The prediction half of the transformer's output at noise level ``sigma``."""
        t = torch.full((latents.shape[0],), 1000.0 * sigma, device=latents.device, dtype=latents.dtype)
        out = self.transformer(latents, timestep=t, class_labels=labels).sample
        return out[:, : self.latent_channels]

    # -- sampling --------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        class_labels: Union[int, Sequence[int], torch.Tensor],
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        cfg_start: Optional[float] = None,
        time_warp: Optional[float] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        generator: Optional[Union[torch.Generator, list]] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Images of ``class_labels``; settings not given come from ``sampling_defaults`` (the
        training recipe's), else :data:`FALLBACK_SAMPLING`. ``output_type``: "pil", "np", "pt"
        (in [0, 1]) or "latent" (the transformer's latent)."""
        settings = {k: self.sampling_defaults.get(k, v) for k, v in FALLBACK_SAMPLING.items()}
        for key, value in (("steps", num_inference_steps), ("guidance", guidance_scale), ("cfg_start", cfg_start),
                           ("time_warp", time_warp)):
            if value is not None:
                settings[key] = value
        labels = torch.as_tensor([class_labels] if isinstance(class_labels, int) else class_labels,
                                 dtype=torch.long).flatten()
        if labels.numel() == 0 or labels.min() < 0 or labels.max() >= self.null_class:
            raise ValueError(f"DAVAEDiTPipeline: 'class_labels' must be in [0, {self.null_class}), got {labels.tolist()}")
        factor = self.vae_scale_factor * self.transformer.config.patch_size
        height = height or self.transformer.config.sample_size * self.vae_scale_factor
        width = width or height
        if height % factor or width % factor:
            raise ValueError(f"DAVAEDiTPipeline: height and width must be multiples of {factor} (VAE factor "
                             f"{self.vae_scale_factor} x patch size {self.transformer.config.patch_size}), got "
                             f"{height} x {width}")
        device, dtype = self._execution_device, self.transformer.dtype
        shape = (len(labels), self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            from diffusers.utils.torch_utils import randn_tensor

            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"DAVAEDiTPipeline: 'latents' must have shape {list(shape)}, got {list(latents.shape)}")
        latents = latents.to(device, dtype)
        labels = labels.to(device)
        null = torch.full_like(labels, self.null_class)
        sigmas = sigma_grid(int(settings["steps"]), float(settings["time_warp"])).tolist()
        g = float(settings["guidance"])
        for i in self.progress_bar(range(len(sigmas) - 1)):
            s, s_next = sigmas[i], sigmas[i + 1]
            guided = g != 1.0 and (1.0 - s) >= float(settings["cfg_start"])
            if guided:
                v_c, v_u = self.velocity(torch.cat([latents, latents]), s, torch.cat([labels, null])).chunk(2)
                v = v_u + g * (v_c - v_u)
            else:
                v = self.velocity(latents, s, labels)
            latents = latents + (s_next - s) * v
        if output_type == "latent":
            images = latents
        else:
            images = self.image_processor.postprocess(self.decode_latents(latents), output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

"""The DA-VAE model (paper Secs. 3.1-3.3): a pretrained ``AutoencoderKL`` turned into a base +
detail VAE whose latent lies on the same token grid at ``scale`` times the image resolution.

- base channels (C): the frozen pretrained encoder's posterior mean of the bicubic x1/scale image,
  normalised as the base model expects (``(z - shift_factor) * scaling_factor``);
- detail channels (D): a detail encoder on the full image: the pretrained encoder trunk cut
  before ``conv_out`` plus a space-to-channel down block (mean and log-variance);
- decoder: a channel-to-space up block from C + D channels, then the pretrained decoder without
  its ``conv_in``.

``encode`` returns a :class:`DAVAEPosterior` over the C + D latent ("raw" space: base channels
base-normalised, detail channels as the encoder emits them); ``decode`` maps that raw latent to
the image. The diffusion model sees ``normalize_latents(raw)``: the detail slice standardised per
channel with statistics from :meth:`DAVAE.calibrate_latent_stats`, stored in the config
(``latent_norm="detail"``, the SD3 recipe), or every channel (``latent_norm="all"``, the ImageNet
recipe: the base slice standardised too, with its own calibrated statistics).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from .. import ops
from .._validate import ORDERS
from ..channels import split_channels

LATENT_NORMS = ("detail", "all")

def load_base_vae(path: str) -> AutoencoderKL:
    """A diffusers ``AutoencoderKL`` from a VAE folder, or from a pipeline folder's ``vae``
    subfolder."""
    import json
    import os

    def kind(folder: str):
        cfg = os.path.join(folder, "config.json")
        if not os.path.isfile(cfg):
            return None
        with open(cfg) as f:
            return json.load(f).get("_class_name")

    if not os.path.isdir(path):
        raise FileNotFoundError(f"load_base_vae: 'path' {path!r} is not a folder")
    for folder in (path, os.path.join(path, "vae")):
        name = kind(folder)
        if name == "AutoencoderKL":
            return AutoencoderKL.from_pretrained(folder)
        if name is not None:
            raise ValueError(f"load_base_vae: {folder!r} holds a {name}, expected a diffusers AutoencoderKL")
    raise ValueError(f"load_base_vae: {path!r} is neither a diffusers AutoencoderKL folder nor a pipeline folder "
                     "with a 'vae' subfolder")


# ----------------------------------------------------------------------------------------------
# The two new blocks
# ----------------------------------------------------------------------------------------------


class SpaceToChannelDown(nn.Module):
    """``Down(in -> out, r)``: ``pixel_unshuffle(conv3x3(in -> out / r^2), r)`` plus a shortcut,
    the parameter-free group mean of ``pixel_unshuffle(h, r)`` when ``r^2 in`` is a multiple of
    ``out``, otherwise a zero-initialised 1x1 convolution."""

    def __init__(self, in_channels: int, out_channels: int, factor: int = 2):
        super().__init__()
        r2 = factor * factor
        if out_channels % r2:
            raise ValueError(f"SpaceToChannelDown: out_channels={out_channels} must be a multiple of factor^2={r2}")
        self.factor = factor
        self.conv = nn.Conv2d(in_channels, out_channels // r2, 3, padding=1)
        self.group = (r2 * in_channels) // out_channels if (r2 * in_channels) % out_channels == 0 else 0
        self.shortcut = None
        if not self.group:
            self.shortcut = nn.Conv2d(r2 * in_channels, out_channels, 1, bias=False)
            nn.init.zeros_(self.shortcut.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        main = F.pixel_unshuffle(self.conv(h), self.factor)
        y = F.pixel_unshuffle(h, self.factor)
        if self.shortcut is not None:
            return main + self.shortcut(y)
        return main + y.unflatten(1, (main.shape[1], self.group)).mean(2)


class ChannelToSpaceUp(nn.Module):
    """``Up(in -> out, r)``: ``pixel_shuffle(conv3x3(in -> r^2 out), r)`` plus the shortcut
    ``pixel_shuffle(repeat_interleave(z, r^2 out / in), r)`` (a zero-initialised 1x1 convolution
    before the shuffle when ``r^2 out`` is not a multiple of ``in``)."""

    def __init__(self, in_channels: int, out_channels: int, factor: int = 2):
        super().__init__()
        r2 = factor * factor
        self.factor = factor
        self.conv = nn.Conv2d(in_channels, r2 * out_channels, 3, padding=1)
        self.repeats = (r2 * out_channels) // in_channels if (r2 * out_channels) % in_channels == 0 else 0
        self.shortcut = None
        if not self.repeats:
            self.shortcut = nn.Conv2d(in_channels, r2 * out_channels, 1, bias=False)
            nn.init.zeros_(self.shortcut.weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        short = self.shortcut(z) if self.shortcut is not None else z.repeat_interleave(self.repeats, dim=1)
        return F.pixel_shuffle(self.conv(z) + short, self.factor)


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


class DAVAEPosterior:
    """The posterior over the C + D latent: the base part is deterministic (the frozen encoder's
    normalised mean), the detail part a diagonal Gaussian."""

    def __init__(self, base: torch.Tensor, detail: DiagonalGaussianDistribution, order: str):
        self.base = base
        self.detail = detail
        self.order = order

    def _join(self, detail: torch.Tensor) -> torch.Tensor:
        return ops.latent_concat(self.base, detail, order=self.order)

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self._join(self.detail.sample(generator))

    def mode(self) -> torch.Tensor:
        return self._join(self.detail.mean)

    @property
    def mean(self) -> torch.Tensor:
        return self.mode()

    def kl(self) -> torch.Tensor:
        """Per-sample KL of the detail part, diffusers' form: 0.5 * sum over C, H, W."""
        return self.detail.kl()


@dataclass
class DAVAEForwardOutput(BaseOutput):
    """Everything the training losses need. (Fields default to None, as diffusers' outputs do:
    accelerate's mixed precision rebuilds the output from a dict of its fields.)"""

    sample: torch.Tensor = None  # reconstruction, [-1, 1] (not clamped)
    latent: torch.Tensor = None  # the raw C + D latent the decoder saw (detail sampled, maybe dropped out)
    base_latent: torch.Tensor = None  # normalised base latent (the alignment target, no gradient)
    detail_latent: torch.Tensor = None  # sampled detail latent (before dropout)
    posterior: Optional[DAVAEPosterior] = None
    align_loss: torch.Tensor = None  # mean((Proj(z_d) - z)^2)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class DAVAE(ModelMixin, ConfigMixin):
    """Detail-Aligned VAE on top of a diffusers ``AutoencoderKL`` (see the module docstring).

    Build one from a pretrained VAE with :meth:`from_base_vae`; the config holds the base VAE's
    config, so ``save_pretrained`` / ``from_pretrained`` round-trip the whole model.
    ``training_recipe`` is metadata: the name of the recipe the model was trained with (set by
    ``train/train_vae.py``), unused by the model itself."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        base_vae_config: dict,
        detail_channels: Optional[int] = None,
        scale: int = 2,
        order: str = "base_first",
        freeze_detail_trunk: bool = True,
        detail_dropout: float = 0.0,
        detail_mean: Optional[Sequence[float]] = None,
        detail_std: Optional[Sequence[float]] = None,
        training_recipe: Optional[str] = None,
        latent_norm: str = "detail",
        base_mean: Optional[Sequence[float]] = None,
        base_std: Optional[Sequence[float]] = None,
    ):
        super().__init__()
        if order not in ORDERS:
            raise ValueError(f"DAVAE: 'order' must be one of {list(ORDERS)}, got {order!r}")
        if not isinstance(scale, int) or scale < 2:
            raise ValueError(f"DAVAE: 'scale' must be an integer >= 2, got {scale!r}")
        if not 0.0 <= detail_dropout < 1.0:
            raise ValueError(f"DAVAE: 'detail_dropout' must be in [0, 1), got {detail_dropout}")
        if latent_norm not in LATENT_NORMS:
            raise ValueError(f"DAVAE: 'latent_norm' must be one of {LATENT_NORMS}, got {latent_norm!r}")
        cfg = {k: v for k, v in dict(base_vae_config).items() if not k.startswith("_")}
        self.base_vae = AutoencoderKL(**cfg)
        C = self.base_vae.config.latent_channels
        D = C if detail_channels is None else int(detail_channels)
        if D <= 0 or D % C:
            raise ValueError(f"DAVAE: 'detail_channels' must be a positive multiple of the base VAE's latent "
                             f"channels C={C} (the projection averages groups of D/C channels), got {D}")
        if detail_channels is None:
            self.register_to_config(detail_channels=D)
        for name, stats, n in (("detail_mean", detail_mean, D), ("detail_std", detail_std, D),
                               ("base_mean", base_mean, C), ("base_std", base_std, C)):
            if stats is not None and len(stats) != n:
                raise ValueError(f"DAVAE: '{name}' must have {n} entries (one per channel), got {len(stats)}")
        self.base_channels, self.detail_channels = C, D

        width = self.base_vae.config.block_out_channels[-1]
        # Detail encoder: the pretrained trunk without conv_out, then the down block (2D moments).
        self.detail_encoder = copy.deepcopy(self.base_vae.encoder)
        self.detail_encoder.conv_out = nn.Identity()
        self.detail_down = SpaceToChannelDown(width, 2 * D, scale)
        # Decoder: the up block, then the pretrained decoder without conv_in.
        self.latent_up = ChannelToSpaceUp(C + D, width, scale)
        self.decoder = copy.deepcopy(self.base_vae.decoder)
        self.decoder.conv_in = nn.Identity()

        mean = torch.tensor(detail_mean if detail_mean is not None else [0.0] * D, dtype=torch.float32)
        std = torch.tensor(detail_std if detail_std is not None else [1.0] * D, dtype=torch.float32)
        self.register_buffer("detail_latent_mean", mean.view(1, D, 1, 1), persistent=False)
        self.register_buffer("detail_latent_std", std.view(1, D, 1, 1), persistent=False)
        # The base slice's statistics: used with latent_norm="all" (identity until calibrated).
        mean = torch.tensor(base_mean if base_mean is not None else [0.0] * C, dtype=torch.float32)
        std = torch.tensor(base_std if base_std is not None else [1.0] * C, dtype=torch.float32)
        self.register_buffer("base_latent_mean", mean.view(1, C, 1, 1), persistent=False)
        self.register_buffer("base_latent_std", std.view(1, C, 1, 1), persistent=False)
        self._apply_freezing()

    # ------------------------------------------------------------------ construction / freezing
    @classmethod
    def from_base_vae(cls, vae: AutoencoderKL, detail_channels: Optional[int] = None, scale: int = 2,
                      order: str = "base_first", freeze_detail_trunk: bool = True, init_from_base: bool = True,
                      detail_dropout: float = 0.0, init_up_block: str = "base_decoder",
                      latent_norm: str = "detail") -> "DAVAE":
        """A DA-VAE on ``vae`` (copied; the original is not modified). With ``init_from_base`` the
        detail encoder trunk and the decoder start from the pretrained weights; otherwise they are
        freshly initialised (the base encoder is always the pretrained one).

        ``init_up_block``: ``"base_decoder"`` (default; our choice, the paper leaves it open)
        starts the up block as the pretrained decoder's ``conv_in`` on the base channels, each
        output repeated over the ``scale x scale`` sub-positions (and the detail channels ignored),
        so at step 0 the DA-VAE decodes the base latent as the base decoder would, from a
        nearest-upsampled first feature map; ``"random"`` is PyTorch's default initialisation (also
        what ``init_from_base=False`` gives). ``latent_norm``: which channels
        :meth:`normalize_latents` standardises ("detail", the SD3 recipe, or "all", the ImageNet
        recipe)."""
        if init_up_block not in ("base_decoder", "random"):
            raise ValueError(f"DAVAE.from_base_vae: 'init_up_block' must be 'base_decoder' or 'random', got {init_up_block!r}")
        if not isinstance(vae, AutoencoderKL):
            raise TypeError(f"DAVAE.from_base_vae: 'vae' must be a diffusers AutoencoderKL, got {type(vae).__name__}")
        model = cls(dict(vae.config), detail_channels=detail_channels, scale=scale, order=order,
                    freeze_detail_trunk=freeze_detail_trunk, detail_dropout=detail_dropout, latent_norm=latent_norm)
        model.base_vae.load_state_dict(vae.state_dict())
        if init_from_base:
            enc = {k: v for k, v in vae.encoder.state_dict().items() if not k.startswith("conv_out.")}
            dec = {k: v for k, v in vae.decoder.state_dict().items() if not k.startswith("conv_in.")}
            model.detail_encoder.load_state_dict(enc)
            model.decoder.load_state_dict(dec)
            if init_up_block == "base_decoder":
                model._init_up_block_from_conv_in(vae)
        ref = next(vae.parameters())
        model.to(ref.device)
        if ref.dtype != torch.float32:
            model.to(ref.dtype)
        model._apply_freezing()
        return model

    @torch.no_grad()
    def _init_up_block_from_conv_in(self, vae: AutoencoderKL) -> None:
        """Up-block output channel q = o * s^2 + k (sub-position k of feature o) := the base
        decoder's conv_in output o on the de-normalised base latent; the parameter-free shortcut
        is cancelled in the centre tap."""
        conv_in = vae.decoder.conv_in
        up = self.latent_up
        if up.shortcut is not None or conv_in.kernel_size != up.conv.kernel_size:
            return  # keep the default initialisation
        C, s2 = self.base_channels, self.config.scale ** 2
        shift = vae.config.shift_factor or 0.0
        scaling = vae.config.scaling_factor or 1.0
        w = conv_in.weight.to(up.conv.weight)  # [Cdec, C, k, k]
        weight = torch.zeros_like(up.conv.weight)  # [s2 * Cdec, C + D, k, k]
        base_weight, _ = split_channels(weight, C, self.config.order)
        base_weight.copy_((w / scaling).repeat_interleave(s2, dim=0))
        bias = (conv_in.bias.to(w) + shift * w.sum(dim=(1, 2, 3))).repeat_interleave(s2)
        centre = up.conv.kernel_size[0] // 2
        q = torch.arange(weight.shape[0])
        weight[q, q // up.repeats, centre, centre] -= 1.0  # cancels repeat_interleave(z, repeats)
        up.conv.weight.copy_(weight)
        up.conv.bias.copy_(bias)

    def _apply_freezing(self) -> None:
        self.base_vae.requires_grad_(False)
        self.base_vae.eval()
        self.detail_encoder.requires_grad_(not self.config.freeze_detail_trunk)

    def train(self, mode: bool = True):
        super().train(mode)
        self.base_vae.eval()  # frozen: never in training mode
        return self

    @property
    def spatial_factor(self) -> int:
        """Image pixels per latent cell: the base VAE's factor times ``scale``."""
        return self.base_vae_factor * self.config.scale

    @property
    def base_vae_factor(self) -> int:
        return 2 ** (len(self.base_vae.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ normalisation
    def split_latents(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(base, detail) slices of a C + D latent, in either channel order."""
        return split_channels(latent, self.base_channels, self.config.order)

    def _check_latent(self, latent: torch.Tensor, name: str = "latent") -> None:
        if not isinstance(latent, torch.Tensor) or latent.dim() != 4 or latent.shape[1] != self.base_channels + self.detail_channels:
            shape = list(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
            raise ValueError(f"DAVAE: '{name}' must have shape [B, {self.base_channels + self.detail_channels}, h, w] "
                             f"(C + D channels), got {shape}")

    def normalize_latents(self, latent: torch.Tensor) -> torch.Tensor:
        """Raw C + D latent -> the diffusion model's latent: the detail slice standardised per
        channel (the base slice is already normalised by the base VAE's shift and scale), and with
        ``latent_norm="all"`` the base slice too."""
        self._check_latent(latent)
        base, detail = self.split_latents(latent)
        detail = (detail - self.detail_latent_mean.to(detail)) / self.detail_latent_std.to(detail)
        if self.config.latent_norm == "all":
            base = (base - self.base_latent_mean.to(base)) / self.base_latent_std.to(base)
        return ops.latent_concat(base, detail, order=self.config.order)

    def denormalize_latents(self, latent: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize_latents`."""
        self._check_latent(latent)
        base, detail = self.split_latents(latent)
        detail = detail * self.detail_latent_std.to(detail) + self.detail_latent_mean.to(detail)
        if self.config.latent_norm == "all":
            base = base * self.base_latent_std.to(base) + self.base_latent_mean.to(base)
        return ops.latent_concat(base, detail, order=self.config.order)

    @torch.no_grad()
    def diffusion_latents(self, image: torch.Tensor, detail: str = "mode", detail_noise: float = 0.0,
                          generator: Optional[torch.Generator] = None, normalize: bool = True) -> torch.Tensor:
        """The normalised latent a diffusion model trains on (raw with ``normalize=False``): the
        base posterior mean and the detail posterior ``detail`` ("mode", the SD3 recipe, or
        "sample", the ImageNet recipe), plus ``detail_noise`` times N(0, 1) noise on the raw detail
        latent (the ImageNet inference wrapper adds it at 1.0; off by default)."""
        if detail not in ("mode", "sample"):
            raise ValueError(f"DAVAE.diffusion_latents: 'detail' must be 'mode' or 'sample', got {detail!r}")
        posterior = self.encode(image).latent_dist
        z_detail = posterior.detail.sample(generator) if detail == "sample" else posterior.detail.mean
        if detail_noise > 0:
            gen_device = generator.device if generator is not None else z_detail.device
            noise = torch.randn(z_detail.shape, generator=generator, device=gen_device, dtype=z_detail.dtype)
            z_detail = z_detail + detail_noise * noise.to(z_detail.device)
        raw = ops.latent_concat(posterior.base, z_detail, order=self.config.order)
        return self.normalize_latents(raw) if normalize else raw

    # ------------------------------------------------------------------ encode / decode
    def _check_image(self, image: torch.Tensor) -> None:
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != self.base_vae.config.in_channels:
            shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"DAVAE: 'image' must have shape [B, {self.base_vae.config.in_channels}, H, W], got {shape}")
        f = self.spatial_factor
        if image.shape[-2] % f or image.shape[-1] % f:
            raise ValueError(f"DAVAE: the image size {tuple(image.shape[-2:])} must be a multiple of the DA-VAE's "
                             f"spatial factor {f} (base VAE factor {self.base_vae_factor} x scale {self.config.scale})")

    def base_image(self, image: torch.Tensor) -> torch.Tensor:
        """The base-resolution image: bicubic x1/scale (no antialias), clamped to [-1, 1]."""
        h, w = image.shape[-2:]
        s = self.config.scale
        return F.interpolate(image, size=(h // s, w // s), mode="bicubic", align_corners=False).clamp(-1, 1)

    @torch.no_grad()
    def base_reconstruction(self, image: torch.Tensor) -> torch.Tensor:
        """The base VAE's own reconstruction of ``image`` at its full resolution (encode, posterior
        mean, decode): the released recipe's reconstruction target."""
        self._check_image(image)
        base = self.base_vae
        return base.decode(base.encode(image).latent_dist.mean).sample

    @torch.no_grad()
    def encode_base(self, image: torch.Tensor) -> torch.Tensor:
        """The frozen base encoder's posterior mean of the x1/scale image, base-normalised."""
        z = self.base_vae.encode(self.base_image(image)).latent_dist.mean
        shift = self.base_vae.config.shift_factor or 0.0
        scaling = self.base_vae.config.scaling_factor or 1.0
        return ((z - shift) * scaling).detach()

    def encode_detail(self, image: torch.Tensor) -> DiagonalGaussianDistribution:
        return DiagonalGaussianDistribution(self.detail_down(self.detail_encoder(image)))

    def encode(self, image: torch.Tensor, return_dict: bool = True):
        """``image`` [B, 3, H, W] in [-1, 1] with H, W multiples of :attr:`spatial_factor` ->
        posterior over the raw C + D latent on the (H, W) / spatial_factor grid."""
        self._check_image(image)
        posterior = DAVAEPosterior(self.encode_base(image), self.encode_detail(image), self.config.order)
        if not return_dict:
            return (posterior,)
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput

        return AutoencoderKLOutput(latent_dist=posterior)

    def decode(self, latent: torch.Tensor, return_dict: bool = True):
        """Raw C + D latent -> image in [-1, 1] (unclamped) at spatial_factor times the grid."""
        self._check_latent(latent)
        image = self.decoder(self.latent_up(latent))
        if not return_dict:
            return (image,)
        return DecoderOutput(sample=image)

    def forward(self, image: torch.Tensor, sample_posterior: bool = True,
                generator: Optional[torch.Generator] = None) -> DAVAEForwardOutput:
        """Training forward: encode, sample the detail latent, (optionally) drop it out per
        sample, decode, and the alignment loss ``mean((Proj(z_d) - z)^2)`` on the sampled detail
        latent against the normalised base latent."""
        self._check_image(image)
        z_base = self.encode_base(image)
        detail_dist = self.encode_detail(image)
        z_detail = detail_dist.sample(generator) if sample_posterior else detail_dist.mean
        dec_detail = z_detail
        p = self.config.detail_dropout
        if self.training and p > 0:
            gen_device = generator.device if generator is not None else z_detail.device
            keep = torch.rand(z_detail.shape[0], 1, 1, 1, device=gen_device, generator=generator).to(z_detail.device) >= p
            dec_detail = z_detail * keep.to(z_detail.dtype) / (1.0 - p)
        latent = ops.latent_concat(z_base, dec_detail, order=self.config.order)
        sample = self.decode(latent).sample
        align = ops.detail_align_loss(z_detail, z_base, reduction="mean")
        posterior = DAVAEPosterior(z_base, detail_dist, self.config.order)
        return DAVAEForwardOutput(sample=sample, latent=latent, base_latent=z_base, detail_latent=z_detail,
                                  posterior=posterior, align_loss=align)

    # ------------------------------------------------------------------ statistics
    @torch.no_grad()
    def calibrate_latent_stats(self, batches: Iterable, max_batches: Optional[int] = None) -> tuple[list, list]:
        """Per-channel mean and std of the detail posterior mode over ``batches`` (images, or
        dicts with ``pixel_values``), and with ``latent_norm="all"`` of the base latent too;
        stored in the buffers and the config (so they are saved). Returns the detail statistics."""
        C, D = self.base_channels, self.detail_channels
        every = self.config.latent_norm == "all"
        count, total, total_sq = 0, torch.zeros(C + D, dtype=torch.float64), torch.zeros(C + D, dtype=torch.float64)
        was_training = self.training
        self.eval()
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x = batch["pixel_values"] if isinstance(batch, dict) else batch
            x = x.to(device=self.device, dtype=self.dtype)
            self._check_image(x)
            z = self.encode_detail(x).mean
            z = torch.cat([self.encode_base(x), z], 1) if every else torch.cat([z.new_zeros(z.shape[0], C, *z.shape[2:]), z], 1)
            z = z.double().cpu()
            total += z.sum(dim=(0, 2, 3))
            total_sq += (z * z).sum(dim=(0, 2, 3))
            count += z[:, 0].numel()
        self.train(was_training)
        if count == 0:
            raise ValueError("DAVAE.calibrate_latent_stats: 'batches' yielded no images")
        mean = total / count
        std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
        base = dict(base_mean=mean[:C].tolist(), base_std=std[:C].tolist()) if every else {}
        self.set_latent_stats(mean[C:].tolist(), std[C:].tolist(), **base)
        return mean[C:].tolist(), std[C:].tolist()

    def set_latent_stats(self, mean: Sequence[float], std: Sequence[float], base_mean: Optional[Sequence[float]] = None,
                         base_std: Optional[Sequence[float]] = None) -> None:
        """The detail slice's per-channel statistics (and, given, the base slice's, which
        ``latent_norm="all"`` uses)."""
        for name, n, values in (("detail", self.detail_channels, (mean, std)), ("base", self.base_channels, (base_mean, base_std))):
            if values[0] is None and values[1] is None and name == "base":
                continue
            if values[0] is None or values[1] is None or len(values[0]) != n or len(values[1]) != n:
                raise ValueError(f"DAVAE.set_latent_stats: need {n} {name} means and stds, got "
                                 f"{None if values[0] is None else len(values[0])} and "
                                 f"{None if values[1] is None else len(values[1])}")
            getattr(self, f"{name}_latent_mean").copy_(torch.tensor(values[0], dtype=torch.float32).view(1, n, 1, 1))
            getattr(self, f"{name}_latent_std").copy_(torch.tensor(values[1], dtype=torch.float32).view(1, n, 1, 1))
            self.register_to_config(**{f"{name}_mean": [float(v) for v in values[0]],
                                       f"{name}_std": [float(v) for v in values[1]]})

    # ------------------------------------------------------------------ parameter groups
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

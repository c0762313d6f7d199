"""The fine-tuning objective of Sec. 4.2: SD3's rectified flow on the C + D latent, with the
detail channels' loss weight ramped up by Eq. 12 and the normalisation of Eq. 13.

    x_t = (1 - sigma) x0 + sigma eps,   target v = eps - x0
    w(n) = (1 - cos(pi n / N_warm)) / 2 for n < N_warm, else 1                      (Eq. 12)
    L = (||v_hat_b - v_b||^2 + w ||v_hat_d - v_d||^2) / ((C + w D) H W)  per sample  (Eq. 13)

``loss_mode="x0_min_snr"`` is the released code's variant: the same masked, renormalised error on
the x0 prediction ``x0_hat = x_t - sigma v_hat`` (= sigma^2 times the velocity error), times
min-SNR-gamma ``min((1 - sigma) / sigma, gamma)``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_density_for_timestep_sampling

from ..channels import join_channels

LOSS_MODES = ("velocity", "x0_min_snr")


def detail_weight(step: int, n_warm: int) -> float:
    """Eq. 12: 0 at step 0, 1/2 at N_warm / 2, 1 from N_warm on (``n_warm <= 0``: always 1)."""
    if n_warm <= 0 or step >= n_warm:
        return 1.0
    return 0.5 * (1.0 - math.cos(math.pi * max(step, 0) / n_warm))


def sample_sigmas(batch: int, shift: float = 4.0, generator: Optional[torch.Generator] = None,
                  mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """SD3's training noise levels: ``u ~ logit-normal(mean, std)`` (diffusers'
    ``compute_density_for_timestep_sampling``) mapped through the shifted schedule
    ``sigma = shift u / (1 + (shift - 1) u)``; shape [batch], in (0, 1). diffusers' SD3 script
    instead rounds ``u`` to one of the scheduler's 1000 timesteps; these stay continuous."""
    u = compute_density_for_timestep_sampling("logit_normal", batch, logit_mean=mean, logit_std=std, generator=generator)
    return shift * u / (1.0 + (shift - 1.0) * u)


def channel_mask(total: int, base_channels: int, order: str, w: float, device=None) -> torch.Tensor:
    """Per-channel weights: 1 on the base channels, ``w`` on the detail channels; [1, C+D, 1, 1]."""
    base = torch.ones(base_channels, device=device)
    return join_channels(base, torch.full((total - base_channels,), float(w), device=device), order, dim=0).view(1, total, 1, 1)


def flow_loss(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
              base_channels: int, order: str = "base_first", w: float = 1.0, mode: str = "velocity",
              min_snr_gamma: float = 5.0, snr_sigmas: Optional[torch.Tensor] = None) -> dict:
    """Eq. 13 (or the x0 / min-SNR variant). Returns ``loss`` (scalar) and, for logging, the plain
    per-element mean squared velocity errors of the base and detail channels. ``snr_sigmas``: the
    noise levels min-SNR reads, when they differ from ``sigmas`` (the released code's truncated
    timesteps / 1000)."""
    if mode not in LOSS_MODES:
        raise ValueError(f"flow_loss: 'mode' must be one of {LOSS_MODES}, got {mode!r}")
    if pred.shape != x0.shape or noise.shape != x0.shape:
        raise ValueError(f"flow_loss: 'pred' {list(pred.shape)}, 'x0' {list(x0.shape)} and 'noise' {list(noise.shape)} "
                         "must have the same shape")
    B, CD, H, W = x0.shape
    D = CD - base_channels
    err = (pred.float() - (noise - x0).float()).pow(2)
    s = sigmas.float().view(B, 1, 1, 1).to(err.device)
    if mode == "x0_min_snr":
        r = s if snr_sigmas is None else snr_sigmas.float().view(B, 1, 1, 1).to(err.device)
        snr_weight = torch.clamp((1.0 - r) / r.clamp_min(1e-6), max=min_snr_gamma)
        err = err * s.pow(2) * snr_weight
    m = channel_mask(CD, base_channels, order, w, err.device)
    per_sample = (err * m).flatten(1).sum(1) / ((base_channels + w * D) * H * W)
    with torch.no_grad():
        v_err = (pred.float() - (noise - x0).float()).pow(2)
        base_mask = channel_mask(CD, base_channels, order, 0.0, v_err.device).expand_as(v_err[:1]).bool()[0]
        base_mse = v_err[:, base_mask].mean()
        detail_mse = v_err[:, ~base_mask].mean()
    return {"loss": per_sample.mean(), "base_mse": base_mse, "detail_mse": detail_mse}


def cosine_velocity_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """LightningDiT's cosine term the ImageNet recipe adds, unmasked: ``mean(1 - cos(v_hat, v))``
    with the cosine taken over the channels at each position and sample."""
    if pred.shape != target.shape:
        raise ValueError(f"cosine_velocity_loss: 'pred' {list(pred.shape)} and 'target' {list(target.shape)} "
                         "must have the same shape")
    return (1.0 - F.cosine_similarity(pred.float(), target.float(), dim=1, eps=1e-8)).mean()

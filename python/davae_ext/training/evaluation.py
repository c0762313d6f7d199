"""Reconstruction metrics of a DA-VAE against its base VAE at the same token count and at 4x the
tokens, and the alignment statistics of its detail latent."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .. import reference
from .common import to_uint8


def psnr_per_image(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The PSNR (dB) of each image of a batch in [-1, 1], measured on [0, 1] (clamped): [N]."""
    a = (reconstruction.float().clamp(-1, 1) + 1) / 2
    b = (target.float().clamp(-1, 1) + 1) / 2
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(1.0 / mse)


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """The project's one PSNR: the mean over images of :func:`psnr_per_image`."""
    return float(psnr_per_image(reconstruction, target).mean())


def colourfulness(images: torch.Tensor) -> torch.Tensor:
    """Hasler and Suesstrunk's colourfulness of each image of a batch in [-1, 1] (on [0, 255]):
    ``sqrt(std_rg^2 + std_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2)`` with ``rg = R - G`` and
    ``yb = (R + G) / 2 - B``; 0 for a grey image. [N]."""
    x = (images.float().clamp(-1, 1) + 1) * 127.5
    r, g, b = x[:, 0].flatten(1), x[:, 1].flatten(1), x[:, 2].flatten(1)
    rg, yb = r - g, 0.5 * (r + g) - b
    return (rg.std(1, unbiased=False).pow(2) + yb.std(1, unbiased=False).pow(2)).sqrt() + \
        0.3 * (rg.mean(1).pow(2) + yb.mean(1).pow(2)).sqrt()


def mean_colour_error(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean absolute difference of each image's mean R, G and B, in [0, 1] units."""
    a = (reconstruction.float().clamp(-1, 1) + 1) / 2
    b = (target.float().clamp(-1, 1) + 1) / 2
    return float((a.mean((2, 3)) - b.mean((2, 3))).abs().mean())


def ssim(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean SSIM (scikit-image, 7x7 window, on 8-bit RGB)."""
    from skimage.metrics import structural_similarity

    a, b = to_uint8(reconstruction), to_uint8(target)
    return float(np.mean([structural_similarity(x, y, channel_axis=-1, data_range=255) for x, y in zip(a, b)]))


def alignment_stats(detail: torch.Tensor, base: torch.Tensor) -> dict:
    """MSE and cosine similarity (per image, flattened) between Proj(detail) and base."""
    proj = reference.detail_project(detail.float(), base.shape[1])
    cos = F.cosine_similarity(proj.flatten(1), base.float().flatten(1), dim=1)
    return {"align_mse": float((proj - base.float()).pow(2).mean()), "align_cosine": float(cos.mean())}


@torch.no_grad()
def evaluate_davae(model, images: torch.Tensor, batch_size: int = 4, lpips=None) -> dict:
    """Metrics on ``images`` [N, 3, H, W] in [-1, 1] at full resolution for
    (a) the DA-VAE, (b) the base VAE on the x1/scale image upsampled bicubically (same tokens),
    (c) the base VAE at full resolution (scale^2 times the tokens); plus alignment statistics.
    (a) and (b) are also scored against (c)'s reconstruction (``psnr_vs_base_reconstruction_db``).
    Returns a dict with one entry per method and ``alignment``; also the reconstructions
    (key ``"images"``, for grids)."""
    model.eval()
    vae = model.base_vae
    dev, dt = model.device, model.dtype
    shift = vae.config.shift_factor or 0.0
    scaling = vae.config.scaling_factor or 1.0
    outs = {"davae": [], "base_half_upsampled": [], "base_full": []}
    details, bases = [], []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(dev, dt)
        post = model.encode(x).latent_dist
        outs["davae"].append(model.decode(post.mode()).sample.float().cpu())
        details.append(post.detail.mean.float().cpu())
        bases.append(post.base.float().cpu())
        # (b) decodes the base VAE's own latent of the x1/scale image: the DA-VAE's base channels,
        # un-normalised (the base encoder already ran once inside model.encode).
        rec_lr = vae.decode(post.base / scaling + shift).sample
        outs["base_half_upsampled"].append(
            F.interpolate(rec_lr.float(), size=x.shape[-2:], mode="bicubic", align_corners=False).cpu())
        outs["base_full"].append(vae.decode(vae.encode(x).latent_dist.mode()).sample.float().cpu())
    target = images.float().cpu()
    H, W = images.shape[-2:]
    f_base, s = model.base_vae_factor, model.config.scale
    tokens = {"davae": (H // (f_base * s)) * (W // (f_base * s)),
              "base_half_upsampled": (H // (f_base * s)) * (W // (f_base * s)),
              "base_full": (H // f_base) * (W // f_base)}
    result: dict = {"resolution": [int(H), int(W)], "images_evaluated": int(len(images))}
    recs = {}
    for name, parts in outs.items():
        rec = torch.cat(parts)
        recs[name] = rec
        row = {"psnr_db": psnr(rec, target), "ssim": ssim(rec, target), "latent_cells": tokens[name]}
        if lpips is not None:
            d = [lpips(rec[j:j + 1].to(next(lpips.parameters()).device), target[j:j + 1].to(next(lpips.parameters()).device))
                 for j in range(len(rec))]
            row["lpips"] = float(torch.cat(d).mean())
        result[name] = row
    # Against the base VAE's own full-resolution reconstruction: the released recipe's target.
    for name in ("davae", "base_half_upsampled"):
        result[name]["psnr_vs_base_reconstruction_db"] = psnr(recs[name], recs["base_full"])
    result["alignment"] = alignment_stats(torch.cat(details), torch.cat(bases))
    result["images"] = recs
    return result


def format_table(result: dict) -> str:
    lines = [f"{'method':<24} {'PSNR dB':>8} {'SSIM':>7} {'LPIPS':>7} {'latent cells':>13}"]
    for name in ("davae", "base_half_upsampled", "base_full"):
        r = result[name]
        lp = f"{r['lpips']:.4f}" if "lpips" in r else "-"
        lines.append(f"{name:<24} {r['psnr_db']:8.2f} {r['ssim']:7.4f} {lp:>7} {r['latent_cells']:13d}")
    d, b = (result[k]["psnr_vs_base_reconstruction_db"] for k in ("davae", "base_half_upsampled"))
    lines.append(f"PSNR against the base VAE's full-resolution reconstruction: davae {d:.2f} dB, "
                 f"base_half_upsampled {b:.2f} dB")
    a = result["alignment"]
    lines.append(f"alignment: MSE(Proj(z_d), z) = {a['align_mse']:.4f}, cosine = {a['align_cosine']:.4f}")
    return "\n".join(lines)


def load_images(folder, resolution: int, limit: Optional[int] = None) -> torch.Tensor:
    """Centre crops at ``resolution`` of a folder's images, [N, 3, R, R] in [-1, 1]."""
    from .data import ImageCaptionFolder

    data = ImageCaptionFolder(folder, resolution, center_crop=True, random_flip=False)
    n = len(data) if limit is None else min(limit, len(data))
    return torch.stack([data[i]["pixel_values"] for i in range(n)])


ROW_LABELS = {"base_half_upsampled": "base VAE at 1/2 res.,\nupsampled\n{} latent cells",
              "davae": "DA-VAE\n{} latent cells\n(same tokens)", "base_full": "base VAE at full res.\n{} latent cells\n(4x the tokens)"}


def save_reconstruction_grid(path, images: torch.Tensor, result: dict, recs: dict, rows=("base_half_upsampled", "davae", "base_full")):
    """Originals, then one labelled row per method of ``rows`` with each image's PSNR under it."""
    from .plot import save_grid

    labels, tensors, captions = ["original"], [images], [[""] * len(images)]
    for name in rows:
        labels.append(ROW_LABELS[name].format(result[name]["latent_cells"]))
        tensors.append(recs[name])
        captions.append([f"{v:.2f} dB" for v in psnr_per_image(recs[name], images).tolist()])
    H, W = result["resolution"]
    return save_grid(path, tensors, labels, captions, title=f"{len(images)} held-out images at {H}x{W}")


def gap_db(result: dict) -> float:
    return result["davae"]["psnr_db"] - result["base_half_upsampled"]["psnr_db"]


__all__ = ["psnr", "psnr_per_image", "colourfulness", "mean_colour_error", "save_reconstruction_grid", "ssim", "alignment_stats", "evaluate_davae", "format_table", "load_images", "gap_db"]

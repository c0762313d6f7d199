"""Losses of DA-VAE training (paper Sec. 3, Eq. 6): reconstruction (L1, optional perceptual and
adversarial terms), KL of the detail posterior, and the detail alignment loss with a constant or
an adaptive (gradient-norm ratio) weight.

The weights are the caller's. ``docs/recipes.md`` tables what the paper, the released SD3 code and
the training scripts' ``--recipe`` choices use (the released SD3 code: L1 x 2.0 on [0, 1] images,
perceptual x 1.0, KL ``"sum"`` x 1e-7, alignment x 0.2, no GAN; the ImageNet code: L1 + LPIPS, KL
``"mean"`` x 1e-6, PatchGAN hinge x 0.1 adaptive from step 5001, alignment adaptive x 0.5).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


KL_FORMS = ("sum", "mean")


def l1(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(reconstruction, target)


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor, form: str = "sum") -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) of the detail posterior.

    ``"sum"`` (SD3 recipe, diffusers' ``kl()``): ``0.5 * sum_{C,H,W}(mu^2 + s^2 - 1 - log s^2)``
    averaged over the batch. ``"mean"`` (ImageNet recipe): ``mean(mu^2 + s^2 - 1 - log s^2)``
    over all elements, no 1/2."""
    terms = mean.pow(2) + logvar.exp() - 1.0 - logvar
    if form == "sum":
        return 0.5 * terms.flatten(1).sum(1).mean()
    if form == "mean":
        return terms.mean()
    raise ValueError(f"kl_loss: 'form' must be one of {KL_FORMS}, got {form!r}")


def grad_norm_ratio(numerator: torch.Tensor, denominator: torch.Tensor, layer_weight: torch.Tensor,
                    max_value: float, eps: float = 1e-4) -> torch.Tensor:
    """``clamp(||d num / dW|| / (||d den / dW|| + eps), 0, max_value)``, detached: the adaptive
    weight of VQGAN / VA-VAE, with W the weight of one layer both losses reach."""
    g_num = torch.autograd.grad(numerator, layer_weight, retain_graph=True, allow_unused=True)[0]
    g_den = torch.autograd.grad(denominator, layer_weight, retain_graph=True, allow_unused=True)[0]
    if g_num is None or g_den is None:
        raise ValueError("grad_norm_ratio: 'layer_weight' is not reached by both losses")
    return (g_num.norm() / (g_den.norm() + eps)).clamp(0.0, max_value).detach()


class AlignWeight:
    """The alignment loss weight: ``constant`` (SD3 recipe) or ``adaptive`` (ImageNet recipe:
    ``weight * clamp(||grad L_rec|| / (||grad L_align|| + 1e-4), 0, 1e8)`` at the last
    encoder-side layer)."""

    def __init__(self, weight: float = 1.0, mode: str = "constant"):
        if mode not in ("constant", "adaptive"):
            raise ValueError(f"AlignWeight: 'mode' must be 'constant' or 'adaptive', got {mode!r}")
        if weight < 0:
            raise ValueError(f"AlignWeight: 'weight' must be >= 0, got {weight}")
        self.weight, self.mode = float(weight), mode

    def __call__(self, rec_loss: torch.Tensor, align: torch.Tensor, layer_weight: Optional[torch.Tensor]) -> torch.Tensor:
        if self.mode == "constant" or self.weight == 0.0:
            return torch.tensor(self.weight, device=align.device)
        if layer_weight is None:
            raise ValueError("AlignWeight: the adaptive mode needs the encoder's last layer weight")
        return self.weight * grad_norm_ratio(rec_loss, align, layer_weight, 1e8)


# ----------------------------------------------------------------------------------------------
# Perceptual loss (LPIPS, VGG16 variant), from local weights only
# ----------------------------------------------------------------------------------------------
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_LPIPS_TAPS = (3, 8, 15, 22, 29)  # indices of the ReLU outputs LPIPS compares (relu1_2 ... relu5_3)
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    """LPIPS (VGG16 variant: Zhang et al. 2018) with weights from a local file; never downloads.

    ``weights`` is a ``.pth`` / ``.safetensors`` state dict holding both the VGG16 feature
    weights (torchvision's ``features.N.weight`` / ``.bias`` keys, or the ``lpips`` package's
    ``net.slice*.N`` keys) and the five linear heads (``lin0.model.1.weight`` ... as the ``lpips``
    package saves them), or a folder with ``vgg16.pth`` (torchvision VGG16) and ``vgg.pth``
    (the ``lpips`` package's linear heads)."""

    def __init__(self, weights: str):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
                c = v
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(ch, 1, 1, bias=False) for ch in _LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self._load(weights)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def _read(path: str) -> dict:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)

    def _load(self, weights: str) -> None:
        if weights is None or not os.path.exists(weights):
            raise FileNotFoundError(f"LPIPS: 'weights' path {weights!r} does not exist (LPIPS weights are never "
                                    "downloaded; pass a local file or folder, see davae_ext.models.losses.LPIPS)")
        if os.path.isdir(weights):
            state = {}
            for name in ("vgg16.pth", "vgg.pth"):
                f = os.path.join(weights, name)
                if not os.path.exists(f):
                    raise FileNotFoundError(f"LPIPS: 'weights' folder {weights!r} lacks {name}")
                state.update(self._read(f))
        else:
            state = self._read(weights)
        feats, lins = {}, {}
        conv_idx = [i for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]
        for key, value in state.items():
            parts = key.split(".")
            if key.startswith("features.") and len(parts) == 3:
                feats[f"{parts[1]}.{parts[2]}"] = value
            elif key.startswith("net.slice") and len(parts) == 4:  # lpips: net.sliceK.N.weight
                feats[f"{parts[2]}.{parts[3]}"] = value
            elif key.startswith("lin") and key.endswith(".weight"):
                lins[f"{int(parts[0][3:])}.weight"] = value
        missing_conv = [i for i in conv_idx if f"{i}.weight" not in feats]
        if missing_conv or len(lins) != len(self.lins):
            raise ValueError(f"LPIPS: {weights!r} does not hold LPIPS-VGG16 weights (found {len(feats)} VGG tensors "
                             f"and {len(lins)} of the 5 linear heads)")
        self.features.load_state_dict(feats)
        self.lins.load_state_dict(lins)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample distance of images in [-1, 1], shape [B]."""
        h = torch.cat([x, y]).sub(self.shift).div(self.scale)
        total = 0.0
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _LPIPS_TAPS:
                a, b = h.chunk(2)
                a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + self.lins[_LPIPS_TAPS.index(i)]((a - b).pow(2)).mean((1, 2, 3))
                if i == _LPIPS_TAPS[-1]:
                    break
        return total


# ----------------------------------------------------------------------------------------------
# PatchGAN discriminator with hinge loss
# ----------------------------------------------------------------------------------------------
class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / taming ``NLayerDiscriminator``): conv 4x4 stride 2 layers with
    BatchNorm and LeakyReLU(0.2), one logit per patch."""

    def __init__(self, in_channels: int = 3, width: int = 64, layers: int = 3):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = width
        for n in range(1, layers + 1):
            out = width * min(2 ** n, 8)
            stride = 2 if n < layers else 1
            seq += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            ch = out
        seq.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.main = nn.Sequential(*seq)
        for m in self.modules():  # taming's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()

"""Fréchet Inception Distance from a local feature extractor (nothing is downloaded).

    FID = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

over the features of two image sets. :func:`load_inception` takes a TorchScript module mapping
uint8 images ``[N, 3, H, W]`` to features ``[N, F]``: the StyleGAN2-ADA / EDM
``inception-2015-12-05.pt`` (called with ``return_features=True``, 2048 features, the values the
ADM / EDM evaluations report), or any module with that contract.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of ``features`` [N, F], in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"feature_statistics: need features of shape [N >= 2, F], got {list(f.shape)}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2). The trace of the matrix
    square root is the sum of the square roots of the eigenvalues of sigma1 sigma2 (real and
    non-negative for covariance matrices; round-off below zero is clipped)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"frechet_distance: shapes differ: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    eig = np.linalg.eigvals(s1 @ s2)
    tr_sqrt = np.sqrt(np.clip(eig.real, 0.0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def load_inception(path: str, device="cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """A feature function from a local TorchScript file: uint8 images [N, 3, H, W] -> float
    features [N, F]."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"load_inception: {path} is not a file (FID needs a local Inception; nothing is downloaded)")
    module = torch.jit.load(path, map_location=device).eval()

    @torch.no_grad()
    def features(images: torch.Tensor) -> torch.Tensor:
        x = images.to(device)
        try:
            out = module(x, return_features=True)
        except (RuntimeError, TypeError):  # a module without the keyword
            out = module(x)
        return out.float().flatten(1).cpu()

    return features


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] -> uint8 in [0, 255]."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def features_of(feature_fn, batches: Iterable[torch.Tensor]) -> np.ndarray:
    """Features of every image of ``batches`` (tensors in [-1, 1])."""
    return torch.cat([feature_fn(to_uint8(b)) for b in batches]).numpy()

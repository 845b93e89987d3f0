"""SSIM (Wang, Bovik, Sheikh, Simoncelli 2004) as a per-pixel map, differentiable: the SSIM autoencoder's loss and
residual, and part of PIADE's loss."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, size, size)


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = 11, data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004; Gaussian window, sigma 1.5) of (N, 1, H, W) images, reflect-padded so the
    map has the input's size."""
    w = gaussian_window(window).to(a)
    pad = window // 2
    ap, bp = F.pad(a, (pad,) * 4, mode="reflect"), F.pad(b, (pad,) * 4, mode="reflect")
    mu_a, mu_b = F.conv2d(ap, w), F.conv2d(bp, w)
    saa = F.conv2d(ap * ap, w) - mu_a**2
    sbb = F.conv2d(bp * bp, w) - mu_b**2
    sab = F.conv2d(ap * bp, w) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))


def residual_map(x: torch.Tensor, rec: torch.Tensor, shape: tuple[int, int], window: int = 11,
                 sigma: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """1 - SSIM(x, rec) of (1, 1, h, w) tensors: (the residual resized to ``shape`` and blurred, the residual)."""
    residual = (1 - ssim_map(x, rec, window)).clamp_min(0)
    full = F.interpolate(residual, size=shape, mode="bilinear", align_corners=False)[0, 0]
    amap = full.cpu().numpy().astype(np.float32)
    if sigma > 0:
        amap = cv2.GaussianBlur(amap, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    return amap, residual[0, 0].cpu().numpy().astype(np.float32)

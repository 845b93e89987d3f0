"""Patch features on a regular grid, in two modes.

* ``crop`` (the paper, faithful): every ``patch_size`` patch at ``stride`` is cut out, resized to ``input_size``,
  passed through the network on its own (batched) and described by a pooled feature, L1-normalised.
  About 10,500 forward passes for a 1024x700 image at stride 8: the reference, not the production path.
* ``dense``: one forward pass over the whole (optionally rescaled) image. Each requested layer is mean-filtered
  over ``aggregate`` x ``aggregate`` cells (so that a cell describes a patch, not a point), resized to the grid of
  the finest layer and concatenated. Every grid cell gets its patch feature at once.

Both return a :class:`FeatureGrid`; the geometry needed to turn grid scores back into a pixel map travels with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from monitor.model.backbones import Backbone
from monitor.model.grid import blurred, dense_map
from monitor.model.methods import MODES  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class FeatureGrid:
    features: torch.Tensor  # (h, w, C) float32, on the backbone's device
    image_shape: tuple[int, int]  # (H, W) of the source image
    ys: np.ndarray  # (h,) top row of each grid row's patch, in image pixels (crop mode)
    xs: np.ndarray  # (w,) left column of each grid column's patch (crop mode)
    cell: float  # dense mode: image pixels per grid cell; crop mode: the patch size

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.features.shape[0], self.features.shape[1]


def _positions(length: int, patch: int, stride: int) -> np.ndarray:
    """Patch origins covering [0, length): a regular grid plus one flush with the far border if needed."""
    pos = list(range(0, length - patch + 1, stride))
    if pos[-1] != length - patch:
        pos.append(length - patch)
    return np.asarray(pos)


def patch_count(shape: tuple[int, int], patch: int, stride: int) -> int:
    """Number of crop-mode patches (and network passes) for an image of ``shape``."""
    return len(_positions(shape[0], patch, stride)) * len(_positions(shape[1], patch, stride))


class DenseExtractor:
    def __init__(self, backbone: Backbone, scale: float = 1.0, aggregate: int = 3, pad: int = 32):
        if not 0.1 <= scale <= 4:
            raise ValueError(f"scale must be within [0.1, 4], got {scale}")
        if aggregate < 1 or aggregate % 2 == 0:
            raise ValueError(f"aggregate must be an odd number >= 1, got {aggregate}")
        if "avgpool" in backbone.layers:
            raise ValueError("dense mode needs spatial layers; avgpool is for crop mode")
        self.backbone = backbone
        self.scale = scale
        self.aggregate = aggregate
        # reflect padding (in network-input pixels, a multiple of the deepest stride) keeps the zero-padding
        # artefacts of the convolutions out of the image: border cells then look like interior ones
        deepest = max(backbone.info(n).stride for n in backbone.layers)
        if pad < 0 or pad % deepest:
            raise ValueError(f"pad must be a non-negative multiple of {deepest} for layers {backbone.layers}, "
                             f"got {pad}")
        self.pad = pad
        self.device = backbone.mean.device

    def __call__(self, gray: np.ndarray) -> FeatureGrid:
        return self.batch([gray])[0]

    def batch(self, grays: list[np.ndarray]) -> list[FeatureGrid]:
        """One forward pass for several images of one size (a queue of images on the GPU)."""
        H, W = grays[0].shape
        if any(g.shape != (H, W) for g in grays):
            raise ValueError("a batch needs images of one size")
        x = torch.from_numpy(np.stack(grays)).to(self.device)[:, None]  # (B, 1, H, W)
        if self.scale != 1.0:
            size = (max(32, round(H * self.scale)), max(32, round(W * self.scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=self.scale < 1)
        h_in, w_in = x.shape[-2:]
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, mode="reflect")
        x = self.backbone.prepare(x)
        if self.backbone.accelerated is None:  # torch's convolutions are faster channels-last; OpenVINO takes NCHW
            x = x.contiguous(memory_format=torch.channels_last)
        maps = self.backbone(x)
        finest = min(self.backbone.layers, key=lambda n: self.backbone.info(n).stride)
        fs = self.backbone.info(finest).stride
        gh, gw = -(-h_in // fs), -(-w_in // fs)  # grid of the unpadded input
        parts = []
        for name in self.backbone.layers:  # (B, C, h, w) each
            f = maps[name].float()
            if self.pad:
                s, p = self.backbone.info(name).stride, self.pad // self.backbone.info(name).stride
                f = f[..., p:p + -(-h_in // s), p:p + -(-w_in // s)]
            if self.aggregate > 1:
                f = F.avg_pool2d(f, self.aggregate, stride=1, padding=self.aggregate // 2, count_include_pad=False)
            if f.shape[-2:] != (gh, gw):
                f = F.interpolate(f, size=(gh, gw), mode="bilinear", align_corners=False)
            parts.append(f)
        feats = torch.cat(parts, dim=1).permute(0, 2, 3, 1)  # (B, gh, gw, C)
        cell = self.backbone.info(finest).stride / self.scale
        return [FeatureGrid(f.contiguous(), (H, W), np.zeros(0, int), np.zeros(0, int), cell) for f in feats]


class CropExtractor:
    def __init__(self, backbone: Backbone, patch_size: int = 32, stride: int = 8, input_size: int = 224,
                 batch_size: int = 64):
        for key, val, lo in (("patch_size", patch_size, 4), ("stride", stride, 1), ("input_size", input_size, 32),
                             ("batch_size", batch_size, 1)):
            if val < lo:
                raise ValueError(f"{key} must be >= {lo}, got {val}")
        if len(backbone.layers) != 1:
            raise ValueError("crop mode takes exactly one layer (avgpool, or a last conv layer)")
        self.backbone = backbone
        self.patch_size, self.stride, self.input_size, self.batch_size = patch_size, stride, input_size, batch_size
        self.device = backbone.mean.device

    def __call__(self, gray: np.ndarray, progress=None) -> FeatureGrid:
        H, W = gray.shape
        P = self.patch_size
        if H < P or W < P:
            raise ValueError(f"image {W}x{H} is smaller than the patch size {P}")
        ys, xs = _positions(H, P, self.stride), _positions(W, P, self.stride)
        img = torch.from_numpy(gray).to(self.device)
        # (ny, nx, P, P) view of every patch, gathered row by row into batches
        rows = torch.stack([img[y:y + P] for y in ys])  # (ny, P, W)
        patches = torch.stack([rows[:, :, x:x + P] for x in xs], dim=1).reshape(-1, 1, P, P)  # (ny*nx, 1, P, P)
        layer = self.backbone.layers[0]
        out = []
        for i in range(0, len(patches), self.batch_size):
            b = F.interpolate(patches[i:i + self.batch_size], size=(self.input_size,) * 2, mode="bilinear",
                              align_corners=False)
            f = self.backbone(self.backbone.prepare(b).contiguous(memory_format=torch.channels_last))[layer]
            f = f.flatten(1).float()  # avgpool: (B, C); conv: (B, C*h*w)
            out.append(f / f.abs().sum(dim=1, keepdim=True).clamp_min(1e-12))  # L1 normalisation
            if progress is not None:
                progress(len(f))
        feats = torch.cat(out).reshape(len(ys), len(xs), -1)
        return FeatureGrid(feats, (H, W), ys, xs, float(P))


def grid_to_map(scores: torch.Tensor, grid: FeatureGrid, sigma: float = 0.0) -> np.ndarray:
    """Patch scores (h, w) -> float32 pixel map (H, W).

    crop: each pixel gets the mean score of the patches covering it (the paper).
    dense: bilinear interpolation of the grid, cell centres placed at their image position.
    ``sigma`` > 0 adds a Gaussian blur in pixels.
    """
    H, W = grid.image_shape
    s = scores.float()
    if grid.ys.size:  # crop mode: average over covering patches
        P = int(grid.cell)
        acc = torch.zeros(H + 1, W + 1, dtype=torch.float64, device=s.device)
        cnt = torch.zeros_like(acc)
        ys = torch.as_tensor(grid.ys, device=s.device)
        xs = torch.as_tensor(grid.xs, device=s.device)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        val = s.double().flatten()
        # 2-D difference array: +v at (y, x), -v at (y+P, x), -v at (y, x+P), +v at (y+P, x+P); cumsum sums it up
        for dy, dx, sign in ((0, 0, 1), (P, 0, -1), (0, P, -1), (P, P, 1)):
            idx = ((yy.flatten() + dy) * (W + 1) + (xx.flatten() + dx))
            acc.view(-1).index_add_(0, idx, sign * val)
            cnt.view(-1).index_add_(0, idx, sign * torch.ones_like(val))
        acc = acc.cumsum(0).cumsum(1)[:H, :W]
        cnt = cnt.cumsum(0).cumsum(1)[:H, :W]
        out = (acc / cnt.clamp_min(1)).float()
        return blurred(out.cpu().numpy().astype(np.float32, copy=False), sigma)
    return dense_map(s.cpu().numpy(), (H, W), grid.cell, sigma)

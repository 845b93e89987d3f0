"""PIADE (Mishra, Piciarelli, Foresti 2020, "Image anomaly detection by aggregating deep pyramidal
representations").

A pretrained encoder; its last feature map is pooled by pyramidal adaptive average pooling (8x8, 4x4, 2x2, 1x1),
each level turned into 64 channels by a 1x1 convolution with batch norm; every pooled cell is a primary capsule
(64-d); dynamic routing (Sabour et al. 2017, 3 iterations) maps them to two instantiation vectors; a decoder
reconstructs the image from those. Loss = MSE + (1 - SSIM) + perceptual (squared error of pretrained features of
the reconstruction against those of the input), lambda 1 each. PIADE scores whole images: the image score is that
loss; the pixel map is the reconstruction residual 1 - SSIM(input, reconstruction), resized to the image.

The paper's SE-ResNet-18 encoder and VGG11 perceptual network have no offline weights here: the product's
pretrained backbone stands in for both (EfficientNet-Lite0 stage7 as the encoder, its stage3 for the perceptual
loss; SE-ResNet-18, ResNet-18 or VGG11 from a weights file if configured: backbone ``se_resnet18``, encoder layer
``layer4``), frozen; the pyramid, routing and decoder are trained. Images are resized to ``size`` (the whole
image: PIADE has no patches).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from monitor.model.backbones import build_backbone
from monitor.model.methods import PIADEConfig

from .base import QUIET, Progress, Scorer, ScoreResult
from .patch_dictionary import resolve_device
from .ssim import residual_map, ssim_map
from .training import load_module_arrays, module_arrays, optimizer_step, seeded

PYRAMID = (8, 4, 2, 1)


def squash(s: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sabour et al.: keeps the direction, maps the length into [0, 1)."""
    n2 = (s * s).sum(dim, keepdim=True)
    return n2 / (1 + n2) * s / torch.sqrt(n2 + 1e-9)


class DynamicRouting(nn.Module):
    """``n_in`` primary capsules of ``d_in`` -> ``n_out`` capsules of ``d_out`` by routing-by-agreement."""

    def __init__(self, n_in: int, d_in: int, n_out: int = 2, d_out: int = 16, iterations: int = 3):
        super().__init__()
        self.iterations = iterations
        self.W = nn.Parameter(0.05 * torch.randn(n_in, n_out, d_out, d_in))

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # u: (B, n_in, d_in) -> (B, n_out, d_out)
        u_hat = torch.einsum("ijod,bid->bijo", self.W, squash(u))  # (B, n_in, n_out, d_out)
        b = torch.zeros(u_hat.shape[:3], device=u.device, dtype=u.dtype)
        for it in range(self.iterations):
            c = b.softmax(dim=2)
            v = squash((c[..., None] * u_hat).sum(1))  # (B, n_out, d_out)
            if it < self.iterations - 1:
                b = b + (u_hat * v[:, None]).sum(-1)
        return v


class PIADENet(nn.Module):
    def __init__(self, channels: int, capsule_dim: int = 16, iterations: int = 3):
        super().__init__()
        self.levels = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(p), nn.Conv2d(channels, 64, 1),
                                                  nn.BatchNorm2d(64)) for p in PYRAMID)
        self.routing = DynamicRouting(sum(p * p for p in PYRAMID), 64, 2, capsule_dim, iterations)
        self.fc = nn.Sequential(nn.Linear(2 * capsule_dim, 256 * 4 * 4), nn.ReLU())

        def up(a, b):
            return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, 1, 1), nn.BatchNorm2d(b),
                    nn.ReLU()]
        self.decoder = nn.Sequential(*up(256, 128), *up(128, 64), *up(64, 32), *up(32, 32), *up(32, 16),
                                     *up(16, 16), nn.Conv2d(16, 1, 3, 1, 1), nn.Sigmoid())  # 4x4 -> 256x256

    def capsules(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) encoder features -> (B, 2, capsule_dim) instantiation vectors."""
        u = torch.cat([lvl(feats).flatten(2) for lvl in self.levels], dim=2).transpose(1, 2)  # (B, 85, 64)
        return self.routing(u)

    def forward(self, feats: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        v = self.capsules(feats)
        x = self.decoder(self.fc(v.flatten(1)).view(-1, 256, 4, 4))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PIADE(Scorer):
    method = "piade"

    def __init__(self, config: PIADEConfig = PIADEConfig(), device: str = "auto"):
        self.config = config
        self.device = resolve_device(device)
        c = config
        self.backbone = build_backbone(c.backbone, (c.perceptual_layer, c.encoder_layer), c.weights).to(self.device)
        seeded(c.seed)  # the initial weights are part of what the seed fixes
        self.net = PIADENet(self.backbone.info(c.encoder_layer).channels, c.capsule_dim,
                            c.routing_iterations).to(self.device).eval()
        self.fitted = False

    def _resize(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(image).to(self.device)[None, None]
        return F.interpolate(x, size=self.config.size, mode="bilinear", align_corners=False, antialias=True)

    def _features(self, x: torch.Tensor, grad: bool = False) -> dict[str, torch.Tensor]:
        """Frozen backbone features; with ``grad`` the graph is kept (the perceptual loss of a reconstruction)."""
        if grad:
            return self.backbone._run(self.backbone.prepare(x))
        with torch.no_grad():
            return {k: v.clone() for k, v in self.backbone._run(self.backbone.prepare(x)).items()}

    def losses(self, x: torch.Tensor, rec: torch.Tensor, target_feats: dict) -> torch.Tensor:
        """Per-image loss: MSE + (1 - SSIM) + perceptual, lambda 1 each. (B,)"""
        mse = ((rec - x) ** 2).flatten(1).mean(1)
        ssim = 1 - ssim_map(rec, x).flatten(1).mean(1)
        layer = self.config.perceptual_layer
        perc = ((self._features(rec, grad=True)[layer] - target_feats[layer]) ** 2).flatten(1).mean(1)
        return mse + ssim + perc

    def fit(self, images: Sequence[np.ndarray], progress: Progress = QUIET) -> None:
        if not images:
            raise ValueError("fit needs at least one normal image")
        c = self.config
        g = seeded(c.seed)
        full = [torch.from_numpy(im).to(self.device)[None, None] for im in images]
        opt = torch.optim.Adam(self.net.parameters(), lr=c.lr)
        self.net.train()
        tick = progress.phase("training", c.steps, "steps")
        for step in range(c.steps):
            batch = []
            for i in torch.randint(len(full), (c.batch_size,), generator=g).tolist():
                im = full[i]
                H, W = im.shape[-2:]
                f = 0.8 + 0.2 * float(torch.rand(1, generator=g))  # a random crop of 80-100% of the side
                h, w = int(H * f), int(W * f)
                y = int(torch.randint(H - h + 1, (1,), generator=g))
                x = int(torch.randint(W - w + 1, (1,), generator=g))
                crop = F.interpolate(im[..., y:y + h, x:x + w], size=c.size, mode="bilinear", align_corners=False,
                                     antialias=True)
                k = int(torch.randint(4, (1,), generator=g))
                crop = crop.flip(-1) if k & 1 else crop
                batch.append(crop.flip(-2) if k & 2 else crop)
            xb = torch.cat(batch)
            feats = self._features(xb)
            loss = self.losses(xb, self.net(feats[c.encoder_layer], c.size), feats).mean()
            optimizer_step(opt, loss, step, c.steps, c.lr)
            tick(1)
        self.net.eval()
        self.fitted = True

    def score(self, image: np.ndarray) -> ScoreResult:
        if not self.fitted:
            raise RuntimeError("the scorer is not fitted")
        c = self.config
        t0 = time.perf_counter()
        with torch.no_grad():
            x = self._resize(image)
            feats = self._features(x)
            rec = self.net(feats[c.encoder_layer], c.size)
            image_score = float(self.losses(x, rec, feats)[0])
            amap, patch = residual_map(x, rec, image.shape, 11, c.sigma)
        return ScoreResult(amap, patch, image_score, {"score": time.perf_counter() - t0})

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        if not self.fitted:
            raise RuntimeError("the scorer is not fitted")
        meta = {"config": asdict(self.config), "backbone_sha256": self.backbone.weights_sha256}
        return meta, module_arrays(self.net, "net")

    @classmethod
    def from_state(cls, meta: dict, arrays: dict[str, np.ndarray], device: str = "auto") -> "PIADE":
        obj = cls(PIADEConfig(**meta["config"]), device)
        obj.backbone.check_weights(meta["backbone_sha256"])
        load_module_arrays(obj.net, arrays, "net")
        obj.net.to(obj.device).eval()
        obj.fitted = True
        return obj

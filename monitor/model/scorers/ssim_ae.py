"""SSIM autoencoder of Bergmann, Löwe, Fauser, Sattlegger, Steger (2018), "Improving unsupervised defect segmentation
by applying structural similarity to autoencoders".

A convolutional autoencoder on 128x128 gray patches (the paper's layer table: strided 4x4 convolutions, LeakyReLU
0.2, a d = 500 latent for the nanofiber data, a mirrored decoder) trained with the SSIM loss (window 11) on random
crops of the normal images. The images are used at full resolution by default (``downscale`` 1.0): resized to 256
pixels, as the paper does for its texture images, a 1024x700 SEM image has fibers one or two pixels wide, and the
autoencoder never leaves the flat mean image (measured: the SSIM loss stays at the mean image's 0.98 for 300 steps
at 0.25 and 0.5, while at 1.0 it falls from 0.91 to 0.76 in 1,500 steps). The convolutions get He initialisation
and the learning rate a warm-up: with torch's defaults the untrained network outputs a flat gray and a 2,000-step
training at full resolution stayed there. Inference slides the patch over the
(resized) image at ``stride`` (30 in the paper), averages the overlapping reconstructions, and the residual map is
1 - SSIM(input, reconstruction), resized back to the image.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from monitor.model.features import _positions
from monitor.model.methods import SSIMAutoencoderConfig

from .base import QUIET, Progress, Scorer, ScoreResult
from .patch_dictionary import resolve_device
from .ssim import residual_map, ssim_map
from .training import load_module_arrays, module_arrays, optimizer_step, seeded


def _conv(cin, cout, k, s, p):
    return [nn.Conv2d(cin, cout, k, s, p), nn.LeakyReLU(0.2)]


def _deconv(cin, cout, k, s, p):
    return [nn.ConvTranspose2d(cin, cout, k, s, p), nn.LeakyReLU(0.2)]


class SSIMAutoencoderNet(nn.Module):
    """Bergmann et al. 2018, Table 1: 128x128x1 -> 1x1xd -> 128x128x1."""

    def __init__(self, latent: int = 500):
        super().__init__()
        self.encoder = nn.Sequential(
            *_conv(1, 32, 4, 2, 1), *_conv(32, 32, 4, 2, 1), *_conv(32, 32, 3, 1, 1), *_conv(32, 64, 4, 2, 1),
            *_conv(64, 64, 3, 1, 1), *_conv(64, 128, 4, 2, 1), *_conv(128, 64, 3, 1, 1), *_conv(64, 32, 3, 1, 1),
            nn.Conv2d(32, latent, 8, 1, 0))  # 8x8 -> 1x1, linear latent
        self.decoder = nn.Sequential(
            *_deconv(latent, 32, 8, 1, 0), *_conv(32, 64, 3, 1, 1), *_conv(64, 128, 3, 1, 1),
            *_deconv(128, 64, 4, 2, 1), *_conv(64, 64, 3, 1, 1), *_deconv(64, 32, 4, 2, 1),
            *_conv(32, 32, 3, 1, 1), *_deconv(32, 32, 4, 2, 1), nn.ConvTranspose2d(32, 1, 4, 2, 1), nn.Sigmoid())

        for m in self.modules():  # He init for LeakyReLU(0.2); see _he_init
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                _he_init(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _he_init(m: nn.Conv2d | nn.ConvTranspose2d) -> None:
    """He et al. 2015 initialisation for LeakyReLU(0.2), counting the inputs that reach one output pixel (a
    transposed convolution with stride s sees in_channels * k * k / s^2 of them), zero biases. torch's default
    shrinks the signal at each of the 18 layers, so that the untrained network outputs a flat image."""
    fan_in = m.weight[0].numel() if isinstance(m, nn.Conv2d) else \
        m.weight.shape[0] * m.weight.shape[2] * m.weight.shape[3] / (m.stride[0] * m.stride[1])
    nn.init.normal_(m.weight, 0.0, math.sqrt(2 / ((1 + 0.2**2) * fan_in)))
    nn.init.zeros_(m.bias)


class SSIMAutoencoder(Scorer):
    method = "ssim_autoencoder"

    def __init__(self, config: SSIMAutoencoderConfig = SSIMAutoencoderConfig(), device: str = "auto"):
        self.config = config
        self.device = resolve_device(device)
        seeded(config.seed)  # the initial weights are part of what the seed fixes
        self.net = SSIMAutoencoderNet(config.latent).to(self.device).eval()
        self.fitted = False

    def _resize(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(image).to(self.device)[None, None]
        c = self.config
        h = max(c.patch_size, round(image.shape[0] * c.downscale))
        w = max(c.patch_size, round(image.shape[1] * c.downscale))
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=c.downscale < 1)

    # ---------------------------------------------------------------------------------------------------------- fit
    def fit(self, images: Sequence[np.ndarray], progress: Progress = QUIET) -> None:
        if not images:
            raise ValueError("fit needs at least one normal image")
        c = self.config
        g = seeded(c.seed)
        small = [self._resize(im)[0, 0] for im in images]
        opt = torch.optim.AdamW(self.net.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.net.train()
        P = c.patch_size
        tick = progress.phase("training", c.steps, "steps")
        for step in range(c.steps):
            idx = torch.randint(len(small), (c.batch_size,), generator=g)
            crops = []
            for i in idx.tolist():
                im = small[i]
                y = int(torch.randint(im.shape[0] - P + 1, (1,), generator=g))
                x = int(torch.randint(im.shape[1] - P + 1, (1,), generator=g))
                crop = im[y:y + P, x:x + P]
                k = int(torch.randint(8, (1,), generator=g))  # flips and right-angle rotations of a fiber mat
                crop = torch.rot90(crop, k % 4, (0, 1))
                crops.append(crop.flip(1) if k >= 4 else crop)
            batch = torch.stack(crops)[:, None]
            loss = 1 - ssim_map(self.net(batch), batch, c.window).mean()
            optimizer_step(opt, loss, step, c.steps, c.lr, c.warmup)
            tick(1)
        self.net.eval()
        self.fitted = True

    # -------------------------------------------------------------------------------------------------------- score
    @torch.inference_mode()
    def reconstruct(self, small: torch.Tensor) -> torch.Tensor:
        """(1, 1, h, w) resized image -> its reconstruction, overlapping patches averaged."""
        c = self.config
        P = c.patch_size
        h, w = small.shape[-2:]
        ys, xs = _positions(h, P, c.stride), _positions(w, P, c.stride)
        patches = torch.cat([small[..., y:y + P, x:x + P] for y in ys for x in xs])
        rec = torch.cat([self.net(patches[i:i + 64]) for i in range(0, len(patches), 64)])
        acc = torch.zeros_like(small)
        cnt = torch.zeros_like(small)
        for r, (y, x) in zip(rec, [(y, x) for y in ys for x in xs]):
            acc[..., y:y + P, x:x + P] += r
            cnt[..., y:y + P, x:x + P] += 1
        return acc / cnt

    def score(self, image: np.ndarray) -> ScoreResult:
        if not self.fitted:
            raise RuntimeError("the scorer is not fitted")
        c = self.config
        t0 = time.perf_counter()
        small = self._resize(image)
        rec = self.reconstruct(small)
        t1 = time.perf_counter()
        with torch.inference_mode():
            amap, patch = residual_map(small, rec, image.shape, c.window, c.sigma)
        t2 = time.perf_counter()
        return ScoreResult(amap, patch, float(amap.max()), {"reconstruct": t1 - t0, "map": t2 - t1})

    # ---------------------------------------------------------------------------------------------------- save/load
    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        if not self.fitted:
            raise RuntimeError("the scorer is not fitted")
        return {"config": asdict(self.config)}, module_arrays(self.net, "net")

    @classmethod
    def from_state(cls, meta: dict, arrays: dict[str, np.ndarray], device: str = "auto") -> "SSIMAutoencoder":
        obj = cls(SSIMAutoencoderConfig(**meta["config"]), device)
        load_module_arrays(obj.net, arrays, "net")
        obj.net.to(obj.device).eval()
        obj.fitted = True
        return obj

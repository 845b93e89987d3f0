"""DFR, Deep Feature Reconstruction (Yang, Shi, Qi 2020, "Unsupervised anomaly segmentation via deep feature
reconstruction").

Multi-scale regional features: several layers of a pretrained CNN, each mean-filtered over ``aggregate`` cells,
resized to the grid of the finest layer and concatenated (the dense extractor of ``features.py``). A convolutional
autoencoder of 1x1 convolutions (C -> (C+c)/2 -> 2c -> c -> 2c -> (C+c)/2 -> C, batch norm and ReLU between) learns
to reconstruct them on normal images; the latent size c is the number of PCA components that keep ``pca_variance``
(90%) of the training features' variance. Anomaly map = per-cell squared reconstruction error, upsampled.

The paper uses VGG19 (relu1_1 .. relu5_4 at 256x256). Here the product's pretrained backbones are used
(EfficientNet-Lite0 stages 2-5 by default, or ResNet-18 layers from a weights file): no VGG19 weights can be had
offline. Features are standardised per channel (training mean and std) before the autoencoder.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Sequence

import numpy as np
import torch
from torch import nn

from monitor.model.backbones import build_backbone
from monitor.model.features import DenseExtractor, grid_to_map
from monitor.model.methods import DFRConfig

from .base import QUIET, Progress, Scorer, ScoreResult
from .patch_dictionary import resolve_device
from .training import load_module_arrays, module_arrays, optimizer_step, seeded


class FeatureAutoencoder(nn.Module):
    """DFR's CAE of 1x1 convolutions, written as linear layers over feature vectors (the same thing)."""

    def __init__(self, channels: int, latent: int):
        super().__init__()
        mid = (channels + latent) // 2

        def block(a, b):
            return [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        self.net = nn.Sequential(*block(channels, mid), *block(mid, 2 * latent), nn.Linear(2 * latent, latent),
                                 *block(latent, 2 * latent), *block(2 * latent, mid), nn.Linear(mid, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DFR(Scorer):
    method = "dfr"

    def __init__(self, config: DFRConfig = DFRConfig(), device: str = "auto"):
        self.config = config
        self.device = resolve_device(device)
        c = config
        self.backbone = build_backbone(c.backbone, c.layers, c.weights).to(self.device)
        self.extractor = DenseExtractor(self.backbone, c.scale, c.aggregate, c.pad)
        self.channels = sum(self.backbone.info(n).channels for n in self.backbone.layers)
        self.latent: int | None = None
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.cae: FeatureAutoencoder | None = None

    def use_runtime(self, runtime: str) -> str:
        return self.backbone.use_runtime(runtime)  # the backbone only extracts features here (no gradient)

    @property
    def fitted(self) -> bool:
        return self.cae is not None

    def fit(self, images: Sequence[np.ndarray], progress: Progress = QUIET) -> None:
        if not images:
            raise ValueError("fit needs at least one normal image")
        c = self.config
        g = seeded(c.seed)
        tick = progress.phase("extraction", len(images), "images")
        feats = []
        for im in images:
            feats.append(self.extractor(im).features.reshape(-1, self.channels))
            tick(1)
        x = torch.cat(feats).clone()
        self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-6)
        x = (x - self.mean) / self.std
        s = torch.linalg.svdvals(x[torch.randperm(len(x), generator=g)[:50_000].to(x.device)].double())
        frac = (s**2).cumsum(0) / (s**2).sum()
        self.latent = max(8, int((frac < c.pca_variance).sum()) + 1)
        cae = FeatureAutoencoder(self.channels, self.latent).to(self.device)
        opt = torch.optim.Adam(cae.parameters(), lr=c.lr)
        steps = c.epochs * -(-len(x) // c.batch_size)
        cae.train()
        step = 0
        tick = progress.phase("training", c.epochs, "epochs")
        for _ in range(c.epochs):
            order = torch.randperm(len(x), generator=g).to(x.device)
            for i in range(0, len(x), c.batch_size):
                b = x[order[i:i + c.batch_size]]
                if len(b) < 2:
                    continue
                loss = ((cae(b) - b) ** 2).sum(1).mean()
                optimizer_step(opt, loss, step, steps, c.lr)
                step += 1
            tick(1)
        self.cae = cae.eval()

    def score(self, image: np.ndarray) -> ScoreResult:
        if not self.fitted:
            raise RuntimeError("the scorer is not fitted")
        t0 = time.perf_counter()
        grid = self.extractor(image)
        t1 = time.perf_counter()
        with torch.inference_mode():
            f = (grid.features.reshape(-1, self.channels) - self.mean) / self.std
            err = ((self.cae(f) - f) ** 2).sum(1).reshape(grid.grid_shape)
        t2 = time.perf_counter()
        amap = grid_to_map(err, grid, self.config.sigma)
        t3 = time.perf_counter()
        return ScoreResult(amap, err.cpu().numpy().astype(np.float32), float(amap.max()),
                           {"features": t1 - t0, "reconstruct": t2 - t1, "map": t3 - t2})

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        if not self.fitted:
            raise RuntimeError("the scorer is not fitted")
        meta = {"config": asdict(self.config), "backbone_sha256": self.backbone.weights_sha256,
                "latent": self.latent}
        arrays = {"mean": self.mean.cpu().numpy(), "std": self.std.cpu().numpy(), **module_arrays(self.cae, "cae")}
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays: dict[str, np.ndarray], device: str = "auto") -> "DFR":
        obj = cls(DFRConfig(**meta["config"]), device)
        obj.backbone.check_weights(meta["backbone_sha256"])
        obj.latent = int(meta["latent"])
        obj.mean = torch.from_numpy(np.asarray(arrays["mean"])).to(obj.device)
        obj.std = torch.from_numpy(np.asarray(arrays["std"])).to(obj.device)
        cae = FeatureAutoencoder(obj.channels, obj.latent)
        load_module_arrays(cae, arrays, "cae")
        obj.cae = cae.to(obj.device).eval()
        return obj

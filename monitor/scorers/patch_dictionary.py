"""Patch dictionary of Napoletano, Piccoli, Schettini (Sensors 2018), with a dense fast path.

fit:   patch features of defect-free images -> PCA keeping ``pca_variance`` of the variance -> each component
       standardised -> dictionary of ``k`` words: the real features nearest to k-means centroids (the paper), or a
       greedy coreset (k-center, as in PatchCore) when k is large.
score: degree of abnormality of a patch = mean Euclidean distance to its ``m`` nearest words; pixel map from the
       grid (see ``features.grid_to_map``).
calibrate (on normal validation images, before the threshold): the outer ``border_rings`` rings of grid cells score
       higher than the interior on defect-free images (their patches see the reflect-padded border, a pattern the
       dictionary covers poorly), more so on some sides than on others and most in the corners, where two padded
       edges meet, and they spread wider (standard deviation 2x the interior's on the rim, 4x in the corners). Each
       zone (a ring of one side, or the corner blocks: ``border_zones``) gets a gain and an offset that bring its
       validation scores to the interior's mean and spread (the gain never above 1).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from ..backbones import build_backbone
from ..features import MODES, CropExtractor, DenseExtractor, FeatureGrid, grid_to_map
from .base import Progress, ScoreResult

DICTIONARIES = ("kmeans", "coreset")
STATE_ARRAYS = ("mean", "components", "scale", "words", "border_offset", "border_gain")


@dataclass(frozen=True)
class PatchDictionaryConfig:
    backbone: str = "efficientnet_lite0"
    weights: str = "package"  # efficientnet_lite0: "package"; resnet18: a checkpoint file; "none": random (tests)
    mode: str = "dense"
    layers: tuple[str, ...] = ("stage3", "stage5")
    # dense mode
    scale: float = 1.0
    aggregate: int = 1
    pad: int = 32
    # crop mode (the paper)
    patch_size: int = 32
    stride: int = 8
    input_size: int = 224
    batch_size: int = 64
    # dictionary
    pca_variance: float = 0.999
    whiten: bool = True
    dictionary: str = "coreset"
    k: int = 4096
    m: int = 1
    n_init: int = 10
    max_fit_patches: int = 200_000
    sigma: float = 4.0
    border_rings: int = 2  # outer grid rings whose scores get a gain and offset per side and corner (--val; 0 = none)
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.dictionary not in DICTIONARIES:
            raise ValueError(f"dictionary must be one of {', '.join(DICTIONARIES)}, got {self.dictionary!r}")
        if not 0 < self.pca_variance <= 1:
            raise ValueError(f"pca_variance must be in (0, 1], got {self.pca_variance}")
        if self.border_rings < 0:
            raise ValueError(f"border_rings must be >= 0, got {self.border_rings}")
        for key in ("k", "m", "n_init", "max_fit_patches"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.m > self.k:
            raise ValueError(f"m ({self.m}) cannot exceed k ({self.k})")
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


def greedy_coreset(x: torch.Tensor, k: int, seed: int = 0, proj_dim: int = 128) -> torch.Tensor:
    """Indices of ``k`` rows of ``x`` chosen by greedy k-center (farthest point) selection.

    Distances are computed in a random projection to ``proj_dim`` dimensions when x is wider (PatchCore's trick).
    Each pick costs one matrix-vector product into buffers allocated once (``|x_j - c|^2 = |x_j|^2 - 2 x_j.c +
    |c|^2``, the squared norms computed once): no n-sized allocation per iteration, whose cost depends on the
    machine's allocator far more than on the arithmetic.
    """
    n = len(x)
    if k >= n:
        return torch.arange(n, device=x.device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    if x.shape[1] > proj_dim:
        proj = torch.randn(x.shape[1], proj_dim, generator=g).to(x.device) / proj_dim**0.5
        x = x @ proj
    x = x.contiguous()
    sq = (x * x).sum(1)
    first = int(torch.randint(n, (1,), generator=g))
    selected = torch.empty(k, dtype=torch.long, device=x.device)
    selected[0] = first
    mind = torch.addmv(sq, x, x[first], alpha=-2).add_(sq[first])  # squared distance to the nearest pick
    d = torch.empty_like(mind)
    for i in range(1, k):
        nxt = int(torch.argmax(mind))
        selected[i] = nxt
        torch.addmv(sq, x, x[nxt], alpha=-2, out=d).add_(sq[nxt])
        torch.minimum(mind, d, out=mind)
    return selected


def border_rings(shape: tuple[int, int]) -> np.ndarray:
    """(h, w) int array: each grid cell's distance in cells to the nearest edge of the grid (0 = outermost ring)."""
    h, w = shape
    y = np.minimum(np.arange(h), np.arange(h)[::-1])
    x = np.minimum(np.arange(w), np.arange(w)[::-1])
    return np.minimum(y[:, None], x[None, :])


def border_zones(shape: tuple[int, int], rings: int) -> np.ndarray:
    """(h, w) int array: the calibration zone of each grid cell, for ``rings`` outer rings.

    Zone ``side * rings + r``: ring r (cells to the nearest edge) of side 0 top, 1 bottom, 2 left, 3 right, outside
    the corners; zone ``4 * rings``: the corner blocks (cells within ``rings`` of two edges), the four corners pooled
    (16 cells of a grid with 2 rings: a spread from fewer would be noise); zone ``4 * rings + 1``: the interior. The
    sides differ (on NanoTWICE the top and right rims score about 1 higher than the bottom and left ones, on the
    validation and the test images alike) and the corners score about twice as high as the rims, so one offset per
    ring left the corners and two sides hot.
    """
    h, w = shape
    R = rings
    y, x = np.arange(h)[:, None], np.arange(w)[None, :]
    dy, dx = np.minimum(y, h - 1 - y), np.minimum(x, w - 1 - x)
    zone = np.full((h, w), 4 * R + 1)
    rim_y, rim_x = (dy < R) & (dx >= R), (dx < R) & (dy >= R)
    side_y = np.where(2 * y < h, 0, 1)  # top or bottom
    side_x = np.where(2 * x < w, 2, 3)  # left or right
    zone = np.where(rim_y, side_y * R + dy, zone)
    zone = np.where(rim_x, side_x * R + dx, zone)
    return np.where((dy < R) & (dx < R), 4 * R, zone)


def nearest_distances(q: torch.Tensor, words: torch.Tensor, m: int, chunk: int = 8192) -> torch.Tensor:
    """Mean Euclidean distance from each row of q (n, d) to its m nearest rows of words (k, d)."""
    w2 = (words * words).sum(1)
    out = []
    for i in range(0, len(q), chunk):
        a = q[i:i + chunk]
        d2 = (a * a).sum(1, keepdim=True) - 2 * a @ words.T + w2  # (c, k)
        if m == 1:
            d = d2.min(1).values.clamp_min(0).sqrt()
        else:
            d = d2.topk(m, dim=1, largest=False).values.clamp_min(0).sqrt().mean(1)
        out.append(d)
    return torch.cat(out)


class PatchDictionary:
    method = "patch_dictionary"

    def __init__(self, config: PatchDictionaryConfig = PatchDictionaryConfig(), device: str = "auto"):
        self.config = config
        self.device = resolve_device(device)
        c = config
        self.backbone = build_backbone(c.backbone, c.layers, c.weights).to(self.device)
        if c.mode == "dense":
            self.extractor = DenseExtractor(self.backbone, c.scale, c.aggregate, c.pad)
        else:
            self.extractor = CropExtractor(self.backbone, c.patch_size, c.stride, c.input_size, c.batch_size)
        self.mean: torch.Tensor | None = None  # (C,)
        self.components: torch.Tensor | None = None  # (C, r)
        self.scale: torch.Tensor | None = None  # (r,) std of each component
        self.words: torch.Tensor | None = None  # (k, r)
        # per border zone, once calibrated (empty = none): score -> gain * score + offset
        self.border_offset = torch.zeros(0, device=self.device)  # (4 * border_rings + 1,)
        self.border_gain = torch.zeros(0, device=self.device)  # (4 * border_rings + 1,)

    # ---------------------------------------------------------------------------------------------------- features
    def extract(self, image: np.ndarray, progress: Progress | None = None) -> FeatureGrid:
        if isinstance(self.extractor, CropExtractor):
            return self.extractor(image, progress)
        return self.extractor(image)

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """(n, C) backbone features -> (n, r) standardised PCA coordinates."""
        return ((feats - self.mean) @ self.components) / self.scale

    @property
    def fitted(self) -> bool:
        return self.words is not None

    # ---------------------------------------------------------------------------------------------------------- fit
    def fit(self, images: Sequence[np.ndarray], progress: Progress | None = None) -> None:
        if not images:
            raise ValueError("fit needs at least one normal image")
        c = self.config
        feats = []
        for img in images:
            grid = self.extract(img, progress if c.mode == "crop" else None)
            feats.append(grid.features.reshape(-1, grid.features.shape[-1]))
            if progress is not None and c.mode == "dense":
                progress(1)
        x = torch.cat(feats).double()
        g = torch.Generator(device="cpu").manual_seed(c.seed)
        if len(x) > c.max_fit_patches:
            x = x[torch.randperm(len(x), generator=g)[: c.max_fit_patches].to(x.device)]
        mean = x.mean(0)
        xc = x - mean
        _, s, vt = torch.linalg.svd(xc, full_matrices=False)
        var = s**2
        frac = var.cumsum(0) / var.sum()
        r = int((frac < c.pca_variance - 1e-12).sum()) + 1
        r = min(r, vt.shape[0])
        comps = vt[:r].T  # (C, r)
        z = xc @ comps
        scale = z.std(0).clamp_min(1e-12) if c.whiten else torch.ones(r, dtype=z.dtype, device=z.device)
        z = z / scale
        if c.dictionary == "kmeans":
            words = self._kmeans_words(z, c)
        else:
            words = z[greedy_coreset(z.float(), c.k, c.seed)]
        self.mean, self.components, self.scale = mean.float(), comps.float(), scale.float()
        self.words = words.float().contiguous()
        self.border_offset = self.border_gain = torch.zeros(0, device=self.device)

    def calibrate(self, images: Sequence[np.ndarray]) -> None:
        """Fit the border-zone offsets on defect-free images that did not build the dictionary (validation)."""
        R = self.config.border_rings
        self.border_offset = self.border_gain = torch.zeros(0, device=self.device)
        if R == 0 or not images:
            return
        n_zones = 4 * R + 2  # the last: the interior
        n, s1, s2 = np.zeros(n_zones), np.zeros(n_zones), np.zeros(n_zones)
        for img in images:
            s = self.patch_scores(self.extract(img)).cpu().numpy().astype(np.float64)
            if min(s.shape) <= 2 * R:
                raise ValueError(f"border calibration needs a grid larger than {2 * R} cells each way, "
                                 f"got {s.shape[1]}x{s.shape[0]}; lower border_rings")
            z = border_zones(s.shape, R).ravel()
            n += np.bincount(z, minlength=n_zones)
            s1 += np.bincount(z, s.ravel(), n_zones)
            s2 += np.bincount(z, s.ravel() ** 2, n_zones)
        mean = s1 / n
        sd = np.sqrt(np.maximum(s2 / n - mean**2, 1e-12))
        gain = np.minimum(sd[-1] / sd[:-1], 1.0)  # damp a zone's wider spread, never amplify
        self.border_gain = torch.from_numpy(gain).float().to(self.device)
        self.border_offset = torch.from_numpy(mean[-1] - gain * mean[:-1]).float().to(self.device)

    @staticmethod
    def _kmeans_words(z: torch.Tensor, c: PatchDictionaryConfig) -> torch.Tensor:
        from sklearn.cluster import KMeans

        zn = z.cpu().numpy()
        k = min(c.k, len(zn))
        km = KMeans(n_clusters=k, init="k-means++", n_init=c.n_init, random_state=c.seed).fit(zn)
        # the words are the real feature vectors nearest to each centroid (the paper)
        cent = torch.from_numpy(km.cluster_centers_).to(z)
        idx = torch.cdist(cent, z).argmin(1)
        return z[idx]

    # -------------------------------------------------------------------------------------------------------- score
    def patch_scores(self, grid: FeatureGrid) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("the scorer is not fitted")
        f = grid.features.reshape(-1, grid.features.shape[-1])
        d = nearest_distances(self.project(f), self.words, self.config.m).reshape(grid.grid_shape)
        n, R = len(self.border_offset), self.config.border_rings
        if n:
            if n == 4 * R + 1:
                zones = border_zones(grid.grid_shape, R)
            else:  # a model from before the per-side zones: one offset per ring
                zones = np.minimum(border_rings(grid.grid_shape), n)
            zones = torch.from_numpy(zones).to(d.device)
            offset = torch.cat([self.border_offset, self.border_offset.new_zeros(1)])  # interior: unchanged
            if len(self.border_gain):
                d = d * torch.cat([self.border_gain, self.border_gain.new_ones(1)])[zones]
            d = d + offset[zones]
        return d

    def score(self, image: np.ndarray) -> ScoreResult:
        return self.score_batch([image])[0]

    def score_batch(self, images: Sequence[np.ndarray]) -> list[ScoreResult]:
        """Score several images; in dense mode, images of one size share one forward pass."""
        t0 = time.perf_counter()
        if isinstance(self.extractor, DenseExtractor) and len({im.shape for im in images}) == 1:
            grids = self.extractor.batch(list(images))
        else:
            grids = [self.extract(im) for im in images]
        t1 = time.perf_counter()
        out = []
        for grid in grids:
            ta = time.perf_counter()
            s = self.patch_scores(grid)
            tb = time.perf_counter()
            amap = grid_to_map(s, grid, self.config.sigma)
            tc = time.perf_counter()
            out.append(ScoreResult(amap, s.cpu().numpy().astype(np.float32), float(amap.max()),
                                   {"features": (t1 - t0) / len(grids), "distances": tb - ta, "map": tc - tb}))
        return out

    # ---------------------------------------------------------------------------------------------------- save/load
    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        if not self.fitted:
            raise RuntimeError("the scorer is not fitted")
        meta = {"config": asdict(self.config), "backbone_sha256": self.backbone.weights_sha256}
        arrays = {name: getattr(self, name).cpu().numpy() for name in STATE_ARRAYS}
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays: dict[str, np.ndarray], device: str = "auto") -> "PatchDictionary":
        cfg = PatchDictionaryConfig(**meta["config"])
        obj = cls(cfg, device)
        obj.backbone.check_weights(meta["backbone_sha256"])
        for name in STATE_ARRAYS:
            if name in arrays or not name.startswith("border_"):  # older models lack them: uncalibrated / gain 1
                setattr(obj, name, torch.from_numpy(np.asarray(arrays[name])).to(obj.device))
        if len(obj.border_offset) not in (0, cfg.border_rings, 4 * cfg.border_rings + 1):
            raise ValueError(f"border_offset has {len(obj.border_offset)} entries, the configuration's "
                             f"border_rings {cfg.border_rings} needs {4 * cfg.border_rings + 1}")
        return obj

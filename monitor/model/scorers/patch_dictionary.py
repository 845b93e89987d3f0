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

import logging
import time
from dataclasses import asdict
from typing import Sequence

import numpy as np
import torch

from monitor.model.backbones import build_backbone
from monitor.model.features import CropExtractor, DenseExtractor, FeatureGrid, grid_to_map
from monitor.model.grid import border_rings, border_zones, calibrated  # noqa: F401 (border_*: re-exported)
from monitor.model.methods import PatchDictionaryConfig

from .base import QUIET, Progress, Scorer, ScoreResult, Tick

log = logging.getLogger(__name__)

STATE_ARRAYS = ("mean", "components", "scale", "words", "border_offset", "border_gain", "coarse_words", "coarse_limit")
OPTIONAL_ARRAYS = ("border_offset", "border_gain", "coarse_words", "coarse_limit")  # older models lack them


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


# Above this many rows the coreset is built in blocks of COMPOSE_BLOCK rows (see greedy_coreset): 16,384 rows of
# 128 float32 are 8 MB, which stays in a server CPU's cache from pick to pick. On a 2-core EPYC VM one pick cost
# 0.27 ms over such a block and 2.3 ms over 44,544 rows (23 MB): 9x the time for 2.7x the rows.
COMPOSE_ABOVE = 16_384
COMPOSE_BLOCK = 16_384


def greedy_coreset(x: torch.Tensor, k: int, seed: int = 0, proj_dim: int = 128, tick: Tick | None = None,
                   compose_above: int = COMPOSE_ABOVE, block: int = COMPOSE_BLOCK) -> torch.Tensor:
    """Indices of ``k`` rows of ``x`` chosen by greedy k-center (farthest point) selection, deterministic for a seed.

    Distances are computed in a random projection to ``proj_dim`` dimensions when x is wider (PatchCore's trick).
    Up to ``compose_above`` rows the selection runs over all rows at once. Above, it is composed (Indyk et al.
    2014, composable core-sets for k-center): each block of ``block`` consecutive rows is reduced to its own k
    farthest-point picks, then the picks of all blocks are reduced to k the same way (in blocks again while they
    are many). The cost is then linear in the row count, each block stays in the CPU's cache, and the result
    covers the data within a constant factor of the one-pass selection (on 44,544 random 147-d rows: mean
    distance to the nearest word 13.32 either way, largest 16.30 composed against 16.50 in one pass).
    ``tick`` is called with picks made (the ``dictionary`` phase of a fit).
    """
    n = len(x)
    if k >= n:
        return torch.arange(n, device=x.device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    if x.shape[1] > proj_dim:
        proj = torch.randn(x.shape[1], proj_dim, generator=g).to(x.device) / proj_dim**0.5
        x = x @ proj
    x = x.contiguous()
    tick = tick or (lambda n: None)
    if n <= compose_above:
        return _farthest_points(x, k, g, tick)
    idx = torch.arange(n, device=x.device)
    while len(idx) > compose_above:
        parts = [idx[i:i + block] for i in range(0, len(idx), block)]
        idx = torch.cat([p[_farthest_points(x[p], min(k, len(p)), g, tick)] for p in parts])
    return idx[_farthest_points(x[idx], k, g, tick)]


def coreset_picks(n: int, k: int, compose_above: int = COMPOSE_ABOVE, block: int = COMPOSE_BLOCK) -> int:
    """The number of picks ``greedy_coreset`` makes for n rows (the ``dictionary`` phase's total)."""
    if k >= n:
        return 0
    total = 0
    while n > compose_above:
        sizes = [min(block, n - i) for i in range(0, n, block)]
        total += sum(min(k, s) for s in sizes)
        n = sum(min(k, s) for s in sizes)
    return total + k


def _farthest_points(x: torch.Tensor, k: int, g: torch.Generator, tick: Tick) -> torch.Tensor:
    """Greedy k-center over all rows of x. Each pick costs one matrix-vector product into buffers allocated once
    (``|x_j - c|^2 = |x_j|^2 - 2 x_j.c + |c|^2``, the squared norms computed once): no n-sized allocation per
    iteration, whose cost depends on the machine's allocator far more than on the arithmetic."""
    n = len(x)
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
        if (i + 1) % 256 == 0:
            tick(256)
    tick(k % 256)
    return selected


NN_CHUNK = 1024  # query rows per block of the nearest-word search: a 1024 x 4096 block is 16 MB, cache-sized


def nearest_distances(q: torch.Tensor, words: torch.Tensor, m: int, w2: torch.Tensor | None = None,
                      buf: torch.Tensor | None = None) -> torch.Tensor:
    """Mean Euclidean distance from each row of q (n, d) to its m nearest rows of words (k, d).

    ``|q - w|^2 = |q|^2 - 2 q.w + |w|^2``: per block of NN_CHUNK queries one ``addmm`` into ``buf`` (NN_CHUNK, k),
    reused from block to block (and from image to image when the caller keeps it), then the minimum over the words.
    ``w2``: the words' squared norms, when the caller keeps them.
    """
    k = len(words)
    if w2 is None:
        w2 = (words * words).sum(1)
    if buf is None or buf.shape[1] != k or buf.dtype != q.dtype or buf.device != q.device:
        buf = torch.empty(min(NN_CHUNK, len(q)), k, dtype=q.dtype, device=q.device)
    out = torch.empty(len(q), dtype=q.dtype, device=q.device)
    wt = words.T
    for i in range(0, len(q), len(buf)):
        a = q[i:i + len(buf)]
        d2 = torch.addmm(w2, a, wt, alpha=-2, out=buf[:len(a)])  # |w|^2 - 2 q.w; |q|^2 added after the min
        if m == 1:
            torch.amin(d2, 1, out=out[i:i + len(a)])
        else:
            out[i:i + len(a)] = d2.topk(m, dim=1, largest=False).values.add_((a * a).sum(1, keepdim=True)) \
                .clamp_(min=0).sqrt_().mean(1)
    if m == 1:
        out.add_((q * q).sum(1)).clamp_(min=0).sqrt_()
    return out


class PatchDictionary(Scorer):
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
        # the coarse search (``coarse_words`` > 0): the indices of the words most often nearest, and the distance
        # over which a cell is searched among all words (empty: every cell against every word)
        self.coarse_words = torch.zeros(0, dtype=torch.long, device=self.device)
        self.coarse_limit = torch.zeros(0, device=self.device)
        self._w2: torch.Tensor | None = None  # the words' squared norms, once scored
        self._nn_buf: torch.Tensor | None = None  # the nearest-word search's block, allocated at the first image
        self._coarse: tuple | None = None  # the coarse words, their squared norms and their search block

    # ---------------------------------------------------------------------------------------------------- features
    def use_runtime(self, runtime: str) -> str:
        return self.backbone.use_runtime(runtime)

    def extract(self, image: np.ndarray, progress: Tick | None = None) -> FeatureGrid:
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
    def fit(self, images: Sequence[np.ndarray], progress: Progress = QUIET) -> None:
        """Features of every image -> PCA -> dictionary. Each image keeps at most ``max_fit_patches / len(images)``
        of its cells (a seeded random subset), so that memory stays bounded however many images come."""
        if not images:
            raise ValueError("fit needs at least one normal image")
        c = self.config
        g = torch.Generator(device="cpu").manual_seed(c.seed)
        quota = -(-c.max_fit_patches // len(images))
        if c.mode == "crop":
            from monitor.model.features import patch_count

            tick = progress.phase("extraction", sum(patch_count(im.shape, c.patch_size, c.stride) for im in images),
                                  "patches")
        else:
            tick = progress.phase("extraction", len(images), "images")
        feats = []
        for img in images:
            grid = self.extract(img, tick if c.mode == "crop" else None)
            f = grid.features.reshape(-1, grid.features.shape[-1])
            if len(f) > quota:
                f = f[torch.randperm(len(f), generator=g)[:quota].to(f.device)]
            feats.append(f.float())
            if c.mode == "dense":
                tick(1)
        pca_done = progress.phase("pca", 1, "steps")
        x = torch.cat(feats)  # (n, C) float32
        del feats
        # mean and covariance summed in float64 block by block (no float64 copy of the data); principal axes from
        # the covariance (C x C): the axes of an SVD of the data, at a fraction of the memory; each axis' sign fixed
        # (largest loading positive) so that the model is the same on every machine
        mean = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        for b in x.split(16_384):
            mean += b.double().sum(0)
        mean /= len(x)
        cov = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        for b in x.split(16_384):
            b = b.double() - mean
            cov += b.T @ b
        evals, evecs = torch.linalg.eigh(cov)
        evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
        evecs = evecs * torch.sign(evecs.gather(0, evecs.abs().argmax(0, keepdim=True)))
        frac = evals.cumsum(0) / evals.sum().clamp_min(1e-300)
        r = min(int((frac < c.pca_variance - 1e-12).sum()) + 1, len(evals))
        comps = evecs[:, :r].contiguous()  # (C, r)
        x -= mean.float()
        z = x @ comps.float()  # (n, r) float32
        del x
        # the components' spread: their variances are the covariance's eigenvalues
        scale = (evals[:r] / max(len(z) - 1, 1)).sqrt().clamp_min(1e-12) if c.whiten \
            else torch.ones(r, dtype=torch.float64, device=z.device)
        z /= scale.float()
        pca_done(1)
        if c.dictionary == "kmeans":
            progress.phase("dictionary", 1, "steps")
            words = self._kmeans_words(z, c)
        else:
            tick = progress.phase("dictionary", coreset_picks(len(z), c.k), "words")
            words = z[greedy_coreset(z, c.k, c.seed, tick=tick)]
        self.mean, self.components, self.scale = mean.float(), comps.float(), scale.float()
        self.words = words.float().contiguous()
        self._w2 = self._coarse = None
        self.border_offset = self.border_gain = torch.zeros(0, device=self.device)
        self.coarse_limit = torch.zeros(0, device=self.device)
        self.coarse_words = self._most_used(z, c.coarse_words, c.seed)

    def _most_used(self, z: torch.Tensor, n: int, seed: int, sample: int = 50_000) -> torch.Tensor:
        """The ``n`` words that are nearest to the most of (a seeded sample of) the training rows ``z``, in index
        order; empty when ``n`` is 0 or not fewer than the words."""
        if not n or n >= len(self.words) or self.config.m != 1:
            return torch.zeros(0, dtype=torch.long, device=self.device)
        g = torch.Generator(device="cpu").manual_seed(seed + 1)
        rows = z[torch.randperm(len(z), generator=g)[:sample].to(z.device)]
        w2 = (self.words * self.words).sum(1)
        nearest = torch.cat([torch.addmm(w2, part, self.words.T, alpha=-2).argmin(1) for part in rows.split(1024)])
        counts = torch.bincount(nearest, minlength=len(self.words)).double()
        counts -= torch.arange(len(self.words), device=counts.device) * 1e-9  # ties: the lower index
        return torch.sort(torch.topk(counts, n).indices).values
    def calibrate(self, images: Sequence[np.ndarray], progress: Progress = QUIET) -> None:
        """Fit the border-zone offsets on defect-free images that did not build the dictionary (validation)."""
        R = self.config.border_rings
        self.border_offset = self.border_gain = torch.zeros(0, device=self.device)
        self.coarse_limit = torch.zeros(0, device=self.device)  # every word searched while calibrating
        if not images:
            return
        tick = progress.phase("calibration", len(images), "images")
        n_zones = 4 * R + 2  # the last: the interior
        n, s1, s2 = np.zeros(n_zones), np.zeros(n_zones), np.zeros(n_zones)
        raw = []
        for img in images:
            s = self.distances(self.extract(img)).astype(np.float64)
            raw.append(s.ravel())
            if R == 0:
                tick(1)
                continue
            if min(s.shape) <= 2 * R:
                raise ValueError(f"border calibration needs a grid larger than {2 * R} cells each way, "
                                 f"got {s.shape[1]}x{s.shape[0]}; lower border_rings")
            z = border_zones(s.shape, R).ravel()
            n += np.bincount(z, minlength=n_zones)
            s1 += np.bincount(z, s.ravel(), n_zones)
            s2 += np.bincount(z, s.ravel() ** 2, n_zones)
            tick(1)
        if len(self.coarse_words):  # the cells of normal images over this quantile are searched among all words
            limit = np.quantile(np.concatenate(raw), self.config.coarse_quantile)
            self.coarse_limit = torch.tensor([limit], dtype=torch.float32, device=self.device)
        if R == 0:
            return
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
        idx = torch.cat([torch.cdist(part, z).argmin(1) for part in cent.split(256)])  # 256 x n at a time
        return z[idx]

    # -------------------------------------------------------------------------------------------------------- score
    def patch_scores(self, grid: FeatureGrid) -> np.ndarray:
        """(h, w) float32: each cell's distance to its nearest words, the border zones calibrated."""
        return calibrated(self.distances(grid), self.border_offset.cpu().numpy(), self.border_gain.cpu().numpy(),
                          self.config.border_rings)

    def distances(self, grid: FeatureGrid) -> np.ndarray:
        """(h, w) float32: each cell's distance to its nearest words, before the border calibration (what the
        inference graph computes)."""
        if not self.fitted:
            raise RuntimeError("the scorer is not fitted")
        f = grid.features.reshape(-1, grid.features.shape[-1])
        if self._w2 is None:
            self._w2 = (self.words * self.words).sum(1)
        z = self.project(f)
        if self._nn_buf is None or self._nn_buf.device != z.device:
            self._nn_buf = torch.empty(NN_CHUNK, len(self.words), device=z.device)  # kept: no per-image allocation
        if len(self.coarse_limit):
            d = self._coarse_to_fine(z)
        else:
            d = nearest_distances(z, self.words, self.config.m, self._w2, self._nn_buf)
        return d.reshape(grid.grid_shape).cpu().numpy()

    def keep_coarse_search_under(self, threshold: float) -> None:
        """The coarse search's distances are upper bounds under its limit: keep them under the map's threshold in
        every border zone (gain x limit + offset), or search every cell against every word."""
        if not len(self.coarse_limit):
            return
        limit = float(self.coarse_limit[0])
        gain, offset = self.border_gain.cpu().numpy(), self.border_offset.cpu().numpy()
        highest = max([limit] + ([float(v) for v in (gain * limit + offset)] if len(gain) == len(offset) else []))
        if highest >= threshold:
            log.warning("the coarse search's limit (%.2f, %.2f in the border zones) is not under the threshold %.2f: "
                        "every cell is searched against every word", limit, highest, threshold)
            self.coarse_limit = self.coarse_limit[:0]

    def _coarse_to_fine(self, z: torch.Tensor) -> torch.Tensor:
        """Each cell's distance to its nearest word among the ``coarse_words`` most used, then among all words
        for the cells where that is over ``coarse_limit``: exact over the limit (where defects and the threshold
        are), an upper bound under it (a cell of a normal image is over it in 1 - ``coarse_quantile`` of cases)."""
        if self._coarse is None:
            ws = self.words[self.coarse_words].contiguous()
            self._coarse = (ws, (ws * ws).sum(1), torch.empty(NN_CHUNK, len(ws), device=z.device))
        ws, ws2, buf = self._coarse
        d = nearest_distances(z, ws, 1, ws2, buf)
        sel = torch.nonzero(d > self.coarse_limit[0]).squeeze(1)
        if len(sel):
            d[sel] = nearest_distances(z[sel], self.words, 1, self._w2, self._nn_buf)
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
            amap = grid_to_map(torch.from_numpy(s), grid, self.config.sigma)
            tc = time.perf_counter()
            out.append(ScoreResult(amap, s, float(amap.max()),
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
            if name in arrays or name not in OPTIONAL_ARRAYS:  # older models lack them: uncalibrated, gain 1, exact
                setattr(obj, name, torch.from_numpy(np.asarray(arrays[name])).to(obj.device))
        if len(obj.border_offset) not in (0, cfg.border_rings, 4 * cfg.border_rings + 1):
            raise ValueError(f"border_offset has {len(obj.border_offset)} entries, the configuration's "
                             f"border_rings {cfg.border_rings} needs {4 * cfg.border_rings + 1}")
        return obj

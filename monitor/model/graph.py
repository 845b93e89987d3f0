"""The fitted patch-dictionary scorer as one OpenVINO graph: image in, each grid cell's distance to its nearest
dictionary word out. Scoring with it needs numpy, OpenCV and OpenVINO only: no torch.

The graph (``build``, at fit time, from the torch scorer) is the dense scorer op for op:

    image (N, 1, H, W), intensities as ``Model.prepare`` gives them
      -> resize by ``scale`` (when not 1) -> reflect padding of ``pad`` pixels -> ImageNet-style normalisation
      -> the backbone (EfficientNet-Lite0, batch norms folded into the convolutions)
      -> each layer cropped back to the unpadded image, mean-filtered over ``aggregate`` cells, resized to the
         finest layer's grid, concatenated
      -> PCA and whitening as one 1x1 convolution: z = (f - mean) . components / scale
      -> |z - w|^2 = |z|^2 - 2 z.w + |w|^2 for every word w: one 1x1 convolution with the words as its filters
         and their squared norms as its bias, then the minimum over the words (the mean of the ``m`` smallest)
      -> square root: (N, h, w) distances

The border zones' gains and offsets (which depend on the grid's size) and the pixel map (bilinear upsampling and
a Gaussian blur) follow in numpy and OpenCV (``grid.py``), the same code the torch scorer uses, so the two paths
differ only in the distances. The graph is saved as OpenVINO IR (``scorer.xml`` + ``scorer.bin``: a text graph
and raw weights, nothing executable) in the model directory, their sha256 recorded in ``model.json`` and checked at
load (``artifact.load_artifact``). Built once per fit and checked against the torch scorer on the first
validation image (``fit_graph``): a graph that disagrees is not saved, and the model then needs torch to score.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from monitor.model.grid import calibrated, dense_map
from monitor.model.methods import PatchDictionaryConfig
from monitor.model.scorers.base import Scorer, ScoreResult

log = logging.getLogger(__name__)

XML, BIN = "scorer.xml", "scorer.bin"
# largest |graph - torch| allowed on the check image, as a fraction of the largest torch distance: float32 kernels
# that sum in another order differ by about 1e-6 of it
TOLERANCE = 1e-4


def import_openvino():
    """``openvino`` without its telemetry: a ``None`` in ``sys.modules`` makes ``import openvino_telemetry`` raise
    ImportError, and every OpenVINO module that imports it then uses ``openvino.tools.ovc.telemetry_stub``."""
    sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


class GraphUnavailable(RuntimeError):
    """This model or configuration has no inference graph (another method or backbone, crop mode)."""


def supported(config: PatchDictionaryConfig) -> str | None:
    """None when ``config`` can be built as a graph, else why not."""
    if config.mode != "dense":
        return "crop mode (the paper's reference) runs on torch only"
    if config.backbone != "efficientnet_lite0":
        return f"the {config.backbone} backbone has no OpenVINO graph"
    return None


def build(scorer):
    """The ``openvino.Model`` of a fitted torch ``PatchDictionary`` (needs torch: the backbone's weights)."""
    from monitor.model.openvino_backbone import lite0_nodes

    c = scorer.config
    why = supported(c)
    if why:
        raise GraphUnavailable(why)
    ov = import_openvino()
    import openvino.opset13 as ops

    bb = scorer.backbone
    const = lambda a: ops.constant(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    i64 = lambda a: ops.constant(np.asarray(a, dtype=np.int64))  # noqa: E731
    image = ops.parameter([-1, 1, -1, -1], np.float32, name="image")
    y = image
    if c.scale != 1.0:  # as DenseExtractor: size max(32, round(side * scale)), antialiased when shrinking
        hw = ops.gather(ops.shape_of(y), i64([2, 3]), i64(0))
        size = ops.convert(ops.maximum(ops.round(ops.multiply(ops.convert(hw, "f32"), const(c.scale)),
                                                 "half_to_even"), const(32)), "i64")
        y = ops.interpolate(y, size, "bilinear_pillow" if c.scale < 1 else "linear_onnx", "sizes",
                            coordinate_transformation_mode="half_pixel", antialias=c.scale < 1, axes=i64([2, 3]))
    mean, std = bb.mean.cpu().numpy().ravel(), bb.std.cpu().numpy().ravel()
    gray = bool(np.all(mean == mean[0]) and np.all(std == std[0]))  # the three channels alike: normalised once
    if gray:
        y = ops.multiply(ops.subtract(y, const(mean[:1].reshape(1, 1, 1, 1))), const(1 / std[:1].reshape(1, 1, 1, 1)))
    else:
        y = ops.divide(ops.subtract(y, const(mean.reshape(1, 3, 1, 1))), const(std.reshape(1, 3, 1, 1)))
    if c.pad:
        y = ops.pad(y, i64([0, 0, c.pad, c.pad]), i64([0, 0, c.pad, c.pad]), "reflect")
    maps = lite0_nodes(ops, y, bb.net, c.layers, gray)
    finest = min(c.layers, key=lambda n: bb.info(n).stride)
    parts = {}
    for name in c.layers:
        f, q = maps[name], c.pad // bb.info(name).stride
        if q:
            f = ops.slice(f, i64([q, q]), i64([-q, -q]), i64([1, 1]), i64([2, 3]))
        if c.aggregate > 1:
            a = c.aggregate // 2
            f = ops.avg_pool(f, [1, 1], [a, a], [a, a], [c.aggregate] * 2, exclude_pad=True)
        parts[name] = f
    grid = ops.gather(ops.shape_of(parts[finest]), i64([2, 3]), i64(0))
    feats = ops.concat([parts[n] if n == finest else
                        ops.interpolate(parts[n], grid, "linear_onnx", "sizes", axes=i64([2, 3]),
                                        coordinate_transformation_mode="half_pixel")
                        for n in c.layers], 1)
    mean, comps, scale = (getattr(scorer, n).double().cpu().numpy() for n in ("mean", "components", "scale"))
    proj = comps / scale  # (C, r)
    z = ops.convolution(feats, const(proj.T[:, :, None, None]), [1, 1], [0, 0], [0, 0], [1, 1])
    z = ops.add(z, const((-(mean @ proj)).reshape(1, -1, 1, 1)))
    words = scorer.words.double().cpu().numpy()  # (k, r)
    cells = ops.reshape(ops.transpose(z, i64([0, 2, 3, 1])), i64([-1, words.shape[1]]), False)  # (M, r), M = N h w
    z2 = ops.reduce_sum(ops.multiply(cells, cells), i64([1]), keep_dims=False)  # (M,)

    def nearest2(rows, w, m=1):  # |z|^2 - ... : the squared distances to the m nearest rows of w, (M,) or (M, m)
        d2 = ops.add(ops.matmul(rows, const(-2 * w.T), False, False), const((w * w).sum(1)[None]))
        return ops.reduce_min(d2, i64([1]), keep_dims=False) if m == 1 else ops.topk(d2, i64(m), 1, "min", "value")

    if len(scorer.coarse_limit):  # the coarse search, then every word for the cells over the limit
        d2 = ops.add(nearest2(cells, words[scorer.coarse_words.cpu().numpy()]), z2)
        limit = float(scorer.coarse_limit[0])
        idx = ops.squeeze(ops.non_zero(ops.greater(d2, const(limit * limit)), "i64"), i64([0]))  # (S,)
        fine = ops.add(nearest2(ops.gather(cells, idx, i64(0)), words), ops.gather(z2, idx, i64(0)))
        d2 = ops.scatter_nd_update(d2, ops.unsqueeze(idx, i64([1])), fine)
        dist = ops.sqrt(ops.maximum(d2, const(0)))
    elif c.m == 1:
        dist = ops.sqrt(ops.maximum(ops.add(nearest2(cells, words), z2), const(0)))
    else:
        near = nearest2(cells, words, c.m).output(0)  # (M, m)
        dist = ops.reduce_mean(ops.sqrt(ops.maximum(ops.add(near, ops.unsqueeze(z2, i64([1]))), const(0))),
                               i64([1]), keep_dims=False)
    shape = ops.concat([ops.gather(ops.shape_of(z), i64([0]), i64(0)), grid], 0)
    out = ops.reshape(dist, shape, False, name="distances")  # (N, h, w)
    return ov.Model([out], [image], "patch_dictionary")


def cell_of(scorer) -> float:
    """Image pixels per grid cell of a dense torch scorer."""
    return min(scorer.backbone.info(n).stride for n in scorer.config.layers) / scorer.config.scale


def resolve_precision(precision: str) -> str:
    """"auto": bf16 where the CPU computes it natively (OpenVINO's capabilities say BF16), else f32."""
    if precision != "auto":
        return precision
    caps = import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "bf16" if "BF16" in caps else "f32"


def compile_graph(model, threads: int | None = None, precision: str = "f32"):
    ov = import_openvino()
    props = {"INFERENCE_PRECISION_HINT": resolve_precision(precision), "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        props["INFERENCE_NUM_THREADS"] = int(threads)
    return ov.Core().compile_model(model, "CPU", props), ov.get_version()


def check(scorer, image: np.ndarray):
    """Build the graph of the fitted torch ``scorer`` and check it against the scorer on ``image`` (as the scorer
    takes it); returns (the ``openvino.Model``, its ``model.json`` entry), or None (logged) when the configuration
    has no graph or the graph disagrees: the model is then saved without one and needs torch to score."""
    why = supported(scorer.config)
    if why:
        log.warning("no inference graph for this model (%s): scoring it needs torch", why)
        return None
    if scorer.device.type != "cpu":  # fitted on a GPU: built and checked from a copy on the CPU, in float32
        from monitor.model.scorers.patch_dictionary import PatchDictionary

        scorer = PatchDictionary.from_state(*scorer.state(), device="cpu")
    try:
        model = build(scorer)
        compiled, _ = compile_graph(model)
        got = np.asarray(compiled({0: image[None, None].astype(np.float32)})[0])[0]
    except Exception as exc:  # OpenVINO missing or refusing the graph: the model is still good on torch
        log.error("the inference graph could not be built (%s: %s); the model is saved without it and needs torch "
                  "to score", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return None
    want = scorer.distances(scorer.extract(image))
    worst = _difference(got, want, float(scorer.coarse_limit[0]) if len(scorer.coarse_limit) else None)
    if not worst <= TOLERANCE:
        log.error("the inference graph's distances differ from torch's by %.2g of their range (allowed %.0e); "
                  "the model is saved without it and needs torch to score", worst, TOLERANCE)
        return None
    log.info("inference graph checked: its distances match torch's within %.2g of their range on a %dx%d image",
             worst, image.shape[1], image.shape[0])
    return model, {"xml": XML, "bin": BIN, "cell": cell_of(scorer), "checked_difference": float(f"{worst:.3g}"),
                   "checked_shape": [int(v) for v in image.shape]}


def serialize(model) -> dict[str, bytes]:
    """The IR files of ``model`` (name -> content), for ``artifact.save_artifact``."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        import_openvino().save_model(model, str(Path(tmp) / XML), compress_to_fp16=False)
        return {XML: (Path(tmp) / XML).read_bytes(), BIN: (Path(tmp) / BIN).read_bytes()}


def _difference(got: np.ndarray, want: np.ndarray, limit: float | None) -> float:
    """max |got^2 - want^2| / max want^2: squared, as both paths compute them (|z|^2 - 2 z.w + |w|^2), so that a
    cell at a word (a training image's: distance about 0, where the square root magnifies the rounding of that
    difference) is compared as fairly as any other. With a coarse search, a cell whose coarse distance lies at its
    limit may be searched finely by one path and not by the other (float32 sums in another order): such cells (both
    values under the limit, at most 0.1% of them) are left out."""
    if got.shape != want.shape:
        return float("inf")
    scale = max(float((want.astype(np.float64) ** 2).max()), 1e-12)
    diff = np.abs(got.astype(np.float64) ** 2 - want.astype(np.float64) ** 2) / scale
    if limit is not None:
        edge = (diff > TOLERANCE) & (np.maximum(got, want) <= limit * (1 + TOLERANCE))
        if edge.sum() <= 0.001 * edge.size:
            diff = np.where(edge, 0, diff)
    return float(diff.max())


def _omp_threads() -> int | None:
    """OMP_NUM_THREADS, which torch's CPU path honours too (several monitors on one PC, the test workers)."""
    import os

    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return None


class CpuDevice:
    """Where a graph scorer runs, as the daemon asks a torch device (``.type``)."""

    type = "cpu"

    def __str__(self) -> str:
        return "cpu"


class GraphScorer(Scorer):
    """A fitted patch-dictionary model scored through its inference graph (no torch)."""

    method = "patch_dictionary"

    def __init__(self, config: PatchDictionaryConfig, entry: dict, arrays: dict[str, np.ndarray], directory: Path,
                 files: dict | None = None, threads: int | None = None, precision: str = "f32"):
        ov = import_openvino()
        self.config = config
        self.cell = float(entry["cell"])
        names = (entry["xml"], entry["bin"])
        if not all(isinstance(n, str) and Path(n).name == n and n in (files or {}) for n in names):
            raise ValueError(f"the graph's files {list(names)} must be among the model's hashed files "
                             f"{sorted(files or {})}")
        model = ov.Core().read_model(str(Path(directory) / names[0]), str(Path(directory) / names[1]))
        threads = threads or _omp_threads()
        self.precision = resolve_precision(precision)
        self.compiled, self.version = compile_graph(model, threads, self.precision)
        log.info("the model's inference graph runs on OpenVINO %s (CPU, %s)", self.version, self.precision)
        self._request = self.compiled.create_infer_request()
        empty = np.zeros(0, np.float32)
        self.border_offset = np.asarray(arrays.get("border_offset", empty), np.float32)
        self.border_gain = np.asarray(arrays.get("border_gain", empty), np.float32)
        self.device = CpuDevice()

    def use_runtime(self, runtime: str) -> str:
        return "openvino"

    def score(self, image: np.ndarray) -> ScoreResult:
        return self.score_batch([image])[0]

    def score_batch(self, images: Sequence[np.ndarray]) -> list[ScoreResult]:
        if len({im.shape for im in images}) > 1:
            return [r for im in images for r in self.score_batch([im])]
        t0 = time.perf_counter()
        x = np.stack([np.asarray(im, np.float32) for im in images])[:, None]
        d = np.array(self._request.infer({0: x})[0])  # the request's output buffer is reused: copied out
        t1 = time.perf_counter()
        out = []
        for i, im in enumerate(images):
            ta = time.perf_counter()
            s = calibrated(d[i], self.border_offset, self.border_gain, self.config.border_rings)
            amap = dense_map(s, im.shape, self.cell, self.config.sigma)
            out.append(ScoreResult(amap, s, float(amap.max()),
                                   {"graph": (t1 - t0) / len(images), "map": time.perf_counter() - ta}))
        return out

    def fit(self, images, progress=None) -> None:
        raise GraphUnavailable("a model loaded for scoring cannot be fitted again; fit a new one")

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        raise GraphUnavailable("a model loaded through its inference graph is not saved again; copy its directory")

    @classmethod
    def from_state(cls, meta: dict, arrays: dict[str, np.ndarray], device: str = "auto") -> "GraphScorer":
        raise GraphUnavailable("a graph scorer is loaded with its model directory (Model.load)")

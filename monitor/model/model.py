"""A fitted model: scorer + threshold + defect extraction, saved as one artifact directory."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from monitor.extras import MissingExtra, cuda_wanted, need_torch
from monitor.model import quality, scorers
from monitor.model.artifact import ArtifactError, load_artifact, save_artifact
from monitor.model.defects import DefectConfig, DefectReport, decide, find_defects
from monitor.model.methods import METHOD_NAMES
from monitor.model.scorers import ScoreResult
from monitor.model.scorers.base import QUIET, Progress
from monitor.model.threshold import Threshold, ThresholdConfig, fit_threshold

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inspection:
    """What one image gets: the score, the defects, the verdict."""

    result: ScoreResult
    report: DefectReport | None  # None when the model has no fitted threshold
    verdict: str  # "defect", "ok", "mismatch" or "no-threshold"
    threshold: float | None
    level: float | None = None  # the score level the drift gauge follows (``score_level``)

    def summary(self) -> dict:
        r = self.report
        return {
            "verdict": self.verdict,
            "coverage": None if r is None else round(r.coverage, 6),
            "n_defects": None if r is None else len(r.defects),
            "defects": [] if r is None else [{"number": i, **d.to_dict()} for i, d in enumerate(r.defects, 1)],
            "max_score": round(self.result.image_score, 4),
            "threshold": None if self.threshold is None else round(self.threshold, 4),
            "score_level": None if self.level is None else round(self.level, 6),
        }


@dataclass
class ModelMeta:
    """What a model records besides its arrays: ``model.json``, written (``saved``) and read (``from_json``) here
    only. ``Model.fit`` fills the first part, ``monitor fit`` adds where the images came from, and the artifact adds
    the rest when the model is saved (``model_id``, ``created_at``, ...). Models of older versions lack some keys:
    they read as the defaults (None or empty), which every user of them allows for."""

    training_sha256: list[str] = field(default_factory=list)
    fit_seconds: float | None = None
    training_pixels: int | None = None  # pixels of the largest training image (``image.max_training_ratio``)
    image_shape: list[int] | None = None  # [H, W] of the first training image (the warm-up image)
    quality: dict | None = None  # ``quality.reference`` (0.4.0 on)
    fibres: dict | None = None  # ``fibres.reference`` of the training images (after 0.4.0)
    graph: dict | None = None  # the inference graph's entry (``graph.check``; after 0.4.0, dense patch dictionary)
    drift_reference: dict | None = None  # the validation images' score levels (0.3.0 on)
    fitted_on: dict | None = None  # ``mismatch.fitted_on`` (0.3.0 on)
    training_images: list[str] = field(default_factory=list)
    validation_images: list[str] = field(default_factory=list)
    validation_sha256: list[str] = field(default_factory=list)
    provenance: dict | None = None  # refit: where the candidate's images came from
    # written when the model is saved
    method: str | None = None
    scorer: dict = field(default_factory=dict)  # the scorer's own state: {"config": ..., ...}
    threshold: dict | None = None
    defects: dict | None = None
    model_id: str | None = None
    format: str | None = None
    created_at: str | None = None
    library_versions: dict | None = None
    arrays_sha256: str | None = None
    files: dict | None = None  # the files beside the arrays and their sha256 (the artifact's)

    SAVED = ("method", "scorer", "threshold", "defects", "training_sha256", "fit_seconds", "training_pixels",
             "image_shape", "fitted_on", "training_images", "validation_images", "validation_sha256", "provenance",
             "drift_reference", "quality", "fibres", "graph")  # what ``Model.save`` writes (the artifact adds the rest)

    @classmethod
    def from_json(cls, d: dict) -> "ModelMeta":
        """From a model.json; keys of a newer version that this one does not know are left out, and a list written
        as null reads as empty."""
        lists = {f.name for f in fields(cls) if f.default_factory is list}
        return cls(**{k: ([] if v is None and k in lists else v) for k, v in d.items()
                      if k in {f.name for f in fields(cls)}})

    def saved(self) -> dict:
        return {k: getattr(self, k) for k in self.SAVED}


LEVEL_QUANTILE = 0.99  # the drift gauge compares this quantile of an image's patch scores with the validation images'


def score_level(result: ScoreResult) -> float:
    """One number for how high an image scores overall: a high quantile of its patch scores. A clean image of the
    kind the model was fitted on is near the validation images' median; a focus change, a new material lot or a
    detector drifting lift it before any defect is found."""
    return float(np.quantile(result.patch_scores, LEVEL_QUANTILE))


def expectations(method_config) -> dict:
    """The settings a loaded model must share with the configuration (backbone, mode) to be used under it."""
    return {k: getattr(method_config, k) for k in ("backbone", "mode") if hasattr(method_config, k)}


class Model:
    def __init__(self, scorer, threshold: Threshold | None, defects: DefectConfig, meta: ModelMeta | None = None,
                 runtime: str = "torch"):
        self.scorer = scorer
        self.runtime = runtime  # where the CPU forward pass runs (openvino or torch)
        self.threshold = threshold
        self.defects = defects
        self.meta = meta if meta is not None else ModelMeta()
        self.graph = None  # a fitted model's inference graph (an ``openvino.Model``) until it is saved

    @property
    def model_id(self) -> str | None:
        return self.meta.model_id

    @classmethod
    def fit(cls, method: str, method_config, normal: Sequence[np.ndarray], val: Sequence[np.ndarray] = (),
            threshold: ThresholdConfig = ThresholdConfig(), defects: DefectConfig = DefectConfig(),
            device: str = "auto", progress: Progress = QUIET, train_sha256: Sequence[str] = (),
            runtime: str = "auto", normalize: bool = True,
            clip: Sequence[float] = quality.CLIP_LEVELS) -> "Model":
        """Fit ``method`` on the normal images; ``val``: calibration and threshold. ``normalize``: every image's
        intensities are brought to the training images' before the features (``quality.normalize``), so that the
        SEM's brightness and contrast settings do not move the scores, and clipped to the training images' ``clip``
        quantiles."""
        need_torch("fitting a model")
        ref = quality.reference(normal, clip, normalize)  # ExposureError: training images of several exposures
        if normalize:
            ref["normalize"] = True
            normal = [quality.normalize(im, ref) for im in normal]
            val = [quality.normalize(im, ref) for im in val]
        scorer_cls, _ = scorers.METHODS[method]
        scorer = scorer_cls(method_config, device)
        runtime = scorer.use_runtime(runtime)
        t0 = time.perf_counter()
        scorer.fit(normal, progress)
        th = None
        if val:
            scorer.calibrate(val, progress)  # position-dependent corrections from normal images, before the threshold
            tick = progress.phase("threshold", len(val), "images")
            results = []
            for v in val:
                results.append(scorer.score(v))
                tick(1)
            th = fit_threshold([r.patch_scores for r in results], [r.anomaly_map for r in results], threshold)
            levels = [score_level(r) for r in results]
        meta = ModelMeta(training_sha256=list(train_sha256), fit_seconds=round(time.perf_counter() - t0, 3),
                         training_pixels=max(int(im.shape[0]) * int(im.shape[1]) for im in normal),
                         image_shape=[int(normal[0].shape[0]), int(normal[0].shape[1])], quality=ref)
        if val:
            meta.drift_reference = {"quantile": LEVEL_QUANTILE, "median": float(np.median(levels)),
                                    "levels": [round(v, 6) for v in levels]}
        model = cls(scorer, th, defects, meta, runtime)
        if method == "patch_dictionary":
            from monitor.model import graph

            if th is not None:
                scorer.keep_coarse_search_under(th.value)

            built = graph.check(scorer, (val or normal)[0])
            if built:
                model.graph, meta.graph = built
        return model

    def warm_up(self) -> float | None:
        """Score one synthetic image of the training images' size, so that the first real image does not pay for
        the runtime's first pass at that size (OpenVINO compiles its kernels for it; a model without a graph also
        checks its backbone on OpenVINO against torch: about 2 s).
        Returns the seconds it took, None for a model that does not record its image size (fitted before 0.2.0)."""
        shape = self.meta.image_shape
        if not shape or getattr(getattr(self.scorer, "config", None), "mode", None) == "crop":
            return None  # crop mode (the paper) scores an image in minutes: no warm-up image for it
        from monitor.model.synth import fiber_mat

        t = time.perf_counter()
        self.inspect(fiber_mat(tuple(shape), seed=0))
        return time.perf_counter() - t

    @property
    def fitted_on(self) -> dict | None:
        """What the model was fitted on (``mismatch.fitted_on``); None for a model saved before 0.3.0."""
        return self.meta.fitted_on

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """The image as the scorer takes it: normalised to the training images' intensities when the model was
        fitted so (``quality.normalize``), else as it is (models saved before 0.4.0, or ``model.normalize: false``)."""
        ref = self.meta.quality
        return quality.normalize(image, ref) if ref and ref.get("normalize") else image

    @property
    def quality_reference(self) -> dict | None:
        """The training images' acquisition-quality figures and intensity quantiles (``quality.reference``); None
        for a model saved before 0.4.0 (exposure, focus and noise are then not checked)."""
        return self.meta.quality

    @property
    def drift_reference(self) -> float | None:
        """The validation images' median ``score_level``; None for a model without validation images or saved
        before 0.3.0 (no drift gauge)."""
        ref = self.meta.drift_reference
        return ref.get("median") if isinstance(ref, dict) and ref.get("quantile") == LEVEL_QUANTILE else None

    def inspect(self, image: np.ndarray, coverage_threshold: float = 0.0, max_defect_area: int = 0,
                mismatch_coverage: float = 0.0, peak_margin: float = 0.0) -> Inspection:
        """Score ``image`` and judge it (``defects.decide``: coverage over ``coverage_threshold``, or one defect
        over ``max_defect_area`` pixels when that is set, whose peak is ``peak_margin`` (relative) over the map
        threshold; coverage over ``mismatch_coverage`` is a mismatch)."""
        return self._judge(self.scorer.score(self.prepare(image)), coverage_threshold, max_defect_area,
                           mismatch_coverage, peak_margin)

    def inspect_batch(self, images: Sequence[np.ndarray], coverage_threshold: float = 0.0,
                      max_defect_area: int = 0, mismatch_coverage: float = 0.0,
                      peak_margin: float = 0.0) -> list[Inspection]:
        """``inspect`` for several images at once (one forward pass where the scorer can batch them)."""
        results = self.scorer.score_batch([self.prepare(im) for im in images])
        return [self._judge(r, coverage_threshold, max_defect_area, mismatch_coverage, peak_margin) for r in results]

    def _judge(self, result: ScoreResult, coverage_threshold: float, max_defect_area: int,
               mismatch_coverage: float = 0.0, peak_margin: float = 0.0) -> Inspection:
        level = score_level(result)
        if self.threshold is None:
            return Inspection(result, None, decide(None), None, level)
        t = time.perf_counter()
        report = find_defects(result.anomaly_map, self.threshold.value, self.defects)
        result.timings["defects"] = time.perf_counter() - t
        verdict = decide(report, coverage_threshold, max_defect_area, mismatch_coverage,
                         self.threshold.value * (1 + peak_margin))
        return Inspection(result, report, verdict, self.threshold.value, level)

    # ------------------------------------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> str:
        smeta, arrays = self.scorer.state()
        self.meta.method, self.meta.scorer = self.scorer.method, smeta
        self.meta.threshold = None if self.threshold is None else self.threshold.to_dict()
        self.meta.defects = asdict(self.defects)
        if self.graph is None:  # a model put together from a fitted one's parts: its graph is not at hand
            self.meta.graph = None
        meta = self.meta.saved()
        files = {}
        if self.graph is not None:
            from monitor.model import graph

            files = graph.serialize(self.graph)
        model_id = save_artifact(directory, meta, arrays, files)
        self.meta = ModelMeta.from_json(load_artifact(directory)[0])
        return model_id

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str = "auto", expect: dict | None = None,
             runtime: str = "auto", precision: str = "f32") -> "Model":
        """Load a model; ``expect`` (e.g. {"backbone": ..., "mode": ...}) must match the model's configuration;
        ``runtime``: where the CPU forward pass runs: the model's inference graph (``graph.py``) unless "torch" or
        the model has none, else ``Backbone.use_runtime``; ``precision``: the graph's arithmetic."""
        raw, arrays = load_artifact(directory)
        meta = ModelMeta.from_json(raw)
        method = meta.method
        if method not in METHOD_NAMES:
            raise ArtifactError(f"{directory}: unknown method {method!r}")
        if meta.quality is not None:
            try:
                quality.check_reference(meta.quality)
            except ValueError as exc:
                raise ArtifactError(f"{directory}: {exc}") from None
        cfg = meta.scorer["config"]
        for key, want in (expect or {}).items():
            if key in cfg and cfg[key] != want:
                raise ArtifactError(f"{directory}: model was made with {key}={cfg[key]!r}, "
                                    f"the configuration asks for {key}={want!r}; refit or change the configuration")
        cuda = cuda_wanted(device)
        if meta.graph and runtime != "torch" and not cuda:
            from monitor.model.graph import GraphScorer
            from monitor.model.methods import PatchDictionaryConfig

            try:
                scorer = GraphScorer(PatchDictionaryConfig(**cfg), meta.graph, arrays, Path(directory), meta.files,
                                     precision=precision)
            except ImportError as exc:
                raise MissingExtra(f"{directory}: scoring through the model's inference graph needs OpenVINO "
                                   f"({exc}); pip install openvino") from None
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # OpenVINO reports a bad IR so
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                log.debug("the inference graph of %s: %s", directory, exc)
                raise ArtifactError(f"{directory}: cannot load the inference graph: {first}") from None
            runtime = "openvino"
        else:
            why = "on CUDA" if cuda else "runtime torch" if meta.graph else "saved without an inference graph"
            need_torch(f"scoring this model ({method}, {why})")
            scorer_cls, _ = scorers.METHODS[method]
            try:
                scorer = scorer_cls.from_state(meta.scorer, arrays, device)
            except (KeyError, TypeError, ValueError) as exc:
                raise ArtifactError(f"{directory}: cannot rebuild the {method} scorer: {exc}") from None
            runtime = scorer.use_runtime(runtime)
        return cls(scorer, Threshold.from_dict(meta.threshold), DefectConfig(**meta.defects), meta, runtime)

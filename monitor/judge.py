"""One way to judge an image: read it as the daemon does, check that it fits the model and can be judged at all
(``mismatch.misfit``), score it, and build its result document. The worker, `monitor score` and refit's validation
all judge through here, so that a verdict cannot differ between them.

A daemon that scores images in batches splits the same steps: ``check`` (read already), one batched
``Model.inspect_batch``, then ``conclude`` per image. ``judge`` does the three for one file, ``judge_files`` for a
batch of files (`monitor backtest`), with a ``Failure`` for each image that cannot be judged.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from monitor.config import Config
from monitor.document import ResultDocument
from monitor.kinds import FailureKind, Verdict
from monitor.model.artifact import ArtifactError
from monitor.model.fibres import FibreError, measure
from monitor.model.images import ImageError, ImageLimits, pixel_size_um, read_image
from monitor.model.mismatch import misfit
from monitor.model.model import Inspection, Model, expectations

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Judgement:
    """What one image gets. ``inspection`` is None for an image that was not scored (it does not fit the model, or
    its acquisition cannot be judged: ``verdict`` "mismatch", ``mismatch_reason`` says which check)."""

    verdict: str  # ok | defect | mismatch | no-threshold (defects.VERDICTS)
    document: ResultDocument  # the result JSON and the ledger's copy, without the daemon's head
    image: np.ndarray
    inspection: Inspection | None
    seconds: float  # reading and scoring

    @property
    def alarm(self) -> bool:
        return self.verdict == Verdict.DEFECT

    @property
    def mismatch_reason(self) -> str | None:
        return self.document.mismatch_reason


def load_model(cfg: Config) -> Model:
    """The model the configuration names (``model.path``), checked against its method and backbone settings."""
    path = Path(cfg.model.path)
    if not (path / "model.json").is_file():
        raise ArtifactError(f"model.path {path}: no fitted model there; run `monitor fit ... --out {path}` first")
    model = Model.load(path, cfg.model.device, expectations(cfg.model.method_config), runtime=cfg.model.runtime,
                       precision=cfg.model.precision)
    if model.meta.method != cfg.model.method:
        raise ArtifactError(f"model.path {path} holds a {model.meta.method} model, "
                            f"the configuration asks for {cfg.model.method}")
    return model


def warm(model: Model) -> None:
    """The model's first pass at its image size, before the first real image (``Model.warm_up``), logged."""
    secs = model.warm_up()
    if secs is not None:
        log.info("model %s warmed up on a %dx%d image in %.2f s", model.model_id, model.meta.image_shape[1],
                 model.meta.image_shape[0], secs)


def limits(cfg: Config, model: Model) -> ImageLimits:
    """The image limits under the configuration and the model (``image``, bounded by its training images)."""
    return cfg.image.for_model(model.meta.training_pixels)


def read(cfg: Config, model: Model, path: str | Path, sha256: str | None = None) -> tuple[np.ndarray, dict]:
    """(image, info) of ``path`` within ``limits`` (``ImageError`` otherwise); with ``sha256``, exactly the
    content recorded (kind ``changed`` otherwise)."""
    info: dict = {}
    return read_image(path, limits(cfg, model), sha256, info), info


def check(cfg: Config, model: Model, image: np.ndarray, info: dict, started: float | None = None,
          clock=time.perf_counter) -> Judgement | None:
    """The ``mismatch`` judgement of an image that does not fit the model or cannot be judged (not scored: another
    recipe's image, or a blurred, noisy or clipped one, says nothing about the material); None when it can be
    scored. ``info`` gets the image's quality figures. ``started``: when its reading began, on ``clock`` (the
    judgement's seconds then include the reading and the checks)."""
    why = misfit(model.fitted_on, image, info, cfg.mismatch, model.quality_reference)
    if why is None:
        return None
    seconds = 0.0 if started is None else clock() - started
    doc = ResultDocument("mismatch", mismatch=why[1], mismatch_reason=why[0], score_seconds=round(seconds, 4),
                         quality=info.get("quality"), fibres_reason=f"not measured: {why[1]}")
    return Judgement("mismatch", doc, image, None, seconds)


def inspect(cfg: Config, model: Model, images: list[np.ndarray]) -> list[Inspection]:
    """The model's inspections of ``images`` (one batched pass) under the configuration's alarm settings."""
    a = cfg.alarm
    return model.inspect_batch(images, a.coverage_threshold, a.max_defect_area, cfg.mismatch.max_coverage,
                               a.peak_margin)


def conclude(cfg: Config, path: str | Path, image: np.ndarray, info: dict, ins: Inspection,
             seconds: float) -> Judgement:
    """The judgement of a scored image: its verdict and result document (defects with their areas in um2 when the
    pixel size is known, the quality figures, the reason of a coverage mismatch, the fibre figures when
    ``fibres.enabled``: their time is added to the judgement's)."""
    # the pixel size from the tags read with the image (a file renamed since may no longer be at ``path``)
    um = cfg.image.pixel_size_um or (info["pixel_size_um"] if "pixel_size_um" in info else pixel_size_um(path))
    summary = ins.summary()
    summary.pop("verdict")
    defects = tuple({**d, "area_um2": round(d["area"] * um * um, 4)} if um else d for d in summary.pop("defects"))
    mismatch = reason = None
    if ins.verdict == Verdict.MISMATCH:
        mismatch = (f"the defect mask covers {100 * ins.report.coverage:.1f}% of the image, over "
                    f"mismatch.max_coverage {100 * cfg.mismatch.max_coverage:g}%: another material, another "
                    "magnification, or a focus or detector fault")
        reason = "coverage"
    fibres, why = None, None
    if not cfg.fibres.enabled:
        why = "not measured: fibres.enabled is false"
    elif mismatch is not None:
        why = f"not measured: {mismatch}"
    else:
        t = time.perf_counter()
        try:
            fibres = measure(image, um, cfg.fibres.measure).figures
        except FibreError as exc:
            why = f"not measured: {exc}"
        except Exception as exc:  # a bug in the measurement must not cost the verdict, nor hold up the line
            log.exception("%s: the fibre measurement failed", path)
            why = f"not measured: internal error ({type(exc).__name__})"
        ins.result.timings["fibres"] = dt = time.perf_counter() - t
        seconds += dt
    doc = ResultDocument(verdict=ins.verdict, alarm=ins.verdict == Verdict.DEFECT, score_seconds=round(seconds, 4),
                         defects=defects, coverage_threshold=cfg.alarm.coverage_threshold,
                         max_defect_area=cfg.alarm.max_defect_area, pixel_size_um=um, quality=info.get("quality"),
                         mismatch=mismatch, mismatch_reason=reason, fibres=fibres, fibres_reason=why, **summary)
    return Judgement(ins.verdict, doc, image, ins, seconds)


def judge(cfg: Config, model: Model, path: str | Path, sha256: str | None = None) -> Judgement:
    """Read, check and score one image file (``ImageError`` when it cannot be read)."""
    t0 = time.perf_counter()
    image, info = read(cfg, model, path, sha256)
    unfit = check(cfg, model, image, info, t0)
    if unfit is not None:
        return unfit
    ins = inspect(cfg, model, [image])[0]
    return conclude(cfg, path, image, info, ins, time.perf_counter() - t0)


class Failure(NamedTuple):
    """An image that could not be judged: ``kind`` (the failed-images metric's label) and its reason."""

    kind: FailureKind
    reason: str


def failure_of(exc: BaseException) -> Failure:
    """The failure of a scoring error, for the ledger and the failed-images metric."""
    torch = sys.modules.get("torch")  # loaded only where the scorer runs on torch (CUDA, other methods)
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
        return Failure(FailureKind.OUT_OF_MEMORY, f"out of memory: {exc}".splitlines()[0][:500])
    if isinstance(exc, MemoryError):
        return Failure(FailureKind.OUT_OF_MEMORY, "out of memory (host)")
    if isinstance(exc, RuntimeError):  # torch/CUDA errors surface as RuntimeError
        return Failure(FailureKind.DEVICE, f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
    log.error("unexpected scoring error", exc_info=exc)
    return Failure(FailureKind.INTERNAL, f"{type(exc).__name__}: {exc}".splitlines()[0][:500])


def inspect_each(cfg: Config, model: Model, images: list[np.ndarray], clock=time.perf_counter
                 ) -> list[tuple[Inspection, float] | Failure]:
    """(inspection, seconds) of each image from one batched pass; when the batch fails, one by one, so that only
    the culprit gets its ``Failure``."""
    t0 = clock()
    try:
        inspections = inspect(cfg, model, images)
        share = (clock() - t0) / len(images)
        return [(ins, share) for ins in inspections]
    except Exception as exc:
        if len(images) == 1:
            return [failure_of(exc)]
    out: list = []
    for image in images:
        t0 = clock()
        try:
            out.append((inspect(cfg, model, [image])[0], clock() - t0))
        except Exception as exc:
            out.append(failure_of(exc))
    return out


def judge_files(cfg: Config, model: Model, files: list[tuple[str, str | None]]) -> list[tuple[Judgement | Failure,
                                                                                                dict]]:
    """Judge a batch of ``(path, sha256 or None)`` as the worker does: read and check each (a file that cannot be
    read gets its ``Failure``, never stopping the others), one batched inspection of those that can be scored,
    ``conclude`` for each. Returns (judgement or failure, info) per file, in order; ``info`` holds the sha256 of
    the bytes read, when they could be read."""
    out: list = [None] * len(files)
    ready = []  # (index, path, image, info, seconds reading)
    for i, (path, sha256) in enumerate(files):
        t0 = time.perf_counter()
        info: dict = {}
        try:
            image = read_image(path, limits(cfg, model), sha256, info)
            unfit = check(cfg, model, image, info, t0)
            if unfit is not None:
                out[i] = (unfit, info)
            else:
                ready.append((i, path, image, info, time.perf_counter() - t0))
        except ImageError as exc:
            out[i] = (Failure(exc.kind, exc.reason), info)
        except Exception as exc:  # a reader bug fails this image only
            log.exception("%s: reading failed", path)
            out[i] = (Failure(FailureKind.INTERNAL, f"{type(exc).__name__}: {exc}"[:500]), info)
    if ready:
        for (i, path, image, info, secs), res in zip(ready, inspect_each(cfg, model, [r[2] for r in ready])):
            out[i] = (res if isinstance(res, Failure) else conclude(cfg, path, image, info, res[0], secs + res[1]),
                      info)
    return out

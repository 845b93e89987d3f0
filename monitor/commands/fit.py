"""`monitor fit`: read the images, fit the model phase by phase with a progress bar and an ETA, save it.

Phases, in order: read, then the method's own (patch dictionary: extraction, pca, dictionary; the trained methods:
training), then calibration and threshold on the validation images. Each phase gets its own bar on stderr, with
units done, the rate and the time left, so that a long fit never looks hung.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from monitor.config import Config, ConfigError
from monitor.files import file_sha256
from monitor.model.fibres import reference as fibre_reference
from monitor.model.images import ImageLimits, read_image
from monitor.model.mismatch import fitted_on
from monitor.model.quality import MAX_TOLERANCE, ExposureError
from monitor.model.scorers.base import QUIET, Progress, Tick

log = logging.getLogger(__name__)


def bar(total: int, desc: str, unit: str = "it"):
    """A tqdm bar on stderr (time elapsed, time left, rate)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


class ConsoleProgress(Progress):
    """One bar per phase, each closed when the next starts; ``close`` ends the last."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self._bar = None

    def phase(self, name: str, total: int, unit: str) -> Tick:
        self.close()
        self._bar = bar(max(int(total), 1), f"{self.prefix}: {name}", unit)
        return self._bar.update

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def read_images(paths: Sequence[Path], limits: ImageLimits, progress: Progress = QUIET,
                what: str = "read", infos: list | None = None, sha256: dict | None = None) -> list[np.ndarray]:
    """The images, as float gray; ``infos`` (a list) gets each one's ``read_image`` info (bit depth, pixel size);
    a path in ``sha256`` must still have that content (ImageError ``changed`` otherwise)."""
    tick = progress.phase(what, len(paths), "images")
    out = []
    for p in paths:
        info: dict = {}
        out.append(read_image(p, limits, (sha256 or {}).get(p), info))
        if infos is not None:
            infos.append(info)
        tick(1)
    return out


def exposure_message(exc: ExposureError, paths: Sequence[Path]) -> str:
    """Which training images disagree, and what to do."""
    odd = exc.outliers or range(len(paths))
    listed = "; ".join(f"{Path(paths[i]).name} (gain {exc.images[i][0]:.2f}, offset {exc.images[i][1]:+.2f})"
                       for i in odd)
    return (f"the training images were taken at different exposures (brightness or contrast): {listed}, against "
            f"the intensities of all of them (at most gain 1+-{MAX_TOLERANCE['gain']:g} and offset "
            f"+-{MAX_TOLERANCE['offset']:g} are taken as one exposure). No model was written. Fit on images of one "
            "exposure (one model per recipe), or, if the differences are the material's, set model.normalize: false")


def fit_model(cfg: Config, normal_paths: Sequence[Path], val_paths: Sequence[Path], out: Path, quiet: bool = False,
              sha256: dict | None = None, provenance: dict | None = None):
    """Fit ``cfg.model`` on the normal images (threshold and calibration from ``val_paths``) and save it to
    ``out``; returns (model, model_id, seconds). ``sha256``: {path: the content it must have} (refit: what the
    ledger recorded); ``provenance``: saved with the model (where a refit took its images from)."""
    from monitor.model.model import Model

    sha256 = sha256 or {}

    def digest(p) -> str:  # the content recorded for it (refit), else the file's own
        return sha256.get(p) or file_sha256(p)

    t0 = time.perf_counter()
    progress = QUIET if quiet else ConsoleProgress(f"fit {cfg.model.method}")
    try:
        infos: list[dict] = []
        normal = read_images(normal_paths, cfg.image, progress, "read normal", infos, sha256)
        val = read_images(val_paths, cfg.image, progress, "read val", sha256=sha256) if val_paths else []
        try:
            model = Model.fit(cfg.model.method, cfg.model.method_config, normal, val, cfg.threshold, cfg.defects,
                              cfg.model.device, progress, [digest(p) for p in normal_paths], cfg.model.runtime,
                              cfg.model.normalize, cfg.model.clip)
        except ExposureError as exc:  # nothing written: a model that the daemon would refuse, or judge badly
            raise ConfigError(exposure_message(exc, normal_paths)) from None
        model.meta.fitted_on = fitted_on([im.shape for im in normal], infos)
        um = [cfg.image.pixel_size_um or info.get("pixel_size_um") for info in infos]
        model.meta.fibres = fibre_reference(normal, um, cfg.fibres.measure)
        model.meta.training_images = [str(Path(p).resolve()) for p in normal_paths]
        model.meta.validation_images = [str(Path(p).resolve()) for p in val_paths]
        model.meta.validation_sha256 = [digest(p) for p in val_paths]
        if provenance:
            model.meta.provenance = provenance
    finally:
        progress.close()
    if model.meta.fibres is None:
        log.warning("the fibres of no training image could be measured: the model has no fibre reference and "
                    "monitor_fibre_diameter_ratio stays NaN")
    if not val:
        log.warning("no --val images: the model has no threshold (nor border calibration) and will give no verdicts")
    model_id = model.save(out)
    return model, model_id, time.perf_counter() - t0

"""The scoring worker: one thread that takes pending images from the ledger, oldest first, and records results.

The ledger, not memory, says what is to be done: the worker asks it for the oldest pending rows (``service.batch``
at a time) whenever it is woken or idle. A failure on one image (bad file, out of memory, a CUDA error) fails that
image with its reason, and the worker goes on. The model can be swapped between two images (SIGHUP).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import statistics
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

import torch

from .alarm import AlarmState, local_time, write_outputs
from .config import Config
from .files import fitting_stem, shown
from .images import ImageError, ImageLimits, pixel_size_um, read_image
from .ledger import Ledger, Row
from .metrics import Metrics
from .mismatch import misfit
from .quality import QUALITY_REASONS
from .model import Model

log = logging.getLogger(__name__)

LEDGER_RETRY_SECONDS = 5.0


class Worker(threading.Thread):
    def __init__(self, cfg: Config, ledger: Ledger, model: Model, metrics: Metrics,
                 on_result: Callable[[Row], None] | None = None):
        super().__init__(name="worker", daemon=True)
        self.cfg = cfg
        self.ledger = ledger
        self.metrics = metrics
        self.on_result = on_result
        self._model = model
        self._lock = threading.Lock()
        self.wake = threading.Event()
        self._halt = threading.Event()
        self.alarm = AlarmState(cfg.alarm)
        self.last_progress = time.monotonic()  # updated at every loop turn and every image
        self._in_hand: set[int] = set()  # rows this process has started and not yet finished
        self.drift = DriftWindow(cfg.drift.window, model.drift_reference)

    # ------------------------------------------------------------------------------------------------ control
    @property
    def model(self) -> Model:
        with self._lock:
            return self._model

    def swap(self, model: Model, cfg: Config) -> None:
        """Use ``model`` and ``cfg`` from the next image on."""
        with self._lock:
            changed = model.model_id != self._model.model_id or cfg.drift != self.cfg.drift
            self._model, self.cfg = model, cfg
            self.alarm.cfg = cfg.alarm
        if changed:
            self.restore_drift()

    def stop(self) -> None:
        """Finish the image in hand (it stays pending if the process dies first), then return."""
        self._halt.set()
        self.wake.set()
        if self.is_alive():
            self.join()

    def healthy(self) -> bool:
        stall = self.cfg.service.stall_seconds
        return self.is_alive() and time.monotonic() - self.last_progress < stall

    # --------------------------------------------------------------------------------------------------- loop
    def batch_size(self) -> int:
        b = self.cfg.service.batch
        if b == 0:  # auto: batches pay off on a GPU; on CPU cores they only delay the first image of a batch
            return 8 if self.model.scorer.device.type == "cuda" else 1
        return b

    def run(self) -> None:
        refused = False  # the ledger refused a write: logged once, retried every LEDGER_RETRY_SECONDS
        while not self._halt.is_set():
            self.last_progress = time.monotonic()
            try:
                rows = self.ledger.pending(self.batch_size())
                if not rows:
                    self.metrics.queue_depth.set(0)
                    self.wake.wait(timeout=1.0)
                    self.wake.clear()
                    continue
                self.process(rows)
                self.metrics.queue_depth.set(self.ledger.pending_count())
            except sqlite3.Error as exc:
                # a full disk: the rows stay pending (a result not recorded is scored again); a restart would not
                # help, so the worker stays up, says so, and tries again
                self.metrics.ledger_errors_total.inc()
                if not refused:
                    log.error("the ledger refused a write (%s); results are retried every %.0f s", exc,
                              LEDGER_RETRY_SECONDS)
                refused = True
                self._halt.wait(LEDGER_RETRY_SECONDS)
                continue
            except Exception:  # anything else: logged; the rows stay pending and are retried (service.max_attempts)
                log.exception("worker error; retrying in %.0f s", LEDGER_RETRY_SECONDS)
                self._halt.wait(LEDGER_RETRY_SECONDS)
                continue
            if refused:
                log.info("the ledger takes writes again")
                refused = False

    def limits(self, model=None, cfg=None) -> ImageLimits:
        """The image limits of the model and configuration now (``image``, bounded by the training images)."""
        if model is None:
            with self._lock:
                model, cfg = self._model, self.cfg
        return cfg.image.for_model(model.meta.get("training_pixels"))

    def process(self, rows: list[Row]) -> list[Row]:
        """Score ``rows`` (oldest first): read each, then one batched inspection; failures stay per image."""
        with self._lock:
            model, cfg = self._model, self.cfg
        done, ready = [], []  # ready: (row, image, seconds spent reading, quality figures)
        limits = self.limits(model, cfg)  # bounded before any pixel is decoded
        for row in rows:
            if row.id not in self._in_hand:  # attempts count the processes that died scoring it, not retries here
                if row.attempts >= cfg.service.max_attempts:
                    done.append(self._failed(row, "crashed", f"the daemon stopped {row.attempts} times while "
                                             "scoring this image; not retried (service.max_attempts)", model))
                    continue
                self.ledger.start(row.id)
                self._in_hand.add(row.id)
            t0 = time.monotonic()
            info: dict = {}
            try:
                image = self._read(row, limits, info)
                misfit_ = misfit(model.fitted_on, image, info, cfg.mismatch, model.quality_reference)
                if misfit_ is not None:  # not scored: another recipe's image says nothing about this model's
                    done.append(self._mismatch(row, misfit_, time.monotonic() - t0, model, cfg, image,
                                               info.get("quality")))
                    continue
                ready.append((row, image, time.monotonic() - t0, info.get("quality")))
            except ImageError as exc:
                # a file gone is failed only if its row still names that path: renamed meanwhile, it stays pending
                failed = self._failed(row, exc.kind, exc.reason, model, row.path if exc.kind == "missing" else None)
                if failed is not None:
                    done.append(failed)
            except Exception as exc:  # a reader bug must fail this image, never stop the worker for the next ones
                log.exception("%s: reading failed", row.path)
                done.append(self._failed(row, "internal", f"{type(exc).__name__}: {exc}", model))
        if not ready:
            return done
        t0 = time.monotonic()
        try:
            inspections = model.inspect_batch([im for _, im, _, _ in ready], cfg.alarm.coverage_threshold,
                                              cfg.alarm.max_defect_area, cfg.mismatch.max_coverage,
                                              cfg.alarm.peak_margin)
            share = (time.monotonic() - t0) / len(ready)
            results = [(ins, read + share) for (_, _, read, _), ins in zip(ready, inspections)]
        except Exception as exc:
            if len(ready) > 1:  # find the culprit: one by one, so that only it fails
                results = [self._inspect_one(model, cfg, im, read) for _, im, read, _ in ready]
            else:
                results = [_failure(exc)]
        finally:
            self.last_progress = time.monotonic()
        for (row, image, _, figs), res in zip(ready, results):
            if isinstance(res[0], str):  # (kind, reason)
                done.append(self._failed(row, res[0], res[1], model))
            else:
                done.append(self._record(row, image, res[0], res[1], model, cfg, figs))
        return done

    def _read(self, row: Row, limits, info: dict):
        """The row's image, exactly as recorded. An image renamed in the folder after its row was taken is read
        under the name its row now has."""
        try:
            return read_image(row.path, limits, _content_hash(row), info)
        except ImageError as exc:
            now = self.ledger.get(row.id)
            if exc.kind != "missing" or now is None or now.path == row.path:
                raise
            return read_image(now.path, limits, _content_hash(now), info)

    @staticmethod
    def _inspect_one(model: Model, cfg: Config, image, read: float):
        t0 = time.monotonic()
        try:
            return (model.inspect(image, cfg.alarm.coverage_threshold, cfg.alarm.max_defect_area,
                                  cfg.mismatch.max_coverage, cfg.alarm.peak_margin), read + time.monotonic() - t0)
        except Exception as exc:
            return _failure(exc)

    def _record(self, row: Row, image, ins, secs: float, model: Model, cfg: Config, figs: dict | None = None) -> Row:
        verdict = ins.verdict
        defect = verdict == "defect"
        before = (self.alarm.active, self.alarm.clean_run)
        # a mismatch says nothing of the material: it neither raises nor clears the alarm
        active = self.alarm.active if verdict == "mismatch" else self.alarm.update(defect)
        summary = ins.summary()
        um = cfg.image.pixel_size_um or pixel_size_um(row.path)
        result = {**_result_head(row, model, cfg), **summary, "score_seconds": round(secs, 4), "alarm": defect,
                  "coverage_threshold": cfg.alarm.coverage_threshold, "max_defect_area": cfg.alarm.max_defect_area,
                  "pixel_size_um": um}
        if figs is not None:
            result["quality"] = figs
        if verdict == "mismatch":
            result["mismatch"] = (f"the defect mask covers {100 * ins.report.coverage:.1f}% of the image, over "
                                  f"mismatch.max_coverage {100 * cfg.mismatch.max_coverage:g}%: another material, "
                                  "another magnification, or a focus or detector fault")
            result["mismatch_reason"] = "coverage"
        if um:
            for d in result["defects"]:
                d["area_um2"] = round(d["area"] * um * um, 4)
        overlay = None
        if cfg.output.overlays == "all" or (cfg.output.overlays == "alarms" and verdict in ("defect", "mismatch")):
            overlay = self._write_outputs(row, cfg, image, ins, result)
        r = ins.report
        try:
            done = self.ledger.finish(
                row.id, verdict=verdict, alarm=defect, coverage=None if r is None else r.coverage,
                n_defects=None if r is None else len(r.defects), largest_area=None if r is None else r.largest_area,
                max_score=ins.result.image_score, score_seconds=secs, model_id=model.model_id, overlay=overlay,
                result_json=json.dumps(result))
        except sqlite3.Error:  # not recorded: scored again later, and the alarm state must not count it twice
            self.alarm.active, self.alarm.clean_run = before
            raise
        self._in_hand.discard(row.id)
        m = self.metrics
        m.images_processed_total.labels(verdict=verdict).inc()
        m.scoring_seconds.observe(secs)
        if secs > cfg.service.budget_seconds:
            m.budget_overruns_total.inc()
            log.warning("%s: scored in %.2f s, over the %.2f s budget", row.path, secs, cfg.service.budget_seconds)
        if r is not None:
            m.last_coverage_ratio.set(r.coverage)
            m.coverage_ratio.observe(r.coverage)
        if defect:
            m.alarms_total.inc()
            log.warning("ALARM %s: coverage %.4f%%, %d defect(s), %.2f s, overlay %s", row.path,
                        100 * (r.coverage if r else 0), len(r.defects) if r else 0, secs, overlay)
        elif verdict == "mismatch":
            m.mismatches_total.labels(reason="coverage").inc()
            log.warning("MISMATCH %s: %s; %.2f s, overlay %s", row.path, result["mismatch"], secs, overlay)
        else:  # one line per image: the journal shows the line's pace, not only its alarms
            log.info("%s: %s, coverage %s, %s defect(s), %.2f s", row.path, verdict,
                     "-" if r is None else f"{100 * r.coverage:.4f}%", "-" if r is None else len(r.defects), secs)
        m.alarm.set(int(active))
        if verdict == "ok" and ins.level is not None and model is self.model:  # not a model swapped out meanwhile
            self.drift.add(ins.level)
            self._drift_gauges()
        return self._finished(done)

    def _mismatch(self, row: Row, why: tuple[str, str], secs: float, model: Model, cfg: Config, image=None,
                  figs: dict | None = None) -> Row:
        """An image that does not fit the model (another size, bit depth or pixel size) or that the microscope
        acquired too badly to be judged (exposure, focus, noise): recorded as verdict ``mismatch``, not scored, no
        alarm raised or cleared. An acquisition problem gets an overlay (the image and the reason, no heat map)."""
        reason, text = why
        result = {**_result_head(row, model, cfg), "verdict": "mismatch", "mismatch": text, "mismatch_reason": reason,
                  "score_seconds": round(secs, 4), "alarm": False}
        if figs is not None:
            result["quality"] = figs
        overlay = None
        if reason in QUALITY_REASONS and image is not None and cfg.output.overlays != "none":
            overlay = self._write_outputs(row, cfg, image, None, result)
        done = self.ledger.finish(row.id, verdict="mismatch", alarm=False, coverage=None, n_defects=None,
                                  largest_area=None, max_score=None, score_seconds=secs, model_id=model.model_id,
                                  overlay=overlay, result_json=json.dumps(result))
        self._in_hand.discard(row.id)
        self.metrics.images_processed_total.labels(verdict="mismatch").inc()
        self.metrics.mismatches_total.labels(reason=reason).inc()
        log.warning("MISMATCH %s: %s (not scored; %s)", row.path, text,
                    "pixel_size_tolerance" if reason == "pixel_size" else
                    "an acquisition problem" if reason in QUALITY_REASONS else f"mismatch.{reason}")
        return self._finished(done)

    @staticmethod
    def _write_outputs(row: Row, cfg: Config, image, ins, result: dict) -> str | None:
        """The overlay and result JSON of ``row``; None when they cannot be written (logged; the ledger has it)."""
        try:
            # printable (names that are not UTF-8 shown as \xNN) and short enough (names of 255 bytes)
            stem = fitting_stem(shown(Path(row.path).stem), f"-{row.id}.json") + f"-{row.id}"
            return str(write_outputs(Path(cfg.output.dir), stem, image, ins, result))
        except OSError as exc:  # a full disk must not stop the line's monitoring: the ledger still has it
            log.error("%s: cannot write the overlay: %s", row.path, exc)
        except Exception:  # nor a drawing bug: the result is recorded without its picture
            log.exception("%s: cannot draw the overlay", row.path)
        return None

    # -------------------------------------------------------------------------------------------------- drift
    def restore_drift(self) -> None:
        """The drift window from the ledger: the last clean images of the model in use (after a restart, a
        reload, a new model)."""
        model = self.model
        self.drift = DriftWindow(self.cfg.drift.window, model.drift_reference)
        for level in self.ledger.recent_levels(model.model_id, self.cfg.drift.window):
            self.drift.add(level)
        self._drift_gauges()

    def _drift_gauges(self) -> None:
        self.metrics.drift_images.set(len(self.drift))
        self.metrics.drift_ratio.set(self.drift.ratio(self.cfg.drift.min_images))

    def _failed(self, row: Row, kind: str, reason: str, model: Model, path: str | None = None) -> Row | None:
        """Fail ``row`` (with ``path``: only while the row still names it; None when it does not)."""
        done = self.ledger.fail(row.id, kind, reason, model.model_id, path=path)
        if done.state != "failed":
            return None
        self._in_hand.discard(row.id)
        log.error("%s: failed (%s): %s", row.path, kind, reason)
        self.metrics.images_failed_total.labels(reason=kind).inc()
        return self._finished(done)

    def _finished(self, row: Row) -> Row:
        if row.e2e_seconds is not None:
            self.metrics.end_to_end_seconds.observe(row.e2e_seconds)
        self.metrics.last_processed_timestamp_seconds.set(row.finished_at or time.time())
        if self.on_result is not None:
            self.on_result(row)
        return row


class DriftWindow:
    """The score levels (``model.score_level``) of the last ``size`` clean images; ``ratio``: their median over the
    validation images' median (1 = as fitted), NaN while there are too few or the model has no reference."""

    def __init__(self, size: int, reference: float | None):
        self.levels: deque[float] = deque(maxlen=size)
        self.reference = reference

    def add(self, level: float) -> None:
        self.levels.append(level)

    def __len__(self) -> int:
        return len(self.levels)

    def ratio(self, min_images: int) -> float:
        if not self.reference or len(self.levels) < min_images:
            return float("nan")
        return float(statistics.median(self.levels)) / self.reference


def _result_head(row: Row, model: Model, cfg: Config) -> dict:
    """What every result JSON starts with: the image, its content, the line, the model, the time."""
    return {"image": row.path, "sha256": row.sha256, "line": cfg.service.line, "model_id": model.model_id,
            "scored_at": local_time()}


def _content_hash(row: Row) -> str | None:
    """The sha256 the image must still have when it is read (None for rows recorded without one)."""
    return row.sha256 if len(row.sha256) == 64 and ":" not in row.sha256 else None


def _failure(exc: BaseException) -> tuple[str, str]:
    """(kind, reason) of a scoring failure, for the ledger and the failed-images metric."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
        return "out_of_memory", f"out of memory: {exc}".splitlines()[0][:500]
    if isinstance(exc, MemoryError):
        return "out_of_memory", "out of memory (host)"
    if isinstance(exc, RuntimeError):  # torch/CUDA errors surface as RuntimeError
        return "device", f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
    log.error("unexpected scoring error", exc_info=exc)
    return "internal", f"{type(exc).__name__}: {exc}".splitlines()[0][:500]

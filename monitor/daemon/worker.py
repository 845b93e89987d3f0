"""The scoring worker: one thread that takes pending images from the ledger, oldest first, and records results.

The ledger, not memory, says what is to be done: the worker asks it for the oldest pending rows (``service.batch``
at a time) whenever it is woken or idle. A failure on one image (bad file, out of memory, a CUDA error) fails that
image with its reason, and the worker goes on. The model can be swapped between two images (SIGHUP).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import statistics
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from monitor import judge
from monitor.config import Config
from monitor.daemon.alarm import AlarmState, write_outputs
from monitor.daemon.chart import FibreChart
from monitor.daemon.metrics import Metrics
from monitor.document import ResultDocument
from monitor.files import fitting_stem, shown
from monitor.judge import Failure
from monitor.kinds import FailureKind, State, Verdict
from monitor.ledger import Ledger, Row
from monitor.model.images import ImageError
from monitor.model.model import Model
from monitor.model.quality import QUALITY_REASONS
from monitor.times import local_time

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
        self.chart = _chart(cfg, model)

    # ------------------------------------------------------------------------------------------------ control
    @property
    def model(self) -> Model:
        with self._lock:
            return self._model

    def swap(self, model: Model, cfg: Config) -> None:
        """Use ``model`` and ``cfg`` from the next image on."""
        with self._lock:
            changed = (model.model_id != self._model.model_id or cfg.drift != self.cfg.drift
                       or cfg.fibres != self.cfg.fibres)
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

    def limits(self):
        """The image limits of the model and configuration now (``judge.limits``): the intake refuses a file too
        large for them before hashing it."""
        with self._lock:
            model, cfg = self._model, self.cfg
        return judge.limits(cfg, model)

    def process(self, rows: list[Row]) -> list[Row]:
        """Judge ``rows`` (oldest first): read and check each, then one batched inspection of those that can be
        scored (``judge``); failures stay per image."""
        with self._lock:
            model, cfg = self._model, self.cfg
        done, ready = [], []  # ready: (row, image, info, seconds spent reading)
        for row in rows:
            if row.id not in self._in_hand:  # attempts count the processes that died scoring it, not retries here
                if row.attempts >= cfg.service.max_attempts:
                    why = (f"the daemon stopped {row.attempts} times while scoring this image; not retried "
                           "(service.max_attempts)")
                    done.append(self._failed(row, Failure(FailureKind.CRASHED, why), model))
                    continue
                self.ledger.start(row.id)
                self._in_hand.add(row.id)
            t0 = time.monotonic()
            try:
                image, info = self._read(row, model, cfg)  # bounded before any pixel is decoded
                unfit = judge.check(cfg, model, image, info, t0, time.monotonic)
                if unfit is not None:
                    done.append(self._record(row, unfit, model, cfg))
                    continue
                ready.append((row, image, info, time.monotonic() - t0))
            except ImageError as exc:
                # a file gone is failed only if its row still names that path: renamed meanwhile, it stays pending
                failed = self._failed(row, Failure(exc.kind, exc.reason), model,
                                      row.path if exc.kind == FailureKind.MISSING else None)
                if failed is not None:
                    done.append(failed)
            except Exception as exc:  # a reader bug must fail this image, never stop the worker for the next ones
                log.exception("%s: reading failed", row.path)
                done.append(self._failed(row, Failure(FailureKind.INTERNAL, f"{type(exc).__name__}: {exc}"), model))
        if not ready:
            return done
        results = judge.inspect_each(cfg, model, [im for _, im, _, _ in ready], time.monotonic)
        self.last_progress = time.monotonic()
        for (row, image, info, read), res in zip(ready, results):
            if isinstance(res, Failure):
                done.append(self._failed(row, res, model))
            else:  # outside the scoring's try: a bug from here on leaves the row pending, retried, as any other
                ins, secs = res
                done.append(self._record(row, judge.conclude(cfg, row.path, image, info, ins, read + secs), model,
                                         cfg))
        return done

    def _read(self, row: Row, model: Model, cfg: Config):
        """(image, info) of the row's file, exactly as recorded. An image renamed in the folder after its row was
        taken is read under the name its row now has."""
        try:
            return judge.read(cfg, model, row.path, _content_hash(row))
        except ImageError as exc:
            now = self.ledger.get(row.id)
            if exc.kind != FailureKind.MISSING or now is None or now.path == row.path:
                raise
            return judge.read(cfg, model, now.path, _content_hash(now))

    def _record(self, row: Row, j: judge.Judgement, model: Model, cfg: Config) -> Row:
        """Record a judgement: the alarm state, the output files, the ledger row, the metrics and the log line.
        A mismatch says nothing of the material: it neither raises nor clears the alarm."""
        verdict, ins, secs = j.verdict, j.inspection, j.seconds
        before = (self.alarm.active, self.alarm.clean_run)
        active = self.alarm.active if verdict == Verdict.MISMATCH else self.alarm.update(j.alarm)
        result = j.document.with_head(image=row.path, sha256=row.sha256, line=cfg.service.line,
                                      model_id=model.model_id, scored_at=local_time())
        reason = j.mismatch_reason
        overlay = None
        if ins is None:  # not scored: an acquisition problem gets an overlay (the image and the reason, no heat map)
            if reason in QUALITY_REASONS and cfg.output.overlays != "none":
                overlay = self._write_outputs(row, cfg, j.image, None, result)
        elif cfg.output.overlays == "all" or (cfg.output.overlays == "alarms" and verdict in ("defect", "mismatch")):
            overlay = self._write_outputs(row, cfg, j.image, ins, result)
        r = None if ins is None else ins.report
        try:
            done = self.ledger.finish(
                row.id, verdict=verdict, alarm=j.alarm, coverage=None if r is None else r.coverage,
                n_defects=None if r is None else len(r.defects), largest_area=None if r is None else r.largest_area,
                max_score=None if ins is None else ins.result.image_score, score_seconds=secs,
                model_id=model.model_id, overlay=overlay, result_json=result.to_json())
        except sqlite3.Error:  # not recorded: scored again later, and the alarm state must not count it twice
            self.alarm.active, self.alarm.clean_run = before
            raise
        self._in_hand.discard(row.id)
        m = self.metrics
        m.images_processed_total.labels(verdict=verdict).inc()
        if reason is not None:
            m.mismatches_total.labels(reason=reason).inc()
        if ins is None:
            log.warning("MISMATCH %s: %s (not scored; %s)", row.path, result.mismatch,
                        "pixel_size_tolerance" if reason == "pixel_size" else
                        "an acquisition problem" if reason in QUALITY_REASONS else f"mismatch.{reason}")
            return self._finished(done)
        m.scoring_seconds.observe(secs)
        if secs > cfg.service.budget_seconds:
            m.budget_overruns_total.inc()
            log.warning("%s: scored in %.2f s, over the %.2f s budget", row.path, secs, cfg.service.budget_seconds)
        if r is not None:
            m.last_coverage_ratio.set(r.coverage)
            m.coverage_ratio.observe(r.coverage)
        if j.alarm:
            m.alarms_total.inc()
            log.warning("ALARM %s: coverage %.4f%%, %d defect(s), %.2f s, overlay %s", row.path,
                        100 * (r.coverage if r else 0), len(r.defects) if r else 0, secs, overlay)
        elif verdict == Verdict.MISMATCH:
            log.warning("MISMATCH %s: %s; %.2f s, overlay %s", row.path, result.mismatch, secs, overlay)
        else:  # one line per image: the journal shows the line's pace, not only its alarms
            log.info("%s: %s, coverage %s, %s defect(s), %.2f s", row.path, verdict,
                     "-" if r is None else f"{100 * r.coverage:.4f}%", "-" if r is None else len(r.defects), secs)
        m.alarm.set(int(active))
        if verdict == Verdict.OK and ins.level is not None and model is self.model:  # not a model swapped out meanwhile
            self.drift.add(ins.level)
            self._drift_gauges()
        self._fibres(result, cfg, model)
        return self._finished(done)

    def _fibres(self, result: ResultDocument, cfg: Config, model: Model) -> None:
        """The fibre metrics of a scored image, and the process chart of its mean diameter (ok images only)."""
        m, f = self.metrics, result.fibres
        if f is None:
            if cfg.fibres.enabled and result.verdict != Verdict.MISMATCH:
                m.fibre_unmeasured_total.inc()
            return
        um = f.pixel_size_um
        nan = float("nan")
        m.fibre_last_diameter_pixels.set(f.diameter_px.mean)
        m.fibre_last_diameter_meters.set(f.diameter_px.mean * um * 1e-6 if um else nan)
        if um:
            m.fibre_diameter_meters.observe(f.diameter_px.mean * um * 1e-6)
        m.fibre_coherency_ratio.set(f.coherency)
        m.fibre_orientation_radians.set(math.radians(f.orientation_deg))
        m.fibre_porosity_ratio.set(f.porosity)
        m.fibre_beads_per_square_meter.set(f.beads_per_mm2 * 1e6 if f.beads_per_mm2 is not None else nan)
        m.fibre_beads_total.inc(len(f.beads))
        if result.verdict == Verdict.OK and model is self.model:
            self.chart.add(f.diameter_px.mean)
            self._chart_gauges()

    @staticmethod
    def _write_outputs(row: Row, cfg: Config, image, ins, result: ResultDocument) -> str | None:
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
        """The drift window and the fibre chart from the ledger: the last clean images of the model in use (after a
        restart, a reload, a new model)."""
        model = self.model
        self.drift = DriftWindow(self.cfg.drift.window, model.drift_reference)
        for level in self.ledger.recent_levels(model.model_id, self.cfg.drift.window):
            self.drift.add(level)
        self._drift_gauges()
        self.chart = _chart(self.cfg, model)
        for v in self.ledger.recent_values(model.model_id, self.cfg.fibres.window, ("fibres", "diameter_px", "mean")):
            self.chart.add(v)
        self._chart_gauges()

    def _chart_gauges(self) -> None:
        n = self.cfg.fibres.min_images
        lo, hi = self.chart.limits(n)
        self.metrics.fibre_diameter_ratio.set(self.chart.ratio(n))
        self.metrics.fibre_diameter_lower_limit_ratio.set(lo)
        self.metrics.fibre_diameter_upper_limit_ratio.set(hi)
        self.metrics.fibre_window_images.set(len(self.chart))

    def _drift_gauges(self) -> None:
        self.metrics.drift_images.set(len(self.drift))
        self.metrics.drift_ratio.set(self.drift.ratio(self.cfg.drift.min_images))

    def _failed(self, row: Row, failure: Failure, model: Model, path: str | None = None) -> Row | None:
        """Fail ``row`` (with ``path``: only while the row still names it; None when it does not)."""
        kind, reason = failure
        done = self.ledger.fail(row.id, kind, reason, model.model_id, path=path)
        if done.state != State.FAILED:
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


def _chart(cfg: Config, model: Model) -> FibreChart:
    f = cfg.fibres
    return FibreChart(f.window, model.meta.fibres, f.sigmas, f.min_band)


def _content_hash(row: Row) -> str | None:
    """The sha256 the image must still have when it is read (None for rows recorded without one)."""
    return row.sha256 if len(row.sha256) == 64 and ":" not in row.sha256 else None

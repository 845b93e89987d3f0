"""The scoring worker: one thread that takes pending images from the ledger, oldest first, and records results.

The ledger, not memory, says what is to be done: the worker asks it for the oldest pending rows (``service.batch``
at a time) whenever it is woken or idle. A failure on one image (bad file, out of memory, a CUDA error) fails that
image with its reason, and the worker goes on. The model can be swapped between two images (SIGHUP).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from .alarm import AlarmState, is_defect, write_outputs
from .config import Config
from .images import ImageError, read_image
from .ledger import Ledger, Row
from .metrics import Metrics
from .model import Model

log = logging.getLogger(__name__)


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
        self.busy_since: float | None = None

    # ------------------------------------------------------------------------------------------------ control
    @property
    def model(self) -> Model:
        with self._lock:
            return self._model

    def swap(self, model: Model, cfg: Config) -> None:
        """Use ``model`` and ``cfg`` from the next image on."""
        with self._lock:
            self._model, self.cfg = model, cfg
            self.alarm.cfg = cfg.alarm

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
    def run(self) -> None:
        while not self._halt.is_set():
            self.last_progress = time.monotonic()
            rows = self.ledger.pending(self.cfg.service.batch)
            if not rows:
                self.metrics.queue_depth.set(0)
                self.wake.wait(timeout=1.0)
                self.wake.clear()
                continue
            for row in rows:
                if self._halt.is_set():
                    break
                self.process(row)
                self.metrics.queue_depth.set(self.ledger.pending_count())

    def process(self, row: Row) -> Row:
        with self._lock:
            model, cfg = self._model, self.cfg
        if row.attempts >= cfg.service.max_attempts:
            return self._failed(row, "crashed", f"the daemon stopped {row.attempts} times while scoring this image; "
                                "not retried (service.max_attempts)", model)
        self.ledger.start(row.id)
        self.busy_since = t0 = time.monotonic()
        try:
            image = read_image(row.path, cfg.image)
            ins = model.inspect(image, cfg.alarm.coverage_threshold)
        except ImageError as exc:
            return self._failed(row, exc.kind, exc.reason, model)
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            return self._failed(row, "out_of_memory", f"out of memory: {exc}".splitlines()[0], model)
        except MemoryError:
            return self._failed(row, "out_of_memory", "out of memory (host)", model)
        except RuntimeError as exc:  # torch/CUDA errors surface as RuntimeError
            return self._failed(row, "device", f"{type(exc).__name__}: {exc}".splitlines()[0][:500], model)
        except Exception as exc:
            log.exception("%s: unexpected error", row.path)
            return self._failed(row, "internal", f"{type(exc).__name__}: {exc}".splitlines()[0][:500], model)
        finally:
            self.busy_since = None
            self.last_progress = time.monotonic()
        secs = time.monotonic() - t0
        defect = is_defect(ins, cfg.alarm)
        verdict = "defect" if defect else ins.verdict
        active = self.alarm.update(defect)
        summary = ins.summary()
        summary["verdict"] = verdict
        result = {"image": row.path, "sha256": row.sha256, "line": cfg.service.line, "model_id": model.model_id,
                  **summary, "score_seconds": round(secs, 4), "alarm": defect}
        overlay = None
        if cfg.output.overlays == "all" or (cfg.output.overlays == "alarms" and defect):
            try:
                overlay = str(write_outputs(Path(cfg.output.dir), f"{Path(row.path).stem}-{row.id}", image, ins,
                                            result, model.model_id, cfg.service.line))
            except OSError as exc:  # a full disk must not stop the line's monitoring: the ledger still has it
                log.error("%s: cannot write the overlay: %s", row.path, exc)
        r = ins.report
        done = self.ledger.finish(
            row.id, verdict=verdict, alarm=defect, coverage=None if r is None else r.coverage,
            n_defects=None if r is None else len(r.defects), largest_area=None if r is None else r.largest_area,
            max_score=ins.result.image_score, score_seconds=secs, model_id=model.model_id, overlay=overlay,
            result_json=json.dumps(result))
        m = self.metrics
        m.images_processed_total.labels(verdict=verdict).inc()
        m.scoring_seconds.observe(secs)
        if secs > cfg.service.budget_seconds:
            m.budget_overruns_total.inc()
            log.warning("%s: scored in %.2f s, over the %.2f s budget", row.path, secs, cfg.service.budget_seconds)
        if r is not None:
            m.last_coverage_ratio.set(r.coverage)
        if defect:
            m.alarms_total.inc()
            log.warning("ALARM %s: coverage %.4f%%, %d defect(s), overlay %s", row.path,
                        100 * (r.coverage if r else 0), len(r.defects) if r else 0, overlay)
        m.alarm.set(int(active))
        return self._finished(done)

    def _failed(self, row: Row, kind: str, reason: str, model: Model) -> Row:
        log.error("%s: failed (%s): %s", row.path, kind, reason)
        done = self.ledger.fail(row.id, kind, reason, model.model_id)
        self.metrics.images_failed_total.labels(reason=kind).inc()
        return self._finished(done)

    def _finished(self, row: Row) -> Row:
        if row.e2e_seconds is not None:
            self.metrics.end_to_end_seconds.observe(row.e2e_seconds)
        self.metrics.last_processed_timestamp_seconds.set(row.finished_at or time.time())
        if self.on_result is not None:
            self.on_result(row)
        return row

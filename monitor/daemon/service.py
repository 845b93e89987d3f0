"""The composition root of the daemon: start/stop order, signals, systemd notifications.

start:  ledger -> metrics (counters from the ledger) -> model -> /metrics endpoint -> results page -> worker ->
        observer + backlog scan -> READY=1.
stop:   STOPPING=1 -> observer and intake -> worker (finishes the image in hand) -> endpoint -> results page ->
        ledger. Idempotent.
SIGTERM/SIGINT set one stop event; SIGHUP reloads configuration and model (a model that fails to load keeps the
old one). WATCHDOG=1 is sent at half of WATCHDOG_USEC, only while the worker makes progress.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from typing import Callable

from monitor.config import Config, load_config
from monitor.daemon.metrics import Metrics
from monitor.daemon.retention import Retention
from monitor.daemon.watcher import Intake
from monitor.daemon.worker import Worker
from monitor.judge import load_model, warm
from monitor.kinds import State
from monitor.ledger import LABEL_KINDS, Label, Ledger, LedgerError, Row, lock_ledger
from monitor.model.model import Model
from monitor.web.server import ResultsServer
from monitor.web.site import WebError

log = logging.getLogger(__name__)


class Notifier:
    """sd_notify(3) over the NOTIFY_SOCKET datagram socket; a no-op outside systemd. A send waits at most
    ``timeout`` seconds: a socket whose reader does not read (a manager that hangs) fills after a few messages, and
    a blocking send would then hold the serve loop, and the stop, for as long."""

    def __init__(self, address: str | None = None, timeout: float = 2.0):
        self.timeout = timeout
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_seconds = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None

    def __call__(self, *lines: str) -> None:
        if not self.address:
            return
        addr = self.address
        if addr.startswith("@"):  # abstract namespace
            addr = "\0" + addr[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.settimeout(self.timeout)
                s.connect(addr)
                s.sendall("\n".join(lines).encode())
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)


class Service:
    def __init__(self, cfg: Config, config_path: str | os.PathLike | None = None,
                 notifier: Notifier | None = None, on_result: Callable[[Row], None] | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self.notify = notifier or Notifier()
        self.on_result = on_result
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self._wake = threading.Event()  # set by signals; serve() wakes up
        self.ledger: Ledger | None = None
        self.metrics: Metrics | None = None
        self.worker: Worker | None = None
        self.intake: Intake | None = None
        self.web: ResultsServer | None = None
        self.retention: Retention | None = None
        self._lock_fd: int | None = None
        self.exit_code = 0
        self.port: int | None = None
        self.web_port: int | None = None
        self._stopped = False
        self._stop_lock = threading.Lock()
        self._labels_counted: dict[str, int] = {}  # labels in monitor_labels_total so far, by kind
        self._labels_lock = threading.Lock()
        self._label_failures = 0  # reads of the label counts that failed in a row (said once at WARNING)

    # ---------------------------------------------------------------------------------------------------- start
    def start(self) -> None:
        cfg = self.cfg
        self.notify("STATUS=starting: opening the ledger")
        self._lock_fd = lock_ledger(cfg.output.ledger)
        self.ledger = Ledger(cfg.output.ledger)
        self.metrics = m = Metrics(line=cfg.service.line)
        m.restore(self.ledger.totals())
        self._sync_labels()
        self._config_gauges(cfg)
        self.retention = Retention(self.ledger, cfg.output.max_bytes, cfg.output.max_age_seconds)
        self._retain()
        self.notify(f"STATUS=loading model {cfg.model.path}")
        model = load_model(cfg)
        self.notify("STATUS=warming up the model")
        warm(model)
        self._model_info(model)
        if cfg.metrics.enabled:
            self.port = m.serve(cfg.metrics.address, cfg.metrics.port, cfg.metrics.certfile, cfg.metrics.keyfile)
            log.info("metrics on http%s://%s:%d/metrics", "s" if cfg.metrics.certfile else "",
                     cfg.metrics.address, self.port)
        if cfg.web.enabled:
            self._start_web(cfg)
        # the alerts link to the page only where operators can reach it: web.external_url
        m.set_web(cfg.web.external_url if self.web is not None else "")
        self.worker = Worker(cfg, self.ledger, model, m, self.on_result)
        self.worker.restore_drift()
        if model.drift_reference is None:
            log.info("model %s has no drift reference (no validation images, or fitted before 0.3.0): "
                     "monitor_drift_ratio stays NaN; refit to get one", model.model_id)
        if cfg.fibres.enabled and model.meta.fibres is None:
            log.info("model %s has no fibre reference (fitted before fibres were measured, or none of its training "
                     "images could be measured): the fibres of every image are measured, but monitor_fibre_diameter_"
                     "ratio stays NaN; refit to get one", model.model_id)
        self.worker.start()
        self.intake = Intake(cfg.watch, self.ledger, self._recorded, self._rejected, m.ledger_errors_total.inc,
                             self.worker.limits)
        self.intake.start_watching()
        m.watch_folder_ok.set(1)
        m.worker_healthy.set(1)  # until the first check of the serve loop
        pending = self.ledger.pending_count()
        self.notify("READY=1", f"STATUS=watching {cfg.watch.dir}; model {model.model_id}; {pending} pending")
        log.info("ready: model %s, %d image(s) pending", model.model_id, pending)

    def _start_web(self, cfg: Config) -> None:
        """The results page; one that cannot start (its port taken by another line's monitor, a bad certificate)
        is logged and left off: the line's monitoring does not depend on it."""
        web = ResultsServer(cfg.web, self.ledger.reader(), lambda: self.cfg, self._label,
                            lambda kind: self.metrics.web_auth_failures_total.labels(kind=kind).inc())
        try:
            self.web_port = web.start()
        except WebError as exc:
            web.close()
            log.error("%s; running without the results page", exc)
            self.notify(f"STATUS=results page off: {exc}")
            return
        self.web = web
        log.info("results page on %s (bound to %s:%d)", web.url, cfg.web.address, self.web_port)

    def _config_gauges(self, cfg: Config) -> None:
        self.metrics.budget_seconds.set(cfg.service.budget_seconds)
        self.metrics.coverage_threshold_ratio.set(cfg.alarm.coverage_threshold)
        self.metrics.expected_interval_seconds.set(cfg.service.expected_interval_seconds)

    def _model_info(self, model: Model) -> None:
        mc = model.meta.scorer.get("config", {})
        self.metrics.set_model(model.model_id, model.meta.method or "?", mc.get("backbone", ""), model.runtime)

    def _label(self, image_id: int, kind: str, who: str, note: str) -> Label:
        """A label from the results page, written by the daemon's own ledger connection."""
        label = self.ledger.label(image_id, kind, who, note, "web")
        self._sync_labels()
        return label

    def _sync_labels(self) -> None:
        """monitor_labels_total follows the ledger: labels from the page, and from `monitor label` (another
        process) within one turn of the serve loop."""
        with self._labels_lock:
            counts = self.ledger.label_counts()
            for kind in LABEL_KINDS:
                n = counts.get(kind, 0) - self._labels_counted.get(kind, 0)
                if n > 0:
                    self.metrics.labels_total.labels(kind=kind).inc(n)
            self._labels_counted = counts

    def _recorded(self, row: Row, created: bool) -> None:
        if created:
            self.metrics.images_received_total.inc()
            self.metrics.last_received_timestamp_seconds.set(row.seen_at)
            self.metrics.queue_depth.inc()
        if row.state == State.PENDING:
            self.worker.wake.set()

    def _rejected(self, path: str, kind: str, reason: str, key: str, size: int = 0, mtime_ns: int = 0) -> bool:
        """A file that cannot be taken (vanished before it could be hashed, a symbolic link the policy refuses)
        still gets a failed row: nothing disappears silently. ``key`` stands in for the content hash, so that the
        same refusal seen again (the next scan) is the same row. True when the row is new."""
        row, created = self.ledger.record_failed(path, size, mtime_ns, key, kind, reason)
        if created:
            self.metrics.images_received_total.inc()
            self.metrics.images_failed_total.labels(reason=kind).inc()
        return created

    # ------------------------------------------------------------------------------------------------------ run
    def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop. Returns the exit code. Call from the main thread."""
        handlers = {signal.SIGTERM: self._on_stop, signal.SIGINT: self._on_stop, signal.SIGHUP: self._on_hup}
        old = {s: signal.signal(s, h) for s, h in handlers.items()}
        try:
            try:
                self.start()
            except BaseException:
                self.stop(quiet=True)  # undo what started; the error is the last word, not "stopped"
                raise
            self.serve()
        finally:
            self.stop()
            for s, h in old.items():
                signal.signal(s, h)
        return self.exit_code

    def _on_stop(self, signum, frame) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        self.stop_event.set()
        self._wake.set()

    def _on_hup(self, signum, frame) -> None:
        log.debug("SIGHUP: reloading configuration and model")  # the outcome is logged once, by reload()
        self.reload_event.set()
        self._wake.set()

    def serve(self) -> None:
        """Wait for stop; meanwhile send watchdog pings while healthy and handle reloads."""
        period = self.notify.watchdog_seconds / 2 if self.notify.watchdog_seconds else 5.0
        while not self.stop_event.is_set():
            self._wake.wait(timeout=period)
            self._wake.clear()
            if self.stop_event.is_set():
                return
            if self.reload_event.is_set():
                self.reload_event.clear()
                self.reload()
            self._retain()
            try:
                self._sync_labels()
                if self._label_failures:
                    log.info("the label counts are read again (after %d failed tries)", self._label_failures)
                    self._label_failures = 0
            except Exception as exc:  # sqlite3.Error: a busy or full disk; the next turn tries again
                self._label_failures += 1
                self.metrics.ledger_errors_total.inc()
                if self._label_failures == 1:  # said once at WARNING, then counted (monitor_ledger_errors_total)
                    log.warning("the label counts cannot be read from the ledger (%s); retried every %.0f s, counted "
                                "in monitor_ledger_errors_total", exc, period)
                else:
                    log.debug("label counts not read: %s", exc)
            if self.ledger.lost():  # the state folder removed, the ledger replaced: stop, loudly
                log.critical("the ledger %s was deleted or replaced while the monitor ran; stopping (nothing it "
                             "wrote from then on could be read back). Restore it, or start again with a new ledger, "
                             "which scores every image in the export folder again", self.cfg.output.ledger)
                self.exit_code = 1
                return
            self._keep_lock()
            healthy = self.worker.healthy() and self.intake.is_alive()
            self.metrics.worker_healthy.set(int(healthy))
            self.metrics.watch_folder_ok.set(int(self.intake.folder_ok))
            if healthy:
                self.notify("WATCHDOG=1")
            else:
                log.error("worker stalled or dead: no watchdog ping (systemd will restart the service)")

    def _keep_lock(self) -> None:
        """A lock file removed while the monitor runs would let a second monitor in: put it back and hold it."""
        lock = f"{self.cfg.output.ledger}.lock"
        try:
            held = os.fstat(self._lock_fd).st_ino == os.stat(lock).st_ino
        except OSError:
            held = False
        if held:
            return
        try:
            fd = lock_ledger(self.cfg.output.ledger)
        except (LedgerError, OSError) as exc:
            log.error("the lock file %s was removed and cannot be taken again: %s", lock, exc)
            return
        os.close(self._lock_fd)
        self._lock_fd = fd
        log.warning("the lock file %s was removed while the monitor ran; made and held again", lock)

    def _retain(self) -> None:
        """Keep output.dir within output.max_bytes / output.max_age (the daemon's own files only). A failure is
        logged and tried again at the next turn: it must not stop the monitoring."""
        try:
            self.retention.enforce()
        except Exception:
            log.exception("retention failed; trying again later")
        self.metrics.output_bytes.set(self.retention.bytes)

    def reload(self) -> None:
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            cfg = load_config(self.config_path) if self.config_path else self.cfg
            model = load_model(cfg)
            warm(model)
        except Exception as exc:
            log.error("reload failed, keeping model %s: %s", self.worker.model.model_id, exc)
            self.notify("READY=1", f"STATUS=reload failed, kept model {self.worker.model.model_id}: {exc}")
            return
        for section in ("watch", "metrics", "web", "output"):
            if getattr(cfg, section) != getattr(self.cfg, section):
                log.warning("reload: changes to the %s section take effect at the next restart", section)
                cfg = dataclasses.replace(cfg, **{section: getattr(self.cfg, section)})
        self.worker.swap(model, cfg)
        self.cfg = cfg
        self.metrics.line = cfg.service.line
        self._config_gauges(cfg)
        self._model_info(model)
        log.info("reloaded %s: model %s", self.config_path or "the configuration", model.model_id)
        self.notify("READY=1", f"STATUS=watching {cfg.watch.dir}; model {model.model_id}")

    # ----------------------------------------------------------------------------------------------------- stop
    def stop(self, quiet: bool = False) -> None:
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self.stop_event.set()
        self._wake.set()
        self.notify("STOPPING=1", "STATUS=stopping")
        if self.intake is not None:
            self.intake.stop()
        if self.worker is not None:
            self.worker.stop()
        if self.metrics is not None:
            self.metrics.close()
        if self.web is not None:
            self.web.close()
        if self.ledger is not None:
            self.ledger.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if not quiet:
            log.info("stopped")

"""Watching the export folder: an image is taken only once it is complete, and recorded in the ledger.

Two threads:

* the watchdog observer runs :class:`_Handler`, which only filters names and enqueues (no I/O, no inference);
* :class:`Intake` takes the queue, decides when a file is complete, hashes it and records it in the ledger.

When is a file complete?

* ``native`` observer (inotify): on close-after-write, or when it is renamed into the folder (microscope software
  often writes ``x.tif.tmp`` and renames it to ``x.tif``). Created/modified events are ignored.
* ``polling`` observer (network shares, where no close events exist): once its size and mtime have not changed for
  ``settle_seconds``.
* the start-up scan (backlog) and re-scans after a queue overflow: files whose mtime is ``settle_seconds`` old are
  complete; younger ones are watched until they settle (or, native, until their close event comes).

The same content seen twice is one ledger row, so a file both scanned and closed is recorded once.
Files in the export folder are only ever opened for reading.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable

from watchdog.events import FileClosedEvent, FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from .backbones import file_sha256
from .config import WatchSection
from .ledger import Ledger, Row

log = logging.getLogger(__name__)

COMPLETE, CANDIDATE = "complete", "candidate"


def wanted(name: str, cfg: WatchSection) -> bool:
    """True for a file name the monitor takes: matches a pattern, is not hidden, matches no ignore pattern."""
    n = name.lower()
    if n.startswith("."):
        return False
    if any(fnmatch.fnmatchcase(n, p.lower()) for p in cfg.ignore):
        return False
    return any(fnmatch.fnmatchcase(n, p.lower()) for p in cfg.patterns)


class _Handler(FileSystemEventHandler):
    """Runs on the observer thread: filter and enqueue, nothing else."""

    def __init__(self, cfg: WatchSection, q: queue.Queue, overflow: threading.Event):
        self.cfg, self.q, self.overflow = cfg, q, overflow
        self.native = cfg.observer == "native"

    def _put(self, kind: str, path: str) -> None:
        if not wanted(os.path.basename(path), self.cfg):
            return
        try:
            self.q.put_nowait((kind, path))
        except queue.Full:
            self.overflow.set()  # the intake re-scans the folder: nothing is lost

    def on_closed(self, event: FileClosedEvent) -> None:  # IN_CLOSE_WRITE
        if self.native and not event.is_directory:
            self._put(COMPLETE, event.src_path)

    def on_moved(self, event: FileMovedEvent) -> None:
        if not event.is_directory:
            self._put(COMPLETE if self.native else CANDIDATE, event.dest_path)

    def on_created(self, event: FileCreatedEvent) -> None:
        if not self.native and not event.is_directory:
            self._put(CANDIDATE, event.src_path)

    def on_modified(self, event: FileModifiedEvent) -> None:
        if not self.native and not event.is_directory:
            self._put(CANDIDATE, event.src_path)


class Intake(threading.Thread):
    """Records complete files in the ledger and wakes the worker. Owns the observer."""

    def __init__(self, cfg: WatchSection, ledger: Ledger, on_recorded: Callable[[Row, bool], None],
                 on_gone: Callable[[str], None] | None = None):
        super().__init__(name="intake", daemon=True)
        self.cfg = cfg
        self.dir = Path(cfg.dir).resolve()  # the ledger keeps absolute paths
        self.ledger = ledger
        self.on_recorded = on_recorded
        self.on_gone = on_gone
        self.q: queue.Queue = queue.Queue(maxsize=cfg.queue_size)
        self.overflow = threading.Event()
        self._halt = threading.Event()
        self._candidates: dict[str, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, unchanged since)
        self.observer = None

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start_watching(self) -> None:
        """Start the observer, then scan the backlog (in that order: a file arriving in between is not missed)."""
        if not self.dir.is_dir():
            raise FileNotFoundError(f"watch.dir {self.dir} is not a folder")
        obs_cls = Observer if self.cfg.observer == "native" else PollingObserver
        self.observer = obs_cls(timeout=self.cfg.poll_seconds) if obs_cls is PollingObserver else obs_cls()
        self.observer.schedule(_Handler(self.cfg, self.q, self.overflow), str(self.dir), recursive=self.cfg.recursive)
        self.observer.start()
        n = self.scan()
        log.info("watching %s (%s observer); backlog scan recorded %d new image(s)", self.dir, self.cfg.observer, n)
        self.start()

    def stop(self) -> None:
        self._halt.set()
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=10)
        if self.is_alive():
            self.join(timeout=10)

    # -------------------------------------------------------------------------------------------------- scanning
    def scan(self) -> int:
        """Record every complete image in the folder, oldest first; younger files become candidates."""
        files = []
        walker = self.dir.rglob("*") if self.cfg.recursive else self.dir.iterdir()
        for p in walker:
            if wanted(p.name, self.cfg):
                try:
                    st = p.stat()
                except OSError:
                    continue
                if p.is_file():
                    files.append((st.st_mtime_ns, str(p), st))
        files.sort()
        now, n = time.time(), 0
        for mtime_ns, path, st in files:
            if self.ledger.known(path, st.st_size, mtime_ns):
                continue
            if now - mtime_ns / 1e9 >= self.cfg.settle_seconds:
                n += self._record(path)
            else:
                self._candidates[path] = (st.st_size, mtime_ns, time.monotonic())
        return n

    # ----------------------------------------------------------------------------------------------------- loop
    def run(self) -> None:
        tick = min(self.cfg.poll_seconds, max(self.cfg.settle_seconds / 4, 0.05))
        while not self._halt.is_set():
            try:
                kind, path = self.q.get(timeout=tick)
            except queue.Empty:
                kind = None
            try:
                if kind == COMPLETE:
                    self._candidates.pop(path, None)
                    self._record(path)
                elif kind == CANDIDATE:
                    self._candidates.setdefault(path, (-1, -1, time.monotonic()))
                if self.overflow.is_set():
                    self.overflow.clear()
                    log.warning("event queue overflowed (watch.queue_size=%d); re-scanning %s",
                                self.cfg.queue_size, self.dir)
                    self.scan()
                self._settle()
            except Exception:  # the intake must not die: log, and the next scan or event catches up
                log.exception("intake error on %s", path if kind else "settle")

    def _settle(self) -> None:
        now = time.monotonic()
        for path, (size, mtime, since) in list(self._candidates.items()):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                del self._candidates[path]  # written under a temporary name and moved away, or deleted
                continue
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                self._candidates[path] = (st.st_size, st.st_mtime_ns, now)
            elif now - since >= self.cfg.settle_seconds and st.st_size > 0:
                del self._candidates[path]
                self._record(path)

    def _record(self, path: str) -> int:
        """Hash and record one complete file; returns 1 when a new row was made."""
        try:
            st = os.stat(path)
            if self.ledger.known(path, st.st_size, st.st_mtime_ns):
                return 0
            digest = file_sha256(path)
        except FileNotFoundError:
            log.warning("%s: gone before it could be recorded", path)
            if self.on_gone is not None:
                self.on_gone(path)
            return 0
        except OSError as exc:
            # unreadable (permissions): record it so that it fails with a reason instead of vanishing
            st = os.stat(path)
            digest = f"unreadable:{st.st_size}:{st.st_mtime_ns}"
            log.warning("%s: cannot read to hash it: %s", path, exc.strerror or exc)
        row, created = self.ledger.record(path, st.st_size, st.st_mtime_ns, digest)
        self.on_recorded(row, created)
        return int(created)

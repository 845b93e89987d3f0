"""Watching the export folder: an image is taken only once it is complete, and recorded in the ledger.

Two threads:

* the watchdog observer runs :class:`_Handler`, which only filters names and enqueues (no I/O, no inference);
* :class:`Intake` takes the queue, decides when a file is complete, hashes it and records it in the ledger.

When is a file complete?

* ``native`` observer (inotify): on close-after-write, or when it is renamed into the folder (microscope software
  often writes ``x.tif.tmp`` and renames it to ``x.tif``). A file that appears without either (moved in from
  another folder: inotify reports it as created, with no write and no close) is taken once its size and mtime have
  not changed for ``settle_seconds``; a write to it means it is being written here, and its close is waited for.
* ``polling`` observer (network shares, where no close events exist): once its size and mtime have not changed for
  ``settle_seconds`` (an empty file: 5 x ``settle_seconds``, then it is recorded and fails ``empty``).
* the start-up scan (backlog) and re-scans after a queue overflow: files whose mtime is ``settle_seconds`` old are
  complete; younger ones are watched until they settle (or, native, until their close event comes).

A file that failed ``permission`` is taken again once it can be read: a ``chmod`` changes neither its size nor its
mtime, so its attribute event (and every scan) looks at the ledger's ``permission`` failures instead.

The same content seen twice is one ledger row, so a file both scanned and closed is recorded once.
Files in the export folder are only ever opened for reading.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import queue
import sqlite3
import stat
import threading
import time
from enum import StrEnum
from pathlib import Path
from typing import Callable

from watchdog.events import FileClosedEvent, FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from monitor.config import WatchSection
from monitor.files import file_sha256, link_problem, shown
from monitor.kinds import State
from monitor.ledger import Ledger, Row
from monitor.model.images import ImageLimits
from monitor.times import local_time

log = logging.getLogger(__name__)

class Event(StrEnum):
    """What the observer's handler puts on the intake's queue about a path."""

    COMPLETE = "complete"  # closed after writing, or moved in (native): take it
    CANDIDATE = "candidate"  # created or changed (polling): take it once its size and time settle
    WRITING = "writing"  # opened for writing here (native): its close will follow
    MOVED = "moved"  # renamed inside the folder: (old path, new path)
    ATTRIB = "attrib"  # its mode or owner changed: readable now, perhaps


COMPLETE, CANDIDATE, WRITING, MOVED, ATTRIB = Event  # the names the handler and the intake use
EMPTY_SETTLE_FACTOR = 5  # a 0-byte candidate is recorded (and fails "empty") after 5 x settle_seconds unchanged
FOLDER_CHECK_SECONDS = 1.0  # how often the intake checks that watch.dir is still the folder it watches
RETRY_SECONDS = 5.0  # after the ledger refused a write (a full disk), the folder is re-scanned this much later


def _refusal(name: str, cfg: WatchSection) -> str | None:
    """Why the monitor does not take a file name ("hidden", "ignored", "no pattern"), None when it takes it."""
    n = name.lower()
    if n.startswith("."):
        return "hidden"
    if any(fnmatch.fnmatchcase(n, p.lower()) for p in cfg.ignore):
        return "ignored"
    return None if any(fnmatch.fnmatchcase(n, p.lower()) for p in cfg.patterns) else "no pattern"


def wanted(name: str, cfg: WatchSection) -> bool:
    """True for a file name the monitor takes: matches a pattern, is not hidden, matches no ignore pattern."""
    return _refusal(name, cfg) is None


def taken(name: str, cfg: WatchSection) -> bool:
    """``wanted``, where the intake decides on a file: one that only misses the patterns is logged once per suffix
    (``monitor score`` would read a .jpg or .bmp)."""
    why = _refusal(name, cfg)
    if why == "no pattern":
        _tell_not_taken(name, cfg)
    return why is None


_told: set[str] = set()  # suffixes already logged as not taken
_told_lock = threading.Lock()


def _tell_not_taken(name: str, cfg: WatchSection) -> None:
    suffix = os.path.splitext(name)[1].lower() or "(none)"
    with _told_lock:
        if suffix in _told:
            return
        _told.add(suffix)
    log.warning("not taking %s, nor any other %s file: it matches no watch.patterns (%s)%s", shown(name), suffix,
                ", ".join(cfg.patterns), f"; add \"*{suffix}\" to watch.patterns to score them"
                if suffix != "(none)" else "")


class _Handler(FileSystemEventHandler):
    """Runs on the observer thread: filter and enqueue, nothing else."""

    def __init__(self, cfg: WatchSection, q: queue.Queue, overflow: threading.Event, root: str):
        self.cfg, self.q, self.overflow = cfg, q, overflow
        self.native = cfg.observer == "native"
        self._writing: set[str] = set()  # native: files being written here (one WRITING event each until closed)
        self.root = root  # the watched folder, as scheduled
        # set when the watch itself ended: the watched folder was deleted (inotify IN_DELETE_SELF; polling: the
        # folder gone at a poll), and watchdog stopped watching it. A new folder made at once under the same name
        # can get the old inode number back (ext4), so (device, inode) alone cannot tell it from the old one
        self.ended = threading.Event()

    def _put(self, kind: str, path) -> None:
        dest = path[1] if kind == MOVED else path
        if not taken(os.path.basename(dest), self.cfg):
            return
        try:
            self.q.put_nowait((kind, path))
        except queue.Full:
            self.overflow.set()  # the intake re-scans the folder: nothing is lost

    def on_closed(self, event: FileClosedEvent) -> None:  # IN_CLOSE_WRITE
        if self.native and not event.is_directory:
            self._writing.discard(event.src_path)
            self._put(COMPLETE, event.src_path)

    def on_moved(self, event: FileMovedEvent) -> None:
        if not event.is_directory:
            self._writing.discard(event.src_path)
            if wanted(os.path.basename(event.src_path), self.cfg):  # an image renamed (or its folder renamed)
                self._put(MOVED, (event.src_path, event.dest_path))
            else:  # a temporary name renamed into place
                self._put(COMPLETE if self.native else CANDIDATE, event.dest_path)

    def on_created(self, event: FileCreatedEvent) -> None:
        # native: a file moved in from another folder (mv from a staging folder, rsync --temp-dir) comes as
        # "created" with neither writes nor a close event: it is a candidate, taken once it has settled. A file
        # created to be written here is taken at its close instead (its first write withdraws the candidate).
        if not event.is_directory:
            self._put(CANDIDATE, event.src_path)

    def on_deleted(self, event) -> None:
        self._writing.discard(event.src_path)
        if event.is_directory and os.fsdecode(event.src_path) == self.root:
            self.ended.set()

    def on_attrib(self, event) -> None:  # a chmod (chown, touch): an image failed ``permission`` may be readable now
        if not event.is_directory:
            self._put(ATTRIB, event.src_path)

    def on_modified(self, event: FileModifiedEvent) -> None:
        if event.is_directory:
            return
        if not self.native:
            self._put(CANDIDATE, event.src_path)
        elif event.src_path not in self._writing:  # the first write only: a large file makes thousands
            self._writing.add(event.src_path)
            self._put(WRITING, event.src_path)


class _OverflowSpy(logging.Filter):
    """watchdog handles the kernel's inotify queue overflow (events lost) itself, logs it and tells no handler:
    its warning sets ``flag``, and the intake re-scans the folder."""

    LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")

    def __init__(self, flag: threading.Event):
        super().__init__()
        self.flag = flag

    def filter(self, record: logging.LogRecord) -> bool:
        if "overflow" in record.getMessage().lower():
            self.flag.set()
        return True


class Intake(threading.Thread):
    """Records complete files in the ledger and wakes the worker. Owns the observer."""

    def __init__(self, cfg: WatchSection, ledger: Ledger, on_recorded: Callable[[Row, bool], None],
                 on_rejected: Callable[..., None] | None = None, on_error: Callable[[], None] | None = None,
                 limits: Callable[[], ImageLimits] | None = None):
        super().__init__(name="intake", daemon=True)
        self.cfg = cfg
        # the worker's image limits now (they follow the model): a file larger than any image within them is
        # refused before it is hashed, so that a huge file cannot hold up the images behind it
        self.limits = limits
        self.dir = Path(cfg.dir).resolve()  # the ledger keeps absolute paths
        self.native = cfg.observer == "native"
        self.ledger = ledger
        self.on_recorded = on_recorded
        self.on_rejected = on_rejected  # (path, kind, reason, key, size, mtime_ns): a failed row
        self.q: queue.Queue = queue.Queue(maxsize=cfg.queue_size)
        self.overflow = threading.Event()
        self._halt = threading.Event()
        self._candidates: dict[str, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, unchanged since)
        self.observer = None
        self._handler: _Handler | None = None  # the observer's handler (its ``ended`` says the watch ended)
        self.on_error = on_error  # called once per file the ledger refused to record (the intake errors metric)
        self.folder_ok = False  # watch.dir exists and is the folder the observer watches
        self._folder_id: tuple[int, int] | None = None
        self._next_folder_check = 0.0
        self._rescan_at: float | None = None  # set while files wait to be recorded after a ledger error
        self._next_rescan = time.monotonic() + cfg.rescan_seconds if cfg.rescan_seconds else None
        self._spy = _OverflowSpy(self.overflow)
        self._blocked: set[str] = set()  # paths that could not be stat'ed for a moment (logged once)
        # unix times: files modified before the first, already here at the second, are not taken (watch.backlog)
        self._backlog_before = self._backlog_at = 0.0
        self._skipped: list | None = []  # (mtime_ns, path) skipped by the first scan, said once; then None

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start_watching(self) -> None:
        """Start the observer, then scan the backlog (in that order: a file arriving in between is not missed)."""
        if not self.dir.is_dir():
            raise FileNotFoundError(f"watch.dir {self.dir} is not a folder")
        for name in _OverflowSpy.LOGGERS:
            logging.getLogger(name).addFilter(self._spy)
        self._observe()
        self._backlog_before, self._backlog_at, first = self.ledger.backlog_before(self.cfg.backlog_seconds)
        n = self.scan()
        if first:
            self._tell_backlog()
        self._skipped = None  # later scans skip the same files without a word
        log.info("watching %s (%s observer); backlog scan recorded %d new image(s)", self.dir, self.cfg.observer, n)
        self.start()

    def _tell_backlog(self) -> None:
        """Say, once, at the first start of a new ledger, which images already in the folder are not scored."""
        if not self._skipped:
            return
        old = self._skipped  # in the scan's order: oldest first
        log.warning("new ledger: %d image(s) already in %s, modified before %s (watch.backlog: %s), are not scored, "
                    "from %s (%s) to %s (%s); `monitor score FILE` judges one of them",
                    len(old), self.dir, local_time(self._backlog_before), self.cfg.backlog, shown(old[0][1]),
                    local_time(old[0][0] / 1e9), shown(old[-1][1]), local_time(old[-1][0] / 1e9))

    def _observe(self) -> None:
        """(Re)start the observer on watch.dir as it is now. An observer that failed to start (the folder deleted
        again meanwhile) is not kept: the next folder check, a second later, tries again."""
        if self.observer is not None:
            self.observer.stop()
            if self.observer.is_alive():
                self.observer.join(timeout=10)
            self.observer = None
        self.folder_ok, self._folder_id = False, None  # until watching: a failure here is tried again in a second
        ident = _folder_id(self.dir)
        obs_cls = Observer if self.cfg.observer == "native" else PollingObserver
        observer = obs_cls(timeout=self.cfg.poll_seconds) if obs_cls is PollingObserver else obs_cls()
        handler = _Handler(self.cfg, self.q, self.overflow, str(self.dir))
        observer.schedule(handler, str(self.dir), recursive=self.cfg.recursive)
        observer.start()
        self.observer, self._handler = observer, handler
        self.folder_ok, self._folder_id = True, ident

    def _check_folder(self) -> None:
        """An export folder deleted and made anew (``rm -rf export && mkdir export``, a share re-mounted) leaves the
        observer on the old, deleted folder, blind to every new image: watch the new one and scan it. While there is
        none, say so (``folder_ok``, the metric ``monitor_watch_folder_ok``).

        The new folder is told from the old one by its (device, inode), or, when it got the old inode number back
        (ext4 hands it out again at once), by the end of the watch itself (the handler's ``ended``)."""
        now = time.monotonic()
        if now < self._next_folder_check:
            return
        self._next_folder_check = now + FOLDER_CHECK_SECONDS
        if self._handler is not None and self._handler.ended.is_set() and self._folder_id is not None:
            log.warning("the watch on watch.dir %s ended (the folder was deleted)", self.dir)
            self._folder_id = None  # whatever folder is there now is a new one
        ident = _folder_id(self.dir)
        if ident is not None and ident == self._folder_id:
            return
        if ident is None:
            if self.folder_ok:
                log.error("watch.dir %s is gone; no image is taken until it exists again", self.dir)
                self.folder_ok = False
            return
        log.warning("watch.dir %s was made anew; watching the new folder", self.dir)
        self._observe()
        log.info("re-scan of the new %s recorded %d new image(s)", self.dir, self.scan())

    def stop(self) -> None:
        self._halt.set()
        for name in _OverflowSpy.LOGGERS:
            logging.getLogger(name).removeFilter(self._spy)
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=10)
        if self.is_alive():
            self.join(timeout=10)

    # -------------------------------------------------------------------------------------------------- scanning
    def scan(self) -> int:
        """Record every complete image in the folder, oldest first; younger files become candidates."""
        files = []
        for path in self._entries():
            try:
                st = os.stat(path)
            except OSError:  # a symbolic link loop or a dangling link: recorded as refused if it is one
                problem = self.link_problem(path)
                if problem:
                    self._reject(path, "symlink", problem)
                continue
            if not stat.S_ISDIR(st.st_mode):
                files.append((st.st_mtime_ns, path, st))
        files.sort()
        now, n = time.time(), 0
        for mtime_ns, path, st in files:
            # old, and in the folder when this ledger was new (watch.backlog); its ctime, which no copy carries
            # over, tells an old image copied in later (rsync -t, a bulk copy found by a re-scan): that one is taken
            if mtime_ns < self._backlog_before * 1e9 and st.st_ctime_ns <= self._backlog_at * 1e9:
                if self._skipped is not None:
                    self._skipped.append((mtime_ns, path))
                continue
            if self.ledger.known(path, st.st_size, mtime_ns):
                continue
            if now - mtime_ns / 1e9 >= self.cfg.settle_seconds:
                n += self._record(path)
            else:
                self._candidates[path] = (st.st_size, mtime_ns, time.monotonic())
        return n + self._retake()

    def _retake(self, path: str | None = None) -> int:
        """Images failed ``permission`` (of ``path`` only, when given) that can be read now are taken again: a
        ``chmod`` changes neither size nor mtime, so no scan would see them as new. Returns the new rows."""
        n = 0
        for row in self.ledger.unreadable(path):
            if not row.path.startswith(str(self.dir) + os.sep):  # another watch.dir's (before a restart)
                continue
            try:
                st = os.stat(row.path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (row.size, row.mtime_ns):
                continue  # gone, or changed: a new file to the scans and events
            if self.link_problem(row.path):
                continue
            try:
                digest = file_sha256(row.path)
            except OSError:  # still unreadable: said once already, when it failed
                continue
            try:
                new, created = self.ledger.retake(row, digest)
            except sqlite3.Error as exc:  # a full disk: the re-scan every RETRY_SECONDS tries again
                self._refused(row.path, exc)
                continue
            if new.state == State.PENDING:
                log.info("%s: can be read now; taken again (ledger id %d)", shown(row.path), new.id)
            self.on_recorded(new, created)
            n += int(created)
        return n

    def _entries(self):
        """Paths of the wanted names in the folder (and below it, ``recursive``). A folder that cannot be read (no
        permission, a path longer than PATH_MAX) is logged and skipped: never fatal, at start or later."""
        def skipped(exc: OSError) -> None:
            log.warning("cannot scan %s: %s", exc.filename, exc.strerror or exc)

        if self.cfg.recursive:
            for root, _, names in os.walk(self.dir, onerror=skipped):  # symlinked folders are not entered
                yield from (os.path.join(root, n) for n in names if taken(n, self.cfg))
            return
        try:
            names = os.listdir(self.dir)
        except OSError as exc:
            skipped(exc)
            return
        yield from (os.path.join(self.dir, n) for n in names if taken(n, self.cfg))

    # ----------------------------------------------------------------------------------------------------- loop
    def run(self) -> None:
        """One thread: each turn takes at most one file event (waiting a settle tick for it), does the periodic
        jobs, handles the event, then the lost-events re-scan and the settling candidates."""
        tick = min(self.cfg.poll_seconds, max(self.cfg.settle_seconds / 4, 0.05))
        while not self._halt.is_set():
            try:
                kind, path = self.q.get(timeout=tick)
            except queue.Empty:
                kind, path = None, None
            try:
                self._periodic()
                if kind is not None:
                    self._dispatch(kind, path)
                if self.overflow.is_set():
                    self.overflow.clear()
                    log.warning("file events were lost (an event queue overflowed: watch.queue_size=%d or the "
                                "kernel's inotify queue); re-scanning %s", self.cfg.queue_size, self.dir)
                    self.scan()
                self._settle()
            except Exception:  # the intake must not die: log, and the next scan or event catches up
                log.exception("intake error on %s", path if kind else "settle")

    def _periodic(self) -> None:
        """The export folder's own check (gone, made anew), the re-scan retried after the ledger refused a write,
        and the periodic re-scan (``watch.rescan_seconds``) that finds images whose events were lost."""
        self._check_folder()
        now = time.monotonic()
        if self._rescan_at is not None and now >= self._rescan_at and self.folder_ok:
            self._rescan_at = None
            n = self.scan()
            if self._rescan_at is None:
                log.info("the ledger takes writes again: re-scan recorded %d image(s)", n)
        if self._next_rescan is not None and now >= self._next_rescan:
            self._next_rescan = now + self.cfg.rescan_seconds
            n = self.scan() if self.folder_ok else 0
            if n:  # found by the periodic re-scan only: some event was lost
                log.warning("periodic re-scan recorded %d image(s) no event had announced", n)

    def _dispatch(self, kind: str, path) -> None:
        if kind == COMPLETE:
            self._candidates.pop(path, None)
            self._record(path)
        elif kind == MOVED:
            self._moved(*path)
        elif kind == CANDIDATE:
            self._candidates.setdefault(path, (-1, -1, time.monotonic()))
        elif kind == WRITING:  # native: written here, so its close event will come
            self._candidates.pop(path, None)
        elif kind == ATTRIB:
            self._retake(path)

    def _settle(self) -> None:
        now = time.monotonic()
        for path, (size, mtime, since) in list(self._candidates.items()):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                del self._candidates[path]  # written under a temporary name and moved away, or deleted
                self._blocked.discard(path)
                continue
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM):  # the folder unreadable for a moment: next tick
                    continue
                del self._candidates[path]  # a link loop, a name too long: recorded as refused, once
                self._record(path)
                continue
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                self._candidates[path] = (st.st_size, st.st_mtime_ns, now)
            elif now - since >= self.cfg.settle_seconds * (1 if st.st_size else EMPTY_SETTLE_FACTOR):
                del self._candidates[path]  # an empty file waits longer: its writer may not have begun
                # native: an empty regular file is taken at its close (or by a re-scan), not as a false "empty"
                if st.st_size or not self.native or not stat.S_ISREG(st.st_mode):
                    self._record(path)

    def link_problem(self, path: str) -> str | None:
        """Why ``path`` may not be read under ``watch.symlinks``, or None. A link loop is always refused."""
        return link_problem(path, self.cfg.symlinks, self.dir)

    def _reject(self, path: str, kind: str, reason: str) -> None:
        try:
            st = os.lstat(path)
            size, mtime_ns = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime_ns = 0, 0
        if self.on_rejected is None:
            log.warning("%s: not taken: %s", path, reason)
            return
        key = f"{kind}:{mtime_ns}" if kind != "missing" else f"missing:{time.time_ns()}"
        try:
            if self.on_rejected(path, kind, reason, key, size, mtime_ns):  # logged once, not at every re-scan
                log.warning("%s: not taken: %s", path, reason)
        except sqlite3.Error as exc:
            self._refused(path, exc)

    def _record(self, path: str) -> int:
        """Hash and record one complete file; returns 1 when a new row was made."""
        problem = self.link_problem(path)
        if problem:
            self._reject(path, "symlink", problem)
            return 0
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._reject(path, "missing", "file removed before it could be read")
            return 0
        except OSError as exc:  # the folder itself unreadable for a moment (chmod 000): a candidate until it is not
            if path not in self._blocked:
                self._blocked.add(path)
                log.warning("%s: cannot look at it (%s); trying again", path, exc.strerror or exc)
            self._candidates[path] = (-1, -1, time.monotonic())
            return 0
        self._blocked.discard(path)
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the intake for good on its first read
            if not stat.S_ISDIR(st.st_mode):
                self._reject(path, "unreadable", "not a regular file (a FIFO, socket or device)")
            return 0
        too_large = self.limits is not None and self.limits().too_large(st.st_size)
        if too_large:
            self._reject(path, "too_large", too_large)
            return 0
        # always hashed, never skipped for a known size and mtime: an event says the content may have changed
        # (`cp -p` rewrites a file and puts its old mtime back); the start-up and re-scans skip known files
        try:
            digest = file_sha256(path)
        except FileNotFoundError:
            self._reject(path, "missing", "file removed before it could be read")
            return 0
        except OSError as exc:
            # unreadable (permissions): record it so that it fails with a reason instead of vanishing
            digest = f"unreadable:{st.st_size}:{st.st_mtime_ns}"
            log.warning("%s: cannot read to hash it: %s", path, exc.strerror or exc)
        try:
            row, created = self.ledger.record(path, st.st_size, st.st_mtime_ns, digest)
        except sqlite3.Error as exc:  # a full disk, an I/O error: the file stays, a re-scan records it later
            self._refused(path, exc)
            return 0
        self.on_recorded(row, created)
        return int(created)

    def _moved(self, src: str, dest: str) -> None:
        """An image renamed within the folder (or with its folder) is not a new image: its row follows it (no second
        score, no second alarm). A rename keeps size and mtime; a row still pending, or none, makes a new row."""
        try:
            st = os.stat(dest)
            if not self.link_problem(dest) and self.ledger.rename(src, dest, st.st_size, st.st_mtime_ns):
                log.info("%s: renamed to %s; its result follows it", src, dest)
                return
        except OSError:
            pass
        except sqlite3.Error as exc:
            self._refused(dest, exc)
            return
        if self.native:
            self._candidates.pop(dest, None)
            self._record(dest)
        else:
            self._candidates.setdefault(dest, (-1, -1, time.monotonic()))

    def _refused(self, path: str, exc: sqlite3.Error) -> None:
        if self._rescan_at is None:
            log.error("cannot record %s in the ledger (%s); the folder is re-scanned every %.0f s until it can",
                      path, exc, RETRY_SECONDS)
        self._rescan_at = time.monotonic() + RETRY_SECONDS
        if self.on_error is not None:
            self.on_error()


def _folder_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder at ``path``, None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None

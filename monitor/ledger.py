"""The ledger: one SQLite file (WAL) that records every image the daemon sees. It is the source of truth.

An image is identified by its path *and* the sha256 of its content: the same file seen twice (a close event and the
start-up scan, say) is one row; a changed file under the same name is a new row. A row is written before the image
is scored (state ``pending``) and finished as ``done`` (with the result) or ``failed`` (with the reason). After a
crash every ``pending`` row is scored again, so nothing is lost, and a ``done`` row is never scored again.

Each public method is one short transaction; the connection is shared between threads under a lock.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from monitor.errors import MonitorError
from monitor.files import shown
from monitor.kinds import LabelKind, State, Verdict

# 2: operator labels (the labels table); 3: the meta table (watch.backlog's moment); older ledgers are upgraded in
# place
SCHEMA_VERSION = 3
STATES = tuple(State)
LABEL_KINDS = tuple(LabelKind)  # what an operator says of a result (Ledger.label)
VERDICT_FILTERS = ("ok", "defect", "mismatch", "no-threshold", "failed", "pending")  # Ledger.results(verdict=...)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,   -- arrival order
    path          TEXT    NOT NULL,
    size          INTEGER NOT NULL,
    mtime_ns      INTEGER NOT NULL,
    sha256        TEXT    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
    seen_at       REAL    NOT NULL,                    -- unix time the file was complete and recorded
    started_at    REAL,                                -- last time scoring started
    finished_at   REAL,
    attempts      INTEGER NOT NULL DEFAULT 0,          -- scoring attempts (more than one after a crash)
    verdict       TEXT,                                -- ok / defect / no-threshold
    alarm         INTEGER,                             -- 1 when this image raised the alarm
    coverage      REAL,
    n_defects     INTEGER,
    largest_area  INTEGER,
    max_score     REAL,
    score_seconds REAL,
    e2e_seconds   REAL,                                -- seen_at -> finished_at
    model_id      TEXT,
    overlay       TEXT,
    result_json   TEXT,
    error_kind    TEXT,
    error         TEXT,
    UNIQUE (path, sha256)
);
CREATE INDEX IF NOT EXISTS images_state ON images (state, id);
CREATE INDEX IF NOT EXISTS images_finished ON images (finished_at);
CREATE INDEX IF NOT EXISTS images_seen ON images (seen_at);
CREATE INDEX IF NOT EXISTS images_verdict ON images (state, verdict, id);
-- a year of images is half a million rows: what the daemon reads at start (the alarm counter, the drift window of
-- the model in use, retention's files) and `monitor history --alarms` find their rows here instead of reading the
-- table (bench/year.py); the partial ones hold only the rows they name. Made at the next open of an older ledger.
CREATE INDEX IF NOT EXISTS images_alarm ON images (id) WHERE alarm = 1;
CREATE INDEX IF NOT EXISTS images_overlay ON images (id) WHERE overlay IS NOT NULL;
CREATE INDEX IF NOT EXISTS images_model ON images (model_id, state, verdict, id);
-- what operators said of a result; a result row is never changed by a label, and a newer label of the same image
-- supersedes an older one (both are kept)
CREATE TABLE IF NOT EXISTS labels (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id  INTEGER NOT NULL REFERENCES images (id),
    kind      TEXT    NOT NULL CHECK (kind IN ('false_alarm', 'confirmed')),
    note      TEXT    NOT NULL DEFAULT '',
    who       TEXT    NOT NULL,
    source    TEXT    NOT NULL,                        -- web / cli
    at        REAL    NOT NULL                         -- unix time
);
CREATE INDEX IF NOT EXISTS labels_image ON labels (image_id, id);
-- facts about the ledger itself: backlog_at = unix time of its first start, backlog_before = unix time; images
-- already in the export folder at backlog_at (their ctime not later), modified before backlog_before, are not
-- scored (watch.backlog)
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_COLUMNS = ("id", "path", "size", "mtime_ns", "sha256", "state", "seen_at", "started_at", "finished_at", "attempts",
            "verdict", "alarm", "coverage", "n_defects", "largest_area", "max_score", "score_seconds", "e2e_seconds",
            "model_id", "overlay", "result_json", "error_kind", "error")


@dataclass(frozen=True)
class Row:
    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str
    state: str
    seen_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    verdict: str | None
    alarm: int | None
    coverage: float | None
    n_defects: int | None
    largest_area: int | None
    max_score: float | None
    score_seconds: float | None
    e2e_seconds: float | None
    model_id: str | None
    overlay: str | None
    result_json: str | None
    error_kind: str | None
    error: str | None

    def to_dict(self) -> dict:
        return {c: getattr(self, c) for c in _COLUMNS if c != "result_json"}


@dataclass(frozen=True)
class Label:
    id: int
    image_id: int
    kind: str  # one of LABEL_KINDS
    note: str
    who: str
    source: str  # web / cli
    at: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


_LABEL_COLUMNS = "id, image_id, kind, note, who, source, at"
NOTE_CHARS = 500  # the longest note a label keeps
WHO_CHARS = 80


class LabelError(MonitorError, ValueError):
    """A label that cannot be given (no such result, not scored, a false alarm on an image that raised none)."""


def check_label(row: "Row | None", kind: str, who: str, note: str) -> None:
    """Raise LabelError when ``row`` cannot get this label."""
    if kind not in LABEL_KINDS:
        raise LabelError(f"the label must be one of {', '.join(LABEL_KINDS)}, got {kind!r}")
    if row is None:
        raise LabelError("no such result in the ledger")
    if row.state != State.DONE:
        raise LabelError(f"result {row.id} was not scored ({row.state}); only scored results can be labelled")
    if kind == LabelKind.FALSE_ALARM and row.verdict != Verdict.DEFECT:
        raise LabelError(f"result {row.id} raised no alarm (verdict {row.verdict}); only a defect verdict can be a "
                         "false alarm (label a defect the monitor missed as confirmed)")
    if not who.strip() or len(who) > WHO_CHARS or not who.isprintable():
        raise LabelError(f"who labels must be a name of 1 to {WHO_CHARS} printable characters")
    if len(note) > NOTE_CHARS:
        raise LabelError(f"the note must be at most {NOTE_CHARS} characters")
    if any(not c.isprintable() and c not in "\n\t" for c in note):
        raise LabelError("the note must not hold control characters")

class LedgerError(MonitorError, RuntimeError):
    pass


def db_path(path: str) -> str | bytes:
    """A path as the ledger stores it: text, or, for a name that is not valid UTF-8 (kept by Python as surrogates),
    its raw bytes as a BLOB in the same column, so that nothing is lost and the file can still be opened."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def _from_db(path: str | bytes) -> str:
    """A stored path as Python's path (the inverse of ``db_path``)."""
    return os.fsdecode(path) if isinstance(path, bytes) else path


def _row(values) -> Row:
    return Row(values[0], _from_db(values[1]), *values[2:])


def lock_ledger(path: str | os.PathLike) -> int:
    """Hold ``<ledger>.lock`` for the life of the process (released by the kernel however it ends): two daemons on
    one ledger would score every image twice and raise every alarm twice. Returns the lock's file descriptor."""
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        other = _holder_pid(fd) or "?"
        os.close(fd)
        raise LedgerError(f"{path}: another monitor (pid {other}) runs on this ledger; two would score every image "
                          "twice (output.ledger must differ per line)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _holder_pid(fd: int) -> int | None:
    """The pid ``lock_ledger`` wrote into the lock file open at ``fd``; None when it holds none (not yet written,
    or not a number)."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def ledger_holder(path: str | os.PathLike) -> int | None:
    """The pid of the monitor holding ``<ledger>.lock`` (``lock_ledger``), or None when none runs on it."""
    try:
        fd = os.open(f"{path}.lock", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:  # held: a monitor runs on this ledger
            return _holder_pid(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class LedgerQueries:
    """The queries of the ledger, shared by the daemon's ``Ledger`` and the read-only ``LedgerReader``: a
    reader has no write method at all."""

    path: Path
    _db: sqlite3.Connection
    _lock: threading.Lock

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, sql: str, args=()) -> Row | None:
        r = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM images {sql}", args).fetchone()
        return None if r is None else _row(r)

    def _all(self, sql: str, args=()) -> list[Row]:
        return [_row(r) for r in self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM images {sql}", args)]

    def labels(self, image_id: int) -> list[Label]:
        """Every label of one result, oldest first (the last one is what the operators say now)."""
        with self._lock:
            return [Label(*r) for r in self._db.execute(
                f"SELECT {_LABEL_COLUMNS} FROM labels WHERE image_id = ? ORDER BY id", (image_id,))]

    def current_labels(self, image_ids: list[int] | None = None) -> dict[int, Label]:
        """The latest label of each labelled result (of ``image_ids``; None = all)."""
        sql = f"SELECT {_LABEL_COLUMNS} FROM labels WHERE id IN (SELECT MAX(id) FROM labels GROUP BY image_id)"
        args: tuple = ()
        if image_ids is not None and len(image_ids) > 500:  # `monitor history` of weeks: more ids than SQLite takes
            wanted = set(image_ids)                          # as parameters; the labels are far fewer than the rows
            return {i: lab for i, lab in self.current_labels().items() if i in wanted}
        if image_ids is not None:
            if not image_ids:
                return {}
            sql += f" AND image_id IN ({', '.join('?' * len(image_ids))})"
            args = tuple(image_ids)
        with self._lock:
            return {r[1]: Label(*r) for r in self._db.execute(sql, args)}

    def label_counts(self) -> dict[str, int]:
        """Labels given so far, by kind (every label counts, a changed mind too: the metric)."""
        with self._lock:
            return dict(self._db.execute("SELECT kind, COUNT(*) FROM labels GROUP BY kind"))

    def find(self, image: str) -> Row:
        """The result ``image`` names: a ledger id, a path as recorded, or a file name (the newest row with that
        name; LookupError when none, or when the name is in several folders)."""
        with self._lock:
            if image.isdigit():
                row = self._one("WHERE id = ?", (int(image),))
                if row is None:
                    raise LookupError(f"no result {image} in the ledger")
                return row
            absolute = os.path.abspath(image)
            for candidate in dict.fromkeys((image, absolute)):
                row = self._one("WHERE path = ? ORDER BY id DESC LIMIT 1", (db_path(candidate),))
                if row is not None:
                    return row
            name = os.path.basename(image)
            # (id, path) only: read from the (path, sha256) index, a tenth of the table's size
            found = [(i, _from_db(p)) for i, p in self._db.execute(
                "SELECT id, path FROM images WHERE path LIKE ? ESCAPE '!'",
                ("%" + name.replace("!", "!!").replace("%", "!%").replace("_", "!_"),))]
            found = sorted(((i, p) for i, p in found if os.path.basename(p) == name), reverse=True)
            newest = self._one("WHERE id = ?", (found[0][0],)) if found else None
        folders = sorted({os.path.dirname(p) for _, p in found})
        if newest is None:
            raise LookupError(f"no result for {image} in the ledger (give its path as recorded, its file name or its "
                              "ledger id: monitor history)")
        if len(folders) > 1:
            raise LookupError(f"{name} is in several folders ({', '.join(folders[:3])}); give the path or the "
                              "ledger id")
        return newest

    def get(self, row_id: int) -> Row | None:
        with self._lock:
            return self._one("WHERE id = ?", (row_id,))

    def pending(self, limit: int = 1, after_id: int = 0) -> list[Row]:
        """The oldest pending rows (arrival order)."""
        with self._lock:
            return self._all("WHERE state = 'pending' AND id > ? ORDER BY id LIMIT ?", (after_id, limit))

    def pending_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM images WHERE state = 'pending'").fetchone()[0]

    def known(self, path: str, size: int, mtime_ns: int) -> bool:
        """True when a row exists for this path with this size and mtime (lets a re-scan skip hashing)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM images WHERE path = ? AND size = ? AND mtime_ns = ? LIMIT 1",
                                    (db_path(path), size, mtime_ns)).fetchone() is not None

    def unreadable(self, path: str | None = None, limit: int = 1000) -> list[Row]:
        """Rows failed ``permission`` that are the newest row of their path (of ``path`` only, when given), newest
        first: images that may be taken again once their permissions are fixed."""
        where = "AND path = ? " if path is not None else ""
        with self._lock:
            return self._all("WHERE state = 'failed' AND error_kind = 'permission' " + where +
                             "AND id = (SELECT MAX(id) FROM images AS newer WHERE newer.path = images.path) "
                             "ORDER BY id DESC LIMIT ?", (*((db_path(path),) if path is not None else ()), limit))

    def totals(self) -> dict:
        """Counts the metrics start from: rows, done by verdict, failed by kind, alarms, budget overruns."""
        with self._lock:
            q = self._db.execute
            return {
                "received": q("SELECT COUNT(*) FROM images").fetchone()[0],
                "done": dict(q("SELECT verdict, COUNT(*) FROM images WHERE state = 'done' GROUP BY verdict")),
                "failed": dict(q("SELECT error_kind, COUNT(*) FROM images WHERE state = 'failed' GROUP BY error_kind")),
                # +state: counted from the small images_alarm index, not by reading every done row
                "alarms": q("SELECT COUNT(*) FROM images WHERE +state = 'done' AND alarm = 1").fetchone()[0],
                "mismatches": dict(q("SELECT json_extract(result_json, '$.mismatch_reason'), COUNT(*) FROM images "
                                     "WHERE state = 'done' AND verdict = 'mismatch' GROUP BY 1")),
                "pending": q("SELECT COUNT(*) FROM images WHERE state = 'pending'").fetchone()[0],
                "last_seen": q("SELECT MAX(seen_at) FROM images").fetchone()[0],
                "last_finished": q("SELECT MAX(finished_at) FROM images").fetchone()[0],
            }

    def results(self, limit: int, verdict: str | None = None, since: float | None = None,
                until: float | None = None) -> list[Row]:
        """The newest ``limit`` rows, newest first (the results page). ``verdict``: ``ok``/``defect``/
        ``no-threshold`` (scored rows with that verdict), ``failed`` or ``pending`` (rows in that state), None = all.
        ``since``/``until``: unix times; rows recorded (seen_at) in [since, until)."""
        where, args = [], []
        if verdict in ("failed", "pending"):
            where.append("state = ?")
            args.append(verdict)
        elif verdict is not None:
            if verdict not in VERDICT_FILTERS:
                raise ValueError(f"verdict must be one of {', '.join(VERDICT_FILTERS)}, got {verdict!r}")
            where.append("state = 'done' AND verdict = ?")
            args.append(verdict)
        window, window_args = [], []
        if since is not None:
            window.append("seen_at >= ?")
            window_args.append(since)
        if until is not None:
            window.append("seen_at < ?")
            window_args.append(until)
        with self._lock:
            if window:
                ids = self._window_ids(window, window_args)
                if ids is None:
                    return []
                where += [*window, "id BETWEEN ? AND ?"]
                args += [*window_args, *ids]
            sql = (f"WHERE {' AND '.join(where)} " if where else "") + "ORDER BY id DESC LIMIT ?"
            return self._all(sql, (*args, limit))

    def _window_ids(self, window: list[str], args: list) -> tuple[int, int] | None:
        """(first, last) id of the rows whose seen_at meets ``window``, None when there are none; read from the
        index on seen_at alone. Ids grow with arrival and seen_at with them (but for a clock set back), so a scan
        in id order bounded by these starts and stops at the window instead of reading every row newer (or older)
        than it: the rows of half a year ago, newest first, read 50 rows, not the quarter of a million since."""
        lo, hi = self._db.execute(f"SELECT MIN(id), MAX(id) FROM images WHERE {' AND '.join(window)}",
                                  args).fetchone()
        return None if lo is None else (lo, hi)

    def outputs(self, after_id: int = 0) -> list[tuple[int, float, str]]:
        """(id, finished_at, overlay path) of the rows after ``after_id`` for which the daemon wrote files, in id
        order (retention)."""
        with self._lock:
            return list(self._db.execute("SELECT id, finished_at, overlay FROM images WHERE id > ? AND overlay IS NOT "
                                         "NULL ORDER BY id", (after_id,)))

    def recent_levels(self, model_id: str | None, limit: int) -> list[float]:
        """The score levels of the last ``limit`` clean (ok) images scored by ``model_id``, oldest first (the drift
        window after a restart)."""
        return self.recent_values(model_id, limit, ("score_level",))

    def recent_values(self, model_id: str | None, limit: int, key: tuple[str, ...]) -> list[float]:
        """The number at ``key`` (a path into the result document, e.g. ("fibres", "diameter_px", "mean")) of the
        last ``limit`` clean (ok) images scored by ``model_id`` that have one, oldest first (the drift window and
        the fibre chart after a restart)."""
        path = "$." + ".".join(key)  # the images without one are not counted in the limit
        with self._lock:  # the number read by SQLite itself (a damaged result_json is passed over, not parsed)
            got = self._db.execute(
                "SELECT json_extract(result_json, ?) FROM images WHERE state = 'done' AND verdict = 'ok' AND "
                "model_id = ? AND CASE WHEN json_valid(result_json) THEN json_type(result_json, ?) END "
                "IN ('real', 'integer') ORDER BY id DESC LIMIT ?", (path, model_id, path, limit)).fetchall()
        return [float(v) for (v,) in reversed(got)]

    def neighbours(self, row_id: int) -> tuple[int | None, int | None]:
        """(the id before ``row_id``, the id after it), None at either end."""
        with self._lock:
            q = self._db.execute
            return (q("SELECT MAX(id) FROM images WHERE id < ?", (row_id,)).fetchone()[0],
                    q("SELECT MIN(id) FROM images WHERE id > ?", (row_id,)).fetchone()[0])

    def history(self, since: float | None = None, alarms_only: bool = False, limit: int | None = None) -> list[Row]:
        """Rows seen since ``since`` (unix time), oldest first; ``alarms_only`` keeps the images that raised it."""
        where, args = ["1 = 1"], []
        if alarms_only:
            where.append("alarm = 1")
        with self._lock:
            if since is not None:
                ids = self._window_ids(["seen_at >= ?"], [since])
                if ids is None:
                    return []
                where += ["seen_at >= ?", "id BETWEEN ? AND ?"]
                args += [since, *ids]
            sql = f"WHERE {' AND '.join(where)} ORDER BY id"
            if limit:
                sql = (f"WHERE id IN (SELECT id FROM images WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?) "
                       "ORDER BY id")
                args.append(limit)
            return self._all(sql, args)


class Ledger(LedgerQueries):
    """The ledger the daemon writes (one daemon per ledger: ``lock_ledger``), and the commands that add a row."""

    def __init__(self, path: str | os.PathLike, check: bool = True):
        """Open (or make) the ledger at ``path``. ``check``: read every page first (``PRAGMA quick_check``, about
        0.7 s for a year of images on a 2-core VM), as the daemon does at each start. Without it (the commands that
        read or add a few rows: `monitor history`, `monitor label`) the full check is still made whenever opening
        changes the file (an older schema to upgrade, a journal not yet WAL); damage a query meets later is a
        ``sqlite3.DatabaseError``."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size == 0:
            # not a new ledger: a lost one (a full disk, a bad copy). Starting afresh would score every image in
            # the export folder again, with alarms for old images.
            raise LedgerError(f"{self.path}: the ledger file is empty (0 bytes); restore it from a backup, or "
                              "delete it to start a new ledger (every image in the export folder is then scored again)")
        try:
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            version = self._db.execute("PRAGMA user_version").fetchone()[0]  # checked before anything is changed
            if version not in (0, 1, 2, SCHEMA_VERSION):
                self._db.close()
                raise LedgerError(f"{self.path}: ledger schema {version}, this version reads {SCHEMA_VERSION}")
            if check or version != SCHEMA_VERSION or self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                damage = self._db.execute("PRAGMA quick_check").fetchall()
                if damage != [("ok",)]:
                    self._db.close()
                    raise LedgerError(f"{self.path}: the ledger is damaged ({'; '.join(r[0] for r in damage[:3])}); "
                                      "restore it from a backup (sqlite3 .recover can save what is left)")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a done row survives a power cut, not only a crash
            st = os.stat(self.path)
            self._identity = (st.st_dev, st.st_ino)
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: cannot open the ledger: {exc}") from None
        self._lock = threading.Lock()

    def reader(self) -> "LedgerReader":
        """A read-only view on its own connection: its queries (the results page) never wait on, nor hold up, the
        daemon's writes (WAL readers and the writer run side by side)."""
        return LedgerReader(self.path)

    def record(self, path: str, size: int, mtime_ns: int, sha256: str, seen_at: float | None = None
               ) -> tuple[Row, bool]:
        """Record a complete image. Returns (row, created); an existing (path, sha256) row is returned unchanged."""
        stored = db_path(path)
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO images (path, size, mtime_ns, sha256, state, seen_at) "
                "VALUES (?, ?, ?, ?, 'pending', ?)", (stored, size, mtime_ns, sha256, seen_at or time.time()))
            created = cur.rowcount == 1
            return self._one("WHERE path = ? AND sha256 = ?", (stored, sha256)), created

    def rename(self, src: str, dest: str, size: int, mtime_ns: int) -> bool:
        """The newest pending or scored row of ``src`` with this size and mtime now names ``dest`` (a file renamed in
        the export folder; the worker reads a pending one under its new name). False when there is none (a failed
        row does not follow: the renamed file gets a row of its own)."""
        with self._lock:
            try:
                cur = self._db.execute(
                    "UPDATE images SET path = ? WHERE id = (SELECT MAX(id) FROM images WHERE path = ? AND size = ? "
                    "AND mtime_ns = ? AND state IN ('pending', 'done'))", (db_path(dest), db_path(src), size, mtime_ns))
            except sqlite3.IntegrityError:  # dest already has a row with this content (renamed back and forth)
                return True
            return cur.rowcount == 1

    def lost(self) -> bool:
        """True when ``path`` no longer names the file this ledger writes (deleted, or replaced by another file):
        every row written from then on would be lost at the next start."""
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._identity

    def start(self, row_id: int) -> int:
        """Mark scoring as started; returns the attempt number (1 on the first try)."""
        with self._lock:
            self._db.execute("UPDATE images SET started_at = ?, attempts = attempts + 1 WHERE id = ?",
                             (time.time(), row_id))
            return self._db.execute("SELECT attempts FROM images WHERE id = ?", (row_id,)).fetchone()[0]

    def finish(self, row_id: int, *, verdict: str, alarm: bool, coverage: float | None, n_defects: int | None,
               largest_area: int | None, max_score: float, score_seconds: float, model_id: str | None,
               overlay: str | None = None, result_json: str | None = None) -> Row:
        with self._lock:
            now = time.time()
            self._db.execute(
                "UPDATE images SET state = 'done', finished_at = ?, verdict = ?, alarm = ?, coverage = ?, "
                "n_defects = ?, largest_area = ?, max_score = ?, score_seconds = ?, e2e_seconds = ? - seen_at, "
                "model_id = ?, overlay = ?, result_json = ?, error_kind = NULL, error = NULL "
                "WHERE id = ? AND state = 'pending'",
                (now, verdict, int(alarm), coverage, n_defects, largest_area, max_score, score_seconds, now,
                 model_id, overlay, result_json, row_id))
            return self._one("WHERE id = ?", (row_id,))

    def fail(self, row_id: int, kind: str, reason: str, model_id: str | None = None, path: str | None = None) -> Row:
        """Fail a pending row (with ``path``: only while the row still names that path). Returns the row as it is."""
        with self._lock:
            now = time.time()
            self._db.execute(
                "UPDATE images SET state = 'failed', finished_at = ?, e2e_seconds = ? - seen_at, error_kind = ?, "
                "error = ?, model_id = ? WHERE id = ? AND state = 'pending'" + (" AND path = ?" if path else ""),
                (now, now, kind, shown(reason), model_id, row_id, *((db_path(path),) if path else ())))
            return self._one("WHERE id = ?", (row_id,))

    def record_failed(self, path: str, size: int, mtime_ns: int, key: str, kind: str, reason: str
                      ) -> tuple[Row, bool]:
        """A file that cannot be taken, recorded failed in one statement (never seen pending by the worker);
        ``key`` stands in for the content hash. Returns (row, created)."""
        stored = db_path(path)
        with self._lock:
            now = time.time()
            cur = self._db.execute(
                "INSERT OR IGNORE INTO images (path, size, mtime_ns, sha256, state, seen_at, finished_at, e2e_seconds, "
                "error_kind, error) VALUES (?, ?, ?, ?, 'failed', ?, ?, 0, ?, ?)",
                (stored, size, mtime_ns, key, now, now, kind, shown(reason)))
            return self._one("WHERE path = ? AND sha256 = ?", (stored, key)), cur.rowcount == 1

    def retake(self, row: Row, sha256: str) -> tuple[Row, bool]:
        """The image of ``row``, failed ``permission``, can be read now (its permissions fixed: size and mtime are
        the same, so no scan takes it as new): a pending row for its content, ``sha256``. That is a new row, the
        failure staying in the history; when the failed row already has this content (the intake could hash it,
        the worker was then refused) it is pending again. Returns (row, created)."""
        stored = db_path(row.path)
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO images (path, size, mtime_ns, sha256, state, seen_at) "
                "VALUES (?, ?, ?, ?, 'pending', ?)", (stored, row.size, row.mtime_ns, sha256, time.time()))
            created = cur.rowcount == 1
            if not created:
                self._db.execute(
                    "UPDATE images SET state = 'pending', finished_at = NULL, e2e_seconds = NULL, error_kind = NULL, "
                    "error = NULL WHERE path = ? AND sha256 = ? AND state = 'failed' AND error_kind = 'permission'",
                    (stored, sha256))
            return self._one("WHERE path = ? AND sha256 = ?", (stored, sha256)), created

    def label(self, image_id: int, kind: str, who: str, note: str = "", source: str = "cli") -> Label:
        """Record what an operator says of a scored result (``check_label``); the result row is not changed."""
        with self._lock:
            check_label(self._one("WHERE id = ?", (image_id,)), kind, who, note)
            cur = self._db.execute("INSERT INTO labels (image_id, kind, note, who, source, at) "
                                   "VALUES (?, ?, ?, ?, ?, ?)",
                                   (image_id, kind, note.strip(), who.strip(), source, time.time()))
            return Label(*self._db.execute(f"SELECT {_LABEL_COLUMNS} FROM labels WHERE id = ?",
                                           (cur.lastrowid,)).fetchone())

    def backlog_before(self, backlog_seconds: float | None, now: float | None = None
                       ) -> tuple[float, float, bool]:
        """(before, at, just set): images modified before ``before`` that were already in the export folder at
        ``at`` (the ledger's first start) are not scored. Set once, when the ledger is new (no image yet):
        ``at`` = now, ``before`` = ``at - backlog_seconds`` (``None``: every image is scored, ``before`` = 0), and
        kept, so that a restart skips the same images. A ledger that already holds images (one upgraded from
        before 0.5.0) scores every image, as it did."""
        with self._lock:  # one daemon writes a ledger (lock_ledger)
            got = dict(self._db.execute("SELECT key, value FROM meta WHERE key IN ('backlog_before', 'backlog_at')"))
            if "backlog_before" in got:
                return float(got["backlog_before"]), float(got.get("backlog_at", "0")), False
            new = self._db.execute("SELECT 1 FROM images LIMIT 1").fetchone() is None
            at = time.time() if now is None else now
            before = at - backlog_seconds if new and backlog_seconds is not None else 0.0
            self._db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                                 (("backlog_before", repr(before)), ("backlog_at", repr(at))))
            return before, at, new and before > 0


class LedgerReader(LedgerQueries):
    """The queries on a read-only connection of their own (``Ledger.reader``), without a write method."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            uri = self.path.resolve().as_uri() + "?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA query_only=ON")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: cannot open the ledger for reading: {exc}") from None
        if version != SCHEMA_VERSION:
            self._db.close()
            raise LedgerError(f"{self.path}: ledger schema {version}, this version reads {SCHEMA_VERSION}"
                              + (" (start this version's monitor once, or run `monitor history`, to upgrade it)"
                                 if version < SCHEMA_VERSION else ""))
        self._lock = threading.Lock()

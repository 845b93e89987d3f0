"""Retention of the operator files: overlays and result JSON in output.dir within ``max_bytes`` and ``max_age``.

Only files the daemon wrote are ever deleted: the overlay PNG named in a ledger row and the result JSON beside it
(same name, ``.json``). Oldest first (ledger order). The ledger rows stay; the results page says when an overlay
is gone. Nothing else in output.dir, and nothing in the export folder, is touched.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from monitor.ledger import Ledger

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    row_id: int
    finished_at: float
    files: tuple[Path, ...]
    size: int


def _files(overlay: str) -> tuple[Path, ...]:
    png = Path(overlay)
    return png, png.with_suffix(".json")


def _size(files: tuple[Path, ...]) -> int:
    total = 0
    for f in files:
        try:
            total += f.stat().st_size
        except OSError:
            pass
    return total


class Retention:
    def __init__(self, ledger: Ledger, max_bytes: int, max_age_seconds: float):
        self.ledger = ledger
        self.max_bytes = max_bytes
        self.max_age = max_age_seconds
        self._entries: deque[_Entry] = deque()
        self._last_id = 0
        self.bytes = 0  # bytes of the files kept

    def scan(self) -> None:
        """Take in the files written since the last scan (all of them at the first)."""
        for row_id, finished_at, overlay in self.ledger.outputs(self._last_id):
            self._last_id = row_id
            files = _files(overlay)
            size = _size(files)
            if size:  # already gone (deleted by an earlier run, or by hand): nothing to account for
                self._entries.append(_Entry(row_id, finished_at or 0.0, files, size))
                self.bytes += size

    def enforce(self, now: float | None = None) -> int:
        """Scan, then delete the oldest files while over ``max_bytes`` or older than ``max_age``; returns the
        number of rows whose files were deleted."""
        self.scan()
        now = time.time() if now is None else now
        removed = 0
        while self._entries:
            e = self._entries[0]
            too_big = self.max_bytes and self.bytes > self.max_bytes
            too_old = self.max_age and e.finished_at < now - self.max_age
            if not (too_big or too_old):
                break
            self._entries.popleft()
            for f in e.files:
                try:
                    f.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("retention: cannot delete %s: %s", f, exc)
            self.bytes -= e.size
            removed += 1
        if removed:
            log.info("retention: deleted the overlay and result files of %d image(s); %d bytes kept", removed,
                     self.bytes)
        return removed

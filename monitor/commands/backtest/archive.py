"""What a backtest scores: the images of archive folders, taken by the intake's own rules, or the images a ledger
recorded; with what the line said of each (the ledger's verdict and the operators' last label), when known."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from monitor.config import WatchSection
from monitor.daemon.watcher import wanted
from monitor.files import link_problem
from monitor.kinds import State
from monitor.ledger import LedgerError, LedgerReader


@dataclass(frozen=True)
class Item:
    """One image to score. ``sha256``: the content it must have (the ledger's; None for a folder's image);
    ``old_verdict``/``old_sha256``: what the ledger said of that path and the content it said it of; ``label``: the
    operators' last label of it."""

    path: str
    sha256: str | None = None
    old_verdict: str | None = None
    old_coverage: float | None = None
    old_sha256: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class Refused:
    """A file of an archive folder that is not read, and why (the intake's refusals: a link, not a regular file)."""

    path: str
    kind: str
    reason: str


def from_folders(roots: list[str | os.PathLike], watch: WatchSection) -> tuple[list[Item], list[Refused]]:
    """The images under ``roots`` (recursively; symbolic links to folders are not entered), sorted by path: the
    names ``watch.patterns`` takes and ``watch.ignore`` does not (hidden files never), links by ``watch.symlinks``
    (``inside``: inside that root), regular files only. Files given by name are taken as they are."""
    items, refused, seen = [], [], set()
    for root in map(Path, roots):
        if root.is_file():
            paths = [os.path.abspath(root)]
            top = os.path.dirname(paths[0])
        elif root.is_dir():
            top = os.path.abspath(root)
            paths = sorted(os.path.join(d, n) for d, _, names in os.walk(top) for n in names if wanted(n, watch))
        else:
            raise FileNotFoundError(f"no such file or folder: {root}")
        for path in paths:
            if path in seen:
                continue
            seen.add(path)
            why = link_problem(path, watch.symlinks, os.path.realpath(top))
            if why:
                refused.append(Refused(path, "symlink", why))
                continue
            try:
                mode = os.stat(path).st_mode
            except OSError:
                mode = stat.S_IFREG  # dangling or gone: its reading says so, as the worker's does
            if not stat.S_ISREG(mode):
                refused.append(Refused(path, "unreadable", "not a regular file (a FIFO, socket or device)"))
                continue
            items.append(Item(path))
    return items, refused


def line_said(ledger_path: str | os.PathLike, since: float | None = None) -> dict[str, Item]:
    """What the line's ledger says, by path: the newest scored or failed row of each path (seen since ``since``,
    unix time), with its sha256, verdict and the operators' last label."""
    if not Path(ledger_path).is_file():
        raise LedgerError(f"no ledger at {ledger_path}")
    lg = LedgerReader(ledger_path)  # read-only: a running daemon's ledger is left as it is
    try:
        rows = [r for r in lg.history(since) if r.state in (State.DONE, State.FAILED)]
        labels = lg.current_labels([r.id for r in rows])
    finally:
        lg.close()
    out: dict[str, Item] = {}
    for r in rows:  # oldest first: the newest row of a path wins
        sha = r.sha256 if len(r.sha256) == 64 and ":" not in r.sha256 else None
        label = labels.get(r.id)
        out[r.path] = Item(r.path, sha, r.verdict if r.state == State.DONE else "failed", r.coverage, sha,
                           label.kind if label else None)
    return out


def against(items: list[Item], said: dict[str, Item]) -> list[Item]:
    """``items`` with what the ledger said of their paths."""
    return [Item(i.path, i.sha256, s.old_verdict, s.old_coverage, s.old_sha256, s.label)
            if (s := said.get(i.path)) else i for i in items]

"""The commands that read or add a few rows of the ledger: `monitor history` and `monitor label` (no torch, no
OpenVINO: the ledger only)."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import pwd
import sqlite3
import sys
import time
from pathlib import Path

from monitor.config import ConfigError
from monitor.files import shown
from monitor.ledger import LabelError, LedgerError
from monitor.times import iso_time, parse_duration


def parse_since(text: str) -> float:
    """'90s', '15m', '1h', '2d', '1w' -> that long ago, as unix time."""
    try:
        return time.time() - parse_duration(text, "--since", zero=None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def open_ledger(path: Path):
    """The ledger for a command that reads or adds a few rows: without the daemon's full check of every page
    (``Ledger(check=False)``: 0.7 s on a year of images), which the daemon makes at each start."""
    from monitor.ledger import Ledger

    if not path.is_file():
        raise FileNotFoundError(f"no ledger at {path} (output.ledger)")
    return Ledger(path, check=False)


@contextlib.contextmanager
def damage_said(path: Path):
    """Damage a query meets (the commands open the ledger unchecked) as the clear error the daemon gives."""
    try:
        yield
    except sqlite3.OperationalError as exc:  # not damage: locked for longer than the timeout, an I/O error
        raise LedgerError(f"{path}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"{path}: the ledger is damaged ({exc}); restore it from a backup (sqlite3 .recover can "
                          "save what is left)") from None



def print_history(path: Path, args) -> int:
    """The ledger's rows (``args``: since, alarms, limit, json) as a table or JSON lines."""
    ledger = open_ledger(path)
    try:
        with damage_said(path):
            rows = ledger.history(parse_since(args.since) if args.since else None, args.alarms, args.limit)
            labels = ledger.current_labels([r.id for r in rows])
    finally:
        ledger.close()
    if args.json:
        for r in rows:
            lab = labels.get(r.id)
            print(json.dumps({**r.to_dict(), "seen": iso_time(r.seen_at),
                              "finished": None if r.finished_at is None else iso_time(r.finished_at),
                              "label": None if lab is None else {**lab.to_dict(), "at": iso_time(lab.at)}}))
        return 0
    # the verdict is the scorer's, the alarm the line's: an "ok" image can hold a defect below the alarm's coverage
    print(f"{'id':>6}  {'seen':25}  {'state':7}  {'verdict':8}  {'alarm':5}  {'coverage':>9}  {'defects':>7}  "
          f"{'score s':>7}  {'e2e s':>7}  {'label':11}  image / error")
    for r in rows:
        cov = "" if r.coverage is None else f"{r.coverage:.4%}"
        alarm = "" if r.alarm is None else ("ALARM" if r.alarm else "-")
        what = shown(Path(r.path).name) + (f"  [{r.error_kind}] {r.error}" if r.error else "")
        lab = labels[r.id].kind if r.id in labels else ""
        print(f"{r.id:>6}  {iso_time(r.seen_at):25}  {r.state:7}  {r.verdict or '':8}  {alarm:5}  {cov:>9}  "
              f"{'' if r.n_defects is None else r.n_defects:>7}  "
              f"{'' if r.score_seconds is None else f'{r.score_seconds:.2f}':>7}  "
              f"{'' if r.e2e_seconds is None else f'{r.e2e_seconds:.2f}':>7}  {lab:11}  {what}")
    return 0


def label_result(path: Path, args) -> int:
    """What an operator says of a result (``args``: image, false_alarm or confirmed, note, by): a false alarm, or a
    confirmed defect (one the monitor missed, too). Refused as root on a ledger root does not own."""
    owner = path.stat().st_uid if path.is_file() else 0
    if os.geteuid() == 0 and owner != 0:  # root's write could leave the ledger's -wal/-shm files root's
        name = pwd.getpwuid(owner).pw_name if owner in {p.pw_uid for p in pwd.getpwall()} else str(owner)
        raise ConfigError(f"{path} belongs to {name}: run monitor label as that user (sudo -u {name} ...), so that "
                          "the service can still write its ledger")
    ledger = open_ledger(path)
    try:
        try:
            with damage_said(path):
                row = ledger.find(args.image)
                lab = ledger.label(row.id, "false_alarm" if args.false_alarm else "confirmed",
                                   args.by or os.environ.get("SUDO_USER") or getpass.getuser(), args.note or "", "cli")
        except (LookupError, LabelError) as exc:
            raise LabelError(f"label {args.image}: {exc}") from None
    finally:
        ledger.close()
    print(json.dumps({**lab.to_dict(), "at": iso_time(lab.at), "image": row.path, "verdict": row.verdict}))
    print(f"monitor: result {row.id} ({shown(Path(row.path).name)}, verdict {row.verdict}) labelled {lab.kind} by "
          f"{lab.who}", file=sys.stderr)
    return 0

"""Retention of overlays and result files (output.max_bytes / output.max_age) on a real ledger and real files, and
in a running daemon."""

from __future__ import annotations

import os
import time

import pytest

from monitor.config import ConfigError, parse_config
from monitor.daemon.retention import Retention
from monitor.ledger import Ledger
from monitor.model.synth import fiber_mat
from tests.conftest import SHAPE
from tests.daemon import Daemon, InProcessDaemon, png_bytes, wait_for, write_renamed


def _scored(ledger: Ledger, out, name: str, size: int, finished_at: float | None = None) -> int:
    row, _ = ledger.record(f"/export/{name}.tif", 1, 1, name)
    png, js = out / f"{name}.png", out / f"{name}.json"
    png.write_bytes(b"p" * size)
    js.write_bytes(b"j" * 10)
    ledger.finish(row.id, verdict="defect", alarm=True, coverage=0.1, n_defects=1, largest_area=5, max_score=1.0,
                  score_seconds=0.1, model_id="m", overlay=str(png))
    if finished_at is not None:
        ledger._db.execute("UPDATE images SET finished_at = ? WHERE id = ?", (finished_at, row.id))
    return row.id


@pytest.fixture
def setup(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    yield ledger, out
    ledger.close()


def test_oldest_files_go_first_when_over_max_bytes(setup):
    ledger, out = setup
    for i in range(5):
        _scored(ledger, out, f"img{i}", 1000)
    (out / "notes.txt").write_text("not the daemon's")  # never touched
    r = Retention(ledger, max_bytes=2500, max_age_seconds=0)
    assert r.enforce() == 3
    left = sorted(p.name for p in out.iterdir())
    assert left == ["img3.json", "img3.png", "img4.json", "img4.png", "notes.txt"]
    assert r.bytes == 2020 and len(ledger.history()) == 5  # the ledger rows stay
    _scored(ledger, out, "img5", 1000)  # a new file: the next oldest goes
    assert r.enforce() == 1 and not (out / "img3.png").exists() and (out / "img5.png").exists()


def test_files_older_than_max_age_go(setup):
    ledger, out = setup
    now = time.time()
    _scored(ledger, out, "old", 10, finished_at=now - 3 * 86400)
    _scored(ledger, out, "new", 10, finished_at=now - 3600)
    r = Retention(ledger, max_bytes=0, max_age_seconds=86400)
    assert r.enforce(now) == 1
    assert sorted(p.name for p in out.iterdir()) == ["new.json", "new.png"]


def test_no_limits_delete_nothing_and_missing_files_are_skipped(setup):
    ledger, out = setup
    _scored(ledger, out, "a", 100)
    _scored(ledger, out, "b", 100)
    os.unlink(out / "a.png"), os.unlink(out / "a.json")  # removed by hand
    r = Retention(ledger, max_bytes=0, max_age_seconds=0)
    assert r.enforce() == 0 and r.bytes == 110


@pytest.mark.parametrize("value, ok", [("90d", True), ("12h", True), ("0", True), (0, True), ("1.5w", True),
                                       ("90", False), (90, False), ("-1d", False), ("d", False), ("3y", False)])
def test_max_age_must_be_a_duration(value, ok):
    data = {"output": {"max_age": value}}
    if ok:
        parse_config(data)
    else:
        with pytest.raises(ConfigError, match="output.max_age must be a duration"):
            parse_config(data)


def test_the_daemon_keeps_output_within_max_bytes(tmp_path, saved_model):
    d = InProcessDaemon(tmp_path / "d", saved_model, output={"overlays": "all", "max_bytes": 1},
                        web={"enabled": False})
    d.start()
    try:
        for i in range(4):
            write_renamed(d.export, f"img{i}.png", png_bytes(fiber_mat(SHAPE, seed=500 + i)))
        d.wait_finished(4)
        # every overlay is over the 1-byte budget: all are deleted, the newest last; the ledger keeps all four
        wait_for(lambda: not any(d.out.glob("*.png")), 20, "overlays deleted")
        assert len([r for r in d.rows() if r["state"] == "done" and r["overlay"]]) == 4
        wait_for(lambda: Daemon.value(d.scrape(), "monitor_output_bytes") == 0, 10, "output bytes 0")
    finally:
        assert d.stop() == 0

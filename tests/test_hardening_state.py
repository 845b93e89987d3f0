"""Hostile cases against what the monitor keeps (a real SQLite ledger, its lock, the notify socket): damaged and
deleted ledgers, two daemons on one ledger, a full ledger, one verdict between `monitor score` and the daemon,
label counts that cannot be read, refit's report (docs/daemon.md, "Reliability")."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import threading

import numpy as np
import pytest

from monitor.config import WatchSection, parse_config
from monitor.daemon import worker as worker_module
from monitor.daemon.metrics import Metrics
from monitor.daemon.watcher import Intake
from monitor.daemon.worker import Worker
from monitor.ledger import Ledger, LedgerError, lock_ledger
from monitor.model.defects import Defect, DefectReport, decide
from monitor.model.synth import defective_image
from tests.commands import monitor
from tests.conftest import SHAPE
from tests.daemon import Daemon, png_bytes, wait_for, write_renamed
from tests.hardening import _clean, _fill


@pytest.mark.parametrize("damage", ["empty", "schema 99", "corrupt page"])
def test_a_damaged_ledger_is_a_clear_error_and_is_left_as_it_was(new_daemon, damage):
    d = new_daemon(process=True)
    d.ledger_path.parent.mkdir(parents=True, exist_ok=True)
    if damage == "empty":
        d.ledger_path.write_bytes(b"")
    else:
        led = Ledger(d.ledger_path)
        for i in range(400):  # several pages of rows
            led.record(f"/export/img{i:04d}_{'x' * 100}.tif", 1, i, f"{i:064d}")
        led.close()
        with sqlite3.connect(d.ledger_path) as db:
            db.execute("PRAGMA journal_mode=DELETE")
            if damage == "schema 99":
                db.execute("PRAGMA user_version=99")
        if damage == "corrupt page":
            data = bytearray(d.ledger_path.read_bytes())
            page = 4096
            data[3 * page:3 * page + 12] = b"\xff" * 12  # the header of a page in the middle of the table
            d.ledger_path.write_bytes(bytes(data))
    before = d.ledger_path.read_bytes()
    d.start(wait_ready=False)
    assert d.proc.wait(60) == 2, d.log_text()
    log = d.log_text()
    assert "monitor: error:" in log and "Traceback" not in log, log
    assert d.ledger_path.read_bytes() == before  # not switched to WAL, not "repaired", not started afresh
    assert not os.path.exists(f"{d.ledger_path}-wal")


def test_two_daemons_on_one_ledger_the_second_refuses_to_start(new_daemon):
    first = new_daemon(process=True).start()
    second = new_daemon(process=True, output={"ledger": str(first.ledger_path)})
    second.start(wait_ready=False)
    assert second.proc.wait(60) == 2
    assert f"another monitor (pid {first.proc.pid})" in second.log_text()
    write_renamed(first.export, "a.png", _clean(8))
    assert first.wait_finished(1)[0]["state"] == "done"  # the first goes on


@pytest.mark.parametrize("coverage, largest, max_area, want", [
    (0.0005, 400, 0, "ok"), (0.0005, 400, 300, "defect"), (0.0005, 400, 500, "ok"), (0.002, 400, 0, "defect"),
    (0.0, 0, 300, "ok")])
def test_one_verdict_for_coverage_and_defect_size(coverage, largest, max_area, want):
    defects = (Defect(largest, (0, 0, 1, 1), (0.0, 0.0), 1.0),) if largest else ()
    report = DefectReport(np.zeros((2, 2), bool), coverage, defects)
    assert decide(report, 0.001, max_area) == want
    assert decide(None, 0.001, max_area) == "no-threshold"


def test_monitor_score_and_the_daemon_give_one_result_when_a_defect_is_too_large(new_daemon, saved_model, tmp_path):
    img, _ = defective_image(SHAPE, kinds=("bead",), seed=11)
    alarm = {"coverage_threshold": 0.9, "max_defect_area": 20, "peak_margin": 0}  # only the size rule can raise it
    d = new_daemon(alarm=alarm).start()
    write_renamed(d.export, "big.png", png_bytes(img))
    row = d.wait_finished(1)[0]
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "big.png").write_bytes(png_bytes(img))
    out = monitor("score", tmp_path / "img" / "big.png", "--model", saved_model, "--config", d.config)
    assert out.returncode == 0, out.stderr
    score = json.loads(out.stdout)
    assert row["verdict"] == score["verdict"] == "defect"
    # one judgement (monitor/judge.py): the same result document, but for where and when it was made
    mine = ("image", "sha256", "line", "model_id", "scored_at", "score_seconds", "timings", "overlay")
    daemon_doc = json.loads(row["result_json"])
    assert {k: v for k, v in daemon_doc.items() if k not in mine} == {k: v for k, v in score.items() if k not in mine}


def test_images_that_arrive_while_the_ledger_is_full_are_recorded_once_it_has_room(tmp_path):
    """SQLite's own "database or disk is full" (max_page_count reached): the images are recorded by a re-scan as
    soon as the ledger takes writes again, without a restart, and the refusals are counted."""
    export = tmp_path / "export"
    export.mkdir()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorded, errors = [], []
    db = _fill(ledger)
    intake = Intake(WatchSection(dir=str(export), settle_seconds=0.2), ledger, lambda row, new: recorded.append(row),
                    on_error=lambda: errors.append(1))
    intake.start_watching()
    try:
        for n in range(3):
            write_renamed(export, f"full{n}.png", _clean(20 + n))
        wait_for(lambda: len(errors) >= 3, 10, "three refusals")
        assert not recorded
        db.execute("PRAGMA max_page_count = 1000000")  # room again
        wait_for(lambda: len(recorded) == 3, 20, "the three images recorded by the re-scan")
        assert sorted(os.path.basename(r.path) for r in recorded) == ["full0.png", "full1.png", "full2.png"]
    finally:
        intake.stop()
        ledger.close()


def test_a_result_the_full_ledger_refuses_is_scored_again_once_it_has_room(tmp_path, fitted_model, monkeypatch):
    """However long the disk stays full: retries in one process are not attempts (service.max_attempts 3 counts
    processes that died), so the image is scored once there is room, not failed "crashed"."""
    monkeypatch.setattr(worker_module, "LEDGER_RETRY_SECONDS", 0.1)
    export = tmp_path / "export"
    export.mkdir()
    ledger, metrics = Ledger(tmp_path / "ledger.sqlite"), Metrics()
    path = export / "a.png"
    path.write_bytes(_clean(30))
    st = path.stat()
    from monitor.files import file_sha256

    row, _ = ledger.record(str(path), st.st_size, st.st_mtime_ns, file_sha256(path))
    db = _fill(ledger)
    cfg = parse_config({"output": {"dir": str(tmp_path / "out"), "ledger": str(tmp_path / "ledger.sqlite")}})
    worker = Worker(cfg, ledger, fitted_model, metrics)
    worker.start()
    try:
        wait_for(lambda: metrics.ledger_errors_total._value.get() >= 6, 60, "six refused writes")
        assert worker.is_alive() and ledger.get(row.id).state == "pending"
        db.execute("PRAGMA max_page_count = 1000000")
        wait_for(lambda: ledger.get(row.id).state != "pending", 30, "the result recorded")
        assert ledger.get(row.id).state == "done" and ledger.get(row.id).attempts == 1, ledger.get(row.id)
    finally:
        worker.stop()
        ledger.close()


def test_a_ledger_deleted_while_running_stops_the_monitor_loudly(new_daemon):
    d = new_daemon(process=True).start()
    write_renamed(d.export, "a.png", _clean(52))
    d.wait_finished(1)
    shutil.rmtree(d.ledger_path.parent)  # rm -rf state
    assert d.proc.wait(30) == 1
    assert "was deleted or replaced" in d.log_text()


def test_a_lock_file_removed_while_running_is_made_and_held_again(new_daemon):
    d = new_daemon().start()
    lock = f"{d.ledger_path}.lock"
    os.unlink(lock)
    wait_for(lambda: "made and held again" in d.log_text(), 15, "the lock file made and held again")
    with pytest.raises(LedgerError, match="another monitor"):
        os.close(lock_ledger(d.ledger_path))


def test_a_notify_socket_nobody_reads_does_not_hold_the_daemon(tmp_path, caplog):
    """A datagram socket holds a few messages; with a reader that does not read (a service manager that hangs),
    a blocking sd_notify held the serve loop, and a SIGTERM's stop, for as long (60 s in a soak)."""
    from monitor.daemon.service import Notifier

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as deaf:
        deaf.bind(str(tmp_path / "notify.sock"))  # bound, never read
        notify = Notifier(str(tmp_path / "notify.sock"), timeout=0.2)
        sender = threading.Thread(target=lambda: [notify("WATCHDOG=1") for _ in range(20)], daemon=True)
        sender.start()
        sender.join(20 * 0.2 + 5)  # a blocking send would never return
        assert not sender.is_alive()
    assert "sd_notify to" in caplog.text and "timed out" in caplog.text


def test_label_counts_that_cannot_be_read_are_said_once_at_warning_then_counted(new_daemon, monkeypatch):
    """A ledger that keeps failing when the label counts are read was visible at DEBUG only."""
    import sqlite3

    d = new_daemon().start()
    calls = []

    def fails():
        calls.append(1)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(d.service, "_sync_labels", fails)
    before = Daemon.value(d.scrape(), "monitor_ledger_errors_total")
    d.service._wake.set()
    wait_for(lambda: len(calls) >= 3, 20, "three failed reads of the label counts")
    monkeypatch.undo()
    d.service._wake.set()
    wait_for(lambda: "the label counts are read again" in d.log_text(), 20, "the recovery line")
    log = d.log_text()
    assert log.count("the label counts cannot be read from the ledger (disk I/O error)") == 1
    assert re.search(r"WARNING monitor\.daemon\.service: the label counts cannot be read", log)
    assert Daemon.value(d.scrape(), "monitor_ledger_errors_total") >= before + 3


def test_refit_writes_its_report_durably(tmp_path, monkeypatch):
    """Atomically and fsync'd before the rename (files.atomic_write), as every other file the monitor writes."""
    from monitor.commands.refit import write_report

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    write_report({"passed": True}, tmp_path / "r" / "refit.json")
    assert synced and json.loads((tmp_path / "r" / "refit.json").read_text()) == {"passed": True}
    assert os.listdir(tmp_path / "r") == ["refit.json"]

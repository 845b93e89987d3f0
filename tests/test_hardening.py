"""Hostile cases against a real `monitor run` or the real intake and worker (real folders, real writes, a real
SQLite ledger): file names that are not UTF-8, files moved in from another folder, content replaced or rewritten
between recording and scoring, an export folder made anew, a full ledger, symbolic links, damaged ledgers, names of
255 bytes, empty files under the polling observer, two daemons on one ledger, images far larger than the training
images, one verdict, and HTTP clients that stall (the bounds of the results page's and the metrics' server).
`pytest -v tests/test_hardening.py` prints one line per case (README, "Reliability")."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from PIL import Image

from monitor.config import Config, WatchSection, parse_config
from monitor.daemon import worker as worker_module
from monitor.daemon.metrics import Metrics
from monitor.daemon.watcher import Intake
from monitor.daemon.worker import Worker
from monitor.ledger import Ledger, LedgerError, lock_ledger
from monitor.model.defects import Defect, DefectReport, decide
from monitor.model.images import ImageError, ImageLimits, read_image
from monitor.model.synth import defective_image, fiber_mat
from tests.conftest import SHAPE
from tests.daemon import Daemon, InProcessDaemon, png_bytes, wait_for, write_renamed

LATIN1_NAME = os.fsdecode(b"lat\xe4n.png")  # "latän" written by a Windows-1252 microscope PC: not UTF-8


def _clean(seed: int) -> bytes:
    return png_bytes(fiber_mat(SHAPE, seed=seed))


@pytest.fixture
def daemon(tmp_path, saved_model):
    started = []

    def make(process: bool = False, **sections) -> Daemon:
        """In this process unless the test is about the process (signals, exit codes, a second process)."""
        d = (Daemon if process else InProcessDaemon)(tmp_path / f"d{len(started)}", saved_model, **sections)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.alive():
            d.stop()


def test_a_name_that_is_not_utf8_is_scored_and_shown_losslessly(daemon):
    d = daemon(output={"overlays": "all"})
    (d.export / LATIN1_NAME).write_bytes(_clean(1))  # in the backlog: the start-up scan meets it
    os.utime(d.export / LATIN1_NAME, (time.time() - 5, time.time() - 5))  # settled before the start
    d.start()
    write_renamed(d.export, os.fsdecode(b"r\xe9sultat.png"), _clean(2))  # and while running
    rows = d.wait_finished(2)
    assert [r["state"] for r in rows] == ["done", "done"], rows
    paths = [r["path"] for r in rows]
    assert paths[0] == os.fsencode(str(d.export / LATIN1_NAME))  # the exact bytes, as a BLOB
    assert all(os.path.exists(p) for p in paths)
    out = subprocess.run([sys.executable, "-m", "monitor", "history", "--ledger", str(d.ledger_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "lat\\xe4n.png" in out.stdout, out.stderr
    assert any(p.name.startswith("lat\\xe4n") for p in d.out.glob("*.png"))


def test_a_file_moved_in_from_another_folder_is_taken(daemon, tmp_path):
    d = daemon().start()
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "moved.png").write_bytes(_clean(3))
    os.rename(staging / "moved.png", d.export / "moved.png")  # inotify: "created" in the export folder, no close
    rows = d.wait_finished(1, timeout=30)
    assert rows[0]["path"].endswith("moved.png") and rows[0]["state"] == "done"


def test_content_replaced_after_recording_is_never_scored_under_the_old_row(tmp_path, fitted_model):
    """The row records content A; the file is then replaced by B before the worker reads it. Scoring B under A's
    row would give A's row B's verdict (and B a second alarm under its own row): A's row fails ``changed``."""
    export, ledger = tmp_path / "export", Ledger(tmp_path / "ledger.sqlite")
    export.mkdir()
    try:
        path = export / "x.png"
        path.write_bytes(_clean(4))
        from monitor.files import file_sha256

        st = path.stat()
        row, _ = ledger.record(str(path), st.st_size, st.st_mtime_ns, file_sha256(path))
        img, _ = defective_image(SHAPE, kinds=("bead", "film"), seed=5)
        path.write_bytes(png_bytes(img))  # replaced under the same name
        worker = Worker(Config(), ledger, fitted_model, Metrics())
        done = worker.process([row])
        assert done[0].state == "failed" and done[0].error_kind == "changed", done[0]
        path.write_bytes(_clean(4))  # the recorded content back: scored
        row2, created = ledger.record(str(path), st.st_size, st.st_mtime_ns, file_sha256(path))
        assert not created and row2.id == row.id
    finally:
        ledger.close()


def test_symbolic_links_out_of_the_folder_and_loops_are_refused_with_a_reason(daemon, tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(_clean(6))
    d = daemon()
    (d.export / "real.png").write_bytes(_clean(7))
    d.start()
    os.symlink(outside, d.export / "out.png.part")
    os.rename(d.export / "out.png.part", d.export / "out.png")
    os.symlink("loop.png", d.export / "loop.png.part")  # a link to itself once renamed
    os.rename(d.export / "loop.png.part", d.export / "loop.png")
    os.symlink(d.export / "real.png", d.export / "in.png.part")
    os.rename(d.export / "in.png.part", d.export / "in.png")
    rows = {os.path.basename(r["path"]): r for r in d.wait_finished(4, timeout=30)}
    assert rows["out.png"]["state"] == "failed" and rows["out.png"]["error_kind"] == "symlink"
    assert "out of the export folder" in rows["out.png"]["error"]
    assert rows["loop.png"]["state"] == "failed" and "loop" in rows["loop.png"]["error"]
    assert rows["in.png"]["state"] == "done" and rows["real.png"]["state"] == "done"
    assert "Traceback" not in d.log_text()


@pytest.mark.parametrize("damage", ["empty", "schema 99", "corrupt page"])
def test_a_damaged_ledger_is_a_clear_error_and_is_left_as_it_was(daemon, damage):
    d = daemon(process=True)
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


def test_names_of_255_bytes_get_their_overlay_and_result_and_leave_no_temporary_file(daemon):
    d = daemon(output={"overlays": "all"}).start()
    name = "n" * 251 + ".png"  # 255 bytes
    img, _ = defective_image(SHAPE, kinds=("bead", "film", "clot"), seed=9)
    (d.export / "x.tmp").write_bytes(png_bytes(img))
    os.rename(d.export / "x.tmp", d.export / name)
    row = d.wait_finished(1)[0]
    assert row["state"] == "done" and row["overlay"], row
    files = sorted(p.name for p in d.out.iterdir())
    assert len(files) == 2 and all(len(os.fsencode(f)) <= 255 for f in files), files
    assert not [f for f in files if f.startswith(".")]
    assert json.loads((d.out / files[0]).read_text())["image"].endswith(name)


def test_the_polling_observer_records_an_empty_file_as_failed(daemon):
    d = daemon(watch={"observer": "polling", "settle_seconds": 0.2, "poll_seconds": 0.1}).start()
    (d.export / "empty.png").write_bytes(b"")
    row = d.wait_finished(1, timeout=20)[0]
    assert row["state"] == "failed" and row["error_kind"] == "empty"


def test_two_daemons_on_one_ledger_the_second_refuses_to_start(daemon):
    first = daemon(process=True).start()
    second = daemon(process=True, output={"ledger": str(first.ledger_path)})
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


def test_monitor_score_and_the_daemon_give_one_result_when_a_defect_is_too_large(daemon, saved_model, tmp_path):
    img, _ = defective_image(SHAPE, kinds=("bead",), seed=11)
    alarm = {"coverage_threshold": 0.9, "max_defect_area": 20, "peak_margin": 0}  # only the size rule can raise it
    d = daemon(alarm=alarm).start()
    write_renamed(d.export, "big.png", png_bytes(img))
    row = d.wait_finished(1)[0]
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "big.png").write_bytes(png_bytes(img))
    out = subprocess.run([sys.executable, "-m", "monitor", "score", str(tmp_path / "img" / "big.png"), "--model",
                          str(saved_model), "--config", str(d.config)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    score = json.loads(out.stdout)
    assert row["verdict"] == score["verdict"] == "defect"
    # one judgement (monitor/judge.py): the same result document, but for where and when it was made
    mine = ("image", "sha256", "line", "model_id", "scored_at", "score_seconds", "timings", "overlay")
    daemon_doc = json.loads(row["result_json"])
    assert {k: v for k, v in daemon_doc.items() if k not in mine} == {k: v for k, v in score.items() if k not in mine}


def test_an_export_folder_made_anew_is_watched_again(daemon):
    d = daemon().start()
    write_renamed(d.export, "before.png", _clean(12))
    d.wait_finished(1)
    shutil.rmtree(d.export)  # rm -rf export: the observer's folder is gone
    wait_for(lambda: d.value(d.scrape(), "monitor_watch_folder_ok") == 0, 10, "watch_folder_ok 0")
    d.export.mkdir()  # mkdir export: a new folder under the old name
    write_renamed(d.export, "after.png", _clean(13))
    rows = d.wait_finished(2, timeout=30)
    assert rows[1]["path"].endswith("after.png") and rows[1]["state"] == "done"
    wait_for(lambda: d.value(d.scrape(), "monitor_watch_folder_ok") == 1, 10, "watch_folder_ok 1")
    log = d.log_text()
    assert "is gone" in log and "made anew" in log and "Traceback" not in log, log


def _fill(ledger: Ledger) -> sqlite3.Connection:
    """Make the ledger full as a full disk does (SQLite's own "database or disk is full", max_page_count reached):
    no room for a page more, the last one filled with rows already done. Returns its connection."""
    db = ledger._db
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    i = 0
    with pytest.raises(sqlite3.OperationalError, match="full"):
        while True:
            db.execute("INSERT INTO images (path, size, mtime_ns, sha256, state, seen_at) "
                       "VALUES (?, 1, ?, ?, 'done', 0)", (f"/elsewhere/filler{i}.png", i, f"{i:064d}"))
            i += 1
    return db


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


def test_an_image_far_larger_than_the_training_images_is_refused_before_decoding(daemon):
    d = daemon().start()
    big = np.zeros((3000, 3000), np.float32)  # 9 Mpx in a few kB of PNG; the model was fitted on 256x320
    write_renamed(d.export, "huge.png", png_bytes(big))
    row = d.wait_finished(1)[0]
    assert row["state"] == "failed" and row["error_kind"] == "too_large", row
    assert "training image" in row["error"] and row["e2e_seconds"] < 10, row


def test_the_training_bound_follows_the_model_and_can_be_turned_off():
    lim = ImageLimits(max_pixels=10_000_000)
    assert lim.for_model(1_000_000).max_pixels == 4_000_000
    assert lim.for_model(None) is lim  # a model saved before the bound was recorded
    assert ImageLimits(max_training_ratio=0).for_model(1_000_000).max_pixels == 64_000_000
    assert lim.for_model(5_000_000).max_pixels == 10_000_000  # image.max_pixels stays the outer bound
    with pytest.raises(ValueError):
        ImageLimits(max_training_ratio=0.5)


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


def test_a_file_closed_at_two_thirds_and_rewritten_is_scored_only_with_its_final_content(daemon):
    d = daemon().start()
    img, _ = defective_image(SHAPE, kinds=("bead", "film"), seed=31)
    data = png_bytes(img)
    path = d.export / "rewritten.png"
    with open(path, "wb") as f:  # a first close at 2/3: the native observer records that content
        f.write(data[: 2 * len(data) // 3])
    wait_for(lambda: d.rows(), 10, "the row of the first close")
    with open(path, "r+b") as f:  # reopened and written to the end
        f.seek(0, os.SEEK_END)
        f.write(data[2 * len(data) // 3:])
    rows = d.wait_finished(2, timeout=30)
    from monitor.files import file_sha256

    final = [r for r in rows if r["sha256"] == file_sha256(path)]
    early = [r for r in rows if r["sha256"] != file_sha256(path)]
    assert len(final) == 1 and final[0]["state"] == "done", rows
    assert early and all(r["state"] == "failed" and r["error_kind"] in ("changed", "corrupt") for r in early), rows


def test_a_fifo_under_an_image_name_is_refused_and_blocks_nothing(daemon):
    d = daemon().start()
    os.mkfifo(d.export / "fifo.png")  # opening it to read would block until a writer comes: forever
    write_renamed(d.export, "after.png", _clean(40))
    rows = {os.path.basename(r["path"]): r for r in d.wait_finished(2, timeout=30)}
    assert rows["fifo.png"]["state"] == "failed" and "not a regular file" in rows["fifo.png"]["error"], rows
    assert rows["after.png"]["state"] == "done"


def test_a_file_larger_than_any_image_within_the_bound_is_refused_unread(daemon):
    d = daemon().start()
    with open(d.export / "big.tif.part", "wb") as f:
        f.truncate(50_000_000)  # 50 MB (sparse): more than 8 bytes for each of the 4 x 256 x 320 pixels allowed
    os.rename(d.export / "big.tif.part", d.export / "big.tif")
    row = d.wait_finished(1, timeout=30)[0]
    assert row["state"] == "failed" and row["error_kind"] == "too_large" and "refused unread" in row["error"], row


# ---------------------------------------------------------------------------------------------- second campaign


def _tiff_with_a_tag_of_the_wrong_type() -> bytes:
    """A 16-bit TIFF whose StripOffsets tag says UNDEFINED instead of LONG: Pillow fails with a TypeError."""
    buf = io.BytesIO()
    Image.fromarray((np.arange(96 * 96).reshape(96, 96) % 60000).astype(np.uint16)).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, at)[0] == 273:
            struct.pack_into("<H", data, at + 2, 7)
    return bytes(data)


def test_a_file_that_makes_the_decoder_fail_in_any_way_fails_alone(daemon, tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(_tiff_with_a_tag_of_the_wrong_type())
    with pytest.raises(ImageError) as exc:
        read_image(bad)
    assert exc.value.kind == "corrupt" and "TypeError" in exc.value.reason
    d = daemon().start()
    write_renamed(d.export, "bad.tif", bad.read_bytes())
    img, _ = defective_image(SHAPE, kinds=("bead", "film", "clot"), seed=41)
    write_renamed(d.export, "after.png", png_bytes(img))
    rows = {os.path.basename(r["path"]): r for r in d.wait_finished(2, timeout=30)}
    assert rows["bad.tif"]["state"] == "failed" and rows["after.png"]["state"] == "done", rows
    assert d.value(d.scrape(), "monitor_worker_healthy") == 1


def test_a_floating_point_image_outside_0_1_is_refused_not_clipped(tmp_path):
    f = tmp_path / "f.tif"
    Image.fromarray((fiber_mat(SHAPE, seed=42) * 4095).astype(np.float32)).save(f)
    with pytest.raises(ImageError, match=r"must hold \[0, 1\]"):
        read_image(f)
    Image.fromarray(fiber_mat(SHAPE, seed=42).astype(np.float32)).save(f)
    assert read_image(f).shape == SHAPE


def test_images_whose_events_the_kernel_dropped_are_found_by_a_re_scan(daemon):
    """SIGSTOP the daemon while 4,000 files arrive: the kernel's inotify queue (16,384 events) overflows and
    watchdog drops events; its overflow warning makes the intake re-scan, and every file gets its row."""
    d = daemon(process=True, watch={"queue_size": 100000}).start()
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        for i in range(4000):
            write_renamed(d.export, f"burst{i:05d}.png", b"not an image %d" % i)  # fails fast, unscored
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    wait_for(lambda: len(d.rows()) == 4000, 120, "4000 rows")
    assert "re-scanning" in d.log_text()


def test_an_image_renamed_in_the_folder_keeps_its_result_and_raises_no_second_alarm(daemon):
    d = daemon(watch={"recursive": True}).start()
    img, _ = defective_image(SHAPE, kinds=("bead", "film", "clot"), seed=43)
    write_renamed(d.export, "a.png", png_bytes(img))
    assert d.wait_finished(1)[0]["alarm"] == 1
    os.rename(d.export / "a.png", d.export / "b.png")
    (d.export / "day1").mkdir()
    img2, _ = defective_image(SHAPE, kinds=("bead", "film", "clot"), seed=44)
    write_renamed(d.export / "day1", "c.png", png_bytes(img2))
    assert len(d.wait_finished(2)) == 2
    os.rename(d.export / "day1", d.export / "day1_done")  # a folder renamed with its images
    write_renamed(d.export, "last.png", _clean(45))  # everything before it has been handled once it is done
    rows = d.wait_finished(3)  # last.png is the sentinel: written last, done last
    assert len(rows) == 3 and rows[-1]["path"].endswith("last.png"), rows
    assert sorted(os.path.relpath(r["path"], d.export) for r in rows) == ["b.png", "day1_done/c.png", "last.png"]
    assert d.value(d.scrape(), "monitor_alarms_total") == 2


def test_an_overwrite_that_keeps_size_and_mtime_is_recorded(daemon):
    """`cp -p`: new content, the old file's size, its mtime put back before the close."""
    d = daemon().start()
    a, b = _clean(46), _clean(47)
    size = max(len(a), len(b))
    a, b = a.ljust(size, b"\0"), b.ljust(size, b"\0")  # trailing bytes after IEND: the same size, still PNGs
    path = d.export / "current.png"
    path.write_bytes(a)
    first = d.wait_finished(1)[0]
    with open(path, "r+b") as f:
        f.write(b)
        f.flush()
        os.utime(f.fileno(), ns=(first["mtime_ns"], first["mtime_ns"]))
    rows = d.wait_finished(2, timeout=20)
    assert {r["sha256"] for r in rows} == {hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()}


def test_a_folder_that_cannot_be_looked_into_for_a_moment_loses_nothing(tmp_path, monkeypatch):
    """chmod 000 on the export folder for a moment (stat fails EACCES; root is not refused, hence the patch)."""
    export = tmp_path / "export"
    export.mkdir()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    recorded = []
    intake = Intake(WatchSection(dir=str(export), settle_seconds=0.2), ledger, lambda row, new: recorded.append(row))
    real_stat, blocked = os.stat, threading.Event()
    blocked.set()

    def stat(path, *a, **kw):
        if blocked.is_set() and str(path).startswith(str(export) + os.sep):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *a, **kw)

    intake.start_watching()
    try:
        monkeypatch.setattr(os, "stat", stat)
        write_renamed(export, "p.png", _clean(48))
        time.sleep(1.0)
        assert not recorded
        blocked.clear()  # chmod 755
        wait_for(lambda: recorded, 10, "the image recorded once the folder can be read")
    finally:
        monkeypatch.undo()
        intake.stop()
        ledger.close()


def test_a_path_longer_than_path_max_does_not_stop_the_start(daemon):
    d = daemon(watch={"recursive": True})
    fd = os.open(d.export, os.O_RDONLY)
    try:
        for _ in range(20):  # 20 x 250 bytes: deeper than PATH_MAX (4096)
            os.mkdir("d" * 250, dir_fd=fd)
            nfd = os.open("d" * 250, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        with open(os.open("deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(_clean(49))
    finally:
        os.close(fd)
    d.start()
    write_renamed(d.export, "shallow.png", _clean(50))
    assert d.wait_finished(1)[0]["path"].endswith("shallow.png")
    assert "cannot scan" in d.log_text() and "Traceback" not in d.log_text()


def test_a_file_name_cannot_forge_a_log_line(daemon):
    d = daemon(output={"overlays": "all"}).start()
    write_renamed(d.export, "evil\n2026-12-01 00:00:00,000 INFO monitor.worker: all clear\x1b[31m.png", _clean(51))
    d.wait_finished(1)
    lines = d.log_text().splitlines()
    assert not [line for line in lines if line.startswith("2026-12-01 00:00:00,000")], lines
    assert "\x1b" not in d.log_text() and "evil\\x0a2026" in d.log_text()


def test_a_ledger_deleted_while_running_stops_the_monitor_loudly(daemon):
    d = daemon(process=True).start()
    write_renamed(d.export, "a.png", _clean(52))
    d.wait_finished(1)
    shutil.rmtree(d.ledger_path.parent)  # rm -rf state
    assert d.proc.wait(30) == 1
    assert "was deleted or replaced" in d.log_text()


def test_a_lock_file_removed_while_running_is_made_and_held_again(daemon):
    d = daemon().start()
    lock = f"{d.ledger_path}.lock"
    os.unlink(lock)
    wait_for(lambda: "made and held again" in d.log_text(), 15, "the lock file made and held again")
    with pytest.raises(LedgerError, match="another monitor"):
        os.close(lock_ledger(d.ledger_path))


def test_an_image_renamed_while_its_row_is_pending_is_scored_once_under_its_new_name(tmp_path, fitted_model):
    export = tmp_path / "export"
    export.mkdir()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    intake = Intake(WatchSection(dir=str(export), settle_seconds=0.2), ledger, lambda row, new: None)
    cfg = parse_config({"output": {"dir": str(tmp_path / "out"), "ledger": str(tmp_path / "ledger.sqlite")}})
    intake.start_watching()
    try:
        write_renamed(export, "a.png", _clean(60))
        wait_for(lambda: ledger.pending(5), 10, "a pending row")
        stale = ledger.pending(5)  # the worker has taken the row, then the software renames the file
        os.rename(export / "a.png", export / "a_0001.png")
        wait_for(lambda: ledger.get(stale[0].id).path.endswith("a_0001.png"), 10, "the row following the rename")
        done = Worker(cfg, ledger, fitted_model, Metrics()).process(stale)
        assert [r.state for r in done] == ["done"] and done[0].path.endswith("a_0001.png"), done
        write_renamed(export, "sentinel.png", _clean(63))  # recorded after anything the rename would have made
        wait_for(lambda: ledger.pending(5), 10, "the sentinel's row")
        assert [os.path.basename(r.path) for r in ledger.history()] == ["a_0001.png", "sentinel.png"]  # no 2nd a_0001
    finally:
        intake.stop()
        ledger.close()


def test_a_symbolic_link_loop_made_in_place_is_refused_at_once(daemon):
    d = daemon().start()
    os.symlink("loop2.png", d.export / "loop2.png")  # created in place, not renamed in
    row = d.wait_finished(1, timeout=15)[0]
    assert row["state"] == "failed" and "loop" in row["error"], row


def test_a_file_created_empty_and_written_later_is_no_false_empty_failure(daemon):
    d = daemon().start()  # settle_seconds 0.5: an empty candidate would be taken after 2.5 s
    path = d.export / "late.png"
    with open(path, "wb") as f:
        f.flush()
        time.sleep(3.5)  # the microscope opened the file, then acquires the image
        f.write(_clean(61))
    d.wait_finished(1, timeout=20)
    write_renamed(d.export, "sentinel.png", _clean(62))  # taken after it: any empty-file failure is in by then
    rows = d.wait_finished(2, timeout=20)
    assert [(r["state"], r["error_kind"]) for r in rows] == [("done", None), ("done", None)], rows


def test_an_export_folder_deleted_and_made_anew_in_one_go_is_watched_again(daemon):
    """``rm -rf E && mkdir E`` in one shell line: on ext4 the new folder gets the deleted one's inode number back at
    once, so (device, inode) says "the same folder" while the inotify watch died with the old one. The watch's own
    end (watchdog's "watched folder deleted") re-arms it; before, a new image waited for the 300 s re-scan."""
    d = daemon().start()
    for i in range(3):
        subprocess.run(f"rm -rf '{d.export}' && mkdir '{d.export}'", shell=True, check=True)
        write_renamed(d.export, f"after{i}.png", _clean(70 + i))
        rows = d.wait_finished(i + 1, timeout=10)
        assert rows[i]["path"].endswith(f"after{i}.png") and rows[i]["state"] == "done", rows
    assert d.value(d.scrape(), "monitor_watch_folder_ok") == 1
    log = d.log_text()
    assert "watch on" in log and "ended" in log and "Traceback" not in log, log


def _as_a_normal_user(monkeypatch, folder) -> None:
    """Refuse to open a file of ``folder`` that has no read permission bit, as the kernel does for the service's
    user (the tests run as root, whom it lets read anything)."""
    real_open = os.open

    def fake_open(path, flags, *a, **kw):
        if str(path).startswith(str(folder) + os.sep) and not os.stat(path).st_mode & 0o444:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", fake_open)


@pytest.mark.parametrize("observer, refused, rescan", [
    ("native", "hashing", 300), ("polling", "hashing", 300), ("native", "scoring", 300), ("polling", "scoring", 1)])
def test_an_image_that_failed_permission_is_scored_once_it_can_be_read(tmp_path, fitted_model, monkeypatch,
                                                                      observer, refused, rescan):
    """A share exported with mode 000, fixed by ``chmod 644``: size and mtime do not change, so a re-scan took the
    failed row as known and the image was lost. The chmod's event (or the next re-scan: a poll may miss a chmod
    and its undoing) takes it again; refused by the intake already (``hashing``) it gets a row of its own, refused
    only by the worker (``scoring``) its row is pending again."""
    export = tmp_path / "export"
    export.mkdir()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    intake = Intake(WatchSection(dir=str(export), settle_seconds=0.2, poll_seconds=0.1, observer=observer,
                                 rescan_seconds=rescan), ledger, lambda row, new: None)
    cfg = parse_config({"output": {"dir": str(tmp_path / "out"), "ledger": str(tmp_path / "ledger.sqlite")}})
    worker = Worker(cfg, ledger, fitted_model, Metrics())
    _as_a_normal_user(monkeypatch, export)
    intake.start_watching()
    try:
        data = _clean(75)
        tmp = export / "locked.png.tmp"
        tmp.write_bytes(data)
        if refused == "hashing":
            tmp.chmod(0)
        os.rename(tmp, export / "locked.png")
        first = wait_for(lambda: ledger.pending(5), 10, "a pending row")
        if refused == "scoring":
            (export / "locked.png").chmod(0)
        done = worker.process(first)
        assert [(r.state, r.error_kind) for r in done] == [("failed", "permission")], done
        (export / "locked.png").chmod(0o644)  # the operator fixes the permissions
        again = wait_for(lambda: ledger.pending(5), 10, "the image taken again once it can be read")
        done = worker.process(again)
        assert [r.state for r in done] == ["done"] and done[0].sha256 == hashlib.sha256(data).hexdigest(), done
        if refused == "hashing":
            assert ledger.get(first[0].id).error_kind == "permission"  # the failure stays in the history
            assert len(ledger.results(limit=10)) == 2
        else:
            assert done[0].id == first[0].id and len(ledger.results(limit=10)) == 1
    finally:
        monkeypatch.undo()
        intake.stop()
        ledger.close()


def _get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of a GET on the results page."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _same_size(a: bytes, b: bytes) -> tuple[bytes, bytes]:
    """Two PNGs padded to one size (trailing bytes after IEND: still PNGs)."""
    size = max(len(a), len(b))
    return a.ljust(size, b"\0"), b.ljust(size, b"\0")


def test_the_original_is_never_served_through_a_link_swapped_in_for_it(daemon, tmp_path):
    """The scored bait.png replaced by a symbolic link out of the folder with the same size and mtime: the page
    checked only size and mtime and followed the link, serving any file the daemon can read. Refused now as the
    intake refuses it (``watch.symlinks: inside``), even to a file of the very bytes scored; a link inside is
    followed."""
    d = daemon().start()
    bait, secret = _same_size(_clean(76), png_bytes(defective_image(SHAPE, kinds=("film",), seed=77)[0]))
    path = write_renamed(d.export, "bait.png", bait)
    row = d.wait_finished(1)[0]
    assert row["state"] == "done" and _get(d.web_port, f"/result/{row['id']}/image.png")[0] == 200
    for n, content in enumerate((secret, bait)):  # other pixels; then the very same bytes, but out of the folder
        target = tmp_path / f"secret{n}.png"
        target.write_bytes(content)
        os.utime(target, ns=(row["mtime_ns"], row["mtime_ns"]))
        subprocess.run(f"ln -s '{target}' '{d.export}/.l' && mv -T '{d.export}/.l' '{path}'", shell=True, check=True)
        assert (path.stat().st_size, path.stat().st_mtime_ns) == (row["size"], row["mtime_ns"])
        status, body = _get(d.web_port, f"/result/{row['id']}/image.png")
        assert status == 410 and b"410 gone" in body, (n, status, body[:200])
        os.unlink(path)
    kept = d.export / ".kept.png"  # the same bytes inside the folder (hidden: no image of its own): a link taken
    kept.write_bytes(bait)
    os.utime(kept, ns=(row["mtime_ns"], row["mtime_ns"]))
    subprocess.run(f"ln -s .kept.png '{d.export}/.l' && mv -T '{d.export}/.l' '{path}'", shell=True, check=True)
    assert _get(d.web_port, f"/result/{row['id']}/image.png")[0] == 200


def test_the_original_is_never_other_pixels_than_those_scored(daemon):
    """A scored file rewritten in place with other pixels and its mtime put back: the page served the new pixels
    with 200 under the old row. It serves only the bytes whose sha256 the ledger recorded."""
    d = daemon().start()
    a, b = _same_size(_clean(78), _clean(79))
    path = write_renamed(d.export, "x.png", a)
    row = d.wait_finished(1)[0]
    with open(path, "r+b") as f:
        f.write(b)
        f.flush()
        os.utime(f.fileno(), ns=(row["mtime_ns"], row["mtime_ns"]))
    status, body = _get(d.web_port, f"/result/{row['id']}/image.png")
    assert status == 410 and b"changed since" in body, (status, body[:200])
    with open(path, "r+b") as f:  # the scored content back: shown again
        f.write(a)
        f.flush()
        os.utime(f.fileno(), ns=(row["mtime_ns"], row["mtime_ns"]))
    status, body = _get(d.web_port, f"/result/{row['id']}/image.png")
    served = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
    assert status == 200 and np.array_equal(served, cv2.imdecode(np.frombuffer(a, np.uint8), cv2.IMREAD_UNCHANGED))


@pytest.fixture
def guarded():
    """A GuardedServer (the results page's and the metrics endpoint's) answering "ok", with short bounds."""
    from http.server import BaseHTTPRequestHandler

    from monitor.web.server import GuardedServer

    class Ok(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    servers = []

    def make(**bounds) -> int:
        server = GuardedServer(("127.0.0.1", 0), Ok, name="test", **bounds)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    make.servers = servers
    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


def _get_ok(port: int, source: str = "127.0.0.1") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_client_that_trickles_its_request_is_cut_off_at_the_deadline(guarded):
    """A per-read timeout alone lets a client that sends a byte a second hold a connection (and its thread) for
    ever: the connection is closed at its deadline, whatever it is doing."""
    port = guarded(timeout=5, deadline=2)
    s = socket.create_connection(("127.0.0.1", port))
    start, closed = time.monotonic(), None
    try:
        for ch in b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 40:
            try:
                s.sendall(bytes([ch]))
                if s.recv(1, socket.MSG_DONTWAIT) == b"":
                    closed = time.monotonic() - start
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed = time.monotonic() - start
                break
            time.sleep(0.25)
    finally:
        s.close()
    assert closed is not None and 1.5 < closed < 4, closed
    assert _get_ok(port) == 200


def test_one_address_cannot_take_every_connection(guarded):
    """Connections from one address beyond ``per_client`` are closed at once; another address is still served,
    and once the first address's connections end it is served again."""
    port = guarded(timeout=30, deadline=60, per_client=3, max_connections=10)
    idle = [socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0)) for _ in range(6)]
    try:
        wait_for(lambda: sum(map(_closed_by_peer, idle)) == 3, 5, "3 of the 6 connections closed by the server")
        assert _get_ok(port) == 200  # another address: served at once
        assert _try_get(port, "127.0.0.2") is None  # the full address: closed unanswered
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: _try_get(port, "127.0.0.2") == 200, 5, "the address served again")


def _closed_by_peer(s: socket.socket) -> bool:
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False


def _try_get(port: int, source: str) -> int | None:
    try:
        return _get_ok(port, source)
    except OSError:
        return None


def _page(port: int, path: str, host: str | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        conn.close()


def test_a_name_with_a_bidirectional_override_reads_as_it_is_on_the_page_and_in_the_log(daemon):
    """U+202E (right-to-left override) makes "invoice\\u202egnp.exe" display as "invoiceexe.png"; such characters
    (and C1 controls, zero widths, the BOM) are shown as \\uXXXX on the page and in the log."""
    d = daemon().start()
    name = "mat\u202egnp.\u200bgood\u0085.png"
    write_renamed(d.export, name, _clean(52))
    d.wait_finished(1)
    log = d.log_text()
    assert "mat\\u202egnp.\\u200bgood\\u0085.png" in log and "\u202e" not in log and "\u0085" not in log
    status, body = _page(d.web_port, "/")
    assert status == 200 and "mat\\u202egnp.\\u200bgood\\u0085.png" in body and "\u202e" not in body
    status, body = _page(d.web_port, f"/result/{d.rows()[0]['id']}")
    assert status == 200 and "\u202e" not in body and "\u200b" not in body


def test_the_results_page_answers_only_to_its_own_host_names(daemon):
    """DNS rebinding: a web site whose name is made to resolve to the line PC would read the page through its
    visitor's browser (no auth on a line network). Requests naming another Host are refused; IP addresses,
    localhost, this PC's name and web.allowed_hosts are served."""
    d = daemon(web={"allowed_hosts": ["linepc-3.plant.example"]}).start()
    for host in ("127.0.0.1", f"127.0.0.1:{d.web_port}", f"localhost:{d.web_port}", "[::1]:9880",
                 f"{socket.gethostname()}:{d.web_port}", "LinePC-3.plant.example.", "10.1.2.3"):
        assert _page(d.web_port, "/", host)[0] == 200, host
    for host in ("evil.example", f"evil.example:{d.web_port}", "linepc-3.plant.example.evil.example", ""):
        status, body = _page(d.web_port, "/", host)
        assert status == 400 and "web.allowed_hosts" in body, host
    assert _page(d.web_port, "/healthz", "evil.example")[0] == 200  # the health check says nothing


def test_a_page_open_to_the_network_says_so_at_start():
    from monitor.config import WebSection
    from monitor.passwords import MIN_ITERATIONS, hash_password
    from monitor.web.site import exposure_warnings

    h = hash_password("a long password", MIN_ITERATIONS)
    assert exposure_warnings(WebSection()) == []  # loopback, the default
    assert exposure_warnings(WebSection(address="::1", write_password_hash=h)) == []
    open_page = exposure_warnings(WebSection(address="0.0.0.0", write_password_hash=h))
    assert len(open_page) == 2 and "without basic auth" in open_page[0] and "write password" in open_page[1]
    assert exposure_warnings(WebSection(address="0.0.0.0", username="op", password_hash=h, certfile="c",
                                        keyfile="k", write_password_hash=h)) == []


def test_a_huge_file_is_refused_before_it_is_hashed_and_holds_up_no_image(daemon):
    """A 4 GB (sparse) file took the intake about 11 s to hash before the worker's size bound refused it, and
    every image behind it waited; its size alone now refuses it at the intake."""
    d = daemon().start()
    with open(d.export / "huge.tif.part", "wb") as f:
        f.truncate(4 << 30)
    t0 = time.monotonic()
    os.rename(d.export / "huge.tif.part", d.export / "huge.tif")
    write_renamed(d.export, "next.png", _clean(53))
    rows = {os.path.basename(r["path"]): r for r in d.wait_finished(2, timeout=30)}
    assert time.monotonic() - t0 < 5, "the image behind the huge file waited"
    assert rows["huge.tif"]["state"] == "failed" and rows["huge.tif"]["error_kind"] == "too_large"
    assert "refused unread" in rows["huge.tif"]["error"]
    assert not re.fullmatch("[0-9a-f]{64}", rows["huge.tif"]["sha256"])  # not hashed
    assert rows["next.png"]["state"] == "done"


@pytest.mark.parametrize("backlog, scored", [("24h", ["day.png", "hour.png"]), ("new", []),
                                              ("all", ["month.png", "week.png", "day.png", "hour.png"])])
def test_a_new_ledger_scores_only_the_backlog_asked_for_and_a_restart_skips_the_same(daemon, backlog, scored):
    """A PC whose export folder holds months of images: a new ledger (first start, or a lost one) scored and
    alarmed every one of them. watch.backlog says how far back; the moment is kept in the ledger, so that a
    restart skips the same images, and the skipped ones are named in the log."""
    d = daemon(watch={"backlog": backlog})
    now = time.time()
    for name, age in (("month.png", 30 * 86400), ("week.png", 7 * 86400), ("day.png", 20 * 3600),
                      ("hour.png", 3600)):
        p = d.export / name
        p.write_bytes(_clean(60 + len(name)))
        os.utime(p, (now - age, now - age))
    d.start()
    write_renamed(d.export, "new.png", _clean(70))  # an image arriving now is always scored
    d.wait_finished(len(scored) + 1)
    names = lambda: sorted(os.path.basename(r["path"]) for r in d.rows())  # noqa: E731
    assert names() == sorted(scored + ["new.png"])
    skipped = 4 - len(scored)
    if skipped:
        assert f"new ledger: {skipped} image(s) already in" in d.log_text()
        assert "month.png" in d.log_text() or backlog != "24h"
    assert d.stop() == 0
    copied = d.export / "copied.png"  # copied in while stopped, its old mtime kept (rsync -t): not backlog
    copied.write_bytes(_clean(72))
    os.utime(copied, (now - 40 * 86400, now - 40 * 86400))
    d.start()
    write_renamed(d.export, "after.png", _clean(71))
    d.wait_finished(len(scored) + 3)
    assert names() == sorted(scored + ["new.png", "after.png", "copied.png"])  # the skipped ones stay skipped
    assert d.log_text().count("new ledger:") == (1 if skipped else 0)


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


def test_a_connection_that_gets_no_thread_gives_its_place_back(guarded, monkeypatch):
    """Threads or memory exhausted for a moment: a connection whose thread cannot start must not keep its place
    in the bounds, else a few such moments leave the endpoint refusing everyone for good."""
    import socketserver

    port = guarded(timeout=5, deadline=10, max_connections=2, per_client=2)
    real = socketserver.ThreadingMixIn.process_request
    failing = [3]

    def no_thread(self, request, client_address):
        if failing[0]:
            failing[0] -= 1
            raise RuntimeError("can't start new thread")
        return real(self, request, client_address)

    monkeypatch.setattr(socketserver.ThreadingMixIn, "process_request", no_thread)
    for _ in range(3):
        assert _try_get(port, "127.0.0.1") is None
    assert _get_ok(port) == 200


def test_closing_the_server_ends_its_open_connections(guarded):
    port = guarded(timeout=30, deadline=60)
    server = guarded.servers[-1]
    s = socket.create_connection(("127.0.0.1", port))
    try:
        wait_for(server.open_connections, 5, "the connection open")
        server.shutdown()
        server.server_close()
        s.settimeout(5)
        assert s.recv(1) == b""  # closed by the server at once, not after the 60 s deadline
    finally:
        s.close()


INVISIBLE = ["\u00ad", "\u2064", "\u180e", "\u206a", "\u206f", "\ufff9", "\ufffb", "\U000e0041", "\u3164", "\u115f",
             "\u2800", "\u034f"]


def test_invisible_and_format_characters_in_names_are_shown_escaped_on_the_page_and_in_the_log(daemon):
    """A soft hyphen, an invisible operator, the Mongolian vowel separator, deprecated format characters,
    interlinear annotations, tag characters, the Hangul fillers, the blank Braille pattern and the combining
    grapheme joiner show as nothing: "ITIA\\u00ad1142.tif" would read as a second "ITIA1142.tif". Every character
    of Unicode category Cf and these invisibles are shown as \\uXXXX (\\UXXXXXXXX) on the page and in the log."""
    from monitor.files import shown

    d = daemon().start()
    names = [f"ITIA{c}1142.png" for c in INVISIBLE[:6]] + ["ITIA1142" + "".join(INVISIBLE[6:]) + ".png"]
    for i, name in enumerate(names):
        write_renamed(d.export, name, _clean(60 + i))
    d.wait_finished(len(names))
    log = d.log_text()
    status, body = _page(d.web_port, "/")
    assert status == 200
    for name in names:
        escaped = shown(name)
        assert escaped != name and escaped.isascii(), name
        assert escaped in log and escaped in body, escaped
    for c in INVISIBLE:
        assert c not in log and c not in body, hex(ord(c))
    for row in d.rows():
        status, body = _page(d.web_port, f"/result/{row['id']}")
        assert status == 200 and not any(c in body for c in INVISIBLE)


def test_label_counts_that_cannot_be_read_are_said_once_at_warning_then_counted(daemon, monkeypatch):
    """A ledger that keeps failing when the label counts are read was visible at DEBUG only."""
    import sqlite3

    d = daemon().start()
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


def test_idle_connections_from_four_addresses_do_not_starve_the_scrape_of_a_fifth(tmp_path):
    """The campaign's attack: eight idle TCP connections from each of four loopback addresses (the per-address
    cap, 4 x 8 = the metrics endpoint's total of 32), reopened when closed; a scrape from a fifth address failed 16
    times in 21. Now the longest-waiting unanswered connection of the address holding most is closed for it."""
    from monitor.daemon.metrics import Metrics

    m = Metrics(line="line1")
    port = m.serve("127.0.0.1", 0)
    holders = [f"127.0.0.{i}" for i in range(2, 6)]
    idle: list[socket.socket] = []
    stop = threading.Event()

    def gone(s: socket.socket) -> bool:
        try:
            return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, TimeoutError):
            return False
        except OSError:  # reset by the server
            return True

    def hold():  # keep eight open from each address, reopening what the server closes
        while not stop.is_set():
            for s in [s for s in idle if gone(s)]:
                idle.remove(s)
                s.close()
            for src in holders:
                while sum(1 for s in idle if s.getsockname()[0] == src) < 8 and not stop.is_set():
                    try:
                        s = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(src, 0))
                    except OSError:
                        break
                    s.settimeout(None)  # blocking: MSG_DONTWAIT alone decides (a timeout would make gone() wait)
                    idle.append(s)
            stop.wait(0.05)

    t = threading.Thread(target=hold)
    t.start()
    try:
        wait_for(lambda: len(idle) >= 30, 10, "the endpoint full of idle connections (32)")
        got = []
        for _ in range(15):
            try:
                got.append(b"monitor_alarm" in _scrape_from(port, "127.0.0.6"))
            except OSError:
                got.append(False)
            time.sleep(0.05)
        assert all(got), f"{got.count(False)} of {len(got)} scrapes failed"
        assert t.is_alive()  # the attack went on throughout
    finally:
        stop.set()
        t.join(10)
        for s in idle:
            s.close()
        m.close()


def _scrape_from(port: int, source: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        assert r.status == 200
        return r.read()
    finally:
        conn.close()


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:")) / 1024


def test_a_header_flood_before_authentication_is_answered_431_and_costs_no_memory(daemon):
    """The campaign's attack: sixteen connections that each send about 6 MB of request headers (96 lines of 65,000
    bytes, under the standard library's per-line and count limits) and stall raised the daemon's RSS by 0.7 GB, for
    good. Now a request's line and headers may take MAX_HEADER_BYTES: 431, and the connection is closed."""
    d = daemon().start()  # in this process: its memory is the page's (the clients' lines are one shared bytes)
    pid = os.getpid()
    before = _rss_mb(pid)
    replies, peak = [], [before]
    line = b"X-Fill: " + b"a" * 64990 + b"\r\n"

    def flood(src: str):
        try:
            s = socket.create_connection(("127.0.0.1", d.web_port), timeout=10, source_address=(src, 0))
        except OSError:
            return
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            for _ in range(96):
                s.sendall(line)
        except OSError:
            pass  # closed by the server: what we want
        try:
            replies.append(s.recv(200))
        except OSError:
            replies.append(b"")
        finally:
            s.close()

    threads = [threading.Thread(target=flood, args=(f"127.0.1.{1 + i % 4}",)) for i in range(16)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak.append(_rss_mb(pid))
        time.sleep(0.05)
    for t in threads:
        t.join()
    after = _rss_mb(pid)
    print(f"RSS before {before:.0f} MB, peak {max(peak):.0f} MB, after {after:.0f} MB")
    assert max(peak) - before < 50 and after - before < 50, (before, max(peak), after)
    assert sum(r.startswith(b"HTTP/1.0 431") for r in replies) >= 12, replies  # a few may see the reset first
    assert get_page_ok(d.web_port)  # the page still answers


def get_page_ok(port: int) -> bool:
    return _page(port, "/")[0] == 200


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


HOSTS_REFUSED = [b"Host: [::1]evil\r\n", b"Host: localhost:evil\r\n", b"Host: localhost\r\nHost: evil.example\r\n",
                 b"Host : evil.example\r\n", b"Host: 127.0.0.1 evil\r\n"]


def test_a_host_header_that_is_not_one_plain_host_is_refused(daemon):
    """The Host check accepted "[::1]evil", "localhost:evil", a second Host header after a good one, and skipped a
    malformed "Host :" line (the name with a space is not "Host")."""
    d = daemon().start()
    for head in HOSTS_REFUSED:
        reply = _raw(d.web_port, b"GET / HTTP/1.1\r\n" + head + b"Connection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.0 400"), (head, reply[:300])
    ok = _raw(d.web_port, b"GET / HTTP/1.1\r\nHost: localhost:8080\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.0 200"), ok[:300]


def test_an_http_0_9_request_gets_no_page_without_headers(daemon):
    """"GET /" alone (HTTP/0.9) got the page with no header at all: no Content-Security-Policy, no no-store."""
    d = daemon().start()
    reply = _raw(d.web_port, b"GET /\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 400") and b"Content-Security-Policy" in reply  # the headers, and
    assert b"SEM line monitor" not in reply  # not the page

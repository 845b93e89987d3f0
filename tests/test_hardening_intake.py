"""Hostile cases against the intake of a real `monitor run` or the real intake and worker (real folders, real
writes): file names that are not UTF-8, files moved in, content replaced or rewritten between recording and
scoring, export folders made anew, symbolic links and loops, names of 255 bytes and beyond PATH_MAX, empty files,
FIFOs, images far larger than the training images, decoder failures, dropped kernel events, renames, permissions,
the backlog (docs/daemon.md, "Reliability")."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monitor.config import Config, WatchSection, parse_config
from monitor.daemon.metrics import Metrics
from monitor.daemon.watcher import Intake
from monitor.daemon.worker import Worker
from monitor.ledger import Ledger
from monitor.model.images import ImageError, ImageLimits, read_image
from monitor.model.synth import defective_image, fiber_mat
from tests.commands import monitor
from tests.conftest import SHAPE
from tests.daemon import png_bytes, wait_for, write_renamed
from tests.hardening import LATIN1_NAME, _as_a_normal_user, _clean, _tiff_with_a_tag_of_the_wrong_type


def test_a_name_that_is_not_utf8_is_scored_and_shown_losslessly(new_daemon):
    d = new_daemon(output={"overlays": "all"})
    (d.export / LATIN1_NAME).write_bytes(_clean(1))  # in the backlog: the start-up scan meets it
    os.utime(d.export / LATIN1_NAME, (time.time() - 5, time.time() - 5))  # settled before the start
    d.start()
    write_renamed(d.export, os.fsdecode(b"r\xe9sultat.png"), _clean(2))  # and while running
    rows = d.wait_finished(2)
    assert [r["state"] for r in rows] == ["done", "done"], rows
    paths = [r["path"] for r in rows]
    assert paths[0] == os.fsencode(str(d.export / LATIN1_NAME))  # the exact bytes, as a BLOB
    assert all(os.path.exists(p) for p in paths)
    out = monitor("history", "--ledger", d.ledger_path)
    assert out.returncode == 0 and "lat\\xe4n.png" in out.stdout, out.stderr
    assert any(p.name.startswith("lat\\xe4n") for p in d.out.glob("*.png"))


def test_a_file_moved_in_from_another_folder_is_taken(new_daemon, tmp_path):
    d = new_daemon().start()
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


def test_symbolic_links_out_of_the_folder_and_loops_are_refused_with_a_reason(new_daemon, tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(_clean(6))
    d = new_daemon()
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


def test_names_of_255_bytes_get_their_overlay_and_result_and_leave_no_temporary_file(new_daemon):
    d = new_daemon(output={"overlays": "all"}).start()
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


def test_the_polling_observer_records_an_empty_file_as_failed(new_daemon):
    d = new_daemon(watch={"observer": "polling", "settle_seconds": 0.2, "poll_seconds": 0.1}).start()
    (d.export / "empty.png").write_bytes(b"")
    row = d.wait_finished(1, timeout=20)[0]
    assert row["state"] == "failed" and row["error_kind"] == "empty"


def test_an_export_folder_made_anew_is_watched_again(new_daemon):
    d = new_daemon().start()
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


def test_an_image_far_larger_than_the_training_images_is_refused_before_decoding(new_daemon):
    d = new_daemon().start()
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


def test_a_file_closed_at_two_thirds_and_rewritten_is_scored_only_with_its_final_content(new_daemon):
    d = new_daemon().start()
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


def test_a_fifo_under_an_image_name_is_refused_and_blocks_nothing(new_daemon):
    d = new_daemon().start()
    os.mkfifo(d.export / "fifo.png")  # opening it to read would block until a writer comes: forever
    write_renamed(d.export, "after.png", _clean(40))
    rows = {os.path.basename(r["path"]): r for r in d.wait_finished(2, timeout=30)}
    assert rows["fifo.png"]["state"] == "failed" and "not a regular file" in rows["fifo.png"]["error"], rows
    assert rows["after.png"]["state"] == "done"


def test_a_file_larger_than_any_image_within_the_bound_is_refused_unread(new_daemon):
    d = new_daemon().start()
    with open(d.export / "big.tif.part", "wb") as f:
        f.truncate(50_000_000)  # 50 MB (sparse): more than 8 bytes for each of the 4 x 256 x 320 pixels allowed
    os.rename(d.export / "big.tif.part", d.export / "big.tif")
    row = d.wait_finished(1, timeout=30)[0]
    assert row["state"] == "failed" and row["error_kind"] == "too_large" and "refused unread" in row["error"], row




def test_a_file_that_makes_the_decoder_fail_in_any_way_fails_alone(new_daemon, tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(_tiff_with_a_tag_of_the_wrong_type())
    with pytest.raises(ImageError) as exc:
        read_image(bad)
    assert exc.value.kind == "corrupt" and "TypeError" in exc.value.reason
    d = new_daemon().start()
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


def test_images_whose_events_the_kernel_dropped_are_found_by_a_re_scan(new_daemon):
    """SIGSTOP the daemon, fill the kernel's inotify queue (16,384 events) with touches of two sub-folders, then
    write 300 files: their events are dropped, watchdog's overflow warning makes the intake re-scan, and every file
    gets its row (without the re-scan none would)."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    d = new_daemon(process=True).start()
    noise = [d.export / "noise-a", d.export / "noise-b"]  # folders: the intake ignores their events
    for n in noise:
        n.mkdir()
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        for i in range(limit + 100):
            os.utime(noise[i % 2])  # alternating, so that the kernel cannot merge them into one event
        for i in range(300):
            write_renamed(d.export, f"burst{i:05d}.png", b"not an image %d" % i)  # fails fast, unscored
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    wait_for(lambda: len(d.rows()) == 300, 60, "300 rows")
    assert "re-scanning" in d.log_text()


def test_an_image_renamed_in_the_folder_keeps_its_result_and_raises_no_second_alarm(new_daemon):
    d = new_daemon(watch={"recursive": True}).start()
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


def test_an_overwrite_that_keeps_size_and_mtime_is_recorded(new_daemon):
    """`cp -p`: new content, the old file's size, its mtime put back before the close."""
    d = new_daemon().start()
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
    real_stat, blocked, refused = os.stat, threading.Event(), []
    blocked.set()

    def stat(path, *a, **kw):
        if blocked.is_set() and str(path).startswith(str(export) + os.sep):
            refused.append(str(path))
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *a, **kw)

    intake.start_watching()
    try:
        monkeypatch.setattr(os, "stat", stat)
        write_renamed(export, "p.png", _clean(48))
        wait_for(lambda: sum(p.endswith("p.png") for p in refused) >= 2, 10, "two refused looks at the image")
        assert not recorded
        blocked.clear()  # chmod 755
        wait_for(lambda: recorded, 10, "the image recorded once the folder can be read")
    finally:
        monkeypatch.undo()
        intake.stop()
        ledger.close()


def test_a_path_longer_than_path_max_does_not_stop_the_start(new_daemon):
    d = new_daemon(watch={"recursive": True})
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


def test_a_file_name_cannot_forge_a_log_line(new_daemon):
    d = new_daemon(output={"overlays": "all"}).start()
    write_renamed(d.export, "evil\n2026-12-01 00:00:00,000 INFO monitor.worker: all clear\x1b[31m.png", _clean(51))
    d.wait_finished(1)
    lines = d.log_text().splitlines()
    assert not [line for line in lines if line.startswith("2026-12-01 00:00:00,000")], lines
    assert "\x1b" not in d.log_text() and "evil\\x0a2026" in d.log_text()


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


def test_a_symbolic_link_loop_made_in_place_is_refused_at_once(new_daemon):
    d = new_daemon().start()
    os.symlink("loop2.png", d.export / "loop2.png")  # created in place, not renamed in
    row = d.wait_finished(1, timeout=15)[0]
    assert row["state"] == "failed" and "loop" in row["error"], row


def test_a_file_created_empty_and_written_later_is_no_false_empty_failure(new_daemon):
    d = new_daemon().start()  # settle_seconds 0.5: an empty candidate would be taken after 2.5 s
    path = d.export / "late.png"
    with open(path, "wb") as f:
        f.flush()
        time.sleep(3.5)  # the microscope opened the file, then acquires the image
        f.write(_clean(61))
    d.wait_finished(1, timeout=20)
    write_renamed(d.export, "sentinel.png", _clean(62))  # taken after it: any empty-file failure is in by then
    rows = d.wait_finished(2, timeout=20)
    assert [(r["state"], r["error_kind"]) for r in rows] == [("done", None), ("done", None)], rows


def test_an_export_folder_deleted_and_made_anew_in_one_go_is_watched_again(new_daemon):
    """``rm -rf E && mkdir E`` in one shell line: on ext4 the new folder gets the deleted one's inode number back at
    once, so (device, inode) says "the same folder" while the inotify watch died with the old one. The watch's own
    end (watchdog's "watched folder deleted") re-arms it; before, a new image waited for the 300 s re-scan."""
    d = new_daemon().start()
    for i in range(3):
        subprocess.run(f"rm -rf '{d.export}' && mkdir '{d.export}'", shell=True, check=True)
        write_renamed(d.export, f"after{i}.png", _clean(70 + i))
        rows = d.wait_finished(i + 1, timeout=10)
        assert rows[i]["path"].endswith(f"after{i}.png") and rows[i]["state"] == "done", rows
    assert d.value(d.scrape(), "monitor_watch_folder_ok") == 1
    log = d.log_text()
    assert "watch on" in log and "ended" in log and "Traceback" not in log, log


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


def test_a_huge_file_is_refused_before_it_is_hashed_and_holds_up_no_image(new_daemon):
    """A 4 GB (sparse) file took the intake about 11 s to hash before the worker's size bound refused it, and
    every image behind it waited; its size alone now refuses it at the intake."""
    d = new_daemon().start()
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
def test_a_new_ledger_scores_only_the_backlog_asked_for_and_a_restart_skips_the_same(new_daemon, backlog, scored):
    """A PC whose export folder holds months of images: a new ledger (first start, or a lost one) scored and
    alarmed every one of them. watch.backlog says how far back; the moment is kept in the ledger, so that a
    restart skips the same images, and the skipped ones are named in the log."""
    d = new_daemon(watch={"backlog": backlog})
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

"""The daemon as it runs in production: a real process, a real export folder with real file writes, the real
SQLite ledger, the metrics endpoint scraped over HTTP, and a NOTIFY_SOCKET standing in for systemd."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import yaml

from monitor.model.synth import defective_image, fiber_mat
from tests.commands import monitor
from tests.conftest import SHAPE, SYNTH_CLIP, needs_fit
from tests.daemon import Daemon, png_bytes, wait_for, write_renamed


@pytest.fixture(scope="module")
def clean_png():
    return [png_bytes(fiber_mat(SHAPE, seed=300 + i)) for i in range(6)]


def sentinel(d, n: int) -> list[dict]:
    """Write one more clean image and wait for the ``n`` rows it makes: the intake takes files in the order they
    are complete and the worker scores the oldest first, so anything written before it that was going to be
    recorded has been by then ("nothing else happened" without a fixed sleep that a slow daemon passes vacuously)."""
    write_renamed(d.export, "sentinel.png", png_bytes(fiber_mat(SHAPE, seed=399)))
    rows = d.wait_finished(n)
    assert os.path.basename(rows[-1]["path"]) == "sentinel.png", rows
    return rows


@pytest.fixture(scope="module")
def defect_png():
    # the small test model covers this one at ~1.5% and the clean seed-303 mat at 0%: the alarm test checks the
    # daemon's plumbing (detection quality is tested in test_model.py and measured on NanoTWICE)
    img, _ = defective_image(SHAPE, kinds=("bead", "film", "clot"), seed=9)
    return png_bytes(img)


@pytest.fixture
def make_daemon(tmp_path, saved_model):
    """Daemon(tmp_path, model, **sections), killed at teardown if a test left it running."""
    made = []

    def make(**sections) -> Daemon:
        made.append(Daemon(tmp_path, saved_model, **sections))
        return made[-1]
    yield make
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            d.kill()


@pytest.fixture
def daemon(make_daemon):
    return make_daemon()


@pytest.mark.line_pc
def test_slowly_written_image_is_scored_once_after_it_is_complete(daemon, clean_png):
    daemon.start()
    data = clean_png[0]
    path = daemon.export / "slow.png"
    with open(path, "wb") as f:  # one open file, written in chunks over ~3 s (the way a slow share writes)
        for i in range(0, len(data), len(data) // 6 + 1):
            f.write(data[i:i + len(data) // 6 + 1])
            f.flush()
            time.sleep(0.5)
            assert daemon.rows() == [], "a half-written file was recorded"
    daemon.wait_finished(1)
    rows = sentinel(daemon, 2)  # taken after everything before it: the slow file was recorded once
    assert len(rows) == 2 and rows[0]["state"] == "done" and rows[0]["size"] == len(data)
    assert rows[0]["attempts"] == 1


def test_rename_into_folder_is_scored_once_and_temporary_files_never(daemon, clean_png):
    daemon.start()
    write_renamed(daemon.export, "a.png", clean_png[0])
    (daemon.export / "b.png.part").write_bytes(clean_png[1])  # never renamed
    (daemon.export / ".hidden.png").write_bytes(clean_png[2])
    (daemon.export / "notes.txt").write_text("operator notes")
    daemon.wait_finished(1)
    rows = sentinel(daemon, 2)
    assert [os.path.basename(r["path"]) for r in rows] == ["a.png", "sentinel.png"]
    assert rows[0]["state"] == "done" and rows[0]["attempts"] == 1


def test_polling_observer_waits_for_the_file_to_settle(make_daemon, clean_png):
    d = make_daemon(watch={"observer": "polling", "settle_seconds": 1.5, "poll_seconds": 0.2})
    try:
        d.start()
        data = clean_png[0]
        with open(d.export / "share.png", "wb") as f:
            for i in range(0, len(data), len(data) // 3 + 1):
                f.write(data[i:i + len(data) // 3 + 1])
                f.flush()
                time.sleep(0.8)  # pauses shorter than settle_seconds
                assert d.rows() == []
        rows = d.wait_finished(1)
        assert len(rows) == 1 and rows[0]["state"] == "done" and rows[0]["size"] == len(data)
    finally:
        d.stop()


@pytest.mark.line_pc
def test_backlog_is_scored_at_start_oldest_first(daemon, clean_png):
    for i, data in enumerate(clean_png[:4]):
        p = daemon.export / f"early_{3 - i}.png"
        p.write_bytes(data)
        os.utime(p, (time.time() - 100 + i, time.time() - 100 + i))  # early_3 is the oldest
    daemon.start()
    rows = daemon.wait_finished(4)
    assert [os.path.basename(r["path"]) for r in rows] == [f"early_{3 - i}.png" for i in range(4)]
    assert all(r["state"] == "done" for r in rows)


@pytest.mark.line_pc
def test_sigkill_in_a_burst_then_restart_loses_nothing_and_scores_nothing_twice(make_daemon, clean_png):
    daemon = make_daemon(service={"batch": 4})  # batches of 4 through the network
    daemon.start()
    names = [f"burst_{i:03d}.png" for i in range(50)]
    for i, name in enumerate(names):
        write_renamed(daemon.export, name, clean_png[i % len(clean_png)])
    wait_for(lambda: len(daemon.finished()) >= 5, 60, "a few results")
    daemon.kill()  # SIGKILL: no clean-up of any kind
    done_before = {r["path"]: r["finished_at"] for r in daemon.rows() if r["state"] == "done"}
    assert len(done_before) < 50, "the burst finished before the kill; the test proves nothing"
    daemon.start()
    rows = daemon.wait_finished(50, timeout=120)
    assert sorted(os.path.basename(r["path"]) for r in rows) == names  # every image exactly one row
    assert all(r["state"] == "done" for r in rows)
    for r in rows:  # an image done before the kill was not scored again
        if r["path"] in done_before:
            assert r["finished_at"] == done_before[r["path"]] and r["attempts"] == 1
    m = daemon.scrape()
    assert Daemon.value(m, "monitor_images_received_total") == 50
    processed = sum(Daemon.value(m, "monitor_images_processed_total", verdict=v) for v in ("ok", "defect"))
    assert processed == 50
    assert Daemon.value(m, "monitor_queue_depth") == 0
    assert Daemon.value(m, "monitor_last_received_timestamp_seconds") >= max(r["seen_at"] for r in rows)
    assert daemon.stop() == 0


def test_changed_file_under_the_same_name_is_a_new_image(daemon, clean_png):
    daemon.start()
    write_renamed(daemon.export, "same.png", clean_png[0])
    daemon.wait_finished(1)
    write_renamed(daemon.export, "same.png", clean_png[1])
    rows = daemon.wait_finished(2)
    assert len({r["sha256"] for r in rows}) == 2 and all(r["state"] == "done" for r in rows)
    write_renamed(daemon.export, "same.png", clean_png[1])  # same content again: nothing new
    assert len(sentinel(daemon, 3)) == 3


def _tiff_header_claiming(w: int, h: int) -> bytes:
    """A little-endian TIFF whose header claims w x h 8-bit pixels (and holds none)."""
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, h), (279, 4, 1, w * h)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, typ, n) + (struct.pack("<HH", val, 0) if typ == 3 else struct.pack("<I", val))
        for tag, typ, n, val in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def _png(arr: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".png", arr)[1].tobytes()


def _tiff16(arr: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="TIFF")  # header and IFD first, then the pixels
    return buf.getvalue()


BAD_INPUTS = {
    # name: (bytes, expected state, expected error kind or None)
    "empty.tif": (lambda ok: b"", "failed", "empty"),
    "truncated.tif": (lambda ok: _tiff16((fiber_mat(SHAPE, seed=4) * 65535).astype(np.uint16))[:40000],
                      "failed", "corrupt"),
    "text.tif": (lambda ok: b"this is not an image\n" * 10, "failed", "unreadable"),
    "tiny.png": (lambda ok: _png(np.zeros((1, 1), np.uint8)), "failed", "too_small"),
    "huge.tif": (lambda ok: _tiff_header_claiming(20000, 20000), "failed", "too_large"),
    "deep16.tif": (lambda ok: _tiff16((fiber_mat(SHAPE, seed=5) * 65535).astype(np.uint16)), "done", None),
    "rgb.png": (lambda ok: _png(np.dstack([(fiber_mat(SHAPE, seed=6) * 255).astype(np.uint8)] * 3)), "done", None),
}


@pytest.mark.line_pc
def test_bad_inputs_fail_one_by_one_with_a_reason_and_the_daemon_goes_on(daemon, clean_png):
    daemon.start()
    for name, (make, _, _) in BAD_INPUTS.items():
        write_renamed(daemon.export, name, make(clean_png[0]))
    # removed before it is read: written and deleted at once (recorded as failed, or gone before it was even seen)
    write_renamed(daemon.export, "vanishing.png", clean_png[1])
    os.unlink(daemon.export / "vanishing.png")
    unreadable = None
    if os.geteuid() != 0:  # root reads anything: the permission case needs a normal user
        unreadable = daemon.export / "locked.png"
        unreadable.write_bytes(clean_png[2])
        unreadable.chmod(0)
    write_renamed(daemon.export, "after.png", clean_png[3])  # the daemon still works after all that
    wait_for(lambda: any(r["path"].endswith("after.png") for r in daemon.finished()), 60, "after.png")
    rows = {os.path.basename(r["path"]): r for r in daemon.finished()}
    for name, (_, state, kind) in BAD_INPUTS.items():
        r = rows[name]
        assert r["state"] == state, (name, r)
        if kind:
            assert r["error_kind"] == kind and r["error"], (name, r)
    assert rows["after.png"]["state"] == "done"
    if "vanishing.png" in rows:
        assert rows["vanishing.png"]["state"] in ("done", "failed")
        if rows["vanishing.png"]["state"] == "failed":
            assert rows["vanishing.png"]["error_kind"] == "missing"
    if unreadable is not None:
        assert rows["locked.png"]["error_kind"] == "permission"
    assert daemon.proc.poll() is None
    m = daemon.scrape()
    assert Daemon.value(m, "monitor_images_failed_total", reason="too_large") == 1
    assert Daemon.value(m, "monitor_images_failed_total", reason="empty") == 1
    assert daemon.stop() == 0


@pytest.mark.line_pc
def test_metrics_show_counts_alarm_on_and_off_and_histograms(make_daemon, clean_png, defect_png):
    d = make_daemon(alarm={"coverage_threshold": 0.005})
    try:
        d.start()
        m = d.scrape()
        assert Daemon.value(m, "monitor_alarm") == 0
        assert Daemon.value(m, "monitor_budget_seconds") == 2.0
        write_renamed(d.export, "defect.png", defect_png)
        d.wait_finished(1)
        m = d.scrape()
        assert Daemon.value(m, "monitor_alarm") == 1
        assert Daemon.value(m, "monitor_alarms_total") == 1
        assert Daemon.value(m, "monitor_images_processed_total", verdict="defect") == 1
        assert Daemon.value(m, "monitor_last_coverage_ratio") > 0.005
        row = d.rows()[0]
        assert row["alarm"] == 1 and row["overlay"] and os.path.exists(row["overlay"])
        assert os.path.exists(row["overlay"].replace(".png", ".json"))
        assert not any(p.name.endswith((".tmp",)) for p in d.out.iterdir())
        write_renamed(d.export, "clean.png", clean_png[3])
        d.wait_finished(2)
        m = d.scrape()
        assert Daemon.value(m, "monitor_alarm") == 0
        assert Daemon.value(m, "monitor_images_processed_total", verdict="ok") == 1
        assert Daemon.value(m, "monitor_scoring_seconds_count") == 2
        assert Daemon.value(m, "monitor_end_to_end_seconds_count") == 2
        assert Daemon.value(m, "monitor_end_to_end_seconds_bucket", le="+Inf") == 2
        assert Daemon.value(m, "monitor_last_processed_timestamp_seconds") > time.time() - 60
        info = [k for k in m if k[0] == "monitor_model_info"][0]
        assert dict(info[1])["model_id"] == row["model_id"]
        assert dict(info[1])["runtime"] == "openvino"  # the default runtime, installed with the package
        # a scrape asking for some series only (?name[]=, as prometheus-client serves it) keeps the line label
        body = urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics?name[]=monitor_alarm", timeout=5).read()
        samples = [ln for ln in body.decode().splitlines() if not ln.startswith("#")]
        assert samples == ['monitor_alarm{line="line1"} 0.0']
        assert sorted(os.listdir(d.export)) == ["clean.png", "defect.png"]  # nothing written into the export folder
    finally:
        d.stop()


def test_sigterm_during_a_burst_exits_0_quickly_and_leaves_the_rest_pending(daemon, clean_png):
    daemon.start()
    for i in range(30):
        write_renamed(daemon.export, f"t_{i:02d}.png", clean_png[i % len(clean_png)])
    wait_for(lambda: len(daemon.finished()) >= 2, 60, "two results")
    t0 = time.monotonic()
    assert daemon.stop(signal.SIGTERM, timeout=15) == 0
    assert time.monotonic() - t0 < 5
    assert "STOPPING=1" in daemon.messages
    rows = daemon.rows()
    assert all(r["state"] in ("done", "pending") for r in rows)
    daemon.start()  # the rest is done after the restart
    assert len(daemon.wait_finished(30, timeout=90)) == 30


@needs_fit
def test_sighup_with_a_new_model_switches_model_id(daemon, clean_png, normal_images, val_images, tmp_path):
    from monitor.model.model import Model
    from monitor.model.scorers import PatchDictionaryConfig

    model_dir = tmp_path / "live-model"  # a copy the test may replace
    cfg = yaml.safe_load(daemon.config.read_text())
    shutil.copytree(cfg["model"]["path"], model_dir)
    cfg["model"]["path"] = str(model_dir)
    daemon.config.write_text(yaml.safe_dump(cfg))
    daemon.start()
    write_renamed(daemon.export, "one.png", clean_png[0])
    old = daemon.wait_finished(1)[0]["model_id"]
    new_model = Model.fit("patch_dictionary", PatchDictionaryConfig(k=256), normal_images[:4], val_images,
                          device="cpu", clip=SYNTH_CLIP)
    staging = tmp_path / "staging"
    new_id = new_model.save(staging)
    assert new_id != old
    shutil.rmtree(model_dir)
    os.rename(staging, model_dir)
    daemon.send(signal.SIGHUP)
    wait_for(lambda: any(f"model {new_id}" in m for m in daemon.messages), 60, "reload status")
    write_renamed(daemon.export, "two.png", clean_png[1])
    rows = daemon.wait_finished(2)
    assert rows[1]["model_id"] == new_id
    # a broken model keeps the old one
    (model_dir / "model.json").write_text("{ not json")
    daemon.send(signal.SIGHUP)
    wait_for(lambda: any("reload failed" in m for m in daemon.messages), 30, "reload failure status")
    write_renamed(daemon.export, "three.png", clean_png[2])
    assert daemon.wait_finished(3)[2]["model_id"] == new_id
    assert daemon.stop() == 0


@pytest.mark.line_pc
def test_notify_socket_gets_ready_watchdog_and_stopping(daemon):
    daemon.start(watchdog_usec=400_000)  # pings every 0.2 s
    wait_for(lambda: daemon.messages.count("WATCHDOG=1") >= 3, 10, "three watchdog pings")
    assert any(m.startswith("STATUS=") for m in daemon.messages)
    assert daemon.stop() == 0
    wait_for(lambda: "STOPPING=1" in daemon.messages, 5, "STOPPING=1")
    assert daemon.messages.index("READY=1") < daemon.messages.index("STOPPING=1")


def test_history_prints_the_ledger(daemon, clean_png):
    daemon.start()
    write_renamed(daemon.export, "h1.png", clean_png[0])
    daemon.wait_finished(1)
    daemon.stop()
    r = monitor("history", "--config", daemon.config, "--json", "--since", "1h", check=True)
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [os.path.basename(x["path"]) for x in rows] == ["h1.png"] and rows[0]["state"] == "done"
    r = monitor("history", "--config", daemon.config, check=True)
    assert "h1.png" in r.stdout and "done" in r.stdout



@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_metrics_over_tls_when_a_certificate_is_configured(tmp_path, make_daemon):
    import ssl

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    d = make_daemon(metrics={"certfile": str(cert), "keyfile": str(key)})
    try:
        d.start()
        ctx = ssl.create_default_context(cafile=str(cert))
        body = urllib.request.urlopen(f"https://127.0.0.1:{d.port}/metrics", context=ctx, timeout=5).read().decode()
        assert "monitor_images_received_total" in body
        with pytest.raises(OSError):  # plain HTTP is refused
            urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics", timeout=5).read()
    finally:
        assert d.stop() == 0


def test_daily_log_one_line_per_image_files_not_taken_once_per_suffix_one_reload_line(daemon, clean_png,
                                                                                      defect_png):
    daemon.start()
    write_renamed(daemon.export, "a.png", clean_png[0])
    write_renamed(daemon.export, "b.png", defect_png)
    for name in ("x.jpg", "y.jpg", "z.bmp"):
        write_renamed(daemon.export, name, clean_png[1])
    daemon.wait_finished(2)
    daemon.send(signal.SIGHUP)
    wait_for(lambda: "reloaded" in daemon.log_text(), 30, "the reload line")
    assert daemon.stop() == 0
    log = daemon.log_text()
    assert re.search(r"INFO monitor\.daemon\.worker: \S*a\.png: ok, coverage [0-9.]+%, \d+ defect\(s\), [0-9.]+ s",
                     log), log
    assert re.search(r"WARNING monitor\.daemon\.worker: ALARM \S*b\.png: coverage", log), log
    taken = [ln for ln in log.splitlines() if "not taking" in ln]
    assert len(taken) == 2, taken  # one line for .jpg, one for .bmp
    assert any('add "*.jpg" to watch.patterns' in ln for ln in taken)
    assert log.count("reload") == 1 and "reloaded " in log  # one line per reload, with its outcome
    assert log.rstrip().splitlines()[-1].endswith("stopped")
    # before READY: one synthetic image of the training size, so that the first real one pays no compilation
    assert re.search(r"model \w+ warmed up on a 320x256 image in [0-9.]+ s", log), log


def test_a_fatal_start_up_error_is_the_last_line(tmp_path):
    from tests.daemon import Daemon

    d = Daemon(tmp_path, tmp_path / "no-model")
    d.start(wait_ready=False)
    assert d.proc.wait(60) == 2
    lines = d.log_text().strip().splitlines()
    assert lines[-1].startswith("monitor: error: model.path") and not any(ln.endswith("stopped") for ln in lines)


def test_a_python_warning_is_one_log_line(tmp_path):
    code = """
import warnings
from monitor import cli
cli.cmd_check_config = lambda args: warnings.warn("Corrupt EXIF data.  Expecting to read 12 bytes\\nsecond") or 0
raise SystemExit(cli.main(["check-config"]))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(r"WARNING py\.warnings: UserWarning: Corrupt EXIF data\.  Expecting to "
                                         r"read 12 bytes \(<string>:\d+\)$", lines[0]), r.stderr


def test_history_has_an_alarm_column_and_iso_times(daemon, clean_png, defect_png):
    daemon.start()
    write_renamed(daemon.export, "c.png", clean_png[0])
    write_renamed(daemon.export, "d.png", defect_png)
    daemon.wait_finished(2)
    daemon.stop()
    r = monitor("history", "--config", daemon.config, check=True)
    head, *rows = r.stdout.splitlines()
    assert head.split()[:6] == ["id", "seen", "state", "verdict", "alarm", "coverage"]
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"
    by_name = {row.split()[-1]: row for row in rows}
    assert re.match(rf"\s*\d+\s+{iso}\s+done\s+ok\s+-\s", by_name["c.png"]), by_name
    assert re.match(rf"\s*\d+\s+{iso}\s+done\s+defect\s+ALARM\s", by_name["d.png"]), by_name
    js = monitor("history", "--config", daemon.config, "--json", check=True).stdout.splitlines()
    assert all(re.fullmatch(iso, json.loads(x)["seen"]) for x in js)

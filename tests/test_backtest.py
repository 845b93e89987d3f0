"""`monitor backtest`: an archive scored as the daemon scores, one Parquet row per image, a report against the
ledger or a baseline model; resumable; on a real local Ray cluster that touches no network, survives a worker
killed mid-run and leaves no process behind."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from monitor.ledger import Ledger
from monitor.model.synth import defective_image, fiber_mat
from tests.commands import ROOT, monitor
from tests.conftest import SHAPE
from tests.daemon import png_bytes, wait_for

BAD = {"day2/truncated.png": "corrupt", "day2/not-an-image.png": "unreadable", "day2/small.png": "too_small",
       "day2/outside.png": "symlink"}


def _archive(root: Path, copies: int = 0) -> dict[str, bytes]:
    """An archive of two days: 6 clean mats, 4 with defects, the bad files of BAD, and files the intake does not
    take (hidden, temporary, another suffix); with ``copies``, that many more copies of one clean mat."""
    files = {f"day1/clean{i}.png": png_bytes(fiber_mat(SHAPE, seed=300 + i)) for i in range(6)}
    files |= {f"day2/defect{i}.png": png_bytes(defective_image(SHAPE, kinds=("bead", "film", "clot"), seed=40 + i)[0])
              for i in range(4)}
    files |= {f"day3/copy{i:04d}.png": files["day1/clean0.png"] for i in range(copies)}
    good = dict(files)
    files["day2/truncated.png"] = files["day1/clean1.png"][:2000]
    files["day2/not-an-image.png"] = b"not an image"
    files["day2/small.png"] = png_bytes(fiber_mat((24, 24), seed=1))
    files["day2/.hidden.png"] = files["day1/clean2.png"]
    files["day2/being-written.png.tmp"] = files["day1/clean2.png"]
    files["day2/notes.txt"] = b"a note"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root.parent / "elsewhere.png").write_bytes(files["day1/clean3.png"])
    (root / "day2/outside.png").symlink_to(root.parent / "elsewhere.png")
    return good


def _rows(out: Path) -> list[dict]:
    return pq.read_table(out / "rows.parquet").to_pylist()


def _ledger(path: Path, archive: Path, good: dict[str, bytes]) -> None:
    """What the line said: every good image scored, the defect mats and clean0 as defects (clean0 labelled a
    false alarm, defect0 confirmed), clean1 with another content than the archive's (rewritten since)."""
    lg = Ledger(path)
    for name, data in good.items():
        sha = hashlib.sha256(data if name != "day1/clean1.png" else b"other").hexdigest()
        rid = lg.record(str(archive / name), len(data), 1, sha)[0].id
        lg.start(rid)
        defect = name.startswith("day2/defect") or name == "day1/clean0.png"
        lg.finish(rid, verdict="defect" if defect else "ok", alarm=defect, coverage=0.02 if defect else 0.0,
                  n_defects=int(defect), largest_area=None, max_score=None, score_seconds=0.1, model_id="old",
                  overlay=None, result_json="{}")
        if name in ("day1/clean0.png", "day2/defect0.png"):
            lg.label(rid, "false_alarm" if name == "day1/clean0.png" else "confirmed", "tester")
    lg.close()


def test_an_archive_against_the_ledger_in_process_every_bad_file_its_row_and_a_rerun_scores_nothing(
        tmp_path, saved_model):
    arch = tmp_path / "archive"
    good = _archive(arch)
    _ledger(tmp_path / "ledger.sqlite", arch, good)
    out = tmp_path / "bt"
    r = monitor("backtest", arch, "--model", saved_model, "--against", tmp_path / "ledger.sqlite", "--out", out,
                "--ray", "off", "--quiet", check=True)
    assert "14 images: 0 done already, 13 to score, 1 refused (not read)" in r.stdout, r.stdout
    rows = {os.path.relpath(x["path"], arch): x for x in _rows(out)}
    assert len(rows) == 14 and set(rows) == set(good) | set(BAD)
    for name, kind in BAD.items():
        assert rows[name]["verdict"] == "failed" and rows[name]["reason"].startswith(kind + ":"), rows[name]
    for name, data in good.items():
        x = rows[name]
        assert x["verdict"] in ("ok", "defect") and x["sha256"] == hashlib.sha256(data).hexdigest(), x
        assert json.loads(x["document"])["verdict"] == x["verdict"] and x["seconds"] > 0
    assert [rows[f"day2/defect{i}.png"]["verdict"] for i in range(4)] == ["defect"] * 4
    assert rows["day1/clean0.png"]["verdict"] == "ok" and rows["day1/clean0.png"]["old_verdict"] == "defect"

    s = json.loads((out / "report.json").read_text())
    changed = {os.path.relpath(c["path"], arch): c for c in s["changed"]}
    assert "day1/clean0.png" in changed and changed["day1/clean0.png"]["before"] == "defect"
    assert (out / changed["day1/clean0.png"]["overlay"]).is_file()
    assert "day1/clean1.png" not in changed  # the ledger said it of another content
    assert s["labelled"]["false_alarm"] == {"images": 1, "before_right": 0, "new_right": 1}
    assert s["labelled"]["confirmed"] == {"images": 1, "before_right": 1, "new_right": 1}
    assert s["failures"] == {"corrupt": 1, "unreadable": 1, "too_small": 1, "symlink": 1}
    html = (out / "report.html").read_text()
    assert "clean0.png" in html and "<svg" in html and changed["day1/clean0.png"]["overlay"] in html
    assert "verdicts changed: " in r.stdout and "right now 1" in r.stdout

    again = monitor("backtest", arch, "--model", saved_model, "--against", tmp_path / "ledger.sqlite", "--out", out,
                    "--ray", "off", "--quiet", check=True)
    assert "14 images: 14 done already, 0 to score, 0 refused" in again.stdout
    assert {os.path.relpath(x["path"], arch): x for x in _rows(out)} == rows

    # the ledger as the source: its images, each checked against the sha256 it recorded
    led = monitor("backtest", "--from-ledger", tmp_path / "ledger.sqlite", "--model", saved_model,
                  "--out", tmp_path / "bt-ledger", "--ray", "off", "--quiet", check=True)
    by = {os.path.relpath(x["path"], arch): x for x in _rows(tmp_path / "bt-ledger")}
    assert set(by) == set(good) and by["day1/clean1.png"]["reason"].startswith("changed:"), led.stdout


def test_a_run_killed_mid_way_resumes_and_scores_nothing_twice(tmp_path, saved_model):
    arch = tmp_path / "archive"
    _archive(arch, copies=120)
    out = tmp_path / "bt"
    args = [sys.executable, "-m", "monitor", "backtest", str(arch), "--model", str(saved_model), "--out", str(out),
            "--ray", "off", "--batch", "2", "--flush-rows", "4", "--quiet"]
    p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(list((out / "parts").glob("part-*.parquet"))) >= 3, 60, "three parts written")
    finally:
        p.kill()
        p.wait()
    written = sum(pq.read_metadata(f).num_rows for f in (out / "parts").glob("part-*.parquet"))
    assert 12 <= written < 134
    (out / "parts" / ".part-1-2-000099.parquet.tmp").write_bytes(b"PAR1 half a part")  # killed while writing one
    r = monitor("backtest", arch, "--model", saved_model, "--out", out, "--ray", "off", "--quiet", check=True)
    assert f"134 images: {written} done already, {134 - written} to score" in r.stdout, r.stdout
    rows = _rows(out)
    assert len(rows) == len({x["path"] for x in rows}) == 134
    assert json.loads((out / "report.json").read_text())["scored_now"] == 134 - written
    assert not list((out / "parts").glob("*")), "the parts are joined into rows.parquet"


def _ray_processes() -> dict[int, str]:
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "ray::" in cmd or "/ray/" in cmd:
                out[int(d.name)] = cmd
    return out


def _listening(pids: set[int]) -> list[str]:
    """The addresses the processes ``pids`` listen on (TCP, from /proc)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    addrs = []
    for table, v6 in (("tcp", False), ("tcp6", True)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                host = f[1].split(":")[0]
                if v6:
                    addrs.append("loopback" if host in ("00000000000000000000000001000000",
                                                        "0000000000000000FFFF00000100007F") else host)
                else:
                    addrs.append("loopback" if bytes.fromhex(host)[::-1][0] == 127 else host)
    return addrs


def test_a_local_ray_cluster_survives_a_killed_worker_touches_no_network_and_leaves_nothing(tmp_path, saved_model,
                                                                                           other_model):
    arch = tmp_path / "archive"
    _archive(arch, copies=80)
    out, home = tmp_path / "bt", tmp_path / "home"
    home.mkdir()
    before = set(_ray_processes())
    env = {**os.environ, "HOME": str(home)}
    p = subprocess.Popen([sys.executable, "-m", "monitor", "backtest", str(arch), "--model", str(saved_model),
                          "--baseline", str(other_model), "--out", str(out), "--batch", "2", "--flush-rows", "8"],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        workers = wait_for(lambda: [pid for pid, cmd in _ray_processes().items()
                                    if cmd.startswith("ray::MapWorker") and pid not in before], 90, "Ray workers")
        wait_for(lambda: list((out / "parts").glob("part-*.parquet")), 90, "the first rows")
        ray_pids = set(_ray_processes()) - before
        addrs = _listening(ray_pids)
        assert addrs and set(addrs) == {"loopback"}, addrs
        checked = set()
        for pid in ray_pids:
            cmd = _ray_processes().get(pid, "ray::")
            if cmd.startswith("ray::"):  # a worker or agent whose title is written over its environment's memory
                continue
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            assert b"RAY_USAGE_STATS_ENABLED=0" in environ, cmd
            checked.add(Path(cmd.split()[0]).name)
        assert {"gcs_server", "raylet"} <= checked, checked  # the cluster's roots: the others inherit from them
        assert not any("dashboard" in _ray_processes().get(pid, "") and "--minimal" not in _ray_processes()[pid]
                       for pid in ray_pids)
        os.kill(workers[0], signal.SIGKILL)  # mid-run: rows written, more to come
        killed_at = len(list((out / "parts").glob("part-*.parquet")))
        stdout, stderr = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, stderr[-3000:]
    assert "rows.parquet" in stdout and killed_at < 12
    rows = _rows(out)
    assert len(rows) == len({x["path"] for x in rows}) == 94, "every image once, none twice"
    assert sum(x["verdict"] == "failed" for x in rows) == 4
    assert all(x["baseline_verdict"] for x in rows if not x["path"].endswith("outside.png"))  # the link: not read
    wait_for(lambda: not set(_ray_processes()) - before, 30, "the local cluster's processes to end")
    assert not list(home.rglob("*")), "nothing written in the home folder (Ray's token goes to ~/.ray by default)"


def test_a_scoring_error_fails_only_its_image_and_its_batch_mates_are_judged(tmp_path, saved_model):
    """``judge.judge_files`` (the backtest's, sharing ``inspect_each`` with the daemon's worker): when the batched
    inspection fails, the images are inspected one by one and only the culprit gets its failure."""
    from monitor.config import Config
    from monitor.judge import Failure, judge_files
    from monitor.model.model import Model

    model = Model.load(saved_model, "cpu")
    batched = model.inspect_batch

    def picky(images, *a, **k):  # a device error on the image whose first pixel is white
        if any(im[0, 0] == 1.0 for im in images):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return batched(images, *a, **k)

    model.inspect_batch = picky
    files = []
    for i in range(3):
        img = fiber_mat(SHAPE, seed=400 + i)
        if i == 1:
            img[0, 0] = 1.0
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(png_bytes(img))
    out = judge_files(Config(), model, [(str(f), None) for f in files])
    assert isinstance(out[1][0], Failure) and out[1][0].kind == "device" and "illegal memory" in out[1][0].reason
    assert [out[i][0].verdict for i in (0, 2)] == ["ok", "ok"]
    assert all(len(info["sha256"]) == 64 for _, info in out)

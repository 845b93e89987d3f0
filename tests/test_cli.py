"""The command line, run as a user runs it (subprocess of the installed console script's module)."""

import functools
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from monitor.model.synth import defective_image, fiber_mat, to_uint8
from tests.commands import monitor as run_monitor
from tests.conftest import NANOTWICE, ROOT, SHAPE

monitor = functools.partial(run_monitor, check=True)  # these commands must succeed unless told


def test_fit_then_score_with_overlays_and_maps(tmp_path):
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"n{i}.png"), to_uint8(fiber_mat(SHAPE, seed=i)))
    cv2.imwrite(str(tmp_path / "v.png"), to_uint8(fiber_mat(SHAPE, seed=50)))
    img, _ = defective_image(SHAPE, seed=3, size=1.5)
    cv2.imwrite(str(tmp_path / "d.png"), to_uint8(img))
    (tmp_path / "bad.tif").write_text("not an image")
    out = monitor("fit", "--normal", *[tmp_path / f"n{i}.png" for i in range(4)], "--val", tmp_path / "v.png",
                  "--out", tmp_path / "model", "--quiet", "--set", "model.patch_dictionary.k=256")
    assert json.loads(out.stdout)["threshold"] is not None
    r = monitor("score", tmp_path / "d.png", tmp_path / "bad.tif", "--model", tmp_path / "model",
                "--overlay", tmp_path / "ov", "--maps", tmp_path / "maps", check=False)
    assert r.returncode == 1  # one image failed
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines[0]["verdict"] in ("ok", "defect") and "coverage" in lines[0] and "timings" in lines[0]
    assert lines[1]["error"].startswith("not a readable image")
    amap = np.load(tmp_path / "maps" / "d.npy", allow_pickle=False)
    assert amap.shape == SHAPE and amap.dtype == np.float32
    assert (tmp_path / "ov" / "d.png").exists()


def test_clear_error_for_a_missing_model(tmp_path):
    r = monitor("score", tmp_path / "x.png", "--model", tmp_path / "nomodel", check=False)
    assert r.returncode == 2 and "not a model directory" in r.stderr


def test_check_config_rejects_unknown_keys(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  patch_dictionary:\n    kk: 3\n")
    r = monitor("check-config", "--config", tmp_path / "c.yaml", check=False)
    assert r.returncode == 2 and "unknown key 'kk'" in r.stderr


def test_demo_runs_the_daemon_on_a_synthetic_line(tmp_path):
    r = monitor("demo", "--workdir", tmp_path / "demo", "--images", 3, "--interval", 0.2)
    verdicts = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert [v["image"] for v in verdicts] == ["sem_00000.png", "sem_00001.png", "sem_00002.png"]
    assert all(v["verdict"] in ("ok", "defect") for v in verdicts)
    assert "/metrics" in r.stdout
    out = tmp_path / "demo" / "output"
    assert sorted(p.name for p in out.glob("*.png")) == ["sem_00000-1.png", "sem_00001-2.png", "sem_00002-3.png"]
    assert sorted(p.name for p in (tmp_path / "demo" / "export").iterdir()) == [v["image"] for v in verdicts]
    h = monitor("history", "--ledger", tmp_path / "demo" / "ledger.sqlite", "--json")
    assert [json.loads(x)["state"] for x in h.stdout.splitlines()] == ["done"] * 3


@pytest.mark.nanotwice
@pytest.mark.skipif(not NANOTWICE.exists(), reason="NanoTWICE data not present")
def test_maps_reproduce_the_evaluated_pixel_auc(tmp_path):
    """`monitor score --maps` writes maps whose independently computed pixel AUC equals `monitor evaluate`'s."""
    root = NANOTWICE / "Dataset" / "SEM_Data"
    monitor("fit", "--normal", *[root / "Normal" / f"ITIA114{i}.tif" for i in (1, 2, 3, 4)],
            "--val", root / "Normal" / "ITIA1145.tif", "--out", tmp_path / "model", "--quiet",
            "--set", "model.patch_dictionary.k=256")
    monitor("evaluate", "--data", NANOTWICE, "--model", tmp_path / "model", "--out", tmp_path / "ev", "--limit", 2)
    reported = json.loads((tmp_path / "ev" / "evaluation.json").read_text())["model"]["all"]["pixel_auroc"]
    images = sorted((root / "Anomalous" / "images").glob("*.tif"))[:2]
    monitor("score", *images, "--model", tmp_path / "model", "--maps", tmp_path / "maps")
    from PIL import Image

    y, s = [], []
    for p in images:
        y.append(np.asarray(Image.open(root / "Anomalous" / "gt" / f"{p.stem}_gt.png")).astype(bool).ravel())
        s.append(np.load(tmp_path / "maps" / f"{p.stem}.npy").ravel())
    assert roc_auc_score(np.concatenate(y), np.concatenate(s)) == pytest.approx(reported, abs=1e-9)
    assert (tmp_path / "ev" / "roc_model.png").exists()


def test_output_that_cannot_be_written_is_an_error_not_a_silent_success(tmp_path):
    """The monitor command exits without the interpreter's teardown: a full disk under its output must still
    give a non-zero status and say so."""
    import os

    from monitor.ledger import Ledger

    lg = Ledger(tmp_path / "l.sqlite")
    lg.record("/x/a.tif", 1, 1, "a" * 64)
    lg.close()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    for extra in ((), ("--limit", "1")):
        with open("/dev/full", "w") as full:
            r = subprocess.run([sys.executable, "-m", "monitor", "history", "--ledger", str(tmp_path / "l.sqlite"),
                                "--json", *extra], stdout=full, stderr=subprocess.PIPE, text=True, env=env)
        assert r.returncode == 120 and "No space left on device" in r.stderr, (extra, r.returncode, r.stderr)


def test_history_and_label_of_a_damaged_ledger_are_a_clear_error(tmp_path):
    """The commands open the ledger without reading every page first (the daemon does, at each start): damage that
    a query meets is still `monitor: error: ... damaged`, exit 2, not a traceback."""
    import sqlite3

    from monitor.ledger import Ledger

    path = tmp_path / "l.sqlite"
    lg = Ledger(path)
    for i in range(400):  # several pages of rows
        r, _ = lg.record(f"/export/img{i:04d}_{'x' * 100}.tif", 1, i, f"{i:064d}")
        lg.finish(r.id, verdict="ok", alarm=False, coverage=0.0, n_defects=0, largest_area=0, max_score=1.0,
                  score_seconds=0.1, model_id="m")
    lg.close()
    assert monitor("history", "--ledger", path, "--json").stdout.count("\n") == 400
    with sqlite3.connect(path) as db:
        page = db.execute("SELECT MAX(pageno) FROM dbstat WHERE name = 'images' AND pagetype = 'leaf'").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(path.read_bytes())
    data[(page - 1) * size:(page - 1) * size + 12] = b"\xff" * 12
    path.write_bytes(bytes(data))
    for args in (("history",), ("label", "img0399_" + "x" * 100 + ".tif", "--confirmed", "--by", "ana")):
        r = monitor(*args, "--ledger", path, check=False)
        assert r.returncode == 2 and "monitor: error:" in r.stderr and "damaged" in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args", [["--version"], ["history", "--help"], ["label", "--help"],
                                  ["hash-password", "--help"], ["check-config", "--help"]])
def test_commands_that_never_score_do_not_import_torch(args):
    """torch costs about 1.5 s of every start; the method configurations live in a module of their own
    (monitor/model/methods.py) and the scorers are imported when first named."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "monitor", *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "monitor.cli" in imported and "torch" not in imported and "openvino" not in imported


def _dies(job, args_ns, queue):
    """An evaluation process killed before it reports (as SIGKILL or the OOM killer would end it)."""
    import os

    os._exit(9)


@pytest.mark.nanotwice
@pytest.mark.skipif(not NANOTWICE.exists(), reason="NanoTWICE data not present")
def test_evaluate_ends_with_an_error_when_its_process_dies(tmp_path):
    """It waited forever on the dead process's queue. `monitor evaluate` in a process of its own, with an
    evaluation job that dies before it reports."""
    code = ("import sys, monitor.cli as cli, monitor.commands.evaluate as ev, tests.test_cli as t; "
            "ev.evaluate_job = t._dies; "
            f"sys.exit(cli.main(['evaluate', '--data', {str(NANOTWICE)!r}, '--model', {str(tmp_path / 'm')!r}, "
            f"'--out', {str(tmp_path / 'ev')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "its process ended without a result (exit code 9" in r.stderr


def test_score_checks_the_model_against_a_configuration_given_with_set_alone(saved_model, tmp_path):
    """`--set` is a configuration too: a model made for another mode is refused, as with --config."""
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), to_uint8(fiber_mat(SHAPE, seed=1)))
    r = run_monitor("score", img, "--model", saved_model, "--set", "model.patch_dictionary.mode=crop")
    assert r.returncode == 2 and "the configuration asks for mode='crop'" in r.stderr, r.stderr
    assert monitor("score", img, "--model", saved_model).returncode == 0  # no configuration: the model as it is

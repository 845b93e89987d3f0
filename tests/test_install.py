"""From a clone to a line PC: package metadata, `monitor --version`, `check-config` against the host, and the model
lifecycle (`install-model`, `rollback`) against a running daemon."""

import json
import os
import socket
import subprocess
import sys
import tomllib

import pytest
import yaml

from monitor import __version__
from monitor.model import Model
from monitor.scorers import PatchDictionaryConfig
from tests.conftest import ROOT
from tests.daemon import Daemon, wait_for


def monitor(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "monitor", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_metadata_admits_python_3_11_to_3_13():
    from packaging.specifiers import SpecifierSet

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    spec = SpecifierSet(meta["requires-python"])
    assert all(v in spec for v in ("3.11", "3.11.7", "3.12", "3.12.1", "3.13", "3.13.0"))
    assert not any(v in spec for v in ("3.10.13", "3.14.0"))
    deps = {d.split(">")[0].split("=")[0].split("<")[0].strip(): d for d in meta["dependencies"]}
    assert "==" not in deps["torch"] and "==" not in deps["torchvision"]  # ranges; the pins are constraints.txt
    pins = (ROOT / "constraints.txt").read_text()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins


def test_version():
    r = monitor("--version")
    assert r.returncode == 0 and r.stdout.startswith(f"monitor {__version__} (Python 3.")
    assert "torch " in r.stdout and "openvino " in r.stdout
    assert (ROOT / "LICENSE").is_file() and f"## {__version__}" in (ROOT / "CHANGELOG.md").read_text()


def _config(tmp_path, saved_model, **sections) -> tuple[dict, object]:
    export = tmp_path / "export"
    export.mkdir(exist_ok=True)
    cfg = {"model": {"path": str(saved_model)}, "watch": {"dir": str(export)},
           "output": {"dir": str(tmp_path / "out"), "ledger": str(tmp_path / "state" / "ledger.sqlite")},
           "metrics": {"port": 0}, "web": {"port": 0}}
    for key, val in sections.items():
        cfg.setdefault(key, {}).update(val)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return cfg, path


def test_check_config_passes_a_ready_host(tmp_path, saved_model):
    _, path = _config(tmp_path, saved_model)
    r = monitor("check-config", "--config", path)
    assert r.returncode == 0, r.stderr
    assert "ready (paths, model, ports)" in r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_check_config_finds_an_unwritable_output(tmp_path, saved_model):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    _, path = _config(tmp_path, saved_model, output={"dir": str(ro / "out")})
    r = monitor("check-config", "--config", path)
    assert r.returncode == 2 and f"output.dir {ro / 'out'}: does not exist and {ro} is not writable" in r.stderr


def test_check_config_names_each_bad_path(tmp_path, saved_model):
    """One configuration with every kind of bad path; each is reported on a line of its own, exit status 2."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        _, path = _config(tmp_path, tmp_path / "no-model",
                          watch={"dir": str(tmp_path / "no-export")},
                          output={"dir": str(a_file / "out"), "ledger": str(a_file / "ledger.sqlite")},
                          metrics={"port": port, "certfile": str(tmp_path / "no.crt"),
                                   "keyfile": str(tmp_path / "no.key")})
        r = monitor("check-config", "--config", path)
    finally:
        busy.close()
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("monitor: check-config:")]
    expect = [f"watch.dir {tmp_path / 'no-export'}: does not exist",
              f"output.dir {a_file / 'out'}: {a_file} is not a folder",
              f"output.ledger {a_file}: not a folder",
              f"metrics.certfile {tmp_path / 'no.crt'}: does not exist",
              f"metrics.port 127.0.0.1:{port}: cannot bind",
              f"model.path {tmp_path / 'no-model'}: does not exist"]
    for e in expect:
        assert any(e in ln for ln in lines), (e, lines)


def test_check_config_refuses_a_model_that_does_not_match(tmp_path, saved_model):
    _, path = _config(tmp_path, saved_model, model={"patch_dictionary": {"mode": "crop", "layers": ["avgpool"]}})
    r = monitor("check-config", "--config", path)
    assert r.returncode == 2
    assert f"model.path {saved_model}: model was made with mode='dense'" in r.stderr


def test_check_config_refuses_an_export_folder_that_is_a_file(tmp_path, saved_model):
    f = tmp_path / "export-file"
    f.write_text("x")
    _, path = _config(tmp_path, saved_model, watch={"dir": str(f)})
    r = monitor("check-config", "--config", path)
    assert r.returncode == 2 and f"watch.dir {f}: not a folder" in r.stderr


def _model_id(d: Daemon) -> str:
    info = [k for k in d.scrape() if k[0] == "monitor_model_info"][0]
    return dict(info[1])["model_id"]


def test_install_model_and_rollback_against_a_running_daemon(tmp_path, saved_model, normal_images, val_images):
    """The daemon starts on a model folder left by `monitor fit --out`; install-model swaps in another (the
    model_id metric changes), rollback brings the first back (it changes back); both keep the daemon running."""
    import shutil

    live = tmp_path / "state" / "model"
    live.parent.mkdir(parents=True)
    shutil.copytree(saved_model, live)
    d = Daemon(tmp_path, live)
    first = json.loads((live / "model.json").read_text())["model_id"]
    other = tmp_path / "candidate"
    second = Model.fit("patch_dictionary", PatchDictionaryConfig(k=256), normal_images[:4], val_images,
                       device="cpu").save(other)
    assert second != first
    d.start()
    try:
        assert _model_id(d) == first
        r = monitor("install-model", other, "--config", d.config)
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["model_id"] == second and res["previous"] == first and res["reloaded_pid"] == d.proc.pid
        assert "the running monitor" in r.stderr
        wait_for(lambda: _model_id(d) == second, 60, "the new model_id on /metrics")
        assert live.is_symlink() and (tmp_path / "state" / "model.previous").is_symlink()
        r = monitor("rollback", "--config", d.config)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["model_id"] == first
        wait_for(lambda: _model_id(d) == first, 60, "the old model_id back on /metrics")
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0


def test_install_model_refuses_what_would_not_run(tmp_path, saved_model, normal_images):
    _, path = _config(tmp_path, tmp_path / "state" / "model")
    no_threshold = tmp_path / "nothreshold"
    Model.fit("patch_dictionary", PatchDictionaryConfig(k=64), normal_images[:2], device="cpu").save(no_threshold)
    r = monitor("install-model", no_threshold, "--config", path)
    assert r.returncode == 2 and "has no threshold (fitted without --val)" in r.stderr
    r = monitor("install-model", tmp_path / "nothing", "--config", path)
    assert r.returncode == 2 and "not a model directory" in r.stderr
    r = monitor("rollback", "--config", path)
    assert r.returncode == 2 and "no previous model to roll back to" in r.stderr
    assert not (tmp_path / "state" / "model").exists()  # nothing installed
    r = monitor("install-model", saved_model, "--config", path)
    assert r.returncode == 0 and "no monitor runs on this configuration" in r.stderr
    assert (tmp_path / "state" / "model" / "model.json").is_file()

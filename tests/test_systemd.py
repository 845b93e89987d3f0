"""The shipped units, rendered for this machine, pass `systemd-analyze verify` and keep their security rating."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
UNITS = ("monitor.service", "monitor@.service")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("units")
    prefix = Path(sys.executable).parent.parent.parent  # the checkout whose .venv runs the tests
    subprocess.run([str(ROOT / "systemd" / "render.sh"), str(prefix), "/srv/sem-export", str(out)], check=True)
    # verify wants an instance for the template
    shutil.copy(out / "monitor@.service", out / "monitor@line2.service")
    return out


@pytest.mark.parametrize("unit", ["monitor.service", "monitor@line2.service"])
def test_units_verify_cleanly(rendered, unit):
    text = (rendered / unit).read_text()
    assert "ExecStart=" in text and str(Path(sys.executable).parent) in text
    r = subprocess.run(["systemd-analyze", "verify", str(rendered / unit)], capture_output=True, text=True)
    # verify exits 0 on unknown keys and bad values and only prints them: any output is a failure
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", r.stderr + r.stdout


def test_verify_would_catch_a_broken_unit(rendered, tmp_path):
    bad = tmp_path / "monitor.service"
    bad.write_text((rendered / "monitor.service").read_text().replace("Type=notify", "Type=notifyy"))
    r = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True)
    assert "notifyy" in r.stderr


@pytest.mark.parametrize("unit", ["monitor.service", "monitor@line2.service"])
def test_security_exposure_stays_low(rendered, unit):
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(rendered / unit)],
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.5


def test_units_carry_the_required_settings():
    for unit in UNITS:
        text = (ROOT / "systemd" / unit).read_text()
        for key in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=sem-monitor", "StateDirectory=",
                    "ReadOnlyPaths=", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                    "PrivateTmp=yes", "RestrictAddressFamilies=", "DeviceAllow=char-nvidia-frontend rw",
                    "LimitNOFILE=4096", "MemoryHigh=2G", "MemoryMax=3G"):
            assert key in text, (unit, key)
    assert "%i.yaml" in (ROOT / "systemd" / "monitor@.service").read_text()

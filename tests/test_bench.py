"""The bench scripts cannot rot: every one imports (its imports of the package resolve), and those that have a small
setting run end to end on tiny data. Their real runs are benchmarks of their own (README, with the command and the
machine), never part of the suite."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from monitor.model.synth import fiber_mat, to_uint8
from tests.conftest import NANOTWICE

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


def test_there_are_bench_scripts():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_every_bench_script_imports_without_running(script):
    spec = importlib.util.spec_from_file_location(f"bench_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its main() runs only as __main__
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"


def _run(*args, timeout: float = 120) -> str:
    r = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout


def test_coreset_on_a_tiny_problem():
    out = _run(BENCH / "coreset.py", "--n", "3000", "--k", "64", "--dim", "16", "--max-allocating", "3000")
    assert "one pass picks what allocating picks: True" in out


def test_year_on_a_tiny_ledger(tmp_path):
    out = _run(BENCH / "year.py", "--rows", "2000", "--tiny", "50", "--repeat", "1", "--work", tmp_path / "w")
    assert "monitor history (all 2000 rows" in out and "exit 0" in out


@pytest.mark.parametrize("script", ["profile.py", "speed.py"])
def test_timing_scripts_on_two_synthetic_images(script, saved_model, tmp_path):
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"mat{i}.png")
        cv2.imwrite(str(paths[-1]), to_uint8(fiber_mat((256, 320), seed=200 + i)))
    out = _run(BENCH / script, "--model", saved_model, "--images", *paths, "--limit", "2")
    assert out.strip()


@pytest.mark.nanotwice
@pytest.mark.skipif(not NANOTWICE.exists(), reason="NanoTWICE data not present")
def test_soak_on_forty_crops(tmp_path):
    out = _run(BENCH / "soak.py", "--images", "40", "--first", "10", "--work", tmp_path / "w")
    assert '"agree": true' in out

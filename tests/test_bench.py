"""The bench scripts cannot rot: every one imports (its imports of the package resolve), and those that have a small
setting run end to end on tiny data. Their real runs are benchmarks of their own (README, with the command and the
machine), never part of the suite."""

from __future__ import annotations

import importlib.util
import json
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


def _two_mats(tmp_path) -> list:
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"mat{i}.png")
        cv2.imwrite(str(paths[-1]), to_uint8(fiber_mat((256, 320), seed=200 + i)))
    return paths


def _json_of(out: str) -> dict:
    """The JSON object a script prints (before any trailing words)."""
    return json.loads(out[out.index("{"): out.rindex("}") + 1])


def test_profile_prints_each_stage_of_both_paths(saved_model, tmp_path):
    got = _json_of(_run(BENCH / "profile.py", "--model", saved_model, "--images", *_two_mats(tmp_path),
                        "--limit", "2"))
    assert {"read", "graph", "map", "defects", "overlay", "total"} <= set(got["openvino"])
    assert {"read", "features", "distances", "map", "defects", "total"} <= set(got["torch"])
    assert all(v > 0 for row in got.values() for v in row.values())
    assert got["openvino"]["total"] >= got["openvino"]["graph"]


def test_speed_prints_dense_and_extrapolated_crop_times(saved_model, tmp_path):
    got = _json_of(_run(BENCH / "speed.py", "--model", saved_model, "--images", *_two_mats(tmp_path),
                        "--limit", "2", "--crop-rows", "32"))
    assert got["image"] == "320x256" and 0 < got["dense_seconds"]["p50"] <= got["dense_seconds"]["p95"]
    assert got["crop"]["patches_per_image"] > got["crop"]["strip_patches"] > 0
    assert got["speedup_dense_p50_vs_crop"] > 1


def test_graph_speed_compares_the_paths_and_their_verdicts(saved_model, tmp_path):
    got = _json_of(_run(BENCH / "graph_speed.py", "--model", saved_model, "--images", *_two_mats(tmp_path),
                        "--limit", "2", "--rounds", "1"))
    assert set(got["paths"]) == {"0.4.0", "graph f32", "graph bf16"} and got["images"] == 2
    for row in got["paths"].values():
        assert 0 < row["p50_ms"] <= row["p95_ms"] and row["verdicts_changed"] == 0
    assert got["paths"]["0.4.0"]["max_map_difference_of_threshold"] == 0


@pytest.mark.nanotwice
@pytest.mark.skipif(not NANOTWICE.exists(), reason="NanoTWICE data not present")
def test_soak_on_twenty_crops(tmp_path):
    out = _run(BENCH / "soak.py", "--images", "20", "--first", "5", "--work", tmp_path / "w")
    assert '"agree": true' in out

"""The fit: dictionary build, progress per phase, and the OpenVINO backbone (the fit time on folders of 4, 20 and 50
images is a benchmark: bench/scaling.py)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from monitor.model.backbones import BackboneError, build_backbone
from monitor.model.images import list_images, read_image
from monitor.model.model import Model
from monitor.model.openvino_backbone import TOLERANCE, import_openvino, max_relative_difference
from monitor.model.scorers import PatchDictionaryConfig
from monitor.model.scorers.base import Progress
from monitor.model.scorers.patch_dictionary import coreset_picks, greedy_coreset
from monitor.model.synth import fiber_mat, to_uint8
from tests.commands import monitor
from tests.conftest import NANOTWICE, ROOT, SMALL

import_openvino()  # a dependency: its absence fails here (and without its telemetry, see below)


def _rows(n: int, d: int = 147, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_composed_coreset_same_words_for_same_seed():
    x = _rows(40_000)  # above COMPOSE_ABOVE: three blocks, then the union
    a, b = greedy_coreset(x, 512, seed=3), greedy_coreset(x, 512, seed=3)
    assert torch.equal(a, b)
    assert len(set(a.tolist())) == 512
    assert not torch.equal(a, greedy_coreset(x, 512, seed=4))


def test_composed_coreset_covers_like_the_one_pass_selection():
    x = _rows(40_000, seed=1)
    q = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(9))[:4000]]
    radius = {}
    for name, above in (("one_pass", 10**9), ("composed", 16_384)):
        idx = greedy_coreset(x, 1024, seed=0, compose_above=above)
        radius[name] = torch.cdist(q, x[idx]).min(1).values.mean().item()
    assert radius["composed"] < 1.02 * radius["one_pass"], radius


def test_coreset_ticks_add_up_to_the_announced_picks():
    done = []
    for n, k in ((40_000, 300), (5_000, 512), (100, 512)):
        done.clear()
        greedy_coreset(_rows(n, 16), k, tick=done.append)
        assert sum(done) == coreset_picks(n, k), (n, k)


class Recorder(Progress):
    def __init__(self):
        self.phases: list[list] = []

    def phase(self, name, total, unit):
        self.phases.append([name, total, 0])
        return lambda n: self.phases[-1].__setitem__(2, self.phases[-1][2] + n)


def test_every_phase_of_a_fit_reports_progress_to_its_total(normal_images, val_images):
    rec = Recorder()
    Model.fit("patch_dictionary", SMALL, normal_images[:3], val_images[:1], device="cpu", progress=rec)
    assert [p[0] for p in rec.phases] == ["extraction", "pca", "dictionary", "calibration", "threshold"]
    for name, total, done in rec.phases:
        assert total > 0 and done == total, (name, total, done)


def test_monitor_fit_shows_each_phase_with_time_left(tmp_path, normal_images, val_images):
    import cv2

    for i, im in enumerate(normal_images[:2]):
        cv2.imwrite(str(tmp_path / f"n{i}.png"), to_uint8(im))
    cv2.imwrite(str(tmp_path / "v.png"), to_uint8(val_images[0]))
    proc = monitor("fit", "--normal", tmp_path / "n0.png", tmp_path / "n1.png", "--val", tmp_path / "v.png",
                   "--out", tmp_path / "m", "--set", "model.patch_dictionary.k=64")
    assert proc.returncode == 0, proc.stderr
    for phase in ("read normal", "extraction", "pca", "dictionary", "calibration", "threshold"):
        lines = [ln for ln in proc.stderr.replace("\r", "\n").splitlines() if f": {phase}:" in ln]
        assert lines and "100%" in lines[-1] and "<" in lines[-1], (phase, proc.stderr[-2000:])  # elapsed<left


def _padded(gray: np.ndarray, bb) -> torch.Tensor:
    x = torch.nn.functional.pad(torch.from_numpy(gray)[None, None], (32,) * 4, mode="reflect")
    return bb.prepare(x)


def _real_image() -> np.ndarray:
    """The top-left 352x512 of a NanoTWICE SEM image (a quarter: the graph is the same for every size, and the
    three layer sets below each need a torch pass), a synthetic mat where the data set is absent."""
    paths = list_images([NANOTWICE / "Dataset" / "SEM_Data" / "Anomalous" / "images"]) if NANOTWICE.exists() else []
    img = read_image(paths[0]) if paths else fiber_mat((700, 1024), seed=5)
    return np.ascontiguousarray(img[:352, :512])


@pytest.mark.parametrize("layers", [("stage3", "stage5"), ("avgpool",), ("stage1", "stage7", "head")])
def test_openvino_backbone_matches_torch_on_a_real_image(layers):
    """On a NanoTWICE SEM image (a synthetic mat where the data set is absent), odd sizes and a batch of two
    included, each layer's features agree within TOLERANCE of their largest magnitude (measured: 1e-5 or less)."""
    bb = build_backbone("efficientnet_lite0", layers)
    assert bb.use_runtime("openvino") == "openvino"
    x = _padded(_real_image(), bb)
    for xx in (x, x[..., 1:, 3:], torch.cat([x, x.flip(-1)])):
        out, ref = bb(xx), bb.torch_forward(xx)
        assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in ref.items()}
        assert max_relative_difference(out, ref) < TOLERANCE


def test_anomaly_maps_of_both_runtimes_agree(fitted_model, normal_images):
    state = fitted_model.scorer.state()
    from monitor.model.scorers import PatchDictionary

    maps = {}
    for rt in ("openvino", "torch"):
        scorer = PatchDictionary.from_state(*state, device="cpu")
        assert scorer.use_runtime(rt) == rt
        maps[rt] = scorer.score(normal_images[0]).anomaly_map
    scale = float(np.abs(maps["torch"]).max())
    assert float(np.abs(maps["openvino"] - maps["torch"]).max()) < 1e-3 * scale


def test_without_openvino_the_backbone_runs_on_torch_and_says_so():
    code = """
import logging, sys
sys.modules["openvino"] = None  # as if the package were not installed
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
from monitor.model.backbones import BackboneError, build_backbone
bb = build_backbone("efficientnet_lite0", ["stage3"])
print("runtime", bb.use_runtime("auto"))
try:
    bb.use_runtime("openvino")
except BackboneError as exc:
    print("refused:", exc)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "runtime torch" in proc.stdout, proc.stderr
    assert "WARNING backbone runs on torch: the openvino package is not installed" in proc.stderr
    assert "refused: runtime openvino: the openvino package is not installed" in proc.stdout


def test_other_backbones_stay_on_torch():
    bb = build_backbone("resnet18", ["layer2"], "none")
    assert bb.use_runtime("auto") == "torch"
    with pytest.raises(BackboneError, match="no OpenVINO graph for the resnet18"):
        bb.use_runtime("openvino")
    with pytest.raises(BackboneError, match="runtime must be one of"):
        bb.use_runtime("tensorrt")


def test_kmeans_dictionary_words_are_real_features(normal_images):
    cfg = PatchDictionaryConfig(k=16, dictionary="kmeans", n_init=2)
    m = Model.fit("patch_dictionary", cfg, normal_images[:2], device="cpu")
    assert m.scorer.words.shape[0] == 16


def test_a_failed_check_against_torch_falls_back_to_torch(monkeypatch, caplog):
    import monitor.model.openvino_backbone as ovb

    monkeypatch.setattr(ovb, "TOLERANCE", 0.0)  # no runtime agrees exactly: the check must fail
    bb = build_backbone("efficientnet_lite0", ("stage3",))
    assert bb.use_runtime("openvino") == "openvino"
    x = bb.prepare(torch.rand(1, 1, 96, 128, generator=torch.Generator().manual_seed(0)))
    with caplog.at_level("ERROR"):
        out = bb(x)
    assert bb.accelerated.verified is False and "the backbone runs on torch" in caplog.text
    assert torch.equal(out["stage3"], bb.torch_forward(x)["stage3"])  # the torch path's own result
    assert torch.equal(bb(x)["stage3"], out["stage3"])


def test_openvino_sends_no_telemetry_and_writes_nothing_in_the_home_folder(tmp_path):
    """Importing openvino imports its model converter, which by default sends a usage event over the network from
    a background thread and writes a client id under ~/intel. The monitor's OpenVINO path (and its metrics' build
    info) must do neither: no network at run time, nothing written outside its own folders."""
    code = """
import threading
import torch
from monitor.model.backbones import build_backbone
from monitor.daemon.metrics import Metrics
bb = build_backbone("efficientnet_lite0", ["stage3"])
assert bb.use_runtime("openvino") == "openvino"
bb(torch.zeros(1, 3, 64, 64))
Metrics()
print("threads", sorted(t.name for t in threading.enumerate()))
"""
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert "threads ['MainThread']" in proc.stdout, proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_fit_on_images_of_two_exposures_is_refused_with_the_images_named_and_writes_nothing(tmp_path, capsys):
    """Two of four training images re-exposed (contrast x0.35 + 5%, x0.5 + 40%): the fit used to write a model that
    `monitor score` and the daemon then refused ("the quality reference's tolerance is not a gain and an offset in
    [0, 1)"). Now the fit refuses, names the two, and writes nothing; without normalisation it fits, and the model
    loads."""
    import cv2

    from monitor.model.synth import change, parse

    mats = [fiber_mat((256, 320), seed=70 + i) for i in range(4)]
    mats[2] = np.clip(mats[2] * 0.35 + 0.05, 0, 1)
    mats[3] = np.clip(mats[3] * 0.5 + 0.4, 0, 1)
    for i, m in enumerate(mats):
        cv2.imwrite(str(tmp_path / f"n{i}.png"), to_uint8(m))
    cv2.imwrite(str(tmp_path / "v.png"), to_uint8(change(fiber_mat((256, 320), seed=80), parse("none"), 0)))

    from monitor.cli import main

    def fit(*extra) -> int:  # the command as a user runs it, in this process (no interpreter start)
        return main(["fit", "--normal", *[str(tmp_path / f"n{i}.png") for i in range(4)], "--val",
                     str(tmp_path / "v.png"), "--out", str(tmp_path / "m"), "--quiet", "--set",
                     "model.patch_dictionary.k=64", *extra])

    assert fit() == 2
    err = capsys.readouterr().err
    assert "different exposures" in err and "Traceback" not in err, err
    named = err.split("different exposures", 1)[1]
    assert "n2.png" in named and "n3.png" in named and "n0.png" not in named and "n1.png" not in named
    assert not (tmp_path / "m").exists()  # nothing written, not even half
    assert fit("--set", "model.normalize=false") == 0
    Model.load(tmp_path / "m", "cpu")  # loads (the refusal at load time was the defect)

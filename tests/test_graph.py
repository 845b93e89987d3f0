"""The inference graph: a fitted model carries it, it scores like the torch scorer, it loads without torch, and a
tampered graph is refused."""

import json
import subprocess
import sys

import numpy as np
import pytest

from monitor.model.artifact import ArtifactError
from monitor.model.graph import GraphScorer
from monitor.model.model import Model
from monitor.model.synth import defective_image, fiber_mat
from tests.conftest import SHAPE, needs_fit

pytestmark = pytest.mark.line_pc  # run again on the line PC's install (make test)

# the maps of the two paths: float32 kernels that sum in another order (the torch scorer's backbone on OpenVINO
# too, op by op; the graph compiled whole)
MAP_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def graph(saved_model):
    return Model.load(saved_model, "cpu", precision="f32")


def test_a_fitted_model_carries_its_graph_with_hashes(saved_model):
    meta = json.loads((saved_model / "model.json").read_text())
    assert meta["graph"]["xml"] == "scorer.xml" and meta["graph"]["checked_difference"] < 1e-4
    assert set(meta["files"]) == {"scorer.xml", "scorer.bin"}
    assert (saved_model / "scorer.bin").stat().st_size > 1_000_000  # the backbone's and the dictionary's weights


@needs_fit
def test_the_graph_scores_like_the_torch_scorer(graph, saved_model, defect_sample):
    torch_model = Model.load(saved_model, "cpu", runtime="torch")
    assert isinstance(graph.scorer, GraphScorer) and graph.runtime == "openvino"
    assert not isinstance(torch_model.scorer, GraphScorer)
    images = [defect_sample[0], fiber_mat(SHAPE, seed=201), defective_image((300, 410), seed=3)[0]]
    for img in images:  # a second size: the graph's shapes are dynamic
        a, b = graph.inspect(img), torch_model.inspect(img)
        scale = float(np.abs(b.result.anomaly_map).max())
        assert np.abs(a.result.anomaly_map - b.result.anomaly_map).max() <= MAP_TOLERANCE * scale
        assert a.verdict == b.verdict and a.report.coverage == pytest.approx(b.report.coverage, abs=2e-4)
        assert len(a.report.defects) == len(b.report.defects)


@needs_fit
def test_bf16_keeps_the_verdicts_and_the_maps_within_a_few_percent_of_the_threshold(graph, saved_model):
    """bfloat16 products (where the CPU has them; f32 elsewhere, then this holds trivially)."""
    bf16 = Model.load(saved_model, "cpu", precision="bf16")
    th = graph.threshold.value
    for seed in range(4):
        img = defective_image(SHAPE, kinds=("bead", "film", "clot"), seed=20 + seed)[0]
        a, b = bf16.inspect(img), graph.inspect(img)
        assert np.abs(a.result.anomaly_map - b.result.anomaly_map).max() <= 0.05 * th
        assert a.verdict == b.verdict and a.report.coverage == pytest.approx(b.report.coverage, abs=0.01)


def test_a_batch_through_the_graph_is_its_images_one_by_one(graph):
    imgs = [fiber_mat(SHAPE, seed=s) for s in (210, 211)]
    batch = graph.inspect_batch(imgs)
    for img, r in zip(imgs, batch):
        assert np.allclose(graph.inspect(img).result.anomaly_map, r.result.anomaly_map, rtol=0, atol=1e-4)


def test_a_tampered_graph_is_refused(saved_model, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(saved_model, d)
    data = bytearray((d / "scorer.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "scorer.bin").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="scorer.bin does not match the sha256"):
        Model.load(d, "cpu")
    (d / "scorer.bin").unlink()
    with pytest.raises(ArtifactError, match="'scorer.bin' is missing"):
        Model.load(d, "cpu")


NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; sys.modules['sklearn'] = None\n"


def test_scoring_through_the_graph_imports_no_torch(saved_model, defect_sample, tmp_path, graph):
    """In a fresh interpreter where importing torch, torchvision or scikit-learn fails (as on a line PC without
    the fitting extra): load, score, judge; the same verdict and coverage as in this process."""
    np.save(tmp_path / "img.npy", defect_sample[0])
    code = NO_TORCH + f"""
import json, numpy as np
from monitor.model.model import Model
m = Model.load({str(saved_model)!r}, "auto", precision="f32")
r = m.inspect(np.load({str(tmp_path / 'img.npy')!r}))
print(json.dumps({{"verdict": r.verdict, "coverage": r.report.coverage, "runtime": m.runtime,
                  "loaded": sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'torchvision', 'sklearn')
                                   and sys.modules[k] is not None)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    want = graph.inspect(defect_sample[0])
    assert got["runtime"] == "openvino" and got["loaded"] == []
    assert got["verdict"] == want.verdict and got["coverage"] == pytest.approx(want.report.coverage, abs=1e-6)


def test_what_needs_torch_says_so_in_one_line_without_it(saved_model, tmp_path):
    """`monitor fit` and a model without a graph, where torch is missing: one line naming the extra, exit 2."""
    img = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray((fiber_mat(SHAPE, seed=1) * 255).astype(np.uint8)).save(img)
    nograph = tmp_path / "nograph"
    import shutil

    shutil.copytree(saved_model, nograph)
    meta = json.loads((nograph / "model.json").read_text())
    meta["graph"] = None
    from monitor.model.artifact import compute_model_id

    with np.load(nograph / "arrays.npz") as z:
        meta["model_id"] = compute_model_id(meta, {k: z[k] for k in z.files})
    (nograph / "model.json").write_text(json.dumps(meta))
    for args in (["fit", "--normal", str(img), "--out", str(tmp_path / "new")],
                 ["score", "--model", str(nograph), str(img)]):
        code = NO_TORCH + f"from monitor.cli import main; sys.exit(main({args!r}))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, (args, out.stderr)
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "needs torch" in lines[0] and "sem-line-monitor[fit]" in lines[0], out.stderr


def test_the_graph_must_be_among_the_model_s_hashed_files(saved_model, tmp_path):
    """model.json cannot point the graph at files its hashes do not cover (another model's, or outside)."""
    import shutil

    from monitor.model.artifact import compute_model_id

    for xml, files in (("../other/scorer.xml", None), ("scorer.xml", {})):
        d = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        shutil.copytree(saved_model, d)
        meta = json.loads((d / "model.json").read_text())
        meta["graph"]["xml"] = xml
        if files is not None:
            meta["files"] = files
        with np.load(d / "arrays.npz") as z:
            meta["model_id"] = compute_model_id(meta, {k: z[k] for k in z.files})
        (d / "model.json").write_text(json.dumps(meta))
        with pytest.raises(ArtifactError, match="must be among the model's hashed files"):
            Model.load(d, "cpu")


@needs_fit
def test_a_model_fitted_without_validation_images_keeps_its_graph(tmp_path):
    """The graph is then checked on a training image, whose cells lie on words (distance about 0)."""
    from monitor.model.methods import PatchDictionaryConfig

    m = Model.fit("patch_dictionary", PatchDictionaryConfig(k=128, aggregate=3), [fiber_mat(SHAPE, seed=i)
                                                                                  for i in range(2)], device="cpu")
    assert m.meta.graph is not None and m.meta.graph["checked_difference"] < 1e-4


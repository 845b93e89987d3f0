import json

import numpy as np
import pytest
import torch

from monitor.model.artifact import ArtifactError
from monitor.model.defects import DefectConfig, find_defects
from monitor.model.features import FeatureGrid, grid_to_map
from monitor.model.model import Model
from monitor.model.scorers.patch_dictionary import border_rings, border_zones, greedy_coreset, nearest_distances
from monitor.model.synth import defective_image, fiber_mat
from tests.conftest import SHAPE


def _coverage_and_precision(model, img, truth):
    rep = model.inspect(img).report
    prec = (rep.mask & truth).sum() / rep.mask.sum() if rep.mask.any() else None
    return rep.coverage, prec


def test_finds_synthetic_defects_where_they_are(fitted_model):
    """Over 8 defective images: the defect coverage is well above clean images' and lies on the true defects."""
    cov, prec = [], []
    for seed in range(8):
        img, truth = defective_image(SHAPE, kinds=("bead", "film", "clot"), seed=seed, size=1.5)
        c, p = _coverage_and_precision(fitted_model, img, truth)
        cov.append(c)
        if p is not None:
            prec.append(p)
    clean = [fitted_model.inspect(fiber_mat(SHAPE, seed=300 + s)).report.coverage for s in range(8)]
    assert np.median(cov) > 5 * max(np.median(clean), 1e-4), (cov, clean)
    assert sum(c > max(clean) for c in cov) >= 5, (cov, clean)
    assert np.mean(prec) > 0.5, prec  # detected pixels mostly lie on true defects


def test_clean_images_give_almost_nothing(fitted_model):
    """At the fitted threshold, most clean images have no defect at all and the rest small specks (the synthetic
    mats hold occasional fiber tangles that score like defects: aggregate behaviour, not every image)."""
    cov = [fitted_model.inspect(fiber_mat(SHAPE, seed=seed)).report.coverage for seed in range(200, 208)]
    assert np.median(cov) == 0 and np.mean(cov) < 0.003 and sorted(cov)[-2] < 0.005 and max(cov) < 0.02, cov


def test_map_has_image_size(fitted_model):
    img = fiber_mat((250, 333), seed=5)
    res = fitted_model.scorer.score(img)
    assert res.anomaly_map.shape == img.shape and res.anomaly_map.dtype == np.float32


def test_save_load_round_trip_is_bit_for_bit(fitted_model, saved_model, defect_sample):
    loaded = Model.load(saved_model, "cpu", runtime="torch")  # the torch scorer (the graph: test_graph.py) ...
    loaded.scorer.use_runtime(fitted_model.runtime)  # ... with the fitted one's backbone runtime
    a, b = fitted_model.scorer.state()[1], loaded.scorer.state()[1]
    assert a.keys() == b.keys() and len(a["border_offset"]) == len(a["border_gain"]) == 9  # calibration travels
    for k in a:
        assert np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype
    assert loaded.threshold == fitted_model.threshold
    img = defect_sample[0]
    assert np.array_equal(fitted_model.scorer.score(img).anomaly_map, loaded.scorer.score(img).anomaly_map)
    assert loaded.model_id == fitted_model.model_id


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupted_arrays_are_rejected(saved_model, tmp_path):
    d = _copy(saved_model, tmp_path / "m")
    data = bytearray((d / "arrays.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "arrays.npz").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        Model.load(d, "cpu")


def test_edited_metadata_is_rejected(saved_model, tmp_path):
    d = _copy(saved_model, tmp_path / "m")
    meta = json.loads((d / "model.json").read_text())
    meta["scorer"]["config"]["m"] = 3
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="model_id"):
        Model.load(d, "cpu")


def test_model_for_another_backbone_or_mode_is_refused(saved_model):
    with pytest.raises(ArtifactError, match="backbone"):
        Model.load(saved_model, "cpu", expect={"backbone": "resnet18"})
    with pytest.raises(ArtifactError, match="mode"):
        Model.load(saved_model, "cpu", expect={"mode": "crop"})


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ArtifactError, match="not a model directory"):
        Model.load(tmp_path, "cpu")


def test_unfitted_threshold_gives_no_verdict(normal_images):
    from tests.conftest import SMALL

    m = Model.fit("patch_dictionary", SMALL, normal_images[:2], (), device="cpu")
    ins = m.inspect(normal_images[3])
    assert m.threshold is None and ins.verdict == "no-threshold" and ins.report is None


def test_nearest_distances_against_brute_force():
    g = torch.Generator().manual_seed(0)
    q, w = torch.randn(50, 7, generator=g), torch.randn(30, 7, generator=g)
    d = torch.cdist(q, w)
    assert torch.allclose(nearest_distances(q, w, 1), d.min(1).values, atol=1e-4)
    buf = torch.empty(16, 30)  # blocks of 16 queries: four blocks, the last one short
    assert torch.allclose(nearest_distances(q, w, 1, buf=buf), d.min(1).values, atol=1e-4)
    assert torch.allclose(nearest_distances(q, w, 3, buf=buf), d.topk(3, largest=False).values.mean(1), atol=1e-4)


def test_coreset_picks_far_points_first():
    x = torch.tensor([[0.0, 0], [0.1, 0], [10, 0], [0, 10], [0.05, 0.05]])
    sel = greedy_coreset(x, 3).tolist()
    assert set(sel[1:]) <= {2, 3} or 2 in sel and 3 in sel


def test_crop_map_is_the_mean_of_covering_patches():
    # two 4x4 patches at x=0 and x=2 in a 4x6 image: columns 2-3 are covered by both
    grid = FeatureGrid(torch.zeros(1, 2, 1), (4, 6), np.array([0]), np.array([0, 2]), 4.0)
    m = grid_to_map(torch.tensor([[1.0, 3.0]]), grid)
    assert np.allclose(m[:, :2], 1) and np.allclose(m[:, 2:4], 2) and np.allclose(m[:, 4:], 3)


def test_defect_mask_drops_specks_and_measures_components():
    amap = np.zeros((50, 60), np.float32)
    amap[10:20, 10:25] = 5  # 150 px defect
    amap[40, 40] = 5  # a single-pixel speck
    r = find_defects(amap, 1.0, DefectConfig(opening=3, min_area=16))
    assert len(r.defects) == 1
    d = r.defects[0]
    assert d.bbox == (10, 10, 15, 10) and d.peak == 5
    assert r.coverage == pytest.approx(d.area / amap.size)


def test_a_batch_scores_exactly_like_one_image_at_a_time(fitted_model, defect_sample):
    images = [defect_sample[0], fiber_mat(SHAPE, seed=41), fiber_mat(SHAPE, seed=42)]
    batch = fitted_model.inspect_batch(images, 0.001)
    for img, b in zip(images, batch):
        one = fitted_model.inspect(img, 0.001)
        np.testing.assert_allclose(b.result.anomaly_map, one.result.anomaly_map, rtol=1e-4, atol=1e-4)
        assert b.verdict == one.verdict


def test_a_model_is_refused_over_other_backbone_weights(fitted_model):
    from monitor.model.scorers import PatchDictionary

    meta, arrays = fitted_model.scorer.state()
    meta = {**meta, "backbone_sha256": "0" * 64}  # as if the installed weights had changed since the fit
    with pytest.raises(ValueError, match="backbone weights differ"):
        PatchDictionary.from_state(meta, arrays, "cpu")


def test_border_rings_count_cells_to_the_nearest_edge():
    assert border_rings((4, 5)).tolist() == [[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]]


def test_border_zones_split_rims_by_side_and_pool_the_corners():
    z = border_zones((6, 7), 2)
    assert z.tolist() == [[8, 8, 0, 0, 0, 8, 8],
                          [8, 8, 1, 1, 1, 8, 8],
                          [4, 5, 9, 9, 9, 7, 6],
                          [4, 5, 9, 9, 9, 7, 6],
                          [8, 8, 3, 3, 3, 8, 8],
                          [8, 8, 2, 2, 2, 8, 8]]
    assert (border_zones((5, 5), 0) == 1).all()  # no rings: everything is interior (zone 4 * 0 + 1)


def _zone_stats(scorer, zone_of) -> tuple[float, float, float, float]:
    """Over unseen clean images: (rim - interior) mean gap, (corner - interior) gap, rim and interior std."""
    rim, corner, inner = [], [], []
    for seed in range(300, 304):
        s = scorer.score(fiber_mat(SHAPE, seed=seed)).patch_scores
        z = zone_of(s.shape)
        rim.append(s[z < 8]), corner.append(s[z == 8]), inner.append(s[z == 9])
    rim, corner, inner = (np.concatenate(v) for v in (rim, corner, inner))
    return rim.mean() - inner.mean(), corner.mean() - inner.mean(), rim.std(), inner.std()


def test_border_calibration_levels_rims_and_corners_on_unseen_clean_images(fitted_model):
    """Rim cells, and corner cells more, score above the interior and spread wider on clean images (reflect
    padding); the gains and offsets fitted on the validation images bring both to the interior's level on other
    clean images."""
    import copy

    scorer = copy.copy(fitted_model.scorer)
    scorer.coarse_limit = scorer.coarse_limit[:0]  # the exact distances the calibration was fitted on
    offset, gain = scorer.border_offset, scorer.border_gain
    assert offset.shape == gain.shape == (9,) and (gain <= 1).all() and (gain > 0).all()
    zone_of = lambda shape: border_zones(shape, 2)  # noqa: E731
    calibrated = _zone_stats(scorer, zone_of)
    scorer.border_offset = scorer.border_gain = offset.new_zeros(0)
    raw = _zone_stats(scorer, zone_of)
    assert raw[0] > 1.0 and abs(calibrated[0]) < 0.4 * raw[0], (raw, calibrated)
    assert raw[1] > raw[0] and abs(calibrated[1]) < 0.4 * raw[1], (raw, calibrated)
    assert raw[2] > 1.3 * raw[3] and calibrated[2] < raw[2], (raw, calibrated)


def test_a_ring_calibrated_model_still_scores_with_its_ring_offsets(fitted_model):
    """Models saved with one offset per ring (before the per-side zones) keep scoring as they did."""
    from monitor.model.scorers import PatchDictionary

    meta, arrays = fitted_model.scorer.state()
    arrays = {k: v for k, v in arrays.items() if k != "border_gain"}
    arrays["border_offset"] = np.array([-3.0, -1.0], np.float32)
    old = PatchDictionary.from_state(meta, arrays, "cpu")
    img = fiber_mat(SHAPE, seed=9)
    raw = PatchDictionary.from_state(meta, {k: v for k, v in arrays.items() if k != "border_offset"}, "cpu")
    s_old, s_raw = old.score(img).patch_scores, raw.score(img).patch_scores
    ring = border_rings(s_old.shape)
    for r, off in ((0, -3.0), (1, -1.0), (2, 0.0)):
        assert np.allclose(s_old[ring == r] - s_raw[ring == r], off, atol=1e-4), r


def test_a_model_from_before_the_border_calibration_loads_uncalibrated(fitted_model):
    from monitor.model.scorers import PatchDictionary

    meta, arrays = fitted_model.scorer.state()
    del arrays["border_offset"], arrays["border_gain"]
    old = PatchDictionary.from_state(meta, arrays, "cpu")
    old.use_runtime("auto")  # the runtime the fitted model scores on
    assert len(old.border_offset) == 0
    img = fiber_mat(SHAPE, seed=9)
    s_old, s_new = old.score(img).patch_scores, fitted_model.scorer.score(img).patch_scores
    ring = border_rings(s_old.shape)
    assert np.array_equal(s_old[ring >= 2], s_new[ring >= 2]) and not np.allclose(s_old[ring == 0], s_new[ring == 0])


def test_the_metadata_is_typed_and_round_trips_through_model_json(fitted_model, tmp_path):
    from monitor.model.model import ModelMeta

    fitted_model.meta.training_images = ["/a.png"]
    model_id = fitted_model.save(tmp_path / "m")
    back = Model.load(tmp_path / "m", "cpu")
    assert isinstance(back.meta, ModelMeta) and back.meta.model_id == model_id == back.model_id
    assert back.meta.training_images == ["/a.png"] and back.meta.method == "patch_dictionary"
    assert back.meta.saved() == {k: json.loads((tmp_path / "m" / "model.json").read_text())[k] for k in ModelMeta.SAVED}
    # a model.json of an older version (keys missing) or a newer one (keys unknown here) still reads
    old = ModelMeta.from_json({"method": "patch_dictionary", "future_key": 1, "training_sha256": None})
    assert old.fitted_on is None and old.training_images == old.training_sha256 == []
    assert not hasattr(old, "future_key")


def test_the_coarse_search_is_exact_over_its_limit_and_an_upper_bound_under_it(fitted_model, defect_sample):
    """The coarse-to-fine search against every cell against every word, on a defect image: cells over the limit
    get the exact distance (the defects, the threshold), the others at most the limit and never less than exact."""
    import copy

    sc = fitted_model.scorer
    assert len(sc.coarse_words) == sc.config.coarse_words < len(sc.words)
    assert len(sc.coarse_limit) == 1
    exact = copy.copy(sc)
    exact.coarse_limit = sc.coarse_limit[:0]
    grid = sc.extract(fitted_model.prepare(defect_sample[0]))
    a, b = sc.patch_scores(grid), exact.patch_scores(grid)
    limit = float(sc.coarse_limit[0])
    over = b > limit * 1.001
    assert over.any() and (~over).any()
    assert np.allclose(a[over], b[over], rtol=1e-5)
    assert (a >= b - 1e-4).all() and (a[~over] <= limit * 1.001).all()
    assert 0.05 < (a != b).mean() < 0.95  # the coarse search did skip words for part of the cells

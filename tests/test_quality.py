"""Acquisition quality: a blurred, a too noisy and a clipped image each get their reason; routine changes do not;
the reference is stored in the model and checked on load; the intensity normalisation cancels brightness and
contrast."""

import json
import shutil

import cv2
import numpy as np
import pytest

from monitor.model import quality
from monitor.model.artifact import ArtifactError, load_artifact, save_artifact
from monitor.model.mismatch import MismatchConfig, misfit
from monitor.model.model import Model
from monitor.model.synth import fiber_mat
from tests.conftest import SHAPE, SMALL

CFG = MismatchConfig()


def _8bit(x):
    return (np.round(np.clip(x, 0, 1) * 255) / 255).astype(np.float32)


@pytest.fixture(scope="module")
def ref():
    return quality.reference([_8bit(fiber_mat(SHAPE, seed=i)) for i in range(4)])


@pytest.fixture(scope="module")
def clean():
    return _8bit(fiber_mat(SHAPE, seed=31))


def _judge(image, ref):
    info = {"bits": 8}
    why = misfit({"image_shapes": [list(SHAPE)], "bit_depths": [8]}, image, info, CFG, ref)
    assert set(info["quality"]) == {"clipped_low", "clipped_high", "sharpness", "noise", "gain", "offset"}
    return why


@pytest.mark.parametrize("name,make,reason", [
    ("blurred (defocus sigma 1 px)", lambda x: cv2.GaussianBlur(x, (0, 0), 1.0), "focus"),
    ("too noisy (sigma 15% of the range)", lambda x: x + np.random.default_rng(0).normal(0, 0.15, x.shape), "noise"),
    ("over-exposed (brightness +60%)", lambda x: x + 0.6, "exposure"),
    ("under-exposed (brightness -60%)", lambda x: x - 0.6, "exposure"),
])
def test_an_image_that_cannot_be_judged_gets_its_reason(name, make, reason, ref, clean):
    why = _judge(_8bit(make(clean)), ref)
    assert why is not None and why[0] == reason, (name, why)
    assert {"focus": "out of focus", "noise": "too noisy", "exposure": "exposed"}[reason] in why[1]


@pytest.mark.parametrize("name,make", [
    ("unchanged", lambda x: x),
    ("contrast x1.25", lambda x: x.mean() + 1.25 * (x - x.mean())),
    ("contrast x0.8", lambda x: x.mean() + 0.8 * (x - x.mean())),
    ("brightness +10%", lambda x: x + 0.1),
    ("gamma 1.25", lambda x: np.clip(x, 0, 1) ** 1.25),
    ("noise 3% of the range", lambda x: x + np.random.default_rng(1).normal(0, 0.03, x.shape)),
])
def test_a_routine_change_is_judged(name, make, ref, clean):
    assert _judge(_8bit(make(clean)), ref) is None, name


def test_each_check_can_be_switched_off(ref, clean):
    blurred = _8bit(cv2.GaussianBlur(clean, (0, 0), 1.0))
    assert misfit({"image_shapes": [list(SHAPE)]}, blurred, {}, MismatchConfig(min_sharpness=0), ref) is None
    assert misfit({"image_shapes": [list(SHAPE)]}, blurred, {}, CFG, None) is None  # a model before 0.4.0


def test_normalisation_cancels_brightness_and_contrast(ref, clean):
    exact = {**ref, "tolerance": {"gain": 0.0, "offset": 0.0}}  # no dead band: the whole correction is made
    for r, bound in ((exact, 1 / 3), (ref, 1 / 2)):
        base = quality.normalize(clean, r)
        for changed in (clean * 0.8 + 0.1, (clean - 0.5) * 1.1 + 0.45):
            out = quality.normalize(_8bit(changed), r)
            before = np.abs(_8bit(changed) - clean).mean()  # 0.04 to 0.1 of the range
            assert np.abs(out - base).mean() < min(0.02, before * bound), (np.abs(out - base).mean(), before)
        assert 0 <= base.min() and base.max() <= 1 and base.dtype == np.float32


def test_a_correction_within_the_training_images_spread_is_not_made(ref):
    """The dead band: the training images' own intensity maps differ with their content (how many fibres); each of
    them lies within that spread, so it is only clipped and stretched, not moved (on these mats the full correction
    of such small shifts made clean images alarm). A map beyond the spread is corrected by the excess only."""
    t = ref["tolerance"]
    assert 0 < t["gain"] < 0.1 and 0 < t["offset"] < 0.05, t
    lo, hi = ref["clip"]
    for i in range(4):
        train = _8bit(fiber_mat(SHAPE, seed=i))
        want = np.clip((train - lo) / (hi - lo), 0, 1)
        assert np.abs(quality.normalize(train, ref) - want).max() < 1e-3, i  # to the rounding
    assert quality._shrink(0.1, 0.03) == pytest.approx(0.07) and quality._shrink(-0.02, 0.03) == 0


def test_the_reference_is_stored_in_the_model_and_checked_on_load(fitted_model, saved_model, tmp_path):
    ref = fitted_model.quality_reference
    assert ref["normalize"] is True and len(ref["quantiles"]) == len(quality.LEVELS)
    loaded = Model.load(saved_model, "cpu")
    assert loaded.quality_reference == json.loads(json.dumps(ref))
    # a model whose reference is broken (written with a valid model_id, so that only the check can refuse it)
    meta, arrays = load_artifact(saved_model)
    for broken in ({**ref, "quantiles": ref["quantiles"][::-1]}, {**ref, "sharpness": -1.0},
                   {**ref, "clip": [0.9, 0.1]}, {**ref, "levels": [0.5]}):
        d = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        m = {k: v for k, v in meta.items() if k not in ("model_id", "format", "created_at", "library_versions",
                                                         "arrays_sha256", "files")}
        save_artifact(d, {**m, "quality": broken}, arrays, {n: (saved_model / n).read_bytes() for n in meta["files"]})
        with pytest.raises(ArtifactError, match="quality reference"):
            Model.load(d, "cpu")
        shutil.rmtree(d)


def test_a_model_fitted_without_normalisation_scores_the_image_as_it_is(normal_images, val_images, clean):
    m = Model.fit("patch_dictionary", SMALL, normal_images[:2], val_images[:1], device="cpu", normalize=False)
    assert m.prepare(clean) is clean and m.quality_reference is not None
    assert "normalize" not in m.quality_reference

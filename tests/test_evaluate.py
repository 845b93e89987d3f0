import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from monitor.commands.evaluate import defect_coverage, normal_scores, pixel_auroc, pro_auc, region_scores


def _toy():
    masks = [np.zeros((20, 20), bool)]
    masks[0][2:6, 2:6] = True  # region A, 16 px
    masks[0][10:12, 10:12] = True  # region B, 4 px
    amap = np.random.default_rng(0).random((20, 20)).astype(np.float32) * 0.5
    amap[2:6, 2:6] = 1.0  # A fully above every normal pixel
    return [amap], masks


def test_pixel_auroc_equals_sklearn():
    maps, masks = _toy()
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks[0].ravel(), maps[0].ravel()))


def test_pro_perfect_and_coverage_per_region():
    maps, masks = _toy()
    maps[0][10:12, 10:12] = 2.0
    normal, regions = normal_scores(maps, masks), region_scores(maps, masks)
    assert len(regions) == 2
    assert pro_auc(normal, regions) == pytest.approx(1.0, abs=1e-3)
    c = defect_coverage(normal, regions, 0.05)
    assert c["median"] == 1.0 and c["share_over_85"] == 1.0
    assert c["small"] == {"max_pixels": 200, "n_defects": 2, "median": 1.0, "share_over_85": 1.0}  # both < 200 px


def test_the_small_defects_breakdown_counts_only_components_under_200_pixels():
    maps = [np.zeros((40, 40), np.float32)]
    masks = [np.zeros((40, 40), bool)]
    masks[0][:15, :15] = True  # 225 px: not small, found
    masks[0][30:32, 30:32] = True  # 4 px: small, missed
    maps[0][:15, :15] = 2.0
    maps[0][0, 39] = 1.0  # normal pixels spread so that the 5% threshold sits below 2
    c = defect_coverage(normal_scores(maps, masks), region_scores(maps, masks))
    assert c["median"] == 0.5 and c["small"]["n_defects"] == 1 and c["small"]["median"] == 0.0


def test_pro_half_when_one_region_is_missed():
    maps, masks = _toy()
    maps[0][10:12, 10:12] = -1.0  # B below every normal pixel
    normal, regions = normal_scores(maps, masks), region_scores(maps, masks)
    assert pro_auc(normal, regions) == pytest.approx(0.5, abs=0.01)
    assert defect_coverage(normal, regions)["share_over_50"] == 0.5

import numpy as np
import pytest
import torch

from monitor.model.backbones import build_backbone
from monitor.model.features import CropExtractor, DenseExtractor, _positions, patch_count


def test_positions_cover_the_whole_length():
    assert _positions(40, 32, 8).tolist() == [0, 8]
    assert _positions(45, 32, 8).tolist() == [0, 8, 13]
    assert patch_count((700, 1024), 32, 8) == 85 * 125  # rows 0..664 step 8, plus 668 flush with the border
    assert patch_count((696, 1024), 32, 8) == 84 * 125 == 10500


def test_crop_features_are_l1_normalised_and_on_the_patch_grid():
    bb = build_backbone("efficientnet_lite0", ["avgpool"])
    ex = CropExtractor(bb, patch_size=32, stride=16, input_size=64, batch_size=7)
    g = ex(np.random.default_rng(0).random((64, 80), dtype=np.float32))
    assert g.grid_shape == (3, 4)  # y: 0,16,32 ; x: 0,16,32,48
    assert torch.allclose(g.features.abs().sum(-1), torch.ones(3, 4), atol=1e-5)


def test_crop_patch_matches_a_single_forward_pass():
    bb = build_backbone("efficientnet_lite0", ["avgpool"])
    img = np.random.default_rng(1).random((48, 48), dtype=np.float32)
    g = CropExtractor(bb, patch_size=32, stride=16, input_size=64)(img)
    patch = torch.from_numpy(img[16:48, 0:32])[None, None]
    x = torch.nn.functional.interpolate(patch, size=(64, 64), mode="bilinear", align_corners=False)
    f = bb(bb.prepare(x))["avgpool"].flatten()
    assert torch.allclose(g.features[1, 0], f / f.abs().sum(), atol=1e-5)


def test_dense_grid_and_reflect_padding():
    bb = build_backbone("efficientnet_lite0", ["stage3", "stage5"])
    img = np.random.default_rng(2).random((100, 130), dtype=np.float32)
    g = DenseExtractor(bb)(img)
    assert g.grid_shape == (13, 17) and g.features.shape[-1] == 40 + 112 and g.cell == 8
    g2 = DenseExtractor(bb, pad=0)(img)
    assert g2.grid_shape == (13, 17)
    with pytest.raises(ValueError, match="multiple of 16"):
        DenseExtractor(bb, pad=8)

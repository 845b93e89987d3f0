import os

import cv2
import numpy as np
import pytest
from PIL import Image

from monitor.model.images import ImageError, ImageLimits, read_image, read_mask


def _tiff(path, arr):
    Image.fromarray(arr).save(path, format="TIFF")
    return path


def test_8bit_tiff_and_png(tmp_path):
    arr = (np.arange(100 * 120) % 256).astype(np.uint8).reshape(100, 120)
    for p in (_tiff(tmp_path / "a.tif", arr), tmp_path / "a.png"):
        if p.suffix == ".png":
            cv2.imwrite(str(p), arr)
        g = read_image(p)
        assert g.shape == (100, 120) and g.dtype == np.float32
        assert np.allclose(g, arr / 255.0)


def test_16bit_tiff_uses_full_range(tmp_path):
    arr = np.full((80, 90), 65535, np.uint16)
    arr[:40] = 0
    g = read_image(_tiff(tmp_path / "b.tif", arr))
    assert g[0, 0] == 0.0 and g[-1, -1] == 1.0


def test_rgb_becomes_gray(tmp_path):
    arr = np.zeros((70, 70, 3), np.uint8)
    arr[..., 1] = 255
    p = tmp_path / "c.png"
    Image.fromarray(arr).save(p)
    assert np.allclose(read_image(p), 0.587, atol=1e-3)


def test_crop_bottom_drops_the_data_bar(tmp_path):
    arr = np.zeros((100, 80), np.uint8)
    p = _tiff(tmp_path / "d.tif", arr)
    assert read_image(p, ImageLimits(crop_bottom=20)).shape == (80, 80)


def _truncated_tiff(tmp_path):
    p = _tiff(tmp_path / "t.tif", np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _huge_header(tmp_path):
    """A real PNG whose IHDR is rewritten to claim 20000 x 20000 pixels (CRC fixed, pixel data unchanged)."""
    import struct
    import zlib

    p = tmp_path / "huge.png"
    cv2.imwrite(str(p), np.zeros((80, 80), np.uint8))
    data = bytearray(p.read_bytes())
    data[16:24] = struct.pack(">II", 20000, 20000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    p.write_bytes(bytes(data))
    return p


def _bytes(name: str, data: bytes):
    def make(tmp_path):
        (tmp_path / name).write_bytes(data)
        return tmp_path / name
    return make


BAD = [
    ("empty", _bytes("e.tif", b""), "empty file"),
    ("text", _bytes("x.tif", b"not an image\n"), "not a readable image"),
    ("truncated", _truncated_tiff, "truncated or corrupt"),
    ("tiny", lambda t: _tiff(t / "s.tif", np.zeros((1, 1), np.uint8)), "too small"),
    ("huge", _huge_header, "exceeds the limit"),
    ("missing", lambda t: t / "gone.tif", "file not found"),
]


@pytest.mark.parametrize("name,make,reason", BAD, ids=[b[0] for b in BAD])
def test_bad_files_raise_one_clear_error(tmp_path, name, make, reason):
    path = make(tmp_path)
    with pytest.raises(ImageError, match=reason) as info:
        read_image(path)
    assert str(path) in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    p = _tiff(tmp_path / "p.tif", np.zeros((80, 80), np.uint8))
    p.chmod(0)
    with pytest.raises(ImageError, match="permission denied"):
        read_image(p)


def test_masks_any_nonzero_is_defect(tmp_path):
    arr = np.zeros((10, 12), np.uint8)
    arr[2:4, 3:5] = 1
    Image.fromarray(arr, mode="L").convert("P").save(tmp_path / "m.png")
    m = read_mask(tmp_path / "m.png")
    assert m.sum() == 4 and m[2, 3]

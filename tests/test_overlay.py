"""The operator overlay: verdict banner, numbered defects, legend, legible sizes; the pixel size from SEM tags."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from monitor.model.defects import find_defects
from monitor.model.images import pixel_size_um
from monitor.model.overlay import (
    BANNER,
    GREY,
    Caption,
    _font,
    _sizes,
    _wrap,
    banner_lines,
    elide_middle,
    label_boxes,
    render_overlay,
)


def _map_with_blobs(shape=(200, 256)):
    amap = np.zeros(shape, np.float32)
    amap[20:40, 30:60] = 5  # area 600
    amap[120:130, 200:210] = 5  # area 100
    amap[0:12, 100:120] = 5  # touches the top edge: its label goes below it
    return amap


@pytest.mark.parametrize("verdict, colour", [("defect", BANNER["defect"]), ("ok", BANNER["ok"]),
                                             ("no-threshold", GREY), ("mismatch", GREY)])
def test_banner_colour_follows_the_verdict(verdict, colour):
    img = np.full((200, 256), 0.5, np.float32)
    pic = render_overlay(img, np.zeros_like(img), None, Caption(verdict, "x.tif", "2026-11-25 10:00:00 +0000"))
    assert pic.shape[1] == 256 and pic.shape[0] > 200  # banner and legend around the image, at its own width
    b, g, r = pic[2, 2]
    assert (r, g, b) == colour


def test_defects_are_outlined_and_numbered_in_result_order():
    amap = _map_with_blobs()
    report = find_defects(amap, 1.0)
    assert [d.area for d in report.defects] == [596, 238, 96]  # largest first: numbers 1, 2, 3 (opening: corners)
    font = _font(_sizes(256)[2])
    boxes = label_boxes(report.defects, 256, 200, font)
    for (lx, ly, w, h), d in zip(boxes, report.defects):
        x, y, bw, bh = d.bbox
        assert 0 <= lx <= 256 - w and 0 <= ly <= 200 - h
        assert x - w <= lx <= x + bw and (ly + h <= y or ly >= y + bh)  # next to its defect, not over it
    img = np.full((200, 256), 0.3, np.float32)
    cap = Caption("defect", "x.tif", "now", n_defects=3, largest_area=596)
    pic = render_overlay(img, amap, report, cap, threshold=1.0)
    banner_h = next(r for r in range(pic.shape[0]) if tuple(pic[r, 0]) != tuple(pic[0, 0]))
    for lx, ly, w, h in boxes:  # white label boxes with a black border and a black digit
        box = pic[banner_h + ly:banner_h + ly + h, lx:lx + w]
        assert (box > 240).all(axis=2).mean() > 0.4 and (box < 60).all(axis=2).any()
    x, y, bw, bh = report.defects[1].bbox  # the outline: white and black pixels on the defect's border
    edge = pic[banner_h + y:banner_h + y + bh, x:x + bw]
    assert (edge > 200).all(axis=2).any() and (edge < 30).all(axis=2).any()


def test_banner_says_coverage_against_threshold_defects_and_size_in_micrometres():
    c = Caption("defect", "ITIA1133.tif", "2026-11-25 10:00:00 +0100", line="spin-line-3", coverage=0.00179,
                coverage_threshold=0.001, n_defects=6, largest_area=886, pixel_size_um=0.05, model_id="f6f99e719b00")
    text = " | ".join(banner_lines(c))
    assert "coverage 0.18% (alarm above 0.10%)" in text and "6 defects" in text
    assert "largest #1: 886 px = 2.2 um2" in text and "spin-line-3" in text and "model f6f99e719b00" in text
    assert "um2" not in " ".join(banner_lines(Caption("ok", "a.tif", "now", n_defects=1, largest_area=9)))


def test_long_names_are_elided_in_the_middle_to_fit():
    font = _font(16)
    name = "2026-11-24_line3_sample-batch-000417_detector-SE2_mag-5000x_scan-0419.tif"
    short = elide_middle(name, font, 200)
    assert font.getlength(short) <= 200 and "…" in short
    assert short.startswith(name[:6]) and short.endswith(name[-6:])
    assert elide_middle("a.tif", font, 200) == "a.tif"


@pytest.mark.parametrize("width", [512, 1024])
def test_text_is_large_enough_to_read_at_full_size(width):
    title, text, small, _ = _sizes(width)
    assert text >= 13 and small >= 12 and title >= 18
    img = np.zeros((300, width), np.float32)
    cap = Caption("defect", "x" * 300 + ".tif", "2026-11-25 10:00:00 +0000", line="line1", coverage=0.01,
                  coverage_threshold=0.001, n_defects=12, largest_area=123456, pixel_size_um=0.01,
                  model_id="0123456789ab")
    title_f, text_f = _font(title), _font(text)
    margin = _sizes(width)[3]
    lines = _wrap(banner_lines(cap), text_f, width - 2 * margin)
    assert len(lines) >= 2 and all(text_f.getlength(t) <= width - 2 * margin for t in lines)  # wrapped, not cut
    assert title_f.getlength("DEFECT  ") + text_f.getlength(elide_middle(cap.file_name, text_f, width)) <= 2 * width
    assert render_overlay(img, np.zeros_like(img), None, cap, 1.0).shape[1] == width


def _tiff(path, tag=None, text=None):
    img = Image.fromarray(np.zeros((80, 80), np.uint8))
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[282], info[283], info[296] = 72.0, 72.0, 2  # the 72 dpi every SEM TIFF carries: not a pixel size
    if tag:
        info[tag] = text
        info.tagtype[tag] = 2
    img.save(path, tiffinfo=info)
    return path


@pytest.mark.parametrize("tag, text, um", [
    (34682, "[Scan]\nPixelWidth=2.5e-09\nPixelHeight=2.5e-09\n", 0.0025),  # FEI / Thermo Fisher, metres
    (34118, "AP_PIXEL_SIZE\nImage Pixel Size = 12.5 nm\n", 0.0125),  # Zeiss SmartSEM
    (34118, b"Image Pixel Size = 1.2 \xb5m\n", 1.2),  # the micro sign as Zeiss writes it (latin-1)
    (34682, "[Scan]\nPixelWidth=nan\n", None),
    (None, None, None),  # resolution tags only
])
def test_pixel_size_comes_from_sem_tags_only(tmp_path, tag, text, um):
    got = pixel_size_um(_tiff(tmp_path / "x.tif", tag, text))
    assert got == pytest.approx(um) if um else got is None


def test_pixel_size_of_a_non_tiff_or_broken_file_is_unknown(tmp_path):
    (tmp_path / "x.tif").write_bytes(b"not an image")
    assert pixel_size_um(tmp_path / "x.tif") is None and pixel_size_um(tmp_path / "missing.tif") is None


@pytest.mark.parametrize("width", [64, 128, 200, 320, 512, 1024])
def test_legend_labels_never_overlap_nor_leave_the_picture(width, monkeypatch):
    """Down to the smallest image (64 px, crops): each text of the legend inside the width, no two on one row
    overlapping (at 128 px "typical" and "pixel threshold" were drawn over each other)."""
    from PIL import ImageDraw

    from monitor.model.overlay import _legend

    drawn = []
    original = ImageDraw.ImageDraw.text

    def text(self, xy, t, font=None, **kw):
        drawn.append((xy[0], xy[1], xy[0] + font.getlength(t)))
        return original(self, xy, t, font=font, **kw)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    im = _legend(width, 14.9, 18.0, True)
    assert im.width == width and drawn
    assert all(0 <= x0 and x1 <= width for x0, _, x1 in drawn), drawn
    for a in drawn:
        for b in drawn:
            if a is not b and a[1] == b[1]:
                assert a[2] <= b[0] or b[2] <= a[0], (a, b)

"""Operator overlay: a verdict banner, the image with its anomaly heat map and numbered defect outlines, a legend.

Made to be read at the line in two seconds, at the image's own resolution: a banner coloured by the verdict (red
DEFECT, green OK, grey otherwise) with the file name, coverage against the alarm threshold, the number of defects
and the largest one, line, time and model; the defects outlined and numbered as in the result JSON (largest first);
under the image, the heat map's colour scale up to the pixel threshold. Drawing is OpenCV; text is Pillow's embedded
FreeType font (no font file to install; OpenCV's Hershey fonts blur at small sizes). That font has no "µ", "²" or
"–" (they come out as empty boxes): the pictures write "um", "um2" and "-".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from monitor.files import atomic_write
from monitor.model.defects import DefectReport

BANNER = {"defect": (200, 30, 30), "ok": (25, 130, 60)}  # RGB; any other verdict: grey
GREY = (95, 95, 95)
LEGEND_BG = (32, 32, 32)
SEP = "  ·  "


@dataclass(frozen=True)
class Caption:
    """What the banner says about one image."""

    verdict: str  # "defect", "ok", or another verdict (grey banner)
    file_name: str  # the name, not the path
    when: str  # local time, e.g. "2026-11-25 10:31:02 +0100"
    line: str = ""
    coverage: float | None = None  # defect pixels / image pixels
    coverage_threshold: float | None = None  # alarm.coverage_threshold
    n_defects: int | None = None
    largest_area: int | None = None  # pixels
    pixel_size_um: float | None = None  # micrometres per pixel, when known
    model_id: str | None = None
    note: str = ""  # why the image was not judged (a mismatch's reason), shown first


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _width(text: str, font) -> float:
    return font.getlength(text)


def elide_middle(text: str, font, max_width: float) -> str:
    """``text``, or its start and end around "…" so that it fits ``max_width`` pixels."""
    if _width(text, font) <= max_width:
        return text
    lo, hi = 0, len(text)  # characters kept
    while lo < hi:
        mid = (lo + hi + 1) // 2
        cand = text[: (mid + 1) // 2] + "…" + text[len(text) - mid // 2:]
        lo, hi = (mid, hi) if _width(cand, font) <= max_width else (lo, mid - 1)
    return text[: (lo + 1) // 2] + "…" + text[len(text) - lo // 2:] if lo else "…"


def _wrap(segments: list[str], font, max_width: float) -> list[str]:
    """Join segments with " · " into lines no wider than ``max_width`` (a segment too long alone is elided)."""
    lines: list[str] = []
    for seg in segments:
        if lines and _width(lines[-1] + SEP + seg, font) <= max_width:
            lines[-1] += SEP + seg
        else:
            lines.append(elide_middle(seg, font, max_width))
    return lines


def _percent(x: float) -> str:
    return f"{100 * x:.3g}%" if x < 0.001 else f"{100 * x:.2f}%"


def _area(px: int, pixel_size_um: float | None) -> str:
    text = f"{px:,} px"
    if pixel_size_um:
        text += f" = {px * pixel_size_um ** 2:,.1f} um2"  # the embedded font has no µ nor ²
    return text


def banner_lines(c: Caption) -> list[str]:
    """The banner's details, one segment each (the verdict and file name come first, in a larger font)."""
    seg = [c.note] if c.note else []
    if c.coverage is not None:
        cov = f"coverage {_percent(c.coverage)}"
        if c.coverage_threshold is not None:
            cov += f" (alarm above {_percent(c.coverage_threshold)})"
        seg.append(cov)
    if c.n_defects is not None:
        seg.append(f"{c.n_defects} defect{'' if c.n_defects == 1 else 's'}")
        if c.n_defects and c.largest_area:
            seg.append(f"largest #1: {_area(c.largest_area, c.pixel_size_um)}")
    if c.line:
        seg.append(c.line if "line" in c.line.lower() else f"line {c.line}")
    seg.append(c.when)
    if c.model_id:
        seg.append(f"model {c.model_id}")
    return seg


def _sizes(width: int) -> tuple[int, int, int, int]:
    """Font sizes (title, text, small) and margin for a picture ``width`` pixels wide."""
    u = min(2.0, max(0.5, width / 1024))
    return max(18, round(30 * u)), max(13, round(19 * u)), max(12, round(16 * u)), max(6, round(10 * u))


def _banner(c: Caption, width: int) -> Image.Image:
    title_px, text_px, _, m = _sizes(width)
    title, text = _font(title_px), _font(text_px)
    word = {"defect": "DEFECT", "ok": "OK"}.get(c.verdict, c.verdict.upper())
    head = word + "  "
    name = elide_middle(c.file_name, text, width - 2 * m - _width(head, title))
    lines = _wrap(banner_lines(c), text, width - 2 * m)
    gap = round(text_px * 0.35)
    height = m + title_px + gap + len(lines) * (text_px + gap) + m
    im = Image.new("RGB", (width, height), BANNER.get(c.verdict, GREY))
    d = ImageDraw.Draw(im)
    d.text((m, m), head, font=title, fill="white", stroke_width=1, stroke_fill="white")  # bold
    d.text((m + _width(head, title), m + title_px - text_px), name, font=text, fill="white")
    y = m + title_px + gap
    for line in lines:
        d.text((m, y), line, font=text, fill="white")
        y += text_px + gap
    return im


MIN_BAR = 32  # pixels: a narrower colour bar between its two labels says nothing


def _legend(width: int, lo: float, hi: float, thresholded: bool) -> Image.Image:
    _, _, small_px, m = _sizes(width)
    small = _font(small_px)
    left, right = f"typical {lo:.1f}", (f"pixel threshold {hi:.1f}" if thresholded else f"max {hi:.1f}")
    outline = "white outline: defect, numbered as in the result JSON (largest first)"
    bar_w = int(min(width * 0.45, 420))
    lab_w = _width("anomaly  " + left + "  ", small)
    rows = [["anomaly  " + left, "BAR", right]]
    one_row = lab_w + bar_w + _width("  " + right, small) + 2 * m <= width
    if not one_row:  # narrow image: the bar on a row of its own
        bar_w = int(width - 2 * m - _width(left + "  " + "  " + right, small))
    stacked = not one_row and bar_w < MIN_BAR  # too narrow even for that (crops): label, bar, label on three rows
    if stacked:
        return _stacked_legend(width, left, right, outline)
    height = m + small_px + m + (small_px + m) * (1 + (not one_row))
    im = Image.new("RGB", (width, height), LEGEND_BG)
    d = ImageDraw.Draw(im)
    x, y = m, m
    if one_row:
        d.text((x, y), rows[0][0] + "  ", font=small, fill="white")
        x += lab_w
    else:
        d.text((x, y), "anomaly score", font=small, fill="white")
        y += small_px + m
        d.text((x, y), left + "  ", font=small, fill="white")
        x += _width(left + "  ", small)
    _ramp(d, x, y, bar_w, small_px)
    d.text((x + bar_w + _width("  ", small), y), right, font=small, fill="white")
    _outline_key(d, y + small_px + m, width, outline, small, m)
    return im


def _ramp(d: ImageDraw.ImageDraw, x: int, y: int, bar_w: int, small_px: int) -> None:
    """The heat map's colour scale, ``bar_w`` pixels wide, on a text row at ``y``."""
    ramp = cv2.applyColorMap(np.linspace(0, 255, max(bar_w, 2)).astype(np.uint8)[None], cv2.COLORMAP_JET)[0]
    for i, (b, g, r) in enumerate(ramp[:bar_w]):
        d.line([(x + i, y + 2), (x + i, y + small_px)], fill=(int(r), int(g), int(b)))


def _outline_key(d: ImageDraw.ImageDraw, y: int, width: int, outline: str, small, m: int) -> None:
    """The last row of the legend: a white box and what a white outline means."""
    d.rectangle([m, y + 2, m + small.size - 3, y + small.size - 1], outline="white", width=2)
    d.text((m + small.size + 4, y), elide_middle(outline, small, width - 3 * m - small.size), font=small, fill="white")


def _stacked_legend(width: int, left: str, right: str, outline: str) -> Image.Image:
    """The legend of a very narrow picture: every part on a row of its own, each elided to the width."""
    _, _, small_px, m = _sizes(width)
    small = _font(small_px)
    texts = ["anomaly score", left, None, right]  # None: the colour bar
    im = Image.new("RGB", (width, m + (len(texts) + 1) * (small_px + m)), LEGEND_BG)
    d = ImageDraw.Draw(im)
    y = m
    for t in texts:
        if t is None:
            _ramp(d, m, y, max(2, width - 2 * m), small_px)
        else:
            d.text((m, y), elide_middle(t, small, width - 2 * m), font=small, fill="white")
        y += small_px + m
    _outline_key(d, y, width, outline, small, m)
    return im


def label_boxes(defects, width: int, height: int, font) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) of the number label of each defect: above its bounding box (else below), centred on the
    defect's centroid, inside the image."""
    size = font.size
    boxes = []
    for i, dft in enumerate(defects, 1):
        w, h = int(_width(str(i), font)) + 6, size + 4
        x, y, bw, bh = dft.bbox
        lx = min(max(0, round(dft.centroid[0] - w / 2)), width - w)
        ly = y - h - 1 if y - h - 1 >= 0 else min(y + bh + 1, height - h)
        boxes.append((lx, ly, w, h))
    return boxes


def render_overlay(image: np.ndarray, anomaly_map: np.ndarray, report: DefectReport | None, caption: Caption,
                   threshold: float | None = None) -> np.ndarray:
    """BGR uint8 picture: banner, ``image`` (float gray) with the heat map and numbered defects, legend."""
    gray = cv2.cvtColor(np.clip(image * 255, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    lo = float(np.percentile(anomaly_map, 50))
    hi = float(max(threshold if threshold is not None else anomaly_map.max(), lo + 1e-6))
    norm = np.clip((anomaly_map - lo) / (hi - lo), 0, 1)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = (0.45 * norm)[..., None]
    out = (gray * (1 - alpha) + heat * alpha).astype(np.uint8)
    H, W = out.shape[:2]
    defects = () if report is None else report.defects
    if defects:  # black under white: visible on any fiber or heat colour
        contours, _ = cv2.findContours(report.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.drawContours(out, contours, -1, (255, 255, 255), 1, cv2.LINE_AA)
    pic = Image.fromarray(cv2.cvtColor(out, cv2.COLOR_BGR2RGB))
    _, _, small_px, _ = _sizes(W)
    small = _font(small_px)
    d = ImageDraw.Draw(pic)
    for i, (lx, ly, w, h) in enumerate(label_boxes(defects, W, H, small), 1):
        d.rectangle([lx, ly, lx + w - 1, ly + h - 1], fill="white", outline="black")
        d.text((lx + 3, ly + 1), str(i), font=small, fill="black")
    parts = [_banner(caption, W), pic, _legend(W, lo, hi, threshold is not None)]
    return cv2.cvtColor(np.vstack([np.asarray(p) for p in parts]), cv2.COLOR_RGB2BGR)


def render_unscored(image: np.ndarray, caption: Caption) -> np.ndarray:
    """BGR uint8 picture of an image that was not scored (a mismatch): banner, the image as it came, no heat map."""
    gray = np.clip(image * 255, 0, 255).astype(np.uint8)
    pic = np.asarray(_banner(caption, gray.shape[1]))
    return cv2.cvtColor(np.vstack([pic, cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)]), cv2.COLOR_RGB2BGR)


def write_png(path, picture: np.ndarray) -> None:
    """Write a PNG atomically (``files.atomic_write``)."""
    ok, buf = cv2.imencode(".png", picture)
    if not ok:
        raise OSError(f"cannot encode {path}")
    atomic_write(path, buf.tobytes())

"""The fibre overlay: what `monitor measure --overlay` draws for a process engineer.

The image (dimmed) with the centreline stretches that were measured, coloured by their local diameter, the beads
circled; beside it the diameter histogram in the same colours with the figures (mean, sd, p10, p90, orientation,
coherency, porosity, beads); under it the colour scale in pixels and micrometres. Drawing is OpenCV, text Pillow's
embedded font (as the defect overlay's).
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageDraw

from monitor.model.fibres import Measurement
from monitor.model.overlay import GREY, LEGEND_BG, _font, _sizes, elide_middle

BEAD = (255, 0, 255)  # RGB
PANEL_BG = (28, 28, 28)


def _colours(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(n, 3) RGB uint8 of ``values`` on the turbo scale from ``lo`` to ``hi``."""
    norm = np.clip((np.asarray(values, np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
    bgr = cv2.applyColorMap((norm * 255).astype(np.uint8).reshape(-1, 1), cv2.COLORMAP_TURBO).reshape(-1, 3)
    return bgr[:, ::-1].copy()


def _scale(m: Measurement) -> tuple[float, float]:
    """The colour scale's ends: the 2nd and 98th percentiles of the diameters (at least 1 px apart)."""
    lo, hi = np.percentile(m.diameters, (2, 98))
    return float(lo), float(max(hi, lo + 1.0))


def _size(px: float, um: float | None) -> str:
    return f"{px:.1f} px" + (f" = {px * um:.3g} um" if um else "")


def _banner(title: str, lines: list[str], width: int) -> Image.Image:
    title_px, text_px, _, m = _sizes(width)
    gap = round(text_px * 0.35)
    im = Image.new("RGB", (width, m + title_px + gap + len(lines) * (text_px + gap) + m), GREY)
    d = ImageDraw.Draw(im)
    d.text((m, m), elide_middle(title, _font(title_px), width - 2 * m), font=_font(title_px), fill="white")
    y = m + title_px + gap
    for line in lines:
        d.text((m, y), elide_middle(line, _font(text_px), width - 2 * m), font=_font(text_px), fill="white")
        y += text_px + gap
    return im


def _panel(m: Measurement, width: int, height: int, lo: float, hi: float) -> Image.Image:
    """The histogram and the figures, ``width`` x ``height``."""
    f = m.figures
    _, text_px, small_px, pad = _sizes(max(width * 3, 1024))
    text, small = _font(text_px), _font(small_px)
    im = Image.new("RGB", (width, height), PANEL_BG)
    d = ImageDraw.Draw(im)
    d.text((pad, pad), "Fibre diameter", font=text, fill="white")
    top, left, right = pad + text_px + pad, pad + 4, width - pad
    plot_h = min(int(height * 0.45), 320)
    bottom = top + plot_h
    counts = np.asarray(f.histogram_counts, np.float64)
    edges = np.asarray(f.histogram_edges_px)
    span = edges[-1] - edges[0]
    x_of = lambda v: left + (right - left) * (v - edges[0]) / span  # noqa: E731
    cols = _colours((edges[:-1] + edges[1:]) / 2, lo, hi)
    peak = counts.max() if counts.size and counts.max() > 0 else 1.0
    for i, c in enumerate(counts):
        x0, x1 = x_of(edges[i]), x_of(edges[i + 1])
        y0 = bottom - (plot_h - 4) * c / peak
        d.rectangle([x0, y0, max(x0, x1 - 1), bottom], fill=tuple(int(v) for v in cols[i]))
    d.line([(left, bottom), (right, bottom)], fill="white")
    for row, (v, label) in enumerate(((f.diameter_px.p10, "p10"), (f.diameter_px.mean, "mean"),
                                      (f.diameter_px.p90, "p90"))):  # the labels on three rows: they never overlap
        x = x_of(min(v, edges[-1]))
        d.line([(x, top), (x, bottom)], fill="white" if label == "mean" else (170, 170, 170), width=1)
        d.text((x + 3, top + row * (small_px + 2)), label, font=small, fill="white")
    y = bottom + 3
    for v in (edges[0], (edges[0] + edges[-1]) / 2, edges[-1]):
        label = f"{v:g} px"
        x = min(max(x_of(v) - small.getlength(label) / 2, 0), width - small.getlength(label) - 2)
        d.text((x, y), label, font=small, fill="white")
    um = f.pixel_size_um
    dp = f.diameter_px
    rows = [f"mean {_size(dp.mean, um)}", f"sd {_size(dp.std, um)}", f"median {_size(dp.median, um)}",
            f"p10 {_size(dp.p10, um)}", f"p90 {_size(dp.p90, um)}", f"{dp.n:,} centreline px measured",
            f"orientation {f.orientation_deg:.0f}° (x axis, y down)", f"coherency {f.coherency:.2f} (1 = aligned)",
            f"porosity {100 * f.porosity:.1f}%",
            f"beads {len(f.beads)}" + (f" = {f.beads_per_mm2:,.0f} per mm2" if f.beads_per_mm2 is not None else ""),
            "pixel size " + (f"{um:g} um" if um else "unknown (sizes in pixels)")]
    y += small_px + pad
    for r in rows:
        if y + text_px > height - pad:
            break
        d.text((pad, y), elide_middle(r, text, width - 2 * pad), font=text, fill="white")
        y += text_px + round(text_px * 0.3)
    return im


def _legend(width: int, lo: float, hi: float, um: float | None) -> Image.Image:
    _, _, small_px, m = _sizes(width)
    small = _font(small_px)
    left, right = f"{_size(lo, um)}", f"{_size(hi, um)}"
    im = Image.new("RGB", (width, m + 2 * (small_px + m)), LEGEND_BG)
    d = ImageDraw.Draw(im)
    x = m + int(small.getlength("local diameter  " + left + "  "))
    d.text((m, m), "local diameter  " + left, font=small, fill="white")
    bar_w = max(2, int(min(width * 0.4, width - x - small.getlength("  " + right) - m)))
    ramp = _colours(np.linspace(lo, hi, bar_w), lo, hi)
    for i, c in enumerate(ramp):
        d.line([(x + i, m + 2), (x + i, m + small_px)], fill=tuple(int(v) for v in c))
    d.text((x + bar_w + small.getlength("  "), m), right, font=small, fill="white")
    y = m + small_px + m
    d.ellipse([m, y + 1, m + small_px - 2, y + small_px - 1], outline=BEAD, width=2)
    d.text((m + small_px + 4, y), elide_middle("bead (a fibre locally much wider than itself); coloured lines: the "
                                               "stretches measured, away from crossings and borders", small,
                                               width - 3 * m - small_px), font=small, fill="white")
    return im


def render_fibres(image: np.ndarray, m: Measurement, title: str) -> np.ndarray:
    """BGR uint8 picture of one measured image: banner, the image with its measured centrelines and beads beside the
    diameter histogram and the figures, the colour scale."""
    f = m.figures
    gray = np.clip(np.asarray(image, np.float32) * 190 + 20, 0, 255).astype(np.uint8)  # dimmed: colour stands out
    out = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    lo, hi = _scale(m)
    dmap = np.zeros(gray.shape, np.float32)
    dmap[m.ys, m.xs] = m.diameters
    on = np.zeros(gray.shape, np.uint8)
    on[m.ys, m.xs] = 1
    k = np.ones((3, 3), np.uint8)
    wide, on = cv2.dilate(dmap, k), cv2.dilate(on, k).astype(bool)
    out[on] = _colours(wide[on], lo, hi)
    for b in f.beads:
        r = int(round(b.diameter_px / 2 + 5))
        cv2.circle(out, (int(b.x), int(b.y)), r, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.circle(out, (int(b.x), int(b.y)), r, BEAD, 2, cv2.LINE_AA)
    h, w = gray.shape
    panel = _panel(m, max(300, w // 3), h, lo, hi)
    body = np.hstack([out, np.asarray(panel)])
    um = f.pixel_size_um
    line = (f"mean diameter {_size(f.diameter_px.mean, um)} (sd {f.diameter_px.std:.1f} px) · orientation "
            f"{f.orientation_deg:.0f}°, coherency {f.coherency:.2f} · porosity {100 * f.porosity:.1f}% · "
            f"{len(f.beads)} bead{'s' if len(f.beads) != 1 else ''}")
    parts = [np.asarray(_banner(title, [line], body.shape[1])), body,
             np.asarray(_legend(body.shape[1], lo, hi, um))]
    return cv2.cvtColor(np.vstack(parts), cv2.COLOR_RGB2BGR)


def render_unmeasured(image: np.ndarray, title: str, reason: str) -> np.ndarray:
    """BGR uint8 picture of an image whose fibres could not be measured: banner with the reason, the image."""
    gray = np.clip(np.asarray(image, np.float32) * 255, 0, 255).astype(np.uint8)
    banner = np.asarray(_banner(title, [f"not measured: {reason}"], gray.shape[1]))
    return cv2.cvtColor(np.vstack([banner, cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)]), cv2.COLOR_RGB2BGR)

"""Synthetic SEM-like images of nanofiber mats, with defects and exact masks.

These are SYNTHETIC: random bright curved fibers of varying width on a dark background, drawn in depth layers
(deeper layers darker and more blurred, a crude depth of field), plus shot-like noise. Defects imitate the kinds
the papers name: beads (bright ellipses on a fiber), clots (dense tangles), dust specks, flattened film (a smooth
bright sheet). They are for the demo and the tests, not a stand-in for real SEM data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np

DEFECT_KINDS = ("bead", "clot", "dust", "film")


def _fiber(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random curve crossing the image, as an (n, 1, 2) int32 polyline."""
    angle = rng.uniform(0, np.pi)
    d = np.array([np.cos(angle), np.sin(angle)])
    c = np.array([rng.uniform(0, w), rng.uniform(0, h)])
    length = 1.5 * np.hypot(h, w)
    t = np.linspace(-length / 2, length / 2, 80)
    bend = rng.normal(0, 0.08) * t**2 / length + rng.normal(0, 6) * np.sin(t / rng.uniform(40, 120))
    normal = np.array([-d[1], d[0]])
    pts = c + t[:, None] * d + bend[:, None] * normal
    return np.round(pts).astype(np.int32).reshape(-1, 1, 2)


def fiber_mat(shape: tuple[int, int] = (384, 512), density: float = 1.0, seed: int | None = None) -> np.ndarray:
    """A defect-free synthetic mat, float32 (H, W) in [0, 1]."""
    rng = np.random.default_rng(seed)
    h, w = shape
    img = np.full(shape, 0.08, np.float32)
    n_layers = 3
    per_layer = max(2, int(density * (h + w) / 40))
    for layer in range(n_layers):  # deepest first
        canvas = np.zeros(shape, np.float32)
        brightness = 0.45 + 0.25 * layer
        for _ in range(per_layer):
            width = int(rng.integers(2, 6)) + layer
            cv2.polylines(canvas, [_fiber(rng, h, w)], False, float(brightness * rng.uniform(0.8, 1.1)), width,
                          cv2.LINE_AA)
        blur = 1.6 - 0.6 * layer
        canvas = cv2.GaussianBlur(canvas, (0, 0), blur)
        img = np.maximum(img, canvas)
    # fiber edges are brighter in SEM (edge effect): a little unsharp masking
    img = img + 0.4 * (img - cv2.GaussianBlur(img, (0, 0), 2.0))
    img += rng.normal(0, 0.03, shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def add_defect(img: np.ndarray, kind: str, rng: np.random.Generator, size: float = 1.0) -> np.ndarray:
    """Draw one defect of ``kind`` into ``img`` in place; returns its boolean mask."""
    if kind not in DEFECT_KINDS:
        raise ValueError(f"unknown defect kind {kind!r}; choose from {', '.join(DEFECT_KINDS)}")
    h, w = img.shape
    m = np.zeros((h, w), np.uint8)
    margin = int(24 * size) + 4
    cx, cy = int(rng.integers(margin, w - margin)), int(rng.integers(margin, h - margin))
    layer = np.zeros((h, w), np.float32)
    if kind == "bead":
        ax = (int(rng.integers(6, 12) * size), int(rng.integers(4, 8) * size))
        cv2.ellipse(m, (cx, cy), ax, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        yy, xx = np.mgrid[0:h, 0:w]
        dome = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (max(ax) * 0.8) ** 2))).astype(np.float32)
        layer = np.where(m > 0, 0.75 + 0.25 * dome, 0)
    elif kind == "clot":
        r = int(rng.integers(14, 24) * size)
        for _ in range(30):
            a, b = rng.uniform(0, 2 * np.pi, 2)
            p1 = (int(cx + r * 0.8 * np.cos(a)), int(cy + r * 0.8 * np.sin(a)))
            p2 = (int(cx + r * 0.8 * np.cos(b)), int(cy + r * 0.8 * np.sin(b)))
            cv2.line(m, p1, p2, 1, 3)
        cv2.circle(m, (cx, cy), int(r * 0.5), 1, -1)
        layer = np.where(m > 0, rng.uniform(0.8, 0.95), 0).astype(np.float32)
    elif kind == "dust":
        r = int(rng.integers(4, 8) * size)
        pts = np.array([[cx + r * np.cos(t) * rng.uniform(0.6, 1.3), cy + r * np.sin(t) * rng.uniform(0.6, 1.3)]
                        for t in np.linspace(0, 2 * np.pi, 9)[:-1]], np.int32)
        cv2.fillPoly(m, [pts], 1)
        layer = np.where(m > 0, 1.0, 0).astype(np.float32)
    else:  # film: a smooth flattened sheet that hides the fibers below
        ax = (int(rng.integers(22, 40) * size), int(rng.integers(14, 26) * size))
        cv2.ellipse(m, (cx, cy), ax, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        layer = np.where(m > 0, 0.85, 0).astype(np.float32)
    sel = m > 0
    noise = rng.normal(0, 0.02, int(sel.sum())).astype(np.float32)
    if kind == "film":
        img[sel] = layer[sel] + noise
    else:
        img[sel] = np.maximum(img[sel], layer[sel] + noise)
    np.clip(img, 0, 1, out=img)
    return sel


def defective_image(shape: tuple[int, int] = (384, 512), kinds: tuple[str, ...] = ("bead", "clot", "dust", "film"),
                    seed: int | None = None, size: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic mat with one defect of each kind in ``kinds``: (image float32, mask bool)."""
    rng = np.random.default_rng(seed)
    img = fiber_mat(shape, seed=int(rng.integers(2**31)))
    mask = np.zeros(shape, bool)
    for kind in kinds:
        mask |= add_defect(img, kind, rng, size)
    return img, mask


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ mats of known fibres
@dataclass(frozen=True)
class KnownMat:
    """A drawn mat and its truth: ``widths`` of the top layer's fibres with ``lengths`` (pixels of centreline inside
    the image: a length-weighted distribution, as centreline samples are), the top layer's coverage (``porosity`` =
    1 - its mean), bead centres (x, y) and diameters, and the direction the fibres were drawn around."""

    image: np.ndarray  # float32 (H, W) in [0, 1]
    widths: np.ndarray  # pixels, one per top-layer fibre
    lengths: np.ndarray  # pixels of each fibre's centreline inside the image
    coverage: np.ndarray  # float32 (H, W): the top layer's share of each pixel
    beads: np.ndarray  # (n, 3): x, y, diameter in pixels
    angle_deg: float | None  # the mean direction of an aligned mat (x axis, y down), None for an isotropic one

    @property
    def porosity(self) -> float:
        return float(1.0 - self.coverage.mean())

    def width_samples(self) -> np.ndarray:
        """The widths repeated by length: the truth's length-weighted distribution (one value per pixel of
        centreline)."""
        return np.repeat(self.widths, np.maximum(1, np.round(self.lengths)).astype(int))


def _curve(rng: np.random.Generator, h: int, w: int, angle: float, curved: bool) -> np.ndarray:
    """(n, 2) float points of a fibre through the image at ``angle`` (radians), gently curved when ``curved``."""
    d = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-d[1], d[0]])
    c = np.array([rng.uniform(0, w), rng.uniform(0, h)])
    length = 1.5 * np.hypot(h, w)
    t = np.linspace(-length / 2, length / 2, 400)
    bend = rng.normal(0, 10) * np.sin(t / rng.uniform(150, 400) + rng.uniform(0, 2 * np.pi)) if curved else 0 * t
    return c + t[:, None] * d + np.asarray(bend)[:, None] * normal


def known_mat(shape: tuple[int, int] = (700, 1024), widths=(8.0, 1.5), n_fibres: int = 40, aligned: float | None = None,
              spread_deg: float = 6.0, curved: bool = True, beads: int = 0, deep: int | None = None, blur: float = 0.8,
              noise: float = 0.02, edge: float = 0.3, seed: int = 0, supersample: int = 2) -> KnownMat:
    """A mat of known fibres: ``n_fibres`` top-layer fibres with widths drawn from a normal distribution (mean, sd)
    clipped to [3, 40] pixels (or a callable ``widths(rng, n)``), at ``aligned`` degrees +- ``spread_deg`` (None:
    isotropic), straight or ``curved``; ``deep`` dimmer, blurred fibres of a deeper layer underneath (default: 30 on
    a 1024x700 image, as many per area on others); ``beads``
    round to spindle beads 2.5 to 4 times wider than the top-layer fibre they sit on; SEM-like edge brightening
    (``edge``), a Gaussian blur of ``blur`` pixels and Gaussian noise of ``noise``. The top layer is drawn exactly
    (distance to the centreline at ``supersample`` times the resolution), so its widths are the truth."""
    rng = np.random.default_rng(seed)
    h, w = shape
    s = supersample
    if callable(widths):
        ws = np.asarray(widths(rng, n_fibres), np.float64)
    else:
        ws = np.clip(rng.normal(widths[0], widths[1], n_fibres), 3.0, 40.0)

    def angle() -> float:
        if aligned is None:
            return float(rng.uniform(0, np.pi))
        return float(np.radians(aligned + rng.normal(0, spread_deg)))

    if deep is None:
        deep = round(30 * h * w / (700 * 1024))
    img = np.full(shape, 0.06, np.float32)
    deep_canvas = np.zeros(shape, np.uint8)
    for _ in range(deep):  # the deeper layer: dim, thin-ish, blurred; not part of the truth
        pts = _curve(rng, h, w, angle(), curved)
        cv2.polylines(deep_canvas, [np.round(pts).astype(np.int32).reshape(-1, 1, 2)], False,
                      int(rng.uniform(50, 90)), int(rng.integers(3, 9)), cv2.LINE_AA)
    img = np.maximum(img, cv2.GaussianBlur(deep_canvas.astype(np.float32) / 255, (0, 0), 2.0))
    big = (h * s, w * s)
    cover = np.zeros(big, np.uint8)
    lengths = np.zeros(n_fibres)
    centres = []
    line = np.empty(big, np.uint8)
    for i, wd in enumerate(ws):
        pts = _curve(rng, h, w, angle(), curved)
        line.fill(255)
        cv2.polylines(line, [np.round(pts * s + (s - 1) / 2).astype(np.int32).reshape(-1, 1, 2)], False, 0, 1,
                      cv2.LINE_8)
        dist = cv2.distanceTransform(line, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        cover[dist <= wd * s / 2] = 255
        inside = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
        seg = np.hypot(*np.diff(pts, axis=0).T)
        lengths[i] = float(seg[inside[1:] & inside[:-1]].sum())
        centres.append((pts[inside], wd))
    bead_rows = []
    plain = cv2.resize(cover, (w, h), interpolation=cv2.INTER_AREA) > 127  # the top layer before any bead
    for _ in range(beads):  # each on a stretch of one fibre alone (a bead at a crossing is not a clear case)
        for _try in range(50):
            pts, wd = centres[int(rng.integers(len(centres)))]
            if len(pts) < 3:
                continue
            j = int(rng.integers(len(pts)))
            x, y = pts[j]
            d = wd * rng.uniform(2.5, 4.0)
            reach = int(np.ceil(1.5 * d + 6))
            if not (reach <= x < w - reach and reach <= y < h - reach):
                continue
            disk = np.zeros((2 * reach + 1, 2 * reach + 1), np.uint8)
            cv2.circle(disk, (reach, reach), reach, 1, -1)
            yi, xi = int(round(y)), int(round(x))
            window = plain[yi - reach:yi + reach + 1, xi - reach:xi + reach + 1]
            if (window & (disk > 0)).sum() > 1.3 * 2 * reach * wd:  # more than the one fibre through the disk
                continue
            if any(np.hypot(x - bx, y - by) < 2 * (d + bd) for bx, by, bd in bead_rows):
                continue
            k = pts[min(j + 1, len(pts) - 1)] - pts[max(j - 1, 0)]
            along = float(np.degrees(np.arctan2(k[1], k[0])))
            axes = (int(round(d * s / 2 * rng.uniform(1.0, 1.5))), int(round(d * s / 2)))
            cv2.ellipse(cover, (int(round(x * s + (s - 1) / 2)), int(round(y * s + (s - 1) / 2))), axes, along, 0,
                        360, 255, -1)
            bead_rows.append((x, y, d))
            break
    coverage = cv2.resize(cover, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    top = coverage * rng.uniform(0.8, 0.9)
    img = img * (1 - coverage) + top
    img = img + edge * (img - cv2.GaussianBlur(img, (0, 0), 2.0))  # SEM edge brightening
    if blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    img = img + rng.normal(0, noise, shape).astype(np.float32)
    return KnownMat(np.clip(img, 0, 1).astype(np.float32), ws, lengths, coverage,
                    np.array(bead_rows, np.float64).reshape(-1, 3), aligned)


# ----------------------------------------------------------------------- the SEM operator's routine changes
def parse(name: str) -> list[tuple[str, float]]:
    """A change's name as its steps: "brightness+0.1+contrast1.25" -> [("brightness", 0.1), ("contrast", 1.25)];
    "none" -> []."""
    return [(kind, float(v)) for kind, v in re.findall(r"([a-z]+)([+-]?[0-9.]+)", name)]


def change(x: np.ndarray, spec: list[tuple[str, float]], seed: int) -> np.ndarray:
    """``x`` (float in [0, 1]) under the steps of ``spec`` (``parse``), rounded to 8 bits as an export holds it:
    ``brightness`` adds to every pixel, ``contrast`` scales around the mean gray, ``gamma`` raises to a power,
    ``noise`` adds Gaussian noise of that sigma (seeded), ``blur`` is a Gaussian blur of that sigma in pixels."""
    for kind, v in spec:
        if kind == "brightness":
            x = x + v
        elif kind == "contrast":
            x = x.mean() + v * (x - x.mean())
        elif kind == "gamma":
            x = np.clip(x, 0, 1) ** v
        elif kind == "noise":
            x = x + np.random.default_rng(seed).normal(0, v, x.shape)
        elif kind == "blur":
            x = cv2.GaussianBlur(np.asarray(x, np.float32), (0, 0), v)
        elif kind != "none":
            raise ValueError(f"unknown change {kind!r}")
    return (np.round(np.clip(x, 0, 1) * 255) / 255).astype(np.float32)

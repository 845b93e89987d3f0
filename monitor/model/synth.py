"""Synthetic SEM-like images of nanofiber mats, with defects and exact masks.

These are SYNTHETIC: random bright curved fibers of varying width on a dark background, drawn in depth layers
(deeper layers darker and more blurred, a crude depth of field), plus shot-like noise. Defects imitate the kinds
the papers name: beads (bright ellipses on a fiber), clots (dense tangles), dust specks, flattened film (a smooth
bright sheet). They are for the demo and the tests, not a stand-in for real SEM data.
"""

from __future__ import annotations

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

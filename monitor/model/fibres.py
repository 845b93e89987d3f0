"""The mat itself: fibre diameter distribution, orientation, porosity and beads of one SEM image (numpy and OpenCV).

What DiameterJ (Hotaling et al. 2015) does offline in ImageJ after a manual segmentation, in 40 to 65 ms (1024x700,
2 cores; docs/fibres.md):

1. **Segmentation of the top layer.** SEM fibres are bright on a darker, deeper background. A 3x3 median (noise;
   it commutes with any monotone change of the tone curve), Otsu's split of the image's own histogram into fibre
   and background, then the cut at half height between the two classes' own levels (the inner quartiles of the
   pixels two inside each class, which a clipped end does not reach): a blurred edge is cut half way up, so thin
   fibres are not widened (drawn 4 px fibres blurred by 0.8 px: +0.3% of mean diameter, at Otsu's own threshold
   +5.5%). The cut follows brightness and contrast exactly (affine-equivariant), a gamma change only partly (on
   NanoTWICE's normal images a gamma of 0.8 moves the mean diameter by up to 2.2%; on drawn mats with softer edges
   by up to 5.9%). Cutting a partly histogram-equalised copy instead halves the gamma effect but moves the cut off
   the half height (+7% on drawn 8 px fibres), so it is not done. Specks under ``min_area`` pixels are dropped.
2. **Diameters on the centreline** (DiameterJ's method): the Euclidean distance transform of the mask, sampled on
   its ridge (a pixel at least as far from the background as both neighbours across the fibre, farther than one
   of them; across is the dominant direction of the distance map's own gradients). The ridge's height is refined
   to sub-pixel from those two neighbours (the distance map is a tent across a fibre: peak = centre + half their
   difference), diameter = 2 x height - 1 (the mask's edge lies half a pixel before the first background pixel).
   A ridge pixel counts only where a width means something: farther from the image border than its radius plus
   ``border`` pixels, and with the fibre as wide (``TOLERANCE``) 1.5 and 3 radii ahead and behind along it
   (``REACH``): crossings (the distance map swells where fibres meet), fibre ends and beads fail that and are left
   out. The price: a wide fibre needs a longer free stretch than a thin one, so in dense mats of mixed widths the
   wide ones are sampled a little less (bench/metrology.py: a bimodal 6 / 14 px mat reads 3% low).
3. **Orientation**: the structure tensor of the whole image (OrientationJ's): the dominant direction of the fibres
   in degrees from the image's x axis, y down (0 = horizontal, 90 = vertical, 45 = top left to bottom right), in
   [0, 180), and the coherency (0 = isotropic, 1 = all parallel).
4. **Porosity**: the share of the image that the top-layer mask does not cover.
5. **Beads**: local maxima of the distance map (radius r) whose circle of radius ``1.5 r + 2`` around them meets
   the mask in at most two arms (the fibre running through; a crossing has four), each at most ``1 / bead_ratio``
   as wide as the bead: a fibre locally at least ``bead_ratio`` times wider than itself.

Sizes are in pixels always, and in micrometres when the pixel size is known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

REACH = (1.5, 3.0)  # a width sample needs the same width this many radii ahead and behind along the fibre
TOLERANCE = 0.2  # ... within this share of its radius (plus 0.75 px)
HIST_BINS = 20  # bins of the diameter histogram
_CIRCLE = 64  # points on the circle around a bead candidate
_ANGLES = np.linspace(0, 2 * np.pi, _CIRCLE, endpoint=False)
_SQUARE3 = np.ones((3, 3), np.uint8)
_SQUARE5 = np.ones((5, 5), np.uint8)
_COS, _SIN = np.cos(_ANGLES).astype(np.float32), np.sin(_ANGLES).astype(np.float32)


class FibreError(ValueError):
    """An image whose fibres cannot be measured; the message says why."""


@dataclass(frozen=True)
class FibreConfig:
    """How the fibres are measured (the configuration's ``fibres.measure``; sizes in pixels)."""

    min_area: int = 30  # mask components smaller than this many pixels are specks, not fibres
    border: int = 2  # centreline samples this much farther from the image border than their radius
    bead_ratio: float = 1.8  # a bead is at least this many times wider than the fibre it sits on
    min_bead_diameter: float = 6.0  # beads narrower than this many pixels are not looked for
    min_samples: int = 100  # fewer valid centreline samples: the image is not measured (says why)

    def __post_init__(self):
        if self.min_area < 0 or self.border < 0:
            raise ValueError(f"fibres.min_area and fibres.border must be >= 0, got {self.min_area}, {self.border}")
        if not self.bead_ratio > 1:
            raise ValueError(f"fibres.bead_ratio must be > 1, got {self.bead_ratio}")
        if not self.min_bead_diameter >= 2:
            raise ValueError(f"fibres.min_bead_diameter must be >= 2 pixels, got {self.min_bead_diameter}")
        if self.min_samples < 1:
            raise ValueError(f"fibres.min_samples must be >= 1, got {self.min_samples}")


@dataclass(frozen=True)
class Stats:
    """A diameter distribution in one unit."""

    mean: float
    median: float
    std: float
    p10: float
    p90: float
    n: int

    @classmethod
    def of(cls, values: np.ndarray, scale: float = 1.0) -> "Stats":
        v = values.astype(np.float64) * scale
        p10, p50, p90 = np.percentile(v, (10, 50, 90))
        return cls(_r(v.mean()), _r(p50), _r(v.std()), _r(p10), _r(p90), int(v.size))

    def to_dict(self) -> dict:
        return {"mean": self.mean, "median": self.median, "std": self.std, "p10": self.p10, "p90": self.p90,
                "n": self.n}

    @classmethod
    def from_dict(cls, d: dict) -> "Stats":
        return cls(**{k: (int(d[k]) if k == "n" else float(d[k])) for k in ("mean", "median", "std", "p10", "p90",
                                                                             "n")})


@dataclass(frozen=True)
class Bead:
    x: float
    y: float
    diameter_px: float

    def to_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "diameter_px": self.diameter_px}


@dataclass(frozen=True)
class Fibres:
    """The figures of one image: what the result document, the metrics and the page carry (``to_dict``)."""

    diameter_px: Stats
    diameter_um: Stats | None
    orientation_deg: float  # dominant direction, degrees from the x axis, y down, [0, 180)
    coherency: float  # 0 isotropic .. 1 all parallel
    porosity: float  # share of the image not covered by the top layer
    beads: tuple[Bead, ...]
    beads_per_mm2: float | None  # None without a pixel size
    histogram_edges_px: tuple[float, ...]
    histogram_counts: tuple[int, ...]
    pixel_size_um: float | None
    image_pixels: int

    def to_dict(self) -> dict:
        return {"diameter_px": self.diameter_px.to_dict(),
                "diameter_um": None if self.diameter_um is None else self.diameter_um.to_dict(),
                "orientation_deg": self.orientation_deg, "coherency": self.coherency, "porosity": self.porosity,
                "beads": {"count": len(self.beads), "per_mm2": self.beads_per_mm2,
                          "positions": [b.to_dict() for b in self.beads]},
                "histogram": {"edges_px": list(self.histogram_edges_px), "counts": list(self.histogram_counts)},
                "pixel_size_um": self.pixel_size_um, "image_pixels": self.image_pixels}

    @classmethod
    def from_dict(cls, d: dict) -> "Fibres":
        """The figures of ``to_dict``; ValueError (or KeyError, TypeError) for anything else."""
        b, h = d["beads"], d["histogram"]
        if not (isinstance(b, dict) and isinstance(h, dict) and len(h["edges_px"]) == len(h["counts"]) + 1 >= 2):
            raise ValueError("not the figures of a measurement")
        return cls(Stats.from_dict(d["diameter_px"]),
                   None if d.get("diameter_um") is None else Stats.from_dict(d["diameter_um"]),
                   float(d["orientation_deg"]), float(d["coherency"]), float(d["porosity"]),
                   tuple(Bead(float(p["x"]), float(p["y"]), float(p["diameter_px"])) for p in b.get("positions", [])),
                   None if b.get("per_mm2") is None else float(b["per_mm2"]),
                   tuple(float(v) for v in h["edges_px"]), tuple(int(v) for v in h["counts"]),
                   None if d.get("pixel_size_um") is None else float(d["pixel_size_um"]), int(d["image_pixels"]))


@dataclass(frozen=True)
class Measurement:
    """``figures`` and what the overlay draws: the valid centreline samples (x, y, diameter in pixels)."""

    figures: Fibres
    xs: np.ndarray  # int32
    ys: np.ndarray  # int32
    diameters: np.ndarray  # float32, pixels


def _r(v: float, digits: int = 4) -> float:
    return round(float(v), digits)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """The image as uint8 over its own range (its minimum to 0, its maximum to 255): a 16-bit export that uses a
    narrow part of its range keeps its 256 levels. An affine map, so the cut below is the same."""
    if image.dtype == np.uint8:
        return image
    x = np.asarray(image, np.float32)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros(x.shape, np.uint8)
    return np.clip((x - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def _quantile(u: np.ndarray, where: np.ndarray, q: float) -> int:
    """The gray level at quantile ``q`` of the uint8 image ``u`` under the non-zero pixels of ``where``."""
    hist = cv2.calcHist([u], [0], where, [256], [0, 256]).ravel()
    return int(np.searchsorted(np.cumsum(hist), q * hist.sum()))


def segment(image: np.ndarray, min_area: int = 30) -> np.ndarray:
    """The top layer's fibres: bool (H, W). FibreError when the image has no contrast to cut."""
    u = cv2.medianBlur(to_uint8(image), 3)
    if int(u.min()) == int(u.max()):
        raise FibreError("the image is uniform: nothing to measure")
    t, _ = cv2.threshold(u, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = (u > t).astype(np.uint8)
    # the cut at half height: midway between the fibres' and the background's own levels (the medians of the
    # pixels two inside each of Otsu's classes), where a blurred edge is half way up
    fibre_core, ground_core = cv2.erode(mask, _SQUARE5), cv2.erode(1 - mask, _SQUARE5)
    if cv2.countNonZero(fibre_core) >= 100 and cv2.countNonZero(ground_core) >= 100:
        # each class's level from its inner quartile (the fibres' lower, the background's upper): a class whose
        # outer end the SEM's settings clip keeps its level
        half = (_quantile(u, fibre_core, 0.25) + _quantile(u, ground_core, 0.75)) // 2
        mask = (u > half).astype(np.uint8)
    if min_area > 1:
        n, lab, st, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        keep = st[:, cv2.CC_STAT_AREA] >= min_area
        keep[0] = False
        mask = keep[lab].astype(np.uint8)
    return mask.astype(bool)


def orientation(image: np.ndarray) -> tuple[float, float]:
    """(dominant fibre direction in degrees [0, 180) from the x axis, y down; coherency in [0, 1]) of the whole
    image's structure tensor (OrientationJ), on the image at half size (the mat's direction needs no finer scale;
    a quarter of the time)."""
    half = cv2.resize(np.asarray(image, np.float32), (max(1, image.shape[1] // 2), max(1, image.shape[0] // 2)),
                      interpolation=cv2.INTER_AREA)
    x = cv2.GaussianBlur(half, (0, 0), 1.0)
    gx, gy = cv2.Sobel(x, cv2.CV_32F, 1, 0), cv2.Sobel(x, cv2.CV_32F, 0, 1)
    jxx, jxy, jyy = (float(p.mean(dtype=np.float64)) for p in (gx * gx, gx * gy, gy * gy))
    trace = jxx + jyy
    if trace <= 0:
        return 0.0, 0.0
    coherency = math.sqrt((jxx - jyy) ** 2 + 4 * jxy * jxy) / trace
    gradient = 0.5 * math.degrees(math.atan2(2 * jxy, jxx - jyy))  # the dominant gradient's direction
    return round((gradient + 90.0) % 180.0, 2), round(coherency, 4)


def _nonzero(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of a boolean image's set pixels, row-major (OpenCV's scan: a third of ``np.nonzero``'s time)."""
    pts = cv2.findNonZero(b.view(np.uint8))
    if pts is None:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    pts = pts.reshape(-1, 2)
    return pts[:, 1].astype(np.intp), pts[:, 0].astype(np.intp)


def _ridge(dt: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ys, xs, heights, tangent x, tangent y) of the distance map's ridge pixels: at least as far from the
    background as both neighbours across the fibre, farther than one of them; heights refined to sub-pixel across
    the ridge. Across the fibre is the dominant direction of the distance map's own gradients (their structure
    tensor over a small window: defined at any width, where the image's gradients are only at the edges)."""
    gx, gy = cv2.Sobel(dt, cv2.CV_32F, 1, 0), cv2.Sobel(dt, cv2.CV_32F, 0, 1)
    jxx = cv2.GaussianBlur(gx * gx, (5, 5), 1.5)
    jxy = cv2.GaussianBlur(gx * gy, (5, 5), 1.5)
    jyy = cv2.GaussianBlur(gy * gy, (5, 5), 1.5)
    h, w = dt.shape
    pad = np.pad(dt, 1).ravel()
    # candidates: within 0.75 of their 3x3 neighbourhood's maximum (off the ridge, the distance map rises by about
    # 1 px per pixel towards it), a sixth of the fibre pixels
    ys, xs = _nonzero(mask & (dt >= cv2.dilate(dt, _SQUARE3) - 0.75))
    flat = (ys + 1) * (w + 2) + xs + 1
    a, b = (jxx - jyy)[ys, xs], 2 * jxy[ys, xs]
    # the normal quantised to the nearest of the four axes: horizontal, vertical, and the two diagonals (y down)
    axis = np.where(np.abs(a) >= np.abs(b), np.where(a >= 0, 0, 1), np.where(b >= 0, 2, 3))
    step = np.array([1, w + 2, w + 3, w + 1])[axis]
    c, lo, hi = pad[flat], pad[flat - step], pad[flat + step]
    peak = (c >= lo) & (c >= hi) & ((c > lo) | (c > hi))
    phi = 0.5 * np.arctan2(b[peak], a[peak]) + np.pi / 2  # along the fibre
    return (ys[peak], xs[peak], (c + np.abs(lo - hi) / 2)[peak], np.cos(phi).astype(np.float32),
            np.sin(phi).astype(np.float32))


def _valid(dt: np.ndarray, ys, xs, radius, tangent_x, tangent_y, border: int) -> np.ndarray:
    """Which ridge samples lie on a stretch of uniform fibre, away from the border (see the module's docstring)."""
    h, w = dt.shape
    ok = (xs >= radius + border) & (ys >= radius + border) & (xs < w - radius - border) & (ys < h - radius - border)
    here = dt[ys, xs]
    for reach in REACH:
        step = reach * radius + 1.0
        for sign in (1.0, -1.0):
            qx = np.clip(np.round(xs + sign * step * tangent_x), 0, w - 1).astype(np.intp)
            qy = np.clip(np.round(ys + sign * step * tangent_y), 0, h - 1).astype(np.intp)
            ok &= np.abs(dt[qy, qx] - here) <= TOLERANCE * here + 0.75
    return ok


def _beads(dt: np.ndarray, mask: np.ndarray, cfg: FibreConfig) -> list[Bead]:
    """Beads: compact swellings of a fibre (see the module's docstring), largest first, none inside another."""
    r_min = cfg.min_bead_diameter / 2 + 0.5
    local_max = (dt >= r_min) & (dt >= cv2.dilate(dt, np.ones((5, 5), np.uint8)))
    ys, xs = _nonzero(local_max)
    if ys.size == 0:
        return []
    r = dt[ys, xs]
    order = np.argsort(-r, kind="stable")[:2000]  # the largest first; a mat has far fewer beads
    ys, xs, r = ys[order], xs[order], r[order]
    h, w = dt.shape
    rad = 1.5 * r + 2.0  # just outside a spindle of up to 1.5 : 1
    cx = np.round(xs[:, None] + rad[:, None] * _COS[None, :]).astype(np.intp)
    cy = np.round(ys[:, None] + rad[:, None] * _SIN[None, :]).astype(np.intp)
    inside = (cx >= 0) & (cy >= 0) & (cx < w) & (cy < h)
    cx, cy = np.clip(cx, 0, w - 1), np.clip(cy, 0, h - 1)
    on = mask[cy, cx] & inside
    arms = np.count_nonzero(on != np.roll(on, 1, axis=1), axis=1) // 2
    arm_r = np.where(on, dt[cy, cx], 0).max(axis=1)  # the widest arm's half width (the circle cuts it near its axis)
    arc = on.sum(axis=1) / np.maximum(arms, 1) * (2 * np.pi * rad / _CIRCLE)  # mean arm width along the circle
    # the whole circle inside the image: a bead cut by the border is not judged
    bead = (inside.all(axis=1) & (arms <= 2) & (arm_r * cfg.bead_ratio <= r + 0.5) & (arc * cfg.bead_ratio <= 2.4 * r)
            & ~on.all(axis=1))
    out: list[Bead] = []
    for y, x, rr in zip(ys[bead], xs[bead], r[bead]):
        if all((b.x - x) ** 2 + (b.y - y) ** 2 > (b.diameter_px / 2 + rr) ** 2 for b in out):
            out.append(Bead(float(x), float(y), _r(2 * rr - 1, 2)))
    return out


def histogram(diameters: np.ndarray) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """``HIST_BINS`` equal bins from 0 to a round number above the 99th percentile."""
    top = float(np.percentile(diameters, 99)) if diameters.size else 1.0
    step = max(0.5, math.ceil(top / HIST_BINS * 2) / 2)  # bins of a multiple of half a pixel
    edges = np.arange(HIST_BINS + 1, dtype=np.float64) * step
    counts, _ = np.histogram(np.minimum(diameters, edges[-1] - 1e-6), edges)
    return tuple(_r(e, 2) for e in edges), tuple(int(c) for c in counts)


def measure(image: np.ndarray, pixel_size_um: float | None = None, cfg: FibreConfig = FibreConfig()) -> Measurement:
    """The figures of a gray image (float in [0, 1] or uint8, (H, W)); FibreError when it cannot be measured."""
    if image.ndim != 2 or image.size == 0:
        raise FibreError(f"a gray image is needed, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise FibreError("the image holds values that are not finite numbers")
    mask = segment(image, cfg.min_area)
    if not mask.any():
        raise FibreError("no fibres found: the image has no bright structure")
    m8 = mask.astype(np.uint8)
    dt = cv2.distanceTransform(m8, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ys, xs, height, tx, ty = _ridge(dt, mask)
    radius = height - 0.5
    keep = _valid(dt, ys, xs, radius, tx, ty, cfg.border) & (radius >= 0.5)
    d = (2 * radius[keep]).astype(np.float32)
    if d.size < cfg.min_samples:
        raise FibreError(f"too few measurable fibre stretches ({d.size} centreline pixels away from crossings and "
                         f"borders, fewer than fibres.min_samples {cfg.min_samples})")
    direction, coherency = orientation(image)
    beads = _beads(dt, mask, cfg)
    um = pixel_size_um if pixel_size_um and pixel_size_um > 0 else None
    area_mm2 = mask.size * (um * 1e-3) ** 2 if um else None
    edges, counts = histogram(d)
    figures = Fibres(Stats.of(d), Stats.of(d, um) if um else None, direction, coherency,
                     _r(1.0 - float(m8.mean())), tuple(beads),
                     None if area_mm2 is None else _r(len(beads) / area_mm2, 2), edges, counts, um, int(mask.size))
    return Measurement(figures, xs[keep].astype(np.int32), ys[keep].astype(np.int32), d)


def reference(images, pixel_sizes, cfg: FibreConfig = FibreConfig()) -> dict | None:
    """What a model records of its training images' fibres: the per-image mean diameters (pixels) with their mean
    and spread (the process chart's centre and limits), and the mean porosity, coherency and beads per image.
    None when no image could be measured."""
    figs = []
    for im, um in zip(images, pixel_sizes):
        try:
            figs.append(measure(im, um, cfg).figures)
        except FibreError:
            continue
    if not figs:
        return None
    means = np.array([f.diameter_px.mean for f in figs])
    ums = {f.pixel_size_um for f in figs}
    return {"images": len(figs),
            "diameter_px": {"mean": _r(means.mean()), "sd": _r(means.std(ddof=1)) if len(figs) > 1 else 0.0,
                            "per_image": [_r(v) for v in means]},
            "porosity": _r(np.mean([f.porosity for f in figs])), "coherency": _r(np.mean([f.coherency for f in figs])),
            "beads_per_image": _r(np.mean([len(f.beads) for f in figs]), 2),
            "pixel_size_um": ums.pop() if len(ums) == 1 else None}

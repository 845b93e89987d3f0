"""Acquisition quality: can this image be judged at all? Exposure, focus and noise against the training images'.

The SEM's operator changes brightness, contrast and gamma, scan speed (noise) and focus from one session to the next.
Within the routine envelope the scorer copes (``intensity_map`` brings an image's intensities to the training
images' before the features); beyond it an image is not judged against the model (verdict ``mismatch``), because
a defect alarm on a blurred, noisy or clipped image would be a false one. Three figures, each cheap (about 10 ms
on a 1024x700 image) and each independent of brightness and contrast:

* ``clipped_low`` / ``clipped_high``: the share of pixels at the black / white end of the range. A clipped end has
  lost the structure the features look at; NanoTWICE's routine envelope (brightness +-10%, contrast x1.25, and the
  two together) clips up to 33% of the pixels at one end, brightness +-30% 34% to 43%.
* ``sharpness``: the 99th percentile of the gradient magnitude at a fine scale (Gaussian sigma 0.7 px) over the same
  at a coarse scale (2 px): the fibres' edges. Contrast cancels out and noise barely moves it (3% of the range of
  Gaussian noise: -1% to +2%); a defocus lowers it (blur sigma 0.5 px: -6%, 1 px: -20%).
* ``noise``: Immerkaer's estimate (the median absolute response of a 3x3 Laplacian-difference kernel, saturated
  neighbourhoods left out), after the image's gain to the training images' intensities, so that a contrast change
  does not read as noise. It includes the fibres' own fine texture: NanoTWICE's clean images read 0.015 to 0.020,
  with 3% of the range of Gaussian noise 0.037 to 0.044.

The model records the training images' figures and intensity quantiles at fit (``reference``); ``assess`` compares
an image's against them, and ``normalize`` maps every image, training images included, onto those intensities
before the features: only the part of the map beyond the training images' own spread (a dead band: within it the
intensities differ with the content, not with the SEM's settings), then clipped to the training images' ``clip``
quantiles (``model.clip``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

QUALITY_REASONS = ("exposure", "focus", "noise")  # mismatch reasons of this module (metric label values)
# by default (``model.clip``) the normalised image keeps the training images' intensities between these quantiles
# and clips the rest: the routine envelope clips up to a third of an image at one end, and what a clipped end hides
# must be hidden in the training images too (15%/85%: -0.002 of pixel AUC on NanoTWICE's unchanged images, README)
CLIP_LEVELS = (0.15, 0.85)
LEVELS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # the intensity quantiles matched: 5% .. 95%
HIST_BINS = 4096  # intensities are binned this finely for the quantiles (a histogram: no sort of the pixels)
_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)  # Immerkaer 1996; white noise sigma -> 6 sigma
_NOISE_SCALE = 1.0 / (0.6745 * 6.0)  # median absolute response -> sigma of Gaussian noise


@dataclass(frozen=True)
class QualityConfig:
    """Limits of the ``mismatch`` section for acquisition quality (each 0 = not checked)."""

    max_clipped: float = 0.35  # share of pixels at one end of the range, over the training images' share
    min_sharpness: float = 0.9  # sharpness / the training images' (1 px of defocus: 0.80)
    max_noise: float = 3.0  # noise / the training images' (3% of the range of Gaussian noise: 2.3 to 2.9)

    def __post_init__(self):
        if not 0 <= self.max_clipped <= 1:
            raise ValueError(f"mismatch.max_clipped must be in [0, 1] (0 = off), got {self.max_clipped}")
        if not 0 <= self.min_sharpness < 1:
            raise ValueError(f"mismatch.min_sharpness must be in [0, 1) (0 = off), got {self.min_sharpness}")
        if not (self.max_noise == 0 or self.max_noise > 1):
            raise ValueError(f"mismatch.max_noise must be 0 (off) or > 1, got {self.max_noise}")


def quantiles(image: np.ndarray) -> np.ndarray:
    """The image's intensity quantiles at ``LEVELS``, from a histogram of ``HIST_BINS`` bins (float in [0, 1])."""
    idx = np.minimum((image.ravel() * HIST_BINS).astype(np.int32), HIST_BINS - 1)
    cdf = np.cumsum(np.bincount(idx, minlength=HIST_BINS)) / idx.size
    return (np.searchsorted(cdf, LEVELS) + 0.5) / HIST_BINS


def intensity_map(image: np.ndarray, reference: Sequence[float]) -> tuple[float, float]:
    """(gain, offset) that bring the image's intensity quantiles onto ``reference`` (the training images', at
    ``LEVELS``), by least squares over the quantiles that no clipped end reaches. (1, 0) when fewer than three
    are left (an image clipped almost everywhere: ``assess`` refuses it)."""
    q = quantiles(image)
    lo, hi = float(image.min()), float(image.max())
    ok = (q > lo + 1.0 / HIST_BINS) & (q < hi - 1.0 / HIST_BINS)
    if ok.sum() < 3 or np.ptp(q[ok]) <= 0:
        return 1.0, 0.0
    gain, offset = np.polyfit(q[ok], np.asarray(reference, np.float64)[ok], 1)
    return float(gain), float(offset)


def _shrink(x: float, tol: float) -> float:
    """``x`` moved ``tol`` towards 0 (0 within ``tol``): soft thresholding, continuous in ``x``."""
    return float(np.sign(x) * max(abs(x) - tol, 0.0))


def normalize(image: np.ndarray, ref: dict) -> np.ndarray:
    """The image with its intensities brought to the training images' (``intensity_map``), clipped to their
    ``clip`` quantiles and stretched to [0, 1]: brightness and contrast changes cancel, and an end that one image
    has clipped is clipped in every image alike. Only the part of the correction beyond the training images' own
    spread (``tolerance``) is made: within it the intensities differ with the content (how many fibres an image
    holds), not with the SEM's settings, and the dictionary already covers that. Float32, same shape."""
    gain, offset = intensity_map(image, ref["quantiles"])
    tol = ref.get("tolerance") or {"gain": 0.0, "offset": 0.0}
    gain, offset = 1.0 + _shrink(gain - 1.0, tol["gain"]), _shrink(offset, tol["offset"])
    lo, hi = ref["clip"]
    a = gain / (hi - lo)
    out = np.asarray(image, np.float32) * np.float32(a) + np.float32((offset - lo) / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def figures(image: np.ndarray, reference_quantiles: Sequence[float] | None = None) -> dict:
    """The image's quality figures (see the module's docstring); ``gain`` and ``offset``: its intensity map to
    ``reference_quantiles`` (1, 0 without)."""
    x = np.ascontiguousarray(image, dtype=np.float32)
    low, high = x <= 0.0, x >= 1.0
    gain, offset = intensity_map(x, reference_quantiles) if reference_quantiles is not None else (1.0, 0.0)
    # the statistics over every second row and column (a quarter of the pixels: the same figures to 1%, 4x faster)
    r = np.abs(cv2.filter2D(x, -1, _KERNEL, borderType=cv2.BORDER_REFLECT))[::2, ::2]
    sat = cv2.dilate((low | high).astype(np.uint8), np.ones((3, 3), np.uint8))[::2, ::2].astype(bool)
    r = r[~sat]
    noise = float(np.median(r)) * _NOISE_SCALE * abs(gain) if r.size else 0.0
    g = [_gradient_p99(cv2.GaussianBlur(x, (0, 0), s)) for s in (0.7, 2.0)]
    return {"clipped_low": round(float(low.mean()), 5), "clipped_high": round(float(high.mean()), 5),
            "sharpness": round(g[0] / g[1], 4) if g[1] > 0 else 0.0, "noise": round(noise, 5),
            "gain": round(gain, 4), "offset": round(offset, 4)}


def _gradient_p99(x: np.ndarray) -> float:
    gx, gy = cv2.Sobel(x, cv2.CV_32F, 1, 0), cv2.Sobel(x, cv2.CV_32F, 0, 1)
    mag = cv2.magnitude(gx, gy)[::2, ::2].ravel()
    k = int(0.99 * (mag.size - 1))
    return float(np.partition(mag, k)[k])


# the widest spread of the training images' own intensity maps a model accepts: beyond it they were taken at
# different exposures (two recipes, brightness changed halfway), and normalize's dead band would be as wide as the
# changes it is there to correct (the routine envelope: brightness +-10% is an offset of 0.1, contrast x1.25 a gain
# of 0.25)
MAX_TOLERANCE = {"gain": 0.5, "offset": 0.25}


class ExposureError(ValueError):
    """Training images of different exposures. ``images``: for each training image, (gain, offset) of its intensity
    map to the pooled intensities; ``outliers``: the indices of those not of the largest group of one exposure."""

    def __init__(self, images: list[tuple[float, float]], outliers: list[int]):
        super().__init__("the training images were taken at different exposures")
        self.images, self.outliers = images, outliers


def reference(images: Sequence[np.ndarray], clip_levels: Sequence[float] = CLIP_LEVELS, normalizing: bool = True
              ) -> dict:
    """What a model records of its training images: their pooled intensity quantiles, the intensities at
    ``clip_levels`` (``normalize`` clips there; level 0 and 1: the range's ends, no clip), the spread of their own
    intensity maps (``tolerance``), and the median of each figure. ExposureError when that spread is over
    ``MAX_TOLERANCE`` and the model is ``normalizing``; without normalisation the spread is not used, and is kept
    under 1 (what ``check_reference`` accepts)."""
    hist = np.zeros(HIST_BINS)
    for im in images:
        hist += np.bincount(np.minimum((im.ravel() * HIST_BINS).astype(np.int32), HIST_BINS - 1),
                            minlength=HIST_BINS)
    cdf = np.cumsum(hist) / hist.sum()
    q = (np.searchsorted(cdf, LEVELS) + 0.5) / HIST_BINS
    clip = [0.0 if c <= 0 else 1.0 if c >= 1 else (np.searchsorted(cdf, c) + 0.5) / HIST_BINS for c in clip_levels]
    figs = [figures(im, q) for im in images]
    # the training images' own spread of the intensity map: how far content alone moves it (normalize's dead band)
    tolerance = {"gain": round(max(abs(f["gain"] - 1.0) for f in figs), 4),
                 "offset": round(max(abs(f["offset"]) for f in figs), 4)}
    if not normalizing:
        tolerance = {k: min(v, 0.9999) for k, v in tolerance.items()}
    elif any(tolerance[k] > MAX_TOLERANCE[k] for k in tolerance):  # a model that must not be written
        maps = [(f["gain"], f["offset"]) for f in figs]

        def alike(a, b) -> bool:  # one exposure: within half the accepted spread of each other
            return abs(a[0] - b[0]) <= MAX_TOLERANCE["gain"] / 2 and abs(a[1] - b[1]) <= MAX_TOLERANCE["offset"] / 2

        # the largest group of images of one exposure; the others are named
        centre = max(maps, key=lambda m: sum(alike(m, other) for other in maps))
        raise ExposureError(maps, [i for i, m in enumerate(maps) if not alike(m, centre)])
    return {"levels": list(LEVELS), "quantiles": [round(float(v), 6) for v in q],
            "clip_levels": [float(c) for c in clip_levels], "clip": [round(float(v), 6) for v in clip],
            "tolerance": tolerance,
            **{k: round(float(np.median([f[k] for f in figs])), 5)
               for k in ("clipped_low", "clipped_high", "sharpness", "noise")}}


def check_reference(ref: dict) -> None:
    """Raise ValueError when a model's stored quality reference is not one ``reference`` writes."""
    if not isinstance(ref, dict) or [round(v, 2) for v in ref.get("levels", [])] != list(LEVELS):
        raise ValueError("the quality reference has no intensity quantiles at the expected levels")
    q = ref.get("quantiles")
    if not (isinstance(q, list) and len(q) == len(LEVELS) and all(isinstance(v, (int, float)) for v in q)
            and all(0 <= a <= b <= 1 for a, b in zip(q, q[1:]))):
        raise ValueError("the quality reference's intensity quantiles are not increasing values in [0, 1]")
    c = ref.get("clip")
    if not (isinstance(c, list) and len(c) == 2 and all(isinstance(v, (int, float)) for v in c)
            and 0 <= c[0] < c[1] <= 1):
        raise ValueError(f"the quality reference's clip range is not two increasing values in [0, 1]: {c!r}")
    t = ref.get("tolerance", {"gain": 0.0, "offset": 0.0})
    if not (isinstance(t, dict) and set(t) == {"gain", "offset"}
            and all(isinstance(v, (int, float)) and 0 <= v < 1 for v in t.values())):
        raise ValueError(f"the quality reference's tolerance is not a gain and an offset in [0, 1): {t!r}")
    for key in ("clipped_low", "clipped_high", "sharpness", "noise"):
        v = ref.get(key)
        if not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
            raise ValueError(f"the quality reference's {key} is not a finite number >= 0: {v!r}")
    if ref["sharpness"] <= 0 or ref["noise"] <= 0:
        raise ValueError("the quality reference's sharpness and noise must be > 0")


def assess(figs: dict, ref: dict, cfg: QualityConfig) -> tuple[str, str] | None:
    """(reason, text) when an image with quality ``figs`` cannot be judged against a model of reference ``ref``;
    None when it can. Exposure first (a clipped image's other figures mean little), then focus, then noise."""
    if cfg.max_clipped:
        for end, word, what in (("clipped_low", "black", "under-exposed"), ("clipped_high", "white", "over-exposed")):
            if figs[end] - ref[end] > cfg.max_clipped:
                return "exposure", (f"{what}: {100 * figs[end]:.0f}% of the pixels are clipped at {word} (the "
                                    f"training images {100 * ref[end]:.1f}%; limit mismatch.max_clipped "
                                    f"{100 * cfg.max_clipped:g}% more); correct brightness or contrast")
    if cfg.min_sharpness and figs["sharpness"] < cfg.min_sharpness * ref["sharpness"]:
        return "focus", (f"out of focus: sharpness {figs['sharpness']:.3g} against the training images' "
                         f"{ref['sharpness']:.3g} ({figs['sharpness'] / ref['sharpness']:.2f}x, below "
                         f"mismatch.min_sharpness {cfg.min_sharpness:g}x); refocus")
    if cfg.max_noise and figs["noise"] > cfg.max_noise * ref["noise"]:
        return "noise", (f"too noisy: noise {figs['noise']:.3g} of the range against the training images' "
                         f"{ref['noise']:.3g} ({figs['noise'] / ref['noise']:.1f}x, over mismatch.max_noise "
                         f"{cfg.max_noise:g}x); scan slower or average more frames")
    return None

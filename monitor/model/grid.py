"""The patch-dictionary scorer's grid after the distances, without torch: the border calibration's zones and the
pixel map of a dense grid. The torch scorer (``scorers/patch_dictionary.py``) and the inference graph's scorer
(``graph.py``) share them, so that the two paths differ only in how the grid's distances are computed."""

from __future__ import annotations

import cv2
import numpy as np


def border_rings(shape: tuple[int, int]) -> np.ndarray:
    """(h, w) int array: each grid cell's distance in cells to the nearest edge of the grid (0 = outermost ring)."""
    h, w = shape
    y = np.minimum(np.arange(h), np.arange(h)[::-1])
    x = np.minimum(np.arange(w), np.arange(w)[::-1])
    return np.minimum(y[:, None], x[None, :])


def border_zones(shape: tuple[int, int], rings: int) -> np.ndarray:
    """(h, w) int array: the calibration zone of each grid cell, for ``rings`` outer rings.

    Zone ``side * rings + r``: ring r (cells to the nearest edge) of side 0 top, 1 bottom, 2 left, 3 right, outside
    the corners; zone ``4 * rings``: the corner blocks (cells within ``rings`` of two edges), the four corners pooled
    (16 cells of a grid with 2 rings: a spread from fewer would be noise); zone ``4 * rings + 1``: the interior. The
    sides differ (on NanoTWICE the top and right rims score about 1 higher than the bottom and left ones, on the
    validation and the test images alike) and the corners score about twice as high as the rims, so one offset per
    ring left the corners and two sides hot.
    """
    h, w = shape
    R = rings
    y, x = np.arange(h)[:, None], np.arange(w)[None, :]
    dy, dx = np.minimum(y, h - 1 - y), np.minimum(x, w - 1 - x)
    zone = np.full((h, w), 4 * R + 1)
    rim_y, rim_x = (dy < R) & (dx >= R), (dx < R) & (dy >= R)
    side_y = np.where(2 * y < h, 0, 1)  # top or bottom
    side_x = np.where(2 * x < w, 2, 3)  # left or right
    zone = np.where(rim_y, side_y * R + dy, zone)
    zone = np.where(rim_x, side_x * R + dx, zone)
    return np.where((dy < R) & (dx < R), 4 * R, zone)


def calibrated(d: np.ndarray, offset: np.ndarray, gain: np.ndarray, rings: int) -> np.ndarray:
    """The patch distances ``d`` (h, w) with each border zone's gain and offset applied (``PatchDictionary.calibrate``);
    the interior unchanged. ``offset``/``gain`` empty: an uncalibrated model; one entry per ring: a model from
    before the per-side zones; an empty ``gain``: a model from before the gain (1)."""
    n = len(offset)
    if not n:
        return d
    zones = border_zones(d.shape, rings) if n == 4 * rings + 1 else np.minimum(border_rings(d.shape), n)
    off = np.append(offset, 0).astype(d.dtype)[zones]
    if len(gain):
        return d * np.append(gain, 1).astype(d.dtype)[zones] + off
    return d + off


def dense_map(scores: np.ndarray, image_shape: tuple[int, int], cell: float, sigma: float = 0.0) -> np.ndarray:
    """Grid scores (gh, gw) -> float32 pixel map (H, W): bilinear interpolation with each cell's centre at its image
    position (cell i's centre at pixel (i + 0.5) * cell - 0.5), the edge replicated where the grid falls short of
    the image, then a Gaussian blur of ``sigma`` pixels (0: none)."""
    H, W = image_shape
    gh, gw = scores.shape
    m = cv2.resize(np.ascontiguousarray(scores, dtype=np.float32), (round(gw * cell), round(gh * cell)),
                   interpolation=cv2.INTER_LINEAR)
    if m.shape[0] < H or m.shape[1] < W:
        m = np.pad(m, ((0, max(0, H - m.shape[0])), (0, max(0, W - m.shape[1]))), mode="edge")
    return blurred(m[:H, :W], sigma)


def blurred(m: np.ndarray, sigma: float) -> np.ndarray:
    """The pixel map with a Gaussian blur of ``sigma`` pixels (0: none), the border reflected; contiguous."""
    if sigma > 0:
        m = cv2.GaussianBlur(m, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    return np.ascontiguousarray(m)

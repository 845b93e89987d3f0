"""Operator overlay: the image, the anomaly heat map, defect contours and a caption. Pure OpenCV drawing."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np


def render_overlay(image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray | None, caption: list[str],
                   threshold: float | None = None) -> np.ndarray:
    """BGR uint8 picture of ``image`` (float gray) with the heat map, the defect contours and caption lines."""
    gray = cv2.cvtColor(np.clip(image * 255, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    lo = float(np.percentile(anomaly_map, 50))
    hi = float(max(threshold if threshold is not None else anomaly_map.max(), lo + 1e-6))
    norm = np.clip((anomaly_map - lo) / (hi - lo), 0, 1)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = (0.45 * norm)[..., None]
    out = (gray * (1 - alpha) + heat * alpha).astype(np.uint8)
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (0, 0, 255), 2, cv2.LINE_AA)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.45, out.shape[1] / 1600)
    line_h = int(28 * scale / 0.6)
    band = np.zeros((line_h * len(caption) + 10, out.shape[1], 3), np.uint8)
    for i, text in enumerate(caption):
        cv2.putText(band, text, (8, line_h * (i + 1)), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([out, band])


def write_png(path, picture: np.ndarray) -> None:
    """Write a PNG atomically: a temporary name beside it, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", picture)
    if not ok:
        raise OSError(f"cannot encode {path}")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)

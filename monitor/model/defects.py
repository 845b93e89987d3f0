"""Anomaly map -> defect mask, coverage and the list of defects (connected components); the verdict."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from monitor.kinds import Verdict


@dataclass(frozen=True)
class DefectConfig:
    opening: int = 3  # side of the elliptic structuring element of the morphological opening (0 = none)
    min_area: int = 16  # components smaller than this (pixels) are dropped as specks

    def __post_init__(self):
        if self.opening < 0 or self.min_area < 0:
            raise ValueError(f"defects.opening and defects.min_area must be >= 0, got {self.opening}, {self.min_area}")


@dataclass(frozen=True)
class Defect:
    area: int  # pixels
    bbox: tuple[int, int, int, int]  # x, y, width, height
    centroid: tuple[float, float]  # x, y
    peak: float  # max anomaly score inside

    def to_dict(self) -> dict:
        return {"area": self.area, "bbox": list(self.bbox), "centroid": [round(c, 1) for c in self.centroid],
                "peak": round(self.peak, 4)}


@dataclass(frozen=True)
class DefectReport:
    mask: np.ndarray  # (H, W) bool
    coverage: float  # defect pixels / image pixels
    defects: tuple[Defect, ...]  # largest first

    @property
    def largest_area(self) -> int:
        return self.defects[0].area if self.defects else 0


def find_defects(anomaly_map: np.ndarray, threshold: float, config: DefectConfig = DefectConfig()) -> DefectReport:
    raw = (anomaly_map > threshold).astype(np.uint8)
    if config.opening > 1:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (config.opening, config.opening))
        raw = cv2.morphologyEx(raw, cv2.MORPH_OPEN, k)
    n, labels, stats, cents = cv2.connectedComponentsWithStats(raw, connectivity=8)
    mask = np.zeros(raw.shape, bool)
    defects = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < config.min_area:
            continue
        comp = labels[y:y + h, x:x + w] == i
        mask[y:y + h, x:x + w] |= comp
        peak = float(anomaly_map[y:y + h, x:x + w][comp].max())
        defects.append(Defect(area, (x, y, w, h), (float(cents[i][0]), float(cents[i][1])), peak))
    defects.sort(key=lambda d: -d.area)
    return DefectReport(mask, float(mask.mean()), tuple(defects))


VERDICTS = tuple(Verdict)  # every verdict there is (the metrics' labels too)


def decide(report: DefectReport | None, coverage_threshold: float = 0.0, max_defect_area: int = 0,
           mismatch_coverage: float = 0.0, min_peak: float = float("-inf")) -> Verdict:
    """The one place a verdict is made: ``defect`` when the defect coverage exceeds ``coverage_threshold`` or (when
    set) one defect is larger than ``max_defect_area`` pixels with its peak score at least ``min_peak`` (per-defect
    evidence: a compact defect that scores well over the threshold); ``mismatch`` when (set) the coverage exceeds
    ``mismatch_coverage``: no defect covers most of an image, another material or a focus fault does;
    ``no-threshold`` for a model without a threshold."""
    if report is None:
        return Verdict.NO_THRESHOLD
    if mismatch_coverage and report.coverage > mismatch_coverage:
        return Verdict.MISMATCH
    over_area = bool(max_defect_area) and any(d.area > max_defect_area and d.peak >= min_peak for d in report.defects)
    return Verdict.DEFECT if report.defects and (report.coverage > coverage_threshold or over_area) else Verdict.OK

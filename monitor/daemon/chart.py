"""The process chart of the fibre diameter: the mean of the last images' mean diameters against the training images'.

A Shewhart chart of means: the centre is the mean of the training images' per-image mean diameters (the model's
fibre reference), the limits +-``sigmas`` standard deviations of a mean of n images (their image-to-image sd over
sqrt(n)), and never closer than ``min_band`` of the centre: the measurement itself moves by up to 2.2% on
NanoTWICE when the SEM operator changes brightness, contrast, gamma or noise (docs/fibres.md), which must not read
as a process change. The daemon exports the ratio of the
window's mean to the centre and the two limits as ratios; the alert rule SemFibreDiameterOutOfControl compares them.
"""

from __future__ import annotations

import math
from collections import deque


class FibreChart:
    """The mean diameters (pixels) of the last ``size`` measured ok images of the model in use."""

    def __init__(self, size: int, reference: dict | None, sigmas: float = 3.0, min_band: float = 0.05):
        self.values: deque[float] = deque(maxlen=size)
        d = (reference or {}).get("diameter_px") or {}
        centre, sd = d.get("mean"), d.get("sd")
        ok = isinstance(centre, (int, float)) and centre > 0 and isinstance(sd, (int, float)) and sd >= 0
        self.centre = float(centre) if ok else None
        self.sd = float(sd) if ok else None
        self.sigmas, self.min_band = sigmas, min_band

    def add(self, mean_px: float) -> None:
        self.values.append(mean_px)

    def __len__(self) -> int:
        return len(self.values)

    def ratio(self, min_images: int) -> float:
        """The window's mean over the centre (1 = as the training images); NaN with fewer than ``min_images`` or
        without a reference."""
        if self.centre is None or len(self.values) < min_images:
            return float("nan")
        return sum(self.values) / len(self.values) / self.centre

    def limits(self, min_images: int) -> tuple[float, float]:
        """(lower, upper) control limits of ``ratio`` for the images in the window now (NaN as ``ratio``)."""
        if self.centre is None or len(self.values) < min_images:
            return float("nan"), float("nan")
        half = max(self.sigmas * self.sd / (self.centre * math.sqrt(len(self.values))), self.min_band)
        return 1.0 - half, 1.0 + half

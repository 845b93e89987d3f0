"""Thresholds fitted on normal validation images and saved with the model.

Two are fitted at once from the validation images:
* ``sigma``: th = mu + alpha * sigma of the validation patch scores (the paper);
* ``fpr``:   the (1 - target_fpr) quantile of the validation pixel-map values, so that about ``target_fpr`` of
             normal pixels lie above it.
``use`` says which one makes the defect mask. An unfitted threshold raises no alarm and says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

KINDS = ("sigma", "fpr")


@dataclass(frozen=True)
class ThresholdConfig:
    alpha: float = 3.0
    target_fpr: float = 0.00002  # NanoTWICE held-out normal images: 0/4 alarms here, 1/4 at 0.0001 (README)
    use: str = "fpr"

    def __post_init__(self):
        if self.use not in KINDS:
            raise ValueError(f"threshold.use must be one of {', '.join(KINDS)}, got {self.use!r}")
        if not 0 < self.target_fpr < 1:
            raise ValueError(f"threshold.target_fpr must be in (0, 1), got {self.target_fpr}")
        if self.alpha < 0:
            raise ValueError(f"threshold.alpha must be >= 0, got {self.alpha}")


@dataclass(frozen=True)
class Threshold:
    use: str
    sigma_value: float  # mu + alpha * sigma of the validation patch scores
    fpr_value: float  # (1 - target_fpr) quantile of the validation pixel maps
    mu: float
    sigma: float
    alpha: float
    target_fpr: float
    n_images: int

    @property
    def value(self) -> float:
        return self.sigma_value if self.use == "sigma" else self.fpr_value

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Threshold | None":
        return None if d is None else cls(**d)


def fit_threshold(patch_scores: Sequence[np.ndarray], maps: Sequence[np.ndarray],
                  config: ThresholdConfig = ThresholdConfig()) -> Threshold:
    if not maps:
        raise ValueError("a threshold needs at least one normal validation image")
    ps = np.concatenate([np.asarray(p, np.float64).ravel() for p in patch_scores])
    px = np.concatenate([np.asarray(m, np.float32).ravel() for m in maps])
    mu, sd = float(ps.mean()), float(ps.std())
    return Threshold(use=config.use, sigma_value=mu + config.alpha * sd,
                     fpr_value=float(np.quantile(px, 1 - config.target_fpr)), mu=mu, sigma=sd,
                     alpha=config.alpha, target_fpr=config.target_fpr, n_images=len(maps))

"""The interface every scoring method shares, and the named type its results travel in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

Progress = Callable[[int], None]  # called with a number of units done (patches, images)


@dataclass(frozen=True)
class ScoreResult:
    anomaly_map: np.ndarray  # (H, W) float32, same size as the image; higher = more abnormal
    patch_scores: np.ndarray  # (h, w) float32 scores on the method's grid
    image_score: float  # max of the map
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


class Scorer(Protocol):
    method: str

    def fit(self, images: Sequence[np.ndarray], progress: Progress | None = None) -> None: ...

    def score(self, image: np.ndarray) -> ScoreResult: ...

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able metadata, named arrays) that ``from_state`` turns back into an equal scorer."""
        ...

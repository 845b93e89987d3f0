"""The interface every scoring method shares, the named type its results travel in, and fit progress."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

Tick = Callable[[int], None]  # called with a number of units done (patches, images, words, steps)


class Progress:
    """Progress of a fit, phase by phase (extraction, dictionary, training, calibration, threshold).

    ``phase(name, total, unit)`` starts a phase of ``total`` units and returns the callable that reports units done;
    starting a phase ends the one before. This base reports nothing (library use, tests); ``monitor fit`` shows a
    bar with an ETA per phase (``monitor.fit.ConsoleProgress``).
    """

    def phase(self, name: str, total: int, unit: str) -> Tick:
        return _nothing

    def close(self) -> None:
        pass


def _nothing(n: int) -> None:
    pass


QUIET = Progress()


@dataclass(frozen=True)
class ScoreResult:
    anomaly_map: np.ndarray  # (H, W) float32, same size as the image; higher = more abnormal
    patch_scores: np.ndarray  # (h, w) float32 scores on the method's grid
    image_score: float  # max of the map
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


class Scorer(ABC):
    """What a method implements: ``fit``, ``score``, ``state`` and ``from_state``. The optional abilities have
    defaults here that a method overrides where it can do better: ``calibrate`` (position-dependent corrections
    from normal validation images, before the threshold), ``score_batch`` (several images at once) and
    ``use_runtime`` (an inference runtime other than torch for the CPU forward pass)."""

    method: str = ""

    @abstractmethod
    def fit(self, images: Sequence[np.ndarray], progress: Progress = QUIET) -> None:
        """Learn from defect-free images."""

    @abstractmethod
    def score(self, image: np.ndarray) -> ScoreResult:
        """The anomaly map of one image, as the fitted scorer sees it."""

    @abstractmethod
    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able metadata, named arrays) that ``from_state`` turns back into an equal scorer."""

    @classmethod
    @abstractmethod
    def from_state(cls, meta: dict, arrays: dict[str, np.ndarray], device: str = "auto") -> "Scorer":
        """The scorer ``state`` saved."""

    def calibrate(self, images: Sequence[np.ndarray], progress: Progress = QUIET) -> None:
        """Nothing to calibrate by default."""

    def score_batch(self, images: Sequence[np.ndarray]) -> list[ScoreResult]:
        return [self.score(im) for im in images]

    def use_runtime(self, runtime: str) -> str:
        """Where the forward pass runs; methods without an accelerated path stay on torch."""
        return "torch"

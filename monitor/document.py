"""The result document of one image: what the result JSON beside the overlay, the ledger's copy, `monitor score` and
the results page hold. The judgement builds it (``monitor.judge``); it is written as JSON in one place
(``ResultDocument.to_json``) and read back in one place (``ResultDocument.from_json``: leniently, because the ledger
keeps the documents of older versions, and a value of the wrong type reads as absent rather than breaking a page).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from monitor.model.fibres import Fibres

_HEAD = ("image", "sha256", "line", "model_id", "scored_at")  # where and when: the daemon's, or monitor score's
# what a scored image's document always has (null where it does not apply: no threshold, no pixel size)
_SCORED = ("coverage", "n_defects", "defects", "max_score", "threshold", "score_level", "score_seconds", "alarm",
           "coverage_threshold", "max_defect_area", "pixel_size_um")


@dataclass(frozen=True)
class ResultDocument:
    verdict: str  # ok | defect | mismatch | no-threshold (defects.VERDICTS)
    alarm: bool = False
    score_seconds: float | None = None  # reading, checks and scoring
    # the scoring (None for an image that was not scored: a mismatch found before it)
    coverage: float | None = None
    n_defects: int | None = None
    defects: tuple[dict, ...] = ()  # largest first: number, area, bbox, centroid, peak (and area_um2)
    max_score: float | None = None
    threshold: float | None = None  # the map's
    score_level: float | None = None
    coverage_threshold: float | None = None
    max_defect_area: int | None = None
    pixel_size_um: float | None = None
    quality: dict | None = None  # the acquisition-quality figures (quality.figures)
    mismatch: str | None = None  # why the image was not judged against the model (verdict mismatch)
    mismatch_reason: str | None = None  # its label: size, bit_depth, pixel_size, exposure, focus, noise, coverage
    fibres: Fibres | None = None  # the mat's figures (monitor.model.fibres); None: not measured, ``fibres_reason``
    fibres_reason: str | None = None
    # the head
    image: str | None = None
    sha256: str | None = None
    line: str | None = None
    model_id: str | None = None
    scored_at: str | None = None
    overlay: str | None = None  # the overlay PNG beside the result JSON

    @property
    def scored(self) -> bool:
        return self.max_score is not None

    def with_head(self, **head) -> "ResultDocument":
        """This document with its head (image, sha256, line, model_id, scored_at) or overlay set."""
        return replace(self, **head)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {k: getattr(self, k) for k in _HEAD if getattr(self, k) is not None}
        out["verdict"] = self.verdict
        if self.scored:
            for k in _SCORED:
                v = getattr(self, k)
                out[k] = list(v) if k == "defects" else v
        else:
            out.update(score_seconds=self.score_seconds, alarm=self.alarm)
        for k in ("quality", "mismatch", "mismatch_reason"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        out["fibres"] = None if self.fibres is None else self.fibres.to_dict()
        if self.fibres is None and self.fibres_reason:
            out["fibres_reason"] = self.fibres_reason
        if self.overlay is not None:
            out["overlay"] = self.overlay
        return out

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, data: str | bytes | dict | None) -> "ResultDocument":
        """A document from its JSON (or the dict of it). Keys of other versions are ignored, a value of the wrong
        type reads as absent; a text that is not a JSON object reads as a document of verdict "unknown"."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except (ValueError, RecursionError):  # RecursionError: a text nested thousands deep
                data = None
        if not isinstance(data, dict):
            return cls("unknown")
        kinds = {"alarm": bool, "score_seconds": float, "coverage": float, "n_defects": int, "max_score": float,
                 "threshold": float, "score_level": float, "coverage_threshold": float, "max_defect_area": int,
                 "pixel_size_um": float, "quality": dict, "mismatch": str, "mismatch_reason": str,
                 "fibres_reason": str, "image": str, "sha256": str, "line": str, "model_id": str, "scored_at": str,
                 "overlay": str}
        got: dict[str, Any] = {}
        for k, kind in kinds.items():
            v = data.get(k)
            if kind is float and isinstance(v, (int, float)) and not isinstance(v, bool):
                got[k] = float(v)
            elif kind is int and isinstance(v, int) and not isinstance(v, bool):
                got[k] = v
            elif kind not in (float, int) and isinstance(v, kind):
                got[k] = v
        defects = data.get("defects")
        got["defects"] = tuple(d for d in defects if isinstance(d, dict)) if isinstance(defects, list) else ()
        fib = data.get("fibres")
        if isinstance(fib, dict):
            try:
                got["fibres"] = Fibres.from_dict(fib)
            except Exception:  # whatever a damaged or foreign copy holds: the page must still show the rest
                got["fibres_reason"] = "the fibre figures of this result cannot be read"
        verdict = data.get("verdict")
        return cls(verdict if isinstance(verdict, str) else "unknown", **got)

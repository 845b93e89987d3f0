"""Scoring methods behind one interface: ``fit(normal images)``, ``score(image) -> ScoreResult``, ``state()``."""

from .base import ScoreResult, Scorer
from .patch_dictionary import PatchDictionary, PatchDictionaryConfig

METHODS = {"patch_dictionary": (PatchDictionary, PatchDictionaryConfig)}

__all__ = ["METHODS", "PatchDictionary", "PatchDictionaryConfig", "ScoreResult", "Scorer"]

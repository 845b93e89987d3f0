"""Scoring methods behind one interface: ``fit(normal images)``, ``score(image) -> ScoreResult``, ``state()``,
``from_state()``. ``METHODS`` maps the configuration's ``model.method`` to (scorer class, its config class).

The configurations (``monitor/model/methods.py``) and ``base`` import without torch; the scorer classes and ``METHODS``
are imported when first named (PEP 562), so that a command that never scores never pays for torch."""

from monitor.model.methods import DFRConfig, PatchDictionaryConfig, PIADEConfig, SSIMAutoencoderConfig

from .base import Scorer, ScoreResult

_CLASSES = {"PatchDictionary": "patch_dictionary", "SSIMAutoencoder": "ssim_ae", "DFR": "dfr", "PIADE": "piade"}


def __getattr__(name: str):
    import importlib

    if name in _CLASSES:
        return getattr(importlib.import_module(f".{_CLASSES[name]}", __name__), name)
    if name == "METHODS":
        return {"patch_dictionary": (__getattr__("PatchDictionary"), PatchDictionaryConfig),
                "ssim_autoencoder": (__getattr__("SSIMAutoencoder"), SSIMAutoencoderConfig),
                "dfr": (__getattr__("DFR"), DFRConfig),
                "piade": (__getattr__("PIADE"), PIADEConfig)}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DFR", "DFRConfig", "METHODS", "PIADE", "PIADEConfig", "PatchDictionary", "PatchDictionaryConfig",
           "SSIMAutoencoder", "SSIMAutoencoderConfig", "ScoreResult", "Scorer"]

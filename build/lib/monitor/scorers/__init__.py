"""Scoring methods behind one interface: ``fit(normal images)``, ``score(image) -> ScoreResult``, ``state()``,
``from_state()``. ``METHODS`` maps the configuration's ``model.method`` to (scorer class, its config class)."""

from .base import Scorer, ScoreResult
from .dfr import DFR, DFRConfig
from .patch_dictionary import PatchDictionary, PatchDictionaryConfig
from .piade import PIADE, PIADEConfig
from .ssim_ae import SSIMAutoencoder, SSIMAutoencoderConfig

METHODS = {
    "patch_dictionary": (PatchDictionary, PatchDictionaryConfig),
    "ssim_autoencoder": (SSIMAutoencoder, SSIMAutoencoderConfig),
    "dfr": (DFR, DFRConfig),
    "piade": (PIADE, PIADEConfig),
}

__all__ = ["DFR", "DFRConfig", "METHODS", "PIADE", "PIADEConfig", "PatchDictionary", "PatchDictionaryConfig",
           "SSIMAutoencoder", "SSIMAutoencoderConfig", "ScoreResult", "Scorer"]

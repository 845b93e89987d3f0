"""Changeover: an image that does not fit the model is verdict ``mismatch``, not a defect alarm.

A model records what it was fitted on (``ModelMeta.fitted_on``): the image size, the bit depth, and the SEM's
pixel size when the TIFF tags carry it. An image of another size, bit depth or pixel size (another recipe, another
magnification) is not scored against it. An image whose defect mask covers most of its area (a different material,
a focus or detector fault, or a defect as large as the field, such as a film) is a mismatch too: not a defect
alarm, which a microscope fault would raise on every image, but an urgent alert of its own (SemImageMostlyAbnormal).
An image the microscope acquired badly (clipped, out of focus, too noisy: ``quality``) is a mismatch as well, with
the figures in its result, and an alert to the people who run the microscope (SemAcquisitionProblem).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from monitor.model import quality
from monitor.model.quality import QUALITY_REASONS

MISMATCH_REASONS = ("size", "bit_depth", "pixel_size", "coverage") + QUALITY_REASONS  # the metric's label values

log = logging.getLogger(__name__)
PIXEL_AGREEMENT = 0.05  # training images' pixel sizes within 5% of each other count as one magnification


@dataclass(frozen=True)
class MismatchConfig:
    """The ``mismatch`` section: what makes an image not fit the model."""

    size: bool = True  # an image of another size (after image.crop_bottom) than every training image ...
    size_tolerance: float = 0.05  # ... by more than this share of a side (NanoTWICE: normal 1024x700, test 1024x696)
    bit_depth: bool = True  # an image of another bit depth than the training images (8-bit vs 16-bit export)
    pixel_size_tolerance: float = 0.02  # relative; another SEM pixel size (magnification) than the training images'
    #                                     when both carry it in their TIFF tags (0 = not checked)
    max_coverage: float = 0.5  # defect coverage above which an image is a mismatch, not a defect (0 = off)
    # acquisition quality against the training images' (``quality``; each 0 = not checked)
    max_clipped: float = quality.QualityConfig.max_clipped  # share of pixels clipped at one end, over the training's
    min_sharpness: float = quality.QualityConfig.min_sharpness  # sharpness / the training images'
    max_noise: float = quality.QualityConfig.max_noise  # noise / the training images'

    def __post_init__(self):
        self.quality  # checks the three limits
        if not 0 <= self.size_tolerance < 1:
            raise ValueError(f"mismatch.size_tolerance must be in [0, 1), got {self.size_tolerance}")
        if not 0 <= self.pixel_size_tolerance < 1:
            raise ValueError(f"mismatch.pixel_size_tolerance must be in [0, 1), got {self.pixel_size_tolerance}")
        if not 0 <= self.max_coverage <= 1:
            raise ValueError(f"mismatch.max_coverage must be in [0, 1] (0 = off), got {self.max_coverage}")

    @property
    def quality(self) -> quality.QualityConfig:
        return quality.QualityConfig(self.max_clipped, self.min_sharpness, self.max_noise)


def fitted_on(shapes: Sequence[tuple[int, int]], infos: Sequence[dict]) -> dict:
    """What a model records of its training images: their sizes, bit depths, and the pixel size (the median) when
    every one carries it in its tags and they agree within ``PIXEL_AGREEMENT``, else None (a warning is logged
    when they disagree: the pixel-size check is then off for the model)."""
    sizes = [s for s in dict.fromkeys((int(h), int(w)) for h, w in shapes)]
    um = [i.get("pixel_size_um") for i in infos]
    pixel = None
    if um and all(um):
        if max(um) <= (1 + PIXEL_AGREEMENT) * min(um):
            pixel = sorted(um)[len(um) // 2]
        else:
            log.warning("the training images' pixel sizes differ (%.4g to %.4g nm, more than %g%%): they are not one "
                        "magnification, and the model will not check the pixel size of the images it scores",
                        1000 * min(um), 1000 * max(um), 100 * PIXEL_AGREEMENT)
    return {"image_shapes": [list(s) for s in sizes],
            "bit_depths": sorted({int(i["bits"]) for i in infos if i.get("bits")}), "pixel_size_um": pixel}


def misfit(fitted: dict | None, image: np.ndarray, info: dict, cfg: MismatchConfig,
           reference: dict | None = None) -> tuple[str, str] | None:
    """(reason, text) when ``image`` with ``info`` (``images.read_image``) does not fit a model fitted on ``fitted``
    (``fitted_on``; None for a model saved before 0.3.0: nothing is checked), or cannot be judged against its
    acquisition-quality ``reference`` (``quality.reference``; None for a model saved before 0.4.0: not checked);
    None when it fits. ``info["quality"]`` gets the image's quality figures when they are computed."""
    if not fitted:
        return None
    h, w = int(image.shape[0]), int(image.shape[1])
    shapes = [tuple(s) for s in fitted.get("image_shapes") or []]
    tol = cfg.size_tolerance
    if cfg.size and shapes and not any(abs(h - sh) <= tol * sh and abs(w - sw) <= tol * sw for sh, sw in shapes):
        want = ", ".join(f"{sw}x{sh}" for sh, sw in shapes)
        return "size", f"the image is {w}x{h} pixels, the model was fitted on {want}"
    bits = fitted.get("bit_depths") or []
    if cfg.bit_depth and bits and info.get("bits") and info["bits"] not in bits:
        return "bit_depth", (f"the image is {info['bits']}-bit, the model was fitted on "
                             f"{'/'.join(map(str, bits))}-bit images")
    want, got = fitted.get("pixel_size_um"), info.get("pixel_size_um")
    if cfg.pixel_size_tolerance and want and got and abs(got - want) > cfg.pixel_size_tolerance * want:
        return "pixel_size", (f"the image's pixel size is {got * 1000:.3g} nm (TIFF tags), the model was fitted "
                              f"at {want * 1000:.3g} nm (another magnification)")
    if reference is not None:
        info["quality"] = figs = quality.figures(image, reference["quantiles"])
        return quality.assess(figs, reference, cfg.quality)
    return None

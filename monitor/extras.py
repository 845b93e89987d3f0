"""What an installation has: the line PC's runtime (``pip install sem-line-monitor``: scoring, the daemon, the page)
or the fitting one (``[fit]``: torch, torchvision, the backbone's weights, scikit-learn), needed to fit or refit a
model, for the other methods (SSIM autoencoder, DFR, PIADE) and for CUDA. A command that needs what is missing says
so in one line (``MissingExtra``) instead of a traceback."""

from __future__ import annotations

import importlib.util
import os

from monitor.errors import MonitorError

FIT = "sem-line-monitor[fit]"


class MissingExtra(MonitorError, RuntimeError):
    """This installation lacks the packages a command needs."""


def installed(dist: str) -> str | None:
    """The installed version of the distribution ``dist``, None when it is not installed; without importing it
    (torch and OpenVINO take seconds to import)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def need_torch(what: str) -> None:
    """Raise ``MissingExtra`` when torch is not installed, naming ``what`` needs it and the extra that brings it."""
    if not has_torch():
        raise MissingExtra(f"{what} needs torch, which this installation does not have (a line PC's scoring "
                           f"install); install the fitting extra: pip install '{FIT}'")


def cuda_wanted(device: str) -> bool:
    """Whether ``device`` ("auto", "cpu", "cuda", "cuda:1") means the GPU. "auto" imports torch only when it is
    installed and the host has an NVIDIA driver, so that a CPU line PC with the full install does not pay for it."""
    if device.startswith("cuda"):
        return True
    if device != "auto" or not has_torch() or not os.path.exists("/dev/nvidiactl"):
        return False
    import torch

    return torch.cuda.is_available()

"""Shared by the trained methods: module weights <-> artifact arrays, seeding, the learning-rate schedule."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def module_arrays(module: nn.Module, prefix: str) -> dict[str, np.ndarray]:
    """A module's state dict as named numpy arrays (stored in the artifact's npz; never pickled)."""
    return {f"{prefix}.{k}": v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def load_module_arrays(module: nn.Module, arrays: dict[str, np.ndarray], prefix: str) -> None:
    sd = {k[len(prefix) + 1:]: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()
          if k.startswith(prefix + ".")}
    module.load_state_dict(sd, strict=True)


def seeded(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def cosine_lr(step: int, steps: int, lr: float, warmup: int = 0) -> float:
    """Linear warm-up over the first ``warmup`` steps, then a cosine decay to 0 at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, step: int, steps: int, lr: float,
                   warmup: int = 0) -> None:
    """Set the learning rate for ``step`` of ``steps`` (see cosine_lr), then one backward pass and update."""
    for group in opt.param_groups:
        group["lr"] = cosine_lr(step, steps, lr, warmup)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

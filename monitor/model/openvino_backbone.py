"""The EfficientNet-Lite0 backbone on OpenVINO, Intel's inference runtime for CPUs (anomalib deploys on it too).

The graph is built here, op by op, from the torch module's own weights (batch norms folded into the convolutions),
not traced or converted: OpenVINO's model converter reports usage over the network by default, and the product
must not touch the network. Even ``import openvino`` imports the converter, which sends a usage event to Google
Analytics from a background thread and writes an id under ``~/intel``; ``import_openvino`` imports it with the
telemetry package blocked, so OpenVINO falls back to its own no-op stub. TensorFlow's SAME padding is OpenVINO's
``same_upper`` auto-padding, so one graph with dynamic batch and image size serves every input; OpenVINO compiles
kernels per shape as it meets them.

``OpenVinoLite0`` is built once per backbone and checked against the torch path on its first input (the daemon's
warm-up image, ``Model.warm_up``): the features must agree within ``TOLERANCE`` of their largest magnitude, else
the error is logged and the backbone runs on torch from then on. The graph is the same for every shape, so one
check stands for all (the tests check several shapes and a batch). The runtime is used on the CPU only; CUDA
stays with torch.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import torch

from monitor.model.graph import import_openvino  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

# largest |openvino - torch| allowed, as a fraction of the largest |torch| of each feature map; float32 kernels
# that sum in another order differ by about 1e-6 of it on real SEM images (README, "Scoring speed")
TOLERANCE = 1e-4


class RuntimeUnavailable(RuntimeError):
    """OpenVINO cannot be used (not installed, or this backbone has no OpenVINO graph)."""


def _fold(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias of ``bn(conv(x))`` as one convolution (inference: the running statistics)."""
    g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight * g.view(-1, 1, 1, 1)
    b = bn.bias - bn.running_mean * g
    return w.detach().float().cpu().numpy(), b.detach().float().cpu().numpy()


def lite0_nodes(ops, x, net, layers, gray: bool = False) -> dict:
    """The OpenVINO nodes of ``layers`` of the EfficientNet-Lite0 ``net`` (a torch module, batch norms folded into
    the convolutions) applied to the node ``x`` (N, 3, H, W), normalised input. ``gray``: ``x`` is (N, 1, H, W), the
    one channel the three would repeat; the stem then sums its filters over the three (the same sums, without
    writing the image three times)."""

    def conv(y, module, bn, act=True, groups=1):
        w, b = _fold(module, bn)
        if gray and module is net._conv_stem:
            w = w.sum(axis=1, keepdims=True)
        s = module.stride
        if groups > 1:
            w = w.reshape(groups, w.shape[0] // groups, w.shape[1], *w.shape[2:])
            y = ops.group_convolution(y, ops.constant(w), list(s), [0, 0], [0, 0], [1, 1], auto_pad="same_upper")
        else:
            y = ops.convolution(y, ops.constant(w), list(s), [0, 0], [0, 0], [1, 1], auto_pad="same_upper")
        y = ops.add(y, ops.constant(b.reshape(1, -1, 1, 1)))
        return ops.clamp(y, 0.0, 6.0) if act else y

    want = set(layers)
    outputs = {}
    y = conv(x, net._conv_stem, net._bn0)
    ends = {end: f"stage{i + 1}" for i, end in enumerate(net.stage_ends)}
    for i, blk in enumerate(net._blocks):
        z = y
        if blk.has_expand:
            z = conv(z, blk._expand_conv, blk._bn0)
        z = conv(z, blk._depthwise_conv, blk._bn1, groups=blk._depthwise_conv.groups)
        z = conv(z, blk._project_conv, blk._bn2, act=False)
        y = ops.add(z, y) if blk.skip else z
        if ends.get(i) in want:
            outputs[ends[i]] = y
        if len(outputs) == len(want):
            break
    if len(outputs) < len(want):
        y = conv(y, net._conv_head, net._bn1)
        if "head" in want:
            outputs["head"] = y
        if "avgpool" in want:
            outputs["avgpool"] = ops.reduce_mean(y, ops.constant(np.array([2, 3], np.int64)), keep_dims=True)
    return outputs


class OpenVinoLite0:
    """``__call__(x)``: (N, 3, H, W) float32 normalised batch -> {layer: (N, C, h, w) torch tensor}, like torch."""

    def __init__(self, backbone, threads: int):
        try:
            ov = import_openvino()
            import openvino.opset13 as ops
        except ImportError as exc:
            raise RuntimeUnavailable(f"the openvino package is not installed ({exc})") from None
        if backbone.name != "efficientnet_lite0":
            raise RuntimeUnavailable(f"no OpenVINO graph for the {backbone.name} backbone")
        self.backbone = backbone
        x = ops.parameter([-1, 3, -1, -1], np.float32, name="x")
        outputs = lite0_nodes(ops, x, backbone.net, backbone.layers)
        self.layers = list(backbone.layers)
        model = ov.Model([outputs[n] for n in self.layers], [x], "efficientnet_lite0")
        core = ov.Core()
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                          "INFERENCE_NUM_THREADS": int(threads),
                                                          "PERFORMANCE_HINT": "LATENCY"})
        self.version = ov.get_version()
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()
        self.verified: bool | None = None  # None until the first input was checked against torch

    def run(self, x: np.ndarray) -> dict[str, torch.Tensor]:
        with self._lock:  # one request object; its output buffers are reused, so copy them out
            res = self._request.infer({0: x})
            return {n: torch.from_numpy(np.array(res[self.compiled.output(i)])) for i, n in enumerate(self.layers)}

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """The feature maps, or None once the check failed (the caller then runs torch)."""
        if self.verified is False:
            return None
        out = self.run(np.ascontiguousarray(x.detach().float().numpy()))
        if self.verified is None:
            self.verified = self._check(x, out)
            if not self.verified:
                return None
        return out

    def _check(self, x: torch.Tensor, out: dict[str, torch.Tensor]) -> bool:
        ref = self.backbone.torch_forward(x)
        worst = max_relative_difference(out, ref)
        if worst > TOLERANCE:
            log.error("OpenVINO features differ from torch by %.2g of their range on input %s (allowed %.0e): "
                      "the backbone runs on torch", worst, "x".join(map(str, x.shape)), TOLERANCE)
            return False
        log.info("OpenVINO matches torch within %.2g of the features' range on input %s", worst,
                 "x".join(map(str, x.shape)))
        return True


def max_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max over layers of max|a - b| / max|b|."""
    return max(float((a[n].float() - b[n].float()).abs().max() / b[n].float().abs().max().clamp_min(1e-12))
               for n in b)

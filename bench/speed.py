"""Time per image of dense mode (measured on whole images) against crop mode (the paper), in one run.

    .venv/bin/python bench/speed.py --model models/dense \
        --images ../shared/data/nanotwice/Dataset/SEM_Data/Anomalous/images

Dense: load + score of each whole image, model loaded once; p50/p95 over the images (after one warm-up).
Crop:  the same backbone, patch 32, stride 8, input 224, avgpool, run on a strip of ``--crop-rows`` image rows;
       its patches-per-second rate times the patch count of a whole image gives the per-image time. That last step
       is an extrapolation (crop time is linear in the patch count); it is labelled as such in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from monitor.commands.evaluate import percentiles
from monitor.model.backbones import build_backbone
from monitor.model.features import CropExtractor, patch_count
from monitor.model.images import list_images, read_image
from monitor.model.model import Model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", required=True, nargs="+")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--crop-rows", type=int, default=48)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    paths = list_images(a.images)[: a.limit]
    model = Model.load(a.model, a.device)
    img = read_image(paths[0])
    model.inspect(img)  # warm-up
    times = []
    for p in paths:
        t0 = time.perf_counter()
        model.inspect(read_image(p))
        times.append(time.perf_counter() - t0)
    dense = percentiles(times)

    H, W = img.shape
    bb = build_backbone("efficientnet_lite0", ["avgpool"]).to(a.device)
    ex = CropExtractor(bb, 32, 8, 224, 64)
    strip = img[: a.crop_rows]
    ex(strip[:32, :64])  # warm-up
    t0 = time.perf_counter()
    g = ex(strip)
    dt = time.perf_counter() - t0
    n_strip = g.grid_shape[0] * g.grid_shape[1]
    n_full = patch_count((H, W), 32, 8)
    rate = n_strip / dt
    crop_est = n_full / rate
    out = {
        "machine": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
                   f"cpus {os.cpu_count()}, device {a.device}",
        "image": f"{W}x{H}", "dense_seconds": dense,
        "crop": {"patches_per_second": rate, "patches_per_image": n_full, "strip_patches": n_strip,
                 "seconds_per_image_extrapolated": crop_est},
        "speedup_dense_p50_vs_crop": crop_est / dense["p50"],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

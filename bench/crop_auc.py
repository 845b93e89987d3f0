"""Crop mode (the paper) against the dense default on a subset of NanoTWICE, in one run.

    .venv/bin/python bench/crop_auc.py --data ../shared/data/nanotwice --every 8 --out bench-crop

Crop mode costs minutes per image on a CPU (about 10,500 network passes for a 1024x700 image), so the whole paper
protocol (4 fit images + 40 test images) takes hours. This script measures what fits in a session:

* both models are fitted on the protocol's four normal images; the dense one, as in production, also calibrates its
  border rings and fits its threshold on the fifth (the paper has no border calibration); the crop dictionary (the
  paper's setting: patch 32, input 224, avgpool, L1, PCA 95%, k-means k = 10) is built from patches at stride
  ``--fit-stride`` (default 16: a quarter of the patches, about 10,000 for k = 10), the test maps use the paper's
  stride 8;
* every ``--every``-th test image is scored by both (load + score timed), and pixel ROC-AUC, PRO-AUC and per-defect
  coverage at 5% FPR are computed over that subset for both, so the two numbers are comparable with each other
  (not with the 40-image numbers).

A line per image is printed (and kept in OUT/images.jsonl) as it finishes; OUT/crop_auc.json holds the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from monitor.commands.evaluate import load_dataset, percentiles, summarize
from monitor.model.features import CropExtractor
from monitor.model.images import read_image, read_mask
from monitor.model.model import Model
from monitor.model.scorers import PatchDictionaryConfig
from monitor.model.scorers.patch_dictionary import PatchDictionary

PAPER = PatchDictionaryConfig(mode="crop", layers=("avgpool",), patch_size=32, stride=8, input_size=224,
                              pca_variance=0.95, dictionary="kmeans", k=10, m=1, border_rings=0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--every", type=int, default=8, help="score every N-th test image (1 = all 40)")
    ap.add_argument("--fit-stride", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="bench-crop")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(a.data, "nanotwice")
    normal = [read_image(p) for p in ds.train]
    val = [read_image(p) for p in ds.val]

    t0 = time.perf_counter()
    dense = Model.fit("patch_dictionary", PatchDictionaryConfig(), normal, val, device=a.device)
    dense_fit = time.perf_counter() - t0

    t0 = time.perf_counter()
    scorer = PatchDictionary(PAPER, a.device)  # fitted by hand: the fit extractor's stride differs from the test's
    test_extractor = scorer.extractor
    scorer.extractor = CropExtractor(scorer.backbone, PAPER.patch_size, a.fit_stride, PAPER.input_size,
                                     PAPER.batch_size)
    scorer.fit(normal)
    scorer.extractor = test_extractor
    crop_fit = time.perf_counter() - t0
    print(f"fitted: dense {dense_fit:.0f} s, crop {crop_fit:.0f} s (fit stride {a.fit_stride})", flush=True)

    samples = ds.test[:: a.every]
    maps: dict[str, list[np.ndarray]] = {"dense": [], "crop": []}
    times: dict[str, list[float]] = {"dense": [], "crop": []}
    masks = []
    with open(out / "images.jsonl", "w") as log:
        for s in samples:
            row = {"image": s.image.name}
            for name in ("dense", "crop"):
                t0 = time.perf_counter()
                img = read_image(s.image)
                amap = dense.scorer.score(img).anomaly_map if name == "dense" else scorer.score(img).anomaly_map
                times[name].append(time.perf_counter() - t0)
                maps[name].append(amap)
                row[f"{name}_seconds"] = round(times[name][-1], 3)
            masks.append(read_mask(s.mask, maps["dense"][-1].shape))
            row.update({f"{n}_pixel_auroc": round(summarize([maps[n][-1]], [masks[-1]])["pixel_auroc"], 4)
                        for n in maps})
            print(json.dumps(row), flush=True)
            log.write(json.dumps(row) + "\n")
            log.flush()

    report = {
        "machine": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
                   f"cpus {os.cpu_count()}, device {a.device}",
        "images": [s.image.name for s in samples],
        "crop_setting": {"patch_size": 32, "stride": 8, "fit_stride": a.fit_stride, "input_size": 224,
                         "layer": "avgpool", "pca_variance": 0.95, "dictionary": "kmeans", "k": 10},
        "fit_seconds": {"dense": dense_fit, "crop": crop_fit},
    }
    for name in maps:
        report[name] = {**summarize(maps[name], masks), "time_per_image_seconds": percentiles(times[name])}
    report["speedup_p50"] = report["crop"]["time_per_image_seconds"]["p50"] / \
        report["dense"]["time_per_image_seconds"]["p50"]
    (out / "crop_auc.json").write_text(json.dumps(report, indent=2))
    for name in maps:
        r = report[name]
        print(f"{name}: pixel AUC {r['pixel_auroc']:.4f}, PRO {r['pro_auc_30']:.3f}, median coverage "
              f"{r['coverage_at_5pct_fpr']['median']:.3f}, p50 {r['time_per_image_seconds']['p50']:.2f} s")
    print(f"speed-up p50: {report['speedup_p50']:.0f}x")


if __name__ == "__main__":
    main()

"""The scoring path of 0.4.0 (the torch scorer, its backbone on OpenVINO, every cell against every word) against the
model's inference graph (f32 and bf16, with the model's coarse-to-fine search), in one run.

    .venv/bin/python bench/graph_speed.py --model MODEL_DIR [--images DIR ...] [--limit 20] [--rounds 3]

Per path, model loaded: start (load, compile, the warm-up image), then per image read + judge (score, defects:
``Model.inspect``), p50 and p95 over the images and rounds; in each round every path is loaded, scores all the
images and is let go before the next (one model in the process at a time, as in the daemon: two compiled OpenVINO
models keep two thread pools busy on the same cores; the rounds spread the shared machine's moods over all paths).
Also the largest difference of each path's maps from the 0.4.0 path's (relative to the threshold), and the verdicts
and coverages that differ.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
from pathlib import Path

import numpy as np

from monitor.model.images import list_images, read_image
from monitor.model.model import Model

ROOT = Path(__file__).resolve().parent.parent


def load(model: str, path: str) -> Model:
    if path == "0.4.0":  # the torch scorer, its backbone on OpenVINO, every cell against every word
        m = Model.load(model, "cpu", runtime="torch")
        m.runtime = m.scorer.use_runtime("openvino")
        m.scorer.coarse_limit = m.scorer.coarse_limit[:0]
        return m
    return Model.load(model, "cpu", precision=path.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", nargs="+",
                    default=[str(ROOT.parent / "shared/data/nanotwice/Dataset/SEM_Data/Anomalous/images")])
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--paths", default="0.4.0,graph f32,graph bf16")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    paths = list_images(a.images)[: a.limit]
    names = a.paths.split(",")
    start = {}
    times = {n: [] for n in names}
    results = {n: [] for n in names}
    threshold = None
    for r in range(a.rounds):
        for n in names:
            t = time.perf_counter()
            m = load(a.model, n)
            m.inspect(read_image(paths[0]))
            start.setdefault(n, time.perf_counter() - t)
            threshold = m.threshold.value
            for p in paths:
                t = time.perf_counter()
                ins = m.inspect(read_image(p))
                times[n].append(time.perf_counter() - t)
                if r == 0:
                    results[n].append(ins)
            del m
            gc.collect()
    ref = results[names[0]]
    th = threshold
    rows = {}
    for n in names:
        diff = max(float(np.abs(r.result.anomaly_map - q.result.anomaly_map).max()) for r, q in zip(results[n], ref))
        rows[n] = {"p50_ms": round(float(np.median(times[n])) * 1000, 1),
                   "p95_ms": round(float(np.quantile(times[n], 0.95)) * 1000, 1),
                   "start_s": round(start[n], 2),
                   "max_map_difference_of_threshold": float(f"{diff / th:.2g}"),
                   "verdicts_changed": sum(r.verdict != q.verdict for r, q in zip(results[n], ref)),
                   "max_coverage_change": round(max(abs(r.report.coverage - q.report.coverage)
                                                    for r, q in zip(results[n], ref)), 6)}
    print(json.dumps({"machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
                      "images": len(paths), "paths": rows}, indent=1))


if __name__ == "__main__":
    main()

"""Where the time of one image goes, stage by stage, through the model's inference graph and with torch, in one run.

    .venv/bin/python bench/profile.py --model MODEL_DIR [--images DIR ...] [--limit 20]

Per image, model loaded: read (decode the TIFF), then for the graph (``runtime: openvino``, the default) graph
(backbone, projection and nearest words in one OpenVINO model), for torch features (backbone and grid) and
distances (PCA projection and nearest words), then map (border zones, grid to pixels, blur), defects (mask,
components), overlay (draw and write the PNG, which the daemon does for alarms only), each the p50 over the images
after one warm-up; the two paths alternate image by image.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from monitor.daemon.alarm import write_outputs
from monitor.document import ResultDocument
from monitor.model.images import list_images, read_image
from monitor.model.model import Model
from monitor.times import local_time  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("read", "graph", "features", "distances", "map", "defects", "overlay", "total")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", nargs="+",
                    default=[str(ROOT.parent / "shared/data/nanotwice/Dataset/SEM_Data/Anomalous/images")])
    ap.add_argument("--limit", type=int, default=20)
    a = ap.parse_args()
    paths = list_images(a.images)[: a.limit]
    models = {rt: Model.load(a.model, "cpu", runtime=rt) for rt in ("openvino", "torch")}
    times = {rt: {s: [] for s in STAGES} for rt in models}
    out = Path(tempfile.mkdtemp(prefix="profile-"))
    for m in models.values():
        m.inspect(read_image(paths[0]))
    for i, p in enumerate(paths):
        for rt, m in models.items():
            t0 = time.perf_counter()
            img = read_image(p)
            t1 = time.perf_counter()
            ins = m.inspect(img)
            t2 = time.perf_counter()
            result = ResultDocument.from_json({"image": str(p), "line": "bench", "model_id": m.model_id,
                                               "scored_at": local_time(), **ins.summary()})
            write_outputs(out, f"{rt}-{i}", img, ins, result)
            t3 = time.perf_counter()
            row = times[rt]
            row["read"].append(t1 - t0)
            for s, t in ins.result.timings.items():
                row[s].append(t)
            row["overlay"].append(t3 - t2)
            row["total"].append(t3 - t0)
    print(json.dumps({rt: {s: round(float(np.median(v)) * 1000, 1) for s, v in row.items() if v}
                      for rt, row in times.items()}, indent=1), "(ms, p50 per stage)")


if __name__ == "__main__":
    main()

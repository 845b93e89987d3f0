"""Alarm operating point on NanoTWICE: false alarms on held-out normal images against alarms on anomalous ones.

    .venv/bin/python bench/operating_point.py [--fpr 0.001 0.0005 0.0001] [--set '{"border_rings": 0}']

The protocol has no normal test images, so the normal side is leave-one-out: for each of ITIA1141-1144, a model is
fitted on the other three (border calibration and threshold on ITIA1145, as ``monitor fit --val`` does) and the
held-out image is inspected. The anomalous side: a model fitted on all four inspects the 40 test images. For each
``threshold.target_fpr`` it prints the defect coverage of each held-out normal image and how many images of each
kind alarm: coverage over ``--coverage`` (the daemon's ``alarm.coverage_threshold``, default 0.001), or one defect
over ``--area`` pixels (``alarm.max_defect_area``) whose peak is ``--margin`` (``alarm.peak_margin``) over the
threshold, as ``defects.decide`` judges it. The images are normalised as the model does (``model.normalize``);
``--set '{"normalize": false}'`` scores them as 0.3.0 did, ``'{"clip": [0, 1]}'`` clips nothing, ``--area 0``
decides on coverage alone as 0.3.0 did.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from monitor.commands.evaluate import load_dataset  # noqa: E402
from monitor.config import AlarmSection  # noqa: E402
from monitor.model.defects import DefectConfig, decide, find_defects  # noqa: E402
from monitor.model.images import read_image  # noqa: E402
from monitor.model.model import Model  # noqa: E402
from monitor.model.quality import CLIP_LEVELS  # noqa: E402
from monitor.model.scorers import PatchDictionaryConfig  # noqa: E402
from monitor.model.threshold import ThresholdConfig, fit_threshold  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "nanotwice"))
    ap.add_argument("--fpr", type=float, nargs="+", default=[0.001, 0.0005, 0.0001])
    ap.add_argument("--coverage", type=float, default=AlarmSection.coverage_threshold)
    ap.add_argument("--area", type=int, default=AlarmSection.max_defect_area)
    ap.add_argument("--margin", type=float, default=AlarmSection.peak_margin)
    ap.add_argument("--set", default="{}", help="JSON object of PatchDictionaryConfig overrides")
    a = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    over = json.loads(a.set)
    normalize = over.pop("normalize", True)
    clip = tuple(over.pop("clip", CLIP_LEVELS))
    cfg = PatchDictionaryConfig(**over)
    ds = load_dataset(a.data, "nanotwice")
    train = [read_image(p) for p in ds.train]
    val = [read_image(p) for p in ds.val]
    test = [read_image(s.image) for s in ds.test]

    def coverages(model: Model, images) -> dict[float, list[tuple[float, bool]]]:
        """Per target_fpr: (coverage, alarmed) of each image."""
        vres = [model.scorer.score(model.prepare(v)) for v in val]
        maps = [model.scorer.score(model.prepare(im)).anomaly_map for im in images]
        out = {}
        for q in a.fpr:
            th = fit_threshold([r.patch_scores for r in vres], [r.anomaly_map for r in vres],
                               ThresholdConfig(target_fpr=q)).value
            reps = [find_defects(m, th, DefectConfig()) for m in maps]
            out[q] = [(r.coverage, decide(r, a.coverage, a.area, 0.0, th * (1 + a.margin)) == "defect")
                      for r in reps]
        return out

    normal = {q: [] for q in a.fpr}
    for k in range(len(train)):
        model = Model.fit("patch_dictionary", cfg, train[:k] + train[k + 1:], val, device="cpu", normalize=normalize,
                          clip=clip)
        for q, cov in coverages(model, [train[k]]).items():
            normal[q] += cov
    full = Model.fit("patch_dictionary", cfg, train, val, device="cpu", normalize=normalize, clip=clip)
    anomalous = coverages(full, test)
    for q in a.fpr:
        print(json.dumps({"target_fpr": q, "held_out_normal_coverage": [round(c, 5) for c, _ in normal[q]],
                          "normal_alarms": f"{sum(x for _, x in normal[q])}/{len(normal[q])}",
                          "anomalous_alarms": f"{sum(x for _, x in anomalous[q])}/{len(anomalous[q])}",
                          "anomalous_by_coverage_alone": f"{sum(c > a.coverage for c, _ in anomalous[q])}/40",
                          "missed": [ds.test[i].image.stem for i, (_, x) in enumerate(anomalous[q]) if not x],
                          "anomalous_median_coverage": round(float(np.median([c for c, _ in anomalous[q]])), 5)}),
              flush=True)


if __name__ == "__main__":
    main()

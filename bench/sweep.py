"""Compare patch-dictionary settings on NanoTWICE (paper protocol), one line of JSON per setting.

    .venv/bin/python bench/sweep.py '{}' '{"aggregate": 3}' '{"pca_variance": 0.99}' ... [--fpr=0.0001]

Each argument is a JSON object of PatchDictionaryConfig overrides of the defaults. Fits on ITIA1141-1144 (border
calibration on ITIA1145, as ``monitor fit --val`` does), scores the 40 anomalous images; prints pixel ROC-AUC on the
40 and the paper's 35, PRO-AUC to 30% FPR, the median per-defect coverage at 5% FPR (40 and 35), the p50 time per
image (scoring only, image already loaded), the fit time, the feature dimension after PCA, and the predicted defects
at the fitted threshold (``--fpr``, default ``threshold.target_fpr``): all, those touching the image border, and those
touching it with less than 10% of their pixels on a true defect. The README's "what each choice changed" numbers
come from this script.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from monitor.commands.evaluate import load_dataset, summarize  # noqa: E402
from monitor.model.defects import find_defects  # noqa: E402
from monitor.model.images import ImageLimits, read_image  # noqa: E402
from monitor.model.scorers.patch_dictionary import PatchDictionary, PatchDictionaryConfig  # noqa: E402
from monitor.model.threshold import ThresholdConfig, fit_threshold  # noqa: E402


def border_components(maps, masks, threshold: float) -> tuple[int, int, int]:
    """Predicted defects (the daemon's defect step at ``threshold``): all, those touching the image border, and
    those touching it with less than 10% of their pixels on a ground-truth defect."""
    n = touch = false = 0
    for amap, gt in zip(maps, masks):
        mask = find_defects(amap, threshold).mask
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        H, W = amap.shape
        for i in range(1, count):
            x, y, w, h, _ = (int(v) for v in stats[i])
            n += 1
            if x == 0 or y == 0 or x + w == W or y + h == H:
                touch += 1
                comp = labels == i
                false += (comp & gt).sum() < 0.1 * comp.sum()
    return n, touch, int(false)


def main() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    ds = load_dataset(ROOT.parent / "shared" / "data" / "nanotwice", "nanotwice")
    train = [read_image(p, ImageLimits()) for p in ds.train]
    val = [read_image(p, ImageLimits()) for p in ds.val]
    test = [(read_image(s.image, ImageLimits()), cv2.imread(str(s.mask), 0) > 0, s.image.stem) for s in ds.test]
    keep = set(ds.subsets["paper35"])
    idx35 = [i for i, (_, _, stem) in enumerate(test) if stem in keep]
    args = [a for a in sys.argv[1:] if not a.startswith("--fpr=")]
    fpr = [float(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--fpr=")]
    threshold = ThresholdConfig(target_fpr=fpr[0]) if fpr else ThresholdConfig()
    for arg in args or ["{}"]:
        overrides = json.loads(arg)
        pd = PatchDictionary(PatchDictionaryConfig(**overrides), "cpu")
        t0 = time.perf_counter()
        pd.fit(train)
        pd.calibrate(val)
        fit = time.perf_counter() - t0
        maps, times = [], []
        for img, _, _ in test:
            t0 = time.perf_counter()
            maps.append(pd.score(img).anomaly_map)
            times.append(time.perf_counter() - t0)
        masks = [m for _, m, _ in test]
        vres = [pd.score(v) for v in val]
        th = fit_threshold([r.patch_scores for r in vres], [r.anomaly_map for r in vres], threshold).value
        comps, touch, false = border_components(maps, masks, th)
        a = summarize(maps, masks)
        b = summarize([maps[i] for i in idx35], [masks[i] for i in idx35])
        print(json.dumps(overrides), json.dumps({
            "auc40": round(a["pixel_auroc"], 4), "auc35": round(b["pixel_auroc"], 4),
            "pro": round(a["pro_auc_30"], 3),
            "cov": round(a["coverage_at_5pct_fpr"]["median"], 3),
            "cov35": round(b["coverage_at_5pct_fpr"]["median"], 3),
            "p50": round(float(np.median(times)), 3), "fit": round(fit, 1), "dim": int(pd.words.shape[1]),
            "defects": comps, "at_border": touch, "at_border_false": false}), flush=True)


if __name__ == "__main__":
    main()

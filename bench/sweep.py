"""Compare patch-dictionary settings on NanoTWICE (paper protocol), one line of JSON per setting.

    .venv/bin/python bench/sweep.py '{}' '{"aggregate": 3}' '{"pca_variance": 0.99}' ...

Each argument is a JSON object of PatchDictionaryConfig overrides of the defaults. Fits on ITIA1141-1144 (border
calibration on ITIA1145, as ``monitor fit --val`` does), scores the 40 anomalous images; prints pixel ROC-AUC on the
40 and the paper's 35, PRO-AUC to 30% FPR, the median per-defect coverage at 5% FPR (40 and 35), the p50 time per
image (scoring only, image already loaded), the fit time and the feature dimension after PCA. The README's "what
each choice changed" numbers come from this script.
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

from monitor.evaluate import load_dataset, summarize  # noqa: E402
from monitor.images import ImageLimits, read_image  # noqa: E402
from monitor.scorers.patch_dictionary import PatchDictionary, PatchDictionaryConfig  # noqa: E402


def main() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    ds = load_dataset(ROOT.parent / "shared" / "data" / "nanotwice", "nanotwice")
    train = [read_image(p, ImageLimits()) for p in ds.train]
    val = [read_image(p, ImageLimits()) for p in ds.val]
    test = [(read_image(s.image, ImageLimits()), cv2.imread(str(s.mask), 0) > 0, s.image.stem) for s in ds.test]
    keep = set(ds.subsets["paper35"])
    idx35 = [i for i, (_, _, stem) in enumerate(test) if stem in keep]
    for arg in sys.argv[1:] or ["{}"]:
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
        a = summarize(maps, masks)
        b = summarize([maps[i] for i in idx35], [masks[i] for i in idx35])
        print(json.dumps(overrides), json.dumps({
            "auc40": round(a["pixel_auroc"], 4), "auc35": round(b["pixel_auroc"], 4),
            "pro": round(a["pro_auc_30"], 3),
            "cov": round(a["coverage_at_5pct_fpr"]["median"], 3), "cov35": round(b["coverage_at_5pct_fpr"]["median"], 3),
            "p50": round(float(np.median(times)), 3), "fit": round(fit, 1), "dim": int(pd.words.shape[1])}), flush=True)


if __name__ == "__main__":
    main()

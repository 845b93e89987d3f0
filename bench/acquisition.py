"""Verdicts under the SEM operator's routine changes (brightness, contrast, gamma, noise, focus) on NanoTWICE.

    .venv/bin/python bench/acquisition.py [--set '{"normalize": false}'] [--only none,contrast1.25] [--maps DIR]

Each change is applied to the pixels of the 8-bit images (float in [0, 1], then clipped and rounded to 8 bits,
as a PNG export would hold them): ``brightness+0.1`` adds 10% of the range, ``contrast1.25`` scales around the
image's mean gray, ``gamma0.8`` raises to that power, ``noise0.03`` adds Gaussian noise of sigma 3% of the range
(seeded per image), ``blur1`` is a Gaussian blur of sigma 1 px (a slight defocus); ``a+b`` applies a then b.
All rows come from one run, side by side with the unchanged images (``none``). Per change:

* pixel ROC-AUC and PRO-AUC (30% FPR) of the 40 anomalous images, under the protocol's model (dictionary
  ITIA1141-1144, threshold ITIA1145);
* ``flagged``: the share of the pixels of the clean ITIA1145 in the defect mask, under a model fitted on
  ITIA1141-1143 with ITIA1144 as threshold image;
* the verdicts (the daemon's: the acquisition-quality checks first, then the defect decision) of the 40 anomalous
  images (``defect`` / ``mismatch``), of ITIA1145 under that model, and of each of ITIA1141-1144 held out (fitted on
  the other three, threshold on ITIA1145, as bench/operating_point.py does).

``--set`` takes JSON overrides of ``normalize`` (the ``model`` section's), ``max_defect_area`` and ``peak_margin``
(``alarm``), ``max_clipped``, ``min_sharpness`` and ``max_noise`` (``mismatch``) and of the patch-dictionary
settings; the scoring path of 0.3.0 is ``'{"normalize": false, "max_defect_area": 0, "max_clipped": 0,
"min_sharpness": 0, "max_noise": 0}'``.
``--maps DIR`` saves each change's maps (float16 .npz) for studies of the decision.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from monitor.commands.evaluate import load_dataset, summarize  # noqa: E402
from monitor.config import Config  # noqa: E402
from monitor.model.images import read_image, read_mask  # noqa: E402
from monitor.model.mismatch import misfit  # noqa: E402
from monitor.model.model import Model  # noqa: E402
from monitor.model.scorers import PatchDictionaryConfig  # noqa: E402
from monitor.model.synth import change, parse  # noqa: E402

ENVELOPE = {"brightness": (0.1, -0.1), "contrast": (0.8, 1.25), "gamma": (0.8, 1.25), "noise": (0.03,)}


def routine_changes() -> list[str]:
    """The envelope's extremes alone and every pair of two kinds (the issue's "any combination of two")."""
    singles = [f"{k}{v:+g}" if k == "brightness" else f"{k}{v:g}" for k, vs in ENVELOPE.items() for v in vs]
    pairs = [f"{a}+{b}" for a, b in itertools.combinations(singles, 2)
             if a.rstrip("0123456789.+-") != b.rstrip("0123456789.+-")]
    return singles + pairs


BEYOND = ["contrast1.2", "brightness-0.08", "blur0.5", "blur1", "blur2", "noise0.05", "brightness+0.3",
          "brightness-0.3", "contrast2"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "nanotwice"))
    ap.add_argument("--set", default="{}")
    ap.add_argument("--only", default="", help="comma-separated change names (default: none, the envelope, beyond)")
    ap.add_argument("--maps", default="")
    a = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    over = json.loads(a.set)
    normalize = over.pop("normalize", True)
    alarm = {k: over.pop(k) for k in ("max_defect_area", "peak_margin") if k in over}
    mism = {k: over.pop(k) for k in ("max_clipped", "min_sharpness", "max_noise") if k in over}
    pd = PatchDictionaryConfig(**over)
    cfg = Config()
    cfg = replace(cfg, alarm=replace(cfg.alarm, **alarm), mismatch=replace(cfg.mismatch, **mism))
    ds = load_dataset(a.data, "nanotwice")
    train = [read_image(p) for p in ds.train]
    val = [read_image(p) for p in ds.val]
    test = [read_image(s.image) for s in ds.test]
    masks = [read_mask(s.mask, im.shape) for s, im in zip(ds.test, test)]

    def fit(normal, v):
        m = Model.fit("patch_dictionary", pd, normal, v, cfg.threshold, cfg.defects, "cpu", normalize=normalize)
        m.meta.fitted_on = {"image_shapes": [list(normal[0].shape)], "bit_depths": [8], "pixel_size_um": None}
        return m

    t0 = time.perf_counter()
    protocol = fit(train, val)
    clean_model = fit(train[:3], [train[3]])
    held_out = [fit(train[:k] + train[k + 1:], val) for k in range(len(train))]
    fit_s = (time.perf_counter() - t0) / (2 + len(train))

    def judge(model, image):
        """(verdict, inspection or None): the quality checks, then the defect decision, as the daemon does."""
        why = misfit(model.fitted_on, image, {"bits": 8}, cfg.mismatch, model.quality_reference)
        if why is not None:
            return f"mismatch:{why[0]}", None
        ins = model.inspect(image, cfg.alarm.coverage_threshold, cfg.alarm.max_defect_area, cfg.mismatch.max_coverage,
                            cfg.alarm.peak_margin)
        return ins.verdict, ins

    names = a.only.split(",") if a.only else ["none"] + routine_changes() + BEYOND
    print(json.dumps({"normalize": normalize, "set": over, "fit_seconds_mean": round(fit_s, 1),
                      "threshold": round(protocol.threshold.value, 3)}), flush=True)
    for name in names:
        spec = parse(name)
        t = time.perf_counter()
        verdicts, maps, times = [], [], []
        for i, im in enumerate(test):
            x = change(im, spec, i)
            ts = time.perf_counter()
            v, ins = judge(protocol, x)
            times.append(time.perf_counter() - ts)
            verdicts.append(v)
            # the ranking metrics need a map even where the verdict is a mismatch
            maps.append(ins.result.anomaly_map if ins is not None else protocol.inspect(x).result.anomaly_map)
        s = summarize(maps, masks)
        cv, cins = judge(clean_model, change(val[0], spec, 99))
        cmap = (cins.result.anomaly_map if cins is not None
                else clean_model.inspect(change(val[0], spec, 99)).result.anomaly_map)
        cmask = cmap > clean_model.threshold.value
        flagged = float(cins.report.mask.mean()) if cins is not None else float(cmask.mean())
        held = [judge(m, change(train[k], spec, 50 + k))[0] for k, m in enumerate(held_out)]
        row = {"change": name, "pixel_auc_40": round(s["pixel_auroc"], 4), "pro_30": round(s["pro_auc_30"], 3),
               "flagged_clean_pct": round(100 * flagged, 4),
               "anomalous_defect": sum(v == "defect" for v in verdicts),
               "anomalous_mismatch": sum(v.startswith("mismatch") for v in verdicts),
               "clean_ITIA1145": cv, "held_out": held,
               "judge_p50_s": round(float(np.median(times)), 3), "seconds": round(time.perf_counter() - t, 1)}
        print(json.dumps(row), flush=True)
        if a.maps:
            Path(a.maps).mkdir(parents=True, exist_ok=True)
            np.savez(Path(a.maps) / f"{name}.npz", maps=np.stack([m.astype(np.float16) for m in maps]),
                     clean=cmap.astype(np.float16), threshold=protocol.threshold.value,
                     clean_threshold=clean_model.threshold.value)


if __name__ == "__main__":
    main()

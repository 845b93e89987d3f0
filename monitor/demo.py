"""The embedded demo: synthetic normal images -> a model -> a stream of synthetic images scored one by one.

Everything here is SYNTHETIC (see ``synth.py``); it needs no data and no weights beyond the installed package.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2

from .config import Config
from .images import read_image
from .model import Model
from .overlay import render_overlay, write_png
from .synth import defective_image, fiber_mat, to_uint8

SHAPE = (384, 512)


def _write(path: Path, img) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), to_uint8(img))
    return path


def run_demo(workdir: Path, n_images: int = 8, seed: int = 0, cfg: Config = Config()) -> int:
    from .cli import fit_model

    normal_dir, val_dir, line_dir = workdir / "normal", workdir / "val", workdir / "export"
    out_dir, model_dir = workdir / "overlays", workdir / "model"
    if not (model_dir / "model.json").exists():
        normal = [_write(normal_dir / f"normal_{i:02d}.png", fiber_mat(SHAPE, seed=seed * 1000 + i)) for i in range(8)]
        val = [_write(val_dir / f"val_{i:02d}.png", fiber_mat(SHAPE, seed=seed * 1000 + 100 + i)) for i in range(2)]
        print(f"demo: fitting a model on {len(normal)} synthetic normal images (threshold from {len(val)}) ...")
        _, model_id, secs = fit_model(cfg, normal, val, model_dir, quiet=True)
        print(f"demo: model {model_id} fitted in {secs:.1f} s -> {model_dir}")
    model = Model.load(model_dir, cfg.model.device)
    print(f"demo: scoring {n_images} synthetic SEM images (every second one has defects); overlays -> {out_dir}")
    counts = {"ok": 0, "defect": 0}
    for i in range(n_images):
        if i % 2:
            img, truth = defective_image(SHAPE, seed=seed * 1000 + 500 + i, size=1.5)
        else:
            img, truth = fiber_mat(SHAPE, seed=seed * 1000 + 500 + i), None
        path = _write(line_dir / f"sem_{i:04d}.png", img)
        t0 = time.perf_counter()
        gray = read_image(path, cfg.image)
        ins = model.inspect(gray, cfg.alarm.coverage_threshold)
        dt = time.perf_counter() - t0
        counts[ins.verdict] = counts.get(ins.verdict, 0) + 1
        cov = ins.report.coverage if ins.report else float("nan")
        cap = [f"{path.name}  verdict: {ins.verdict}  coverage: {cov:.3%}", f"model {model.model_id}"]
        write_png(out_dir / f"{path.stem}.png", render_overlay(gray, ins.result.anomaly_map,
                                                               ins.report.mask if ins.report else None, cap,
                                                               ins.threshold))
        truth_s = "defects drawn" if truth is not None else "clean"
        print(json.dumps({"image": path.name, "truth": truth_s, "verdict": ins.verdict,
                          "coverage": round(cov, 5), "defects": len(ins.report.defects) if ins.report else None,
                          "seconds": round(dt, 3)}))
    print(f"demo: done: {counts}; overlays in {out_dir}")
    return 0

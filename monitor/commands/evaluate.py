"""Evaluation on labelled data: pixel ROC-AUC, PRO-AUC (Bergmann et al.), per-defect coverage, image AUROC, time.

All metrics are computed from float anomaly maps and boolean ground-truth masks; thresholds never enter them,
except the per-defect coverage, which uses the threshold giving ``fpr`` of the normal test pixels (the paper: 5%).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from monitor.commands.fit import bar, fit_model
from monitor.config import ConfigError, load_config
from monitor.model.images import list_images, read_image

LAYOUTS = ("nanotwice", "mvtec")
# The Napoletano et al. 2018 protocol drops the 8th, 15th, 27th, 31st and 35th anomalous image.
NANOTWICE_EXCLUDED = ("ITIA1108", "ITIA1115", "ITIA1127", "ITIA1131", "ITIA1135")


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path | None  # None: a normal test image (all pixels normal)


@dataclass(frozen=True)
class Dataset:
    train: tuple[Path, ...]
    val: tuple[Path, ...]
    test: tuple[Sample, ...]
    subsets: dict[str, tuple[str, ...]]  # name -> image stems, reported besides "all"


def _find_nanotwice_root(data: Path) -> Path:
    for cand in (data, data / "SEM_Data", data / "Dataset" / "SEM_Data"):
        if (cand / "Normal").is_dir() and (cand / "Anomalous").is_dir():
            return cand
    raise FileNotFoundError(f"{data}: no NanoTWICE layout (Normal/ and Anomalous/images, Anomalous/gt) found")


def load_dataset(data: str | Path, layout: str) -> Dataset:
    data = Path(data)
    if layout == "nanotwice":
        root = _find_nanotwice_root(data)
        normal = list_images([root / "Normal"])
        if len(normal) < 2:
            raise FileNotFoundError(f"{root / 'Normal'}: need at least 2 normal images, found {len(normal)}")
        test = tuple(Sample(p, root / "Anomalous" / "gt" / f"{p.stem}_gt.png")
                     for p in list_images([root / "Anomalous" / "images"]))
        stems = tuple(s.image.stem for s in test if s.image.stem not in NANOTWICE_EXCLUDED)
        # paper protocol: dictionary from the first four normal images, threshold from the last
        return Dataset(tuple(normal[:-1]), (normal[-1],), test, {"paper35": stems})
    if layout == "mvtec":
        train = list_images([data / "train" / "good"])
        test = []
        for d in sorted(p for p in (data / "test").iterdir() if p.is_dir()):
            for img in list_images([d]):
                mask = None if d.name == "good" else data / "ground_truth" / d.name / f"{img.stem}_mask.png"
                test.append(Sample(img, mask))
        # MVTec has no validation split: the last 10% of the training images become the validation set
        n_val = max(1, len(train) // 10)
        return Dataset(tuple(train[:-n_val]), tuple(train[-n_val:]), tuple(test), {})
    raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")


# ---------------------------------------------------------------------------------------------------------- metrics


def pixel_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([a.ravel() for a in maps])
    return float(roc_auc_score(y, s))


def _regions(masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Scores index lists per connected component (8-connectivity) of every mask: list of (image_idx, comp_mask)."""
    out = []
    for i, m in enumerate(masks):
        n, labels = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        for c in range(1, n):
            out.append((i, labels == c))
    return out


def region_scores(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Sorted anomaly scores inside each ground-truth connected component."""
    return [np.sort(maps[i][comp]) for i, comp in _regions(masks)]


def normal_scores(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate([a[~m] for a, m in zip(maps, masks)]))


def _above(sorted_vals: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Fraction of sorted_vals strictly above each threshold in t."""
    return 1.0 - np.searchsorted(sorted_vals, t, side="right") / len(sorted_vals)


def pro_auc(normal: np.ndarray, regions: list[np.ndarray], max_fpr: float = 0.3, n_thresholds: int = 1000) -> float:
    """Area under the per-region-overlap curve up to ``max_fpr``, divided by ``max_fpr`` (1.0 is perfect)."""
    if not regions:
        return float("nan")
    # thresholds from the normal-score quantiles spanning FPR 0 .. max_fpr
    qs = np.linspace(1.0, 1.0 - max_fpr, n_thresholds)
    t = np.quantile(normal, qs)
    fpr = _above(normal, t)
    pro = np.mean([_above(r, t) for r in regions], axis=0)
    # clip the curve at exactly max_fpr by interpolation, then integrate
    order = np.argsort(fpr, kind="stable")
    fpr, pro = fpr[order], pro[order]
    keep = fpr <= max_fpr
    f = np.concatenate([[0.0], fpr[keep], [max_fpr]])
    p = np.concatenate([[pro[keep][0] if keep.any() else 0.0], pro[keep], [np.interp(max_fpr, fpr, pro)]])
    return float(np.trapezoid(p, f) / max_fpr)


SMALL_DEFECT_PIXELS = 200  # true components smaller than this are "small" in the per-size breakdown


def defect_coverage(normal: np.ndarray, regions: list[np.ndarray], fpr: float = 0.05) -> dict:
    """Per-defect coverage at the threshold that gives ``fpr`` on normal pixels (Napoletano et al.); ``small``: the
    same over the true components of fewer than ``SMALL_DEFECT_PIXELS`` pixels (``regions`` hold one score per
    pixel of a component)."""
    t = float(np.quantile(normal, 1 - fpr))
    cov = np.array([float(_above(r, np.array([t]))[0]) for r in regions])
    small = np.array([c for c, r in zip(cov, regions) if len(r) < SMALL_DEFECT_PIXELS])
    return {
        "fpr": fpr, "threshold": t, "n_defects": len(cov),
        "median": float(np.median(cov)), "p25": float(np.quantile(cov, 0.25)), "p75": float(np.quantile(cov, 0.75)),
        "mean": float(cov.mean()),
        "share_over_50": float((cov > 0.5).mean()), "share_over_85": float((cov > 0.85).mean()),
        "small": {"max_pixels": SMALL_DEFECT_PIXELS, "n_defects": len(small),
                  "median": float(np.median(small)) if len(small) else None,
                  "share_over_85": float((small > 0.85).mean()) if len(small) else None},
    }


def summarize(maps, masks, image_scores=None, image_labels=None) -> dict:
    normal = normal_scores(maps, masks)
    regions = region_scores(maps, masks)
    out = {"n_images": len(maps), "pixel_auroc": pixel_auroc(maps, masks),
           "pro_auc_30": pro_auc(normal, regions), "coverage_at_5pct_fpr": defect_coverage(normal, regions)}
    if image_labels is not None and len(set(image_labels)) == 2:
        out["image_auroc"] = float(roc_auc_score(image_labels, image_scores))
    return out


def percentiles(times: Iterable[float]) -> dict:
    t = np.asarray(list(times), float)
    return {"p50": float(np.percentile(t, 50)), "p95": float(np.percentile(t, 95)), "mean": float(t.mean()),
            "n": int(t.size)}


# ---------------------------------------------------------------------------------------------------------- runner


def evaluate(score_fn: Callable[[Path], np.ndarray | tuple[np.ndarray, float]], dataset: Dataset, read_mask,
             limit: int | None = None, progress=None) -> tuple[dict, dict]:
    """Score every test image (load + score timed together). ``score_fn`` returns the map, or (map, image score);
    without an image score the map's maximum is used. Returns (report, raw) with raw maps for plotting."""
    samples = dataset.test[:limit] if limit else dataset.test
    maps, masks, times, stems, iscores = [], [], [], [], []
    for s in samples:
        t0 = time.perf_counter()
        out = score_fn(s.image)
        times.append(time.perf_counter() - t0)
        amap, iscore = out if isinstance(out, tuple) else (out, float(out.max()))
        iscores.append(float(iscore))
        mask = read_mask(s.mask, amap.shape) if s.mask is not None else np.zeros(amap.shape, bool)
        maps.append(amap)
        masks.append(mask)
        stems.append(s.image.stem)
        if progress is not None:
            progress(1)
    labels = [int(m.any()) for m in masks]
    report = {"all": summarize(maps, masks, iscores, labels), "time_per_image_seconds": percentiles(times)}
    for name, keep in dataset.subsets.items():
        idx = [i for i, st in enumerate(stems) if st in keep]
        if idx and len(idx) < len(stems):
            report[name] = summarize([maps[i] for i in idx], [masks[i] for i in idx],
                                     [iscores[i] for i in idx], [labels[i] for i in idx])
    return report, {"maps": maps, "masks": masks}


def roc_plot(maps, masks, path: str | Path, title: str = "pixel ROC", size: int = 480) -> None:
    """A plain ROC curve PNG drawn with OpenCV (no plotting library needed)."""
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([a.ravel() for a in maps])
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=True)
    auc = float(roc_auc_score(y, s))
    m0 = 50
    img = np.full((size, size, 3), 255, np.uint8)
    side = size - 2 * m0
    cv2.rectangle(img, (m0, m0), (m0 + side, m0 + side), (0, 0, 0), 1)
    cv2.line(img, (m0, m0 + side), (m0 + side, m0), (180, 180, 180), 1)
    pts = np.stack([m0 + fpr * side, m0 + side - tpr * side], 1).round().astype(np.int32)
    cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, (200, 60, 0), 2, cv2.LINE_AA)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, f"{title}  AUC={auc:.4f}", (m0, m0 - 15), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "false positive rate", (m0 + side // 2 - 70, size - 15), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "TPR", (8, m0 + side // 2), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


# ------------------------------------------------------------------------------------------------ `monitor evaluate`
def evaluate_job(job: tuple[str, str], args_ns: dict, queue) -> None:
    """One model (``("model", DIR)``) or one method fitted on the data set's own split (``("fit", METHOD)``),
    evaluated in its own process so that its peak memory is its own. Whatever goes wrong is put on the queue, the
    failed imports too."""
    try:
        import resource

        import torch

        from monitor.model.images import read_mask
        from monitor.model.model import Model

        cfg = load_config(args_ns["config"], args_ns["set"])
        ds = load_dataset(args_ns["data"], args_ns["layout"])
        out_dir = Path(args_ns["out"])
        kind, what = job
        if kind == "fit":
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, method=what))
            mdir = out_dir / "models" / what
            fit_model(cfg, list(ds.train), list(ds.val), mdir, quiet=False)
        else:
            mdir = Path(what)
        model = Model.load(mdir, cfg.model.device, runtime=cfg.model.runtime, precision=cfg.model.precision)
        name = what if kind == "fit" else Path(what).name

        def score(p):
            r = model.scorer.score(model.prepare(read_image(p, cfg.image)))  # as the daemon scores
            return r.anomaly_map, r.image_score

        n = min(args_ns["limit"], len(ds.test)) if args_ns["limit"] else len(ds.test)
        progress = bar(n, f"evaluate {name}", "images")
        try:
            rep, raw = evaluate(score, ds, read_mask, args_ns["limit"], progress.update)
        finally:
            progress.close()
        rep.update(model_id=model.model_id, model_dir=str(mdir), method=model.meta.method,
                   config=model.meta.scorer["config"], fit_seconds=model.meta.fit_seconds,
                   device=str(model.scorer.device),
                   peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                   peak_cuda_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available()
                   else None)
        roc_plot(raw["maps"], raw["masks"], out_dir / f"roc_{name}.png", f"{name} pixel ROC")
        queue.put((name, rep))
    except Exception as exc:  # reported by the parent, which goes on with the next job
        queue.put((job[1], {"error": f"{type(exc).__name__}: {exc}"}))


def run_evaluation(args) -> int:
    """`monitor evaluate`: each job (``--model DIR``, ``--fit METHOD``) in a process of its own (its peak memory
    its own), its report gathered; evaluation.json, evaluation.md and the table printed. 1 when a job failed."""
    import multiprocessing as mp

    load_dataset(args.data, args.layout)  # fail early on a wrong path
    jobs = [("model", m) for m in args.model or []] + [("fit", m) for m in args.fit or []]
    if not jobs:
        raise ConfigError("nothing to evaluate: give --model DIR and/or --fit METHOD")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    args_ns = {"config": args.config, "set": args.set or [], "data": args.data, "layout": args.layout,
               "out": str(out_dir), "limit": args.limit}
    ctx = mp.get_context("spawn")
    reports, failed = {}, 0
    for job in jobs:
        q = ctx.Queue()
        proc = ctx.Process(target=evaluate_job, args=(job, args_ns, q))
        proc.start()
        name, rep = _result_of(proc, q, job)
        proc.join()
        if "error" in rep:
            print(f"monitor: evaluate {name}: {rep['error']}", file=sys.stderr)
            failed += 1
            continue
        reports[name] = rep
    (out_dir / "evaluation.json").write_text(json.dumps(reports, indent=2) + "\n")
    (out_dir / "evaluation.md").write_text(markdown_table(reports))
    print(markdown_table(reports))
    return 1 if failed else 0


def _result_of(proc, q, job: tuple[str, str]) -> tuple[str, dict]:
    """The job's (name, report) from its process; an error report when the process ends without one (killed,
    out of memory, a crash in native code), instead of waiting for it forever."""
    import queue

    while True:
        try:
            return q.get(timeout=2.0)
        except queue.Empty:
            if not proc.is_alive():
                try:  # the result may have come just before the process ended
                    return q.get(timeout=1.0)
                except queue.Empty:
                    return job[1], {"error": f"its process ended without a result (exit code {proc.exitcode}: "
                                             "killed, out of memory, or a crash)"}


def markdown_table(reports: dict) -> str:
    rows = ["| model | method | images | pixel ROC-AUC | pixel ROC-AUC (paper 35) | PRO-AUC 30% | "
            "median defect coverage @5% FPR | (defects < 200 px) | image AUROC | fit | time/image p50 | p95 | "
            "peak memory |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in reports.items():
        a, t = r["all"], r["time_per_image_seconds"]
        p35 = r.get("paper35", {}).get("pixel_auroc")
        c = a["coverage_at_5pct_fpr"]
        small = c.get("small", {}).get("median")
        img = a.get("image_auroc")
        fit = r.get("fit_seconds")
        mem = r.get("peak_rss_mb")
        rows.append(f"| {name} | {r.get('method', '')} | {a['n_images']} | {a['pixel_auroc']:.4f} | "
                    f"{'n/a' if p35 is None else f'{p35:.4f}'} | {a['pro_auc_30']:.4f} | {c['median']:.3f} | "
                    f"{'n/a' if small is None else f'{small:.3f}'} | "
                    f"{'n/a' if img is None else f'{img:.3f}'} | {'n/a' if fit is None else f'{fit:.0f} s'} | "
                    f"{t['p50']:.3f} s | {t['p95']:.3f} s | {'n/a' if mem is None else f'{mem:.0f} MB'} |")
    return "\n".join(rows) + "\n"

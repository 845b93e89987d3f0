"""The fibre measurement against the truth of drawn mats, under the SEM operator's changes, on NanoTWICE, and its time.

    .venv/bin/python bench/metrology.py [--data ../shared/data/nanotwice] [--model DIR] [--quick]

Four tables, one run:

1. **Drawn mats of known fibres** (``synth.known_mat``: widths from 3 to 40 px in known distributions, straight
   and curved, a dim deeper layer, crossings, beads at known places, SEM-like edge brightening, blur, noise;
   isotropic and aligned mats). Per mat: the truth's mean diameter (length-weighted, as centreline samples are)
   against the measured one, the distribution's error (1-D Wasserstein distance in pixels between the measured
   samples and the truth's), the orientation error of aligned mats and the coherency, the porosity error (the truth
   from the drawing), bead recall and precision (a bead found within its radius of a drawn one), and the time.
2. **Acquisition**: the change of the mean diameter (and porosity) under brightness +-10%, contrast x0.8 / x1.25,
   gamma 0.8 / 1.25 and scan noise of 3% of the range (``synth.change``, as bench/acquisition.py applies them), on
   NanoTWICE's five normal images and on three drawn mats.
3. **NanoTWICE's normal images**: their figures (one mat: their means should agree).
4. **Time**: p50 / p95 per 1024x700 image of the measurement alone, and of the scoring with and without it
   (``judge.inspect`` and ``judge.conclude`` as the daemon runs them), side by side in one run, with ``--model`` or a
   model fitted here on ITIA1141-1144 (threshold ITIA1145).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from monitor.model.fibres import FibreConfig, measure  # noqa: E402
from monitor.model.images import read_image  # noqa: E402
from monitor.model.synth import change, known_mat, parse  # noqa: E402


def _lognormal(rng, n):
    return np.clip(rng.lognormal(np.log(9.0), 0.45, n), 3.0, 40.0)


def _bimodal(rng, n):
    return np.where(rng.random(n) < 0.5, rng.normal(6.0, 0.8, n), rng.normal(14.0, 1.5, n)).clip(3.0, 40.0)


# name: known_mat's arguments (1024x700, the NanoTWICE size)
MATS = {
    "thin 4 px, isotropic": dict(widths=(4.0, 0.8), n_fibres=60),
    "8 px, isotropic": dict(widths=(8.0, 1.5), n_fibres=40),
    "8 px, straight": dict(widths=(8.0, 1.5), n_fibres=40, curved=False),
    "20 px, isotropic": dict(widths=(20.0, 4.0), n_fibres=20),
    "32 px, isotropic": dict(widths=(32.0, 4.0), n_fibres=12),
    "lognormal 3-40 px": dict(widths=_lognormal, n_fibres=45),
    "bimodal 6 / 14 px": dict(widths=_bimodal, n_fibres=45),
    "10 px, aligned 0 deg": dict(widths=(10.0, 2.0), n_fibres=20, aligned=0.0),
    "10 px, aligned 60 deg": dict(widths=(10.0, 2.0), n_fibres=20, aligned=60.0),
    "16 px, aligned 135 deg": dict(widths=(16.0, 3.0), n_fibres=14, aligned=135.0),
    "16 px, aligned 135 deg, dense": dict(widths=(16.0, 3.0), n_fibres=30, aligned=135.0),
    "8 px, beaded": dict(widths=(8.0, 1.5), n_fibres=30, beads=12),
    "12 px, beaded": dict(widths=(12.0, 2.0), n_fibres=25, beads=10),
}
CHANGES = ["brightness+0.1", "brightness-0.1", "contrast0.8", "contrast1.25", "gamma0.8", "gamma1.25", "noise0.03"]


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """1-D Wasserstein distance between two samples (the mean absolute difference of their quantile functions)."""
    q = np.linspace(0.0025, 0.9975, 200)
    return float(np.mean(np.abs(np.quantile(a, q) - np.quantile(b, q))))


def angle_error(a: float, b: float) -> float:
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


def bead_match(truth: np.ndarray, found) -> tuple[int, int]:
    """(drawn beads found, found beads that match a drawn one): a match lies within the drawn bead's radius."""
    hits_t = sum(any(np.hypot(b.x - x, b.y - y) <= max(d / 2, 4) for b in found) for x, y, d in truth)
    hits_f = sum(any(np.hypot(b.x - x, b.y - y) <= max(d / 2, 4) for x, y, d in truth) for b in found)
    return hits_t, hits_f


def synthetic_table(seeds: list[int]) -> list[str]:
    rows = ["| mat | truth mean px | measured | error | W1 px | orientation error | coherency | porosity truth | "
            "measured | beads drawn | found | recall | precision | ms |", "|" + "---|" * 14]
    worst = 0.0
    for name, kw in MATS.items():
        for seed in seeds:
            m = known_mat(seed=seed, **kw)
            t0 = time.perf_counter()
            f = measure(m.image)
            ms = 1000 * (time.perf_counter() - t0)
            fig, truth = f.figures, m.width_samples()
            err = fig.diameter_px.mean / truth.mean() - 1
            if "dense" not in name:
                worst = max(worst, abs(err))
            orient = "–" if m.angle_deg is None else f"{angle_error(fig.orientation_deg, m.angle_deg):.1f} deg"
            nb = len(m.beads)
            ft, ff = bead_match(m.beads, fig.beads)
            rows.append(f"| {name} (seed {seed}) | {truth.mean():.2f} | {fig.diameter_px.mean:.2f} | "
                        f"{100 * err:+.1f}% | {wasserstein(f.diameters, truth):.2f} | {orient} | {fig.coherency:.3f} "
                        f"| {m.porosity:.3f} | {fig.porosity:.3f} | {nb} | {len(fig.beads)} | "
                        f"{'–' if nb == 0 else f'{ft}/{nb}'} | "
                        f"{'–' if not fig.beads else f'{ff}/{len(fig.beads)}'} | {ms:.0f} |")
    rows.append(f"\nlargest mean-diameter error (the dense aligned mat aside): {100 * worst:.1f}%")
    return rows


def acquisition_table(images: dict[str, np.ndarray]) -> list[str]:
    rows = ["| image | mean px | " + " | ".join(CHANGES) + " |", "|" + "---|" * (len(CHANGES) + 2)]
    worst = dict.fromkeys(CHANGES, 0.0)
    for name, im in images.items():
        base = measure(im).figures
        cells = []
        for i, c in enumerate(CHANGES):
            f = measure(change(im, parse(c), 7 + i)).figures
            d = f.diameter_px.mean / base.diameter_px.mean - 1
            worst[c] = max(worst[c], abs(d))
            cells.append(f"{100 * d:+.1f}% (por {f.porosity - base.porosity:+.3f})")
        rows.append(f"| {name} | {base.diameter_px.mean:.2f} | " + " | ".join(cells) + " |")
    rows.append("| largest change | | " + " | ".join(f"{100 * worst[c]:.1f}%" for c in CHANGES) + " |")
    return rows


def nanotwice_table(images: dict[str, np.ndarray]) -> list[str]:
    rows = ["| image | mean px | median | sd | p10 | p90 | n | orientation deg | coherency | porosity | beads |",
            "|" + "---|" * 11]
    means = []
    for name, im in images.items():
        f = measure(im).figures
        d = f.diameter_px
        means.append(d.mean)
        rows.append(f"| {name} | {d.mean:.2f} | {d.median:.2f} | {d.std:.2f} | {d.p10:.2f} | {d.p90:.2f} | {d.n} | "
                    f"{f.orientation_deg:.1f} | {f.coherency:.3f} | {f.porosity:.3f} | {len(f.beads)} |")
    m = np.asarray(means)
    cv, spread = 100 * m.std(ddof=1) / m.mean(), 100 * (m.max() - m.min()) / m.mean()
    rows.append(f"\nmean diameters: {m.mean():.2f} px +- {m.std(ddof=1):.2f} (coefficient of variation {cv:.1f}%, "
                f"range {spread:.1f}% of the mean)")
    return rows


def _percentiles(ts: list[float]) -> str:
    return f"p50 {1000 * np.percentile(ts, 50):.1f} ms, p95 {1000 * np.percentile(ts, 95):.1f} ms"


def timing_table(paths: list[Path], model_dir: str | None, repeat: int) -> list[str]:
    """Measurement alone, and scoring with and without it, interleaved image by image (one run, same machine)."""
    from monitor import judge
    from monitor.config import Config
    from monitor.model.model import Model

    cfg = Config()
    off = dataclasses.replace(cfg, fibres=dataclasses.replace(cfg.fibres, enabled=False))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        if model_dir is None:
            from monitor.commands.fit import fit_model

            normal = sorted(paths)
            model_dir = str(Path(tmp) / "model")
            fit_model(cfg, normal[:4], normal[4:5], Path(model_dir), quiet=True)
            out.append("model: fitted here on ITIA1141-1144, threshold ITIA1145 (the paper's protocol)")
        model = Model.load(model_dir, "cpu")
        images = [(p, *judge.read(cfg, model, p)) for p in paths]
        model.warm_up()
        alone, plain, measured = [], [], []
        for _ in range(repeat):
            for p, im, info in images:
                t0 = time.perf_counter()
                measure(im)
                t1 = time.perf_counter()
                ins = judge.inspect(off, model, [im])[0]
                judge.conclude(off, p, im, info, ins, 0.0)
                t2 = time.perf_counter()
                ins = judge.inspect(cfg, model, [im])[0]
                judge.conclude(cfg, p, im, info, ins, 0.0)
                t3 = time.perf_counter()
                alone.append(t1 - t0)
                plain.append(t2 - t1)
                measured.append(t3 - t2)
    out += [f"measurement alone: {_percentiles(alone)} ({len(alone)} runs)",
            f"scoring without the measurement: {_percentiles(plain)}",
            f"scoring with the measurement: {_percentiles(measured)} "
            f"(+{1000 * (np.median(measured) - np.median(plain)):.1f} ms at p50)"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "nanotwice"))
    ap.add_argument("--model", help="a fitted model for the timing (default: fitted here on NanoTWICE)")
    ap.add_argument("--seeds", type=int, default=2, help="drawn mats of each kind")
    ap.add_argument("--repeat", type=int, default=4, help="timing passes over the five normal images")
    ap.add_argument("--quick", action="store_true", help="one seed, one timing pass, no scoring (a smoke run)")
    a = ap.parse_args()
    cv2.setNumThreads(min(2, os.cpu_count() or 1))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"OpenCV {cv2.__version__}; settings {FibreConfig()}\n")
    seeds = [0] if a.quick else list(range(a.seeds))
    print("## Drawn mats of known fibres\n")
    print("\n".join(synthetic_table(seeds)))
    normal = sorted((Path(a.data) / "Dataset" / "SEM_Data" / "Normal").glob("*.tif"))
    images = {p.stem: read_image(p) for p in normal}
    drawn = {f"drawn: {n}": known_mat(seed=5, **MATS[n]).image for n in
             ("thin 4 px, isotropic", "8 px, isotropic", "20 px, isotropic")}
    print("\n## Acquisition changes (mean diameter, and porosity)\n")
    print("\n".join(acquisition_table({**images, **drawn})))
    if images:
        print("\n## NanoTWICE's normal images\n")
        print("\n".join(nanotwice_table(images)))
        print("\n## Time per 1024x700 image\n")
        if a.quick:
            ts = []
            for im in images.values():
                t0 = time.perf_counter()
                measure(im)
                ts.append(time.perf_counter() - t0)
            print(f"measurement alone: {_percentiles(ts)}")
        else:
            print("\n".join(timing_table(normal, a.model, a.repeat)))
    else:
        print(f"\n(no NanoTWICE at {a.data}: its tables are left out)")


if __name__ == "__main__":
    main()

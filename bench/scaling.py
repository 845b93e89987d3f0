"""Fit scaling, scoring speed and daemon throughput of the default model, in one run on one machine.

    .venv/bin/python bench/scaling.py [--data ../shared/data/nanotwice] [--fits 4 20 50] [--daemon 200]

1. Fit: `monitor fit` (a real process each) on 4, 20 and 50 normal 1024x700 images, threshold from NanoTWICE's
   fifth normal image. NanoTWICE has four dictionary images; the others are made from them: each of the four
   flipped (none, left-right, up-down, both) and shifted by 0, 24, 48 or 72 pixels (the picture moved with its
   border reflected), 64 distinct images of which the first N are used. Wall time and peak resident memory of the
   process; the 4-image fit also with `model.runtime: torch` (the backbone before OpenVINO).
2. Scoring: the 40 test images, read + score + defects per image with the model loaded, p50/p95, OpenVINO and
   torch runtimes interleaved image by image.
3. Daemon: `monitor run` (a real process) takes --daemon test images (renamed copies) dropped at once into its
   export folder; images per minute from the first recorded to the last result, and the daemon's resident memory
   (VmRSS, and its peak VmHWM) after the last one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _throughput():
    """bench/throughput.py by its path: bench/ on sys.path would shadow the standard library's ``profile`` with
    bench/profile.py for whatever imports it later in the process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_throughput", ROOT / "bench" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


drop, start, wait_done = (getattr(_throughput(), n) for n in ("drop", "start", "wait_done"))

from monitor.commands.evaluate import load_dataset, percentiles  # noqa: E402


def variants(paths: list[Path], n: int) -> list[np.ndarray]:
    """n distinct 8-bit images from ``paths``: flips x shifts (border reflected), in a fixed order."""
    out = []
    for shift in (0, 24, 48, 72):
        for flip in (None, 1, 0, -1):
            for p in paths:
                im = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
                if flip is not None:
                    im = cv2.flip(im, flip)
                if shift:
                    pad = cv2.copyMakeBorder(im, shift, 0, shift, 0, cv2.BORDER_REFLECT_101)
                    im = pad[:im.shape[0], :im.shape[1]]
                out.append(im)
                if len(out) == n:
                    return out
    raise ValueError(f"only {len(out)} variants of {len(paths)} images")


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of a child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed")
    return time.perf_counter() - t, usage.ru_maxrss / 1024


def fit_bench(ds, sizes: list[int], work: Path) -> list[dict]:
    rows = []
    for n, runtime in [(n, "auto") for n in sizes] + [(sizes[0], "torch")]:
        folder = work / f"normal-{n}"
        if not folder.exists():
            folder.mkdir()
            for i, im in enumerate(variants(list(ds.train), n)):
                cv2.imwrite(str(folder / f"n{i:03d}.tif"), im)
        secs, rss = timed([sys.executable, "-m", "monitor", "fit", "--normal", str(folder), "--val", *map(str, ds.val),
                           "--out", str(work / f"model-{n}-{runtime}"), "--quiet", "--set", f"model.runtime={runtime}"])
        meta = json.loads((work / f"model-{n}-{runtime}" / "model.json").read_text())
        rows.append({"images": n, "runtime": runtime, "wall_s": round(secs, 1), "fit_s": meta["fit_seconds"],
                     "per_image_s": round(secs / n, 2), "peak_rss_mb": round(rss)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def score_bench(ds, model_dir: Path) -> dict:
    from monitor.model.images import read_image
    from monitor.model.model import Model

    models = {rt: Model.load(model_dir, "cpu", runtime=rt) for rt in ("openvino", "torch")}
    times: dict[str, list[float]] = {rt: [] for rt in models}
    worst = 0.0
    for m in models.values():  # warm-up (OpenVINO compiles and checks the shape on its first image)
        m.inspect(read_image(ds.test[0].image))
    for s in ds.test:
        maps = {}
        for rt, m in models.items():
            t = time.perf_counter()
            r = m.inspect(read_image(s.image))
            times[rt].append(time.perf_counter() - t)
            maps[rt] = r.result.anomaly_map
        worst = max(worst, float(np.abs(maps["openvino"] - maps["torch"]).max()))
    out = {rt: {k: round(v, 3) for k, v in percentiles(t).items()} for rt, t in times.items()}
    out["speedup_p50"] = round(out["torch"]["p50"] / out["openvino"]["p50"], 2)
    out["max_map_difference"] = worst
    out["threshold"] = round(models["openvino"].threshold.value, 4)
    return out


def daemon_bench(ds, model_dir: Path, n: int, work: Path) -> dict:
    images = [s.image for s in ds.test]
    proc, export, ledger = start(work, model_dir, "daemon")
    for i in range(n):
        drop(images[i % len(images)], export, f"d{i:04d}.tif")
    r = wait_done(ledger, n, 60 + 5 * n)
    status = Path(f"/proc/{proc.pid}/status").read_text()
    mem = {k: int(line.split()[1]) / 1024 for line in status.splitlines() for k in ("VmRSS", "VmHWM")
           if line.startswith(k + ":")}
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    t0, t1 = min(x["seen_at"] for x in r), max(x["finished_at"] for x in r)
    return {"images": n, "done": sum(x["state"] == "done" for x in r), "seconds": round(t1 - t0, 1),
            "images_per_minute": round(n / (t1 - t0) * 60, 1),
            "score_p50_s": round(float(np.percentile([x["score_seconds"] for x in r], 50)), 3),
            "rss_mb": round(mem["VmRSS"]), "peak_rss_mb": round(mem["VmHWM"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "nanotwice"))
    ap.add_argument("--fits", type=int, nargs="+", default=[4, 20, 50])
    ap.add_argument("--daemon", type=int, default=200)
    a = ap.parse_args()
    ds = load_dataset(a.data, "nanotwice")
    work = Path(tempfile.mkdtemp(prefix="scaling-"))
    try:
        report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or '?'}",
                  "fit": fit_bench(ds, a.fits, work)}
        model_dir = work / f"model-{a.fits[0]}-auto"
        report["score"] = score_bench(ds, model_dir)
        print(json.dumps(report["score"]), flush=True)
        report["daemon"] = daemon_bench(ds, model_dir, a.daemon, work)
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

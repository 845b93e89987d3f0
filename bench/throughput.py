"""Daemon throughput and end-to-end latency on real NanoTWICE images, with the default model.

    python bench/throughput.py [--data ../shared/data/nanotwice] [--burst 40] [--steady 30] [--load 0.7]

1. fits the default model on the four NanoTWICE dictionary images (threshold from the fifth) into a temp folder;
2. burst: starts `monitor run` (a real process), copies --burst test images into the export folder at once
   (temporary name, then rename) and measures images per minute from the first image recorded to the last result;
3. steady: restarts on a fresh ledger and writes --steady images at --load x the burst rate, one by one, and
   reports the end-to-end latency (file complete -> result recorded, from the ledger) p50/p95.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent


def rows(ledger: Path) -> list[dict]:
    if not ledger.exists():
        return []
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM images ORDER BY id")]


def wait_done(ledger: Path, n: int, timeout: float) -> list[dict]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = rows(ledger)
        if sum(x["state"] != "pending" for x in r) >= n:
            return r
        time.sleep(0.1)
    raise TimeoutError(f"{n} results not recorded within {timeout} s")


def start(work: Path, model: Path, tag: str) -> tuple[subprocess.Popen, Path, Path]:
    export, ledger = work / f"export-{tag}", work / f"ledger-{tag}.sqlite"
    export.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = {"model": {"path": str(model)}, "watch": {"dir": str(export)},
           "output": {"dir": str(work / f"out-{tag}"), "ledger": str(ledger), "overlays": "alarms"},
           "metrics": {"port": port}, "web": {"enabled": False}}
    (work / f"{tag}.yaml").write_text(yaml.safe_dump(cfg))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(work / f"{tag}.sock"))
    sock.settimeout(120)
    env = {**os.environ, "NOTIFY_SOCKET": str(work / f"{tag}.sock")}
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(work / f"{tag}.yaml")], env=env,
                            stdout=open(work / f"{tag}.log", "wb"), stderr=subprocess.STDOUT)
    while b"READY=1" not in sock.recv(4096):
        pass
    sock.close()
    return proc, export, ledger


def drop(src: Path, export: Path, name: str) -> None:
    tmp = export / f"{name}.part"
    shutil.copyfile(src, tmp)
    os.rename(tmp, export / name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "nanotwice"))
    ap.add_argument("--burst", type=int, default=40)
    ap.add_argument("--steady", type=int, default=30)
    ap.add_argument("--load", type=float, default=0.7, help="steady arrival rate as a fraction of the burst rate")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from monitor.commands.evaluate import load_dataset

    ds = load_dataset(args.data, "nanotwice")
    images = [s.image for s in ds.test]
    work = Path(tempfile.mkdtemp(prefix="throughput-"))
    model = work / "model"
    subprocess.run([sys.executable, "-m", "monitor", "fit", "--normal", *map(str, ds.train), "--val",
                    *map(str, ds.val), "--out", str(model), "--quiet"], check=True, stdout=subprocess.DEVNULL)
    report = {"cpu_count": os.cpu_count()}

    proc, export, ledger = start(work, model, "burst")
    for i in range(args.burst):
        drop(images[i % len(images)], export, f"b{i:04d}.tif")
    r = wait_done(ledger, args.burst, 60 + 10 * args.burst)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    t0, t1 = min(x["seen_at"] for x in r), max(x["finished_at"] for x in r)
    per_min = args.burst / (t1 - t0) * 60
    score = np.array([x["score_seconds"] for x in r])
    report["burst"] = {"images": args.burst, "seconds": round(t1 - t0, 2), "images_per_minute": round(per_min, 1),
                       "score_p50_s": round(float(np.percentile(score, 50)), 3),
                       "score_p95_s": round(float(np.percentile(score, 95)), 3)}

    interval = 60 / (per_min * args.load)
    proc, export, ledger = start(work, model, "steady")
    for i in range(args.steady):
        nxt = time.monotonic() + interval
        drop(images[i % len(images)], export, f"s{i:04d}.tif")
        time.sleep(max(0.0, nxt - time.monotonic()))
    r = wait_done(ledger, args.steady, 120)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(30)
    e2e = np.array([x["e2e_seconds"] for x in r])
    report["steady"] = {"images": args.steady, "interval_s": round(interval, 3),
                        "images_per_minute": round(60 / interval, 1),
                        "e2e_p50_s": round(float(np.percentile(e2e, 50)), 3),
                        "e2e_p95_s": round(float(np.percentile(e2e, 95)), 3), "exit_code": rc}
    print(json.dumps(report, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

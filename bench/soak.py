"""Soak: one `monitor run` process takes --images images as fast as it scores them, while the results page and
the metrics are scraped every second; resource use is sampled as it goes and the ledger, the output files and the
metrics are compared at the end.

    python bench/soak.py [--images 20000] [--size 128] [--data ../shared/data/nanotwice]

The model is fitted on --size crops of the four NanoTWICE dictionary images (threshold from the fifth; synthetic
mats where the data set is absent); the images are --size crops of the 40 anomalous test images at varying places
(so some alarm), written into the export folder under a temporary name and renamed, at most 16 waiting at a time.
Printed as JSON: images per second; resident memory (VmRSS), open file descriptors and threads of the daemon after
the first 1,000 images and at the end (and the largest RSS in between); the scrapes made, failed and their p50 /
p95 / max latency; and the agreement of the ledger (rows, done, failed, alarms), the overlays and result files in
output.dir and the daemon's counters. Goals: RSS growth after the first 1,000 images at most 50 MB, no file
descriptor or thread leak, everything agrees.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from monitor.model.synth import defective_image, fiber_mat  # noqa: E402

WAITING = 16  # images written but not yet scored, at most


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_figures(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))
    return {"rss_mb": round(rss_kb / 1024, 1), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task"))}


def crops(args) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(normal crops for the fit, validation crops, test crops): NanoTWICE when present, else synthetic mats."""
    s = args.size
    data = Path(args.data)
    if (data / "Dataset").exists():
        from monitor.commands.evaluate import load_dataset
        from monitor.model.images import read_image

        ds = load_dataset(data, "nanotwice")
        rng = np.random.default_rng(0)

        def cut(img, n):
            h, w = img.shape
            return [img[y:y + s, x:x + s] for y, x in zip(rng.integers(0, h - s, n), rng.integers(0, w - s, n))]
        train = [c for p in ds.train for c in cut(read_image(p), 6)]
        val = cut(read_image(ds.val[0]), 4)
        test = [c for smp in ds.test for c in cut(read_image(smp.image), 5)]
        return train, val, test
    shape = (s, s)
    train = [fiber_mat(shape, seed=i) for i in range(8)]
    val = [fiber_mat(shape, seed=100 + i) for i in range(2)]
    test = [fiber_mat(shape, seed=200 + i) for i in range(150)] + \
        [defective_image(shape, seed=300 + i)[0] for i in range(50)]
    return train, val, test


def png(img: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8))
    assert ok
    return buf.tobytes()


class Scraper(threading.Thread):
    """GET /metrics, the results list and the newest result page, once a second each."""

    def __init__(self, metrics_port: int, web_port: int, ledger: Path):
        super().__init__(daemon=True)
        self.urls = [f"http://127.0.0.1:{metrics_port}/metrics", f"http://127.0.0.1:{web_port}/"]
        self.web_port, self.ledger = web_port, ledger
        self.latency: list[float] = []
        self.failed: list[str] = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.wait(1.0):
            urls = list(self.urls)
            try:
                with sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True, timeout=5) as db:
                    newest = db.execute("SELECT MAX(id) FROM images").fetchone()[0]
                if newest:
                    urls.append(f"http://127.0.0.1:{self.web_port}/result/{newest}")
            except sqlite3.Error:
                pass
            for url in urls:
                t0 = time.monotonic()
                try:
                    urllib.request.urlopen(url, timeout=10).read()
                    self.latency.append(time.monotonic() - t0)
                except OSError as exc:
                    self.failed.append(f"{url}: {exc}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--size", type=int, default=128, help="side of the square crops, pixels")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "nanotwice"))
    ap.add_argument("--first", type=int, default=1000, help="images before the first resource sample")
    ap.add_argument("--work", default="", help="working folder (default: a new temporary one, kept)")
    args = ap.parse_args()

    import torch

    from monitor.model.model import Model
    from monitor.model.scorers import PatchDictionaryConfig

    torch.set_num_threads(min(2, torch.get_num_threads()))
    work = Path(args.work or tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    train, val, test = crops(args)
    model_dir = work / "model"
    Model.fit("patch_dictionary", PatchDictionaryConfig(k=512), train, val, device="cpu").save(model_dir)
    pool = [png(c) for c in test]

    export, out, ledger = work / "export", work / "out", work / "state" / "ledger.sqlite"
    export.mkdir()
    mport, wport = free_port(), free_port()
    cfg = {"model": {"path": str(model_dir)}, "watch": {"dir": str(export)},
           "output": {"dir": str(out), "ledger": str(ledger), "overlays": "alarms"},
           "metrics": {"port": mport}, "web": {"port": wport}, "service": {"stall_seconds": 600}}
    (work / "soak.yaml").write_text(yaml.safe_dump(cfg))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(work / "notify.sock"))
    sock.settimeout(300)
    env = {**os.environ, "NOTIFY_SOCKET": str(work / "notify.sock")}
    log = open(work / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(work / "soak.yaml")], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    while b"READY=1" not in sock.recv(4096):
        pass
    sock.close()
    scraper = Scraper(mport, wport, ledger)
    scraper.start()
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=30)

    def finished() -> int:
        return db.execute("SELECT COUNT(*) FROM images WHERE state != 'pending'").fetchone()[0]

    samples, t_start, written, done, t_first = {}, time.monotonic(), 0, 0, None
    peak = 0.0
    while done < args.images:
        while written < args.images and written - done < WAITING:
            name = f"s{written:06d}.png"
            (export / f"{name}.part").write_bytes(pool[written % len(pool)])
            os.rename(export / f"{name}.part", export / name)
            written += 1
        time.sleep(0.05)
        done = finished()
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited ({proc.returncode}); see {work / 'daemon.log'}")
        if done >= args.first and "first" not in samples:
            samples["first"] = {"images": done, **proc_figures(proc.pid)}
            t_first = time.monotonic()
        if int(time.monotonic() * 2) % 20 == 0:  # every 10 s
            peak = max(peak, proc_figures(proc.pid)["rss_mb"])
    t_end = time.monotonic()
    time.sleep(2)  # a scrape or two of the final state
    samples["end"] = {"images": finished(), **proc_figures(proc.pid)}
    peak = max(peak, samples["end"]["rss_mb"])
    scraper.halt.set()
    scraper.join()
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()

    def counter(name: str) -> float:
        return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", metrics, re.M))

    rows = db.execute("SELECT COUNT(*), SUM(state = 'done'), SUM(state = 'failed'), SUM(alarm = 1), "
                      "SUM(overlay IS NOT NULL AND overlay != '') FROM images").fetchone()
    db.close()
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    overlays = sum(n.endswith(".png") for n in files)
    results = sum(n.endswith(".json") for n in files)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(60)
    lat = np.array(scraper.latency) if scraper.latency else np.zeros(1)
    report = {
        "images": args.images, "size": args.size, "cpu_count": os.cpu_count(),
        "images_per_second": round(args.images / (t_end - t_start), 2),
        "after_first": round((args.images - samples["first"]["images"]) / (t_end - t_first), 2) if t_first else None,
        "resources": {**samples, "peak_rss_mb": peak,
                      "rss_growth_mb": round(samples["end"]["rss_mb"] - samples["first"]["rss_mb"], 1)},
        "scrapes": {"made": len(scraper.latency), "failed": len(scraper.failed), "failures": scraper.failed[:5],
                    "p50_s": round(float(np.percentile(lat, 50)), 4), "p95_s": round(float(np.percentile(lat, 95)), 4),
                    "max_s": round(float(lat.max()), 4)},
        "ledger": {"rows": rows[0], "done": rows[1], "failed": rows[2], "alarms": rows[3], "with_overlay": rows[4]},
        "output_files": {"overlays": overlays, "results": results},
        "metrics": {"received": counter("monitor_images_received_total"),
                    "processed": counter("monitor_images_processed_total"),
                    "failed": counter("monitor_images_failed_total"), "alarms": counter("monitor_alarms_total")},
        "exit_code": rc, "work": str(work),
    }
    report["agree"] = (rows[0] == args.images == report["metrics"]["received"]
                       and rows[1] == report["metrics"]["processed"] and rows[2] == report["metrics"]["failed"]
                       and rows[3] == report["metrics"]["alarms"] and rows[4] == overlays == results)
    print(json.dumps(report, indent=2))
    return 0 if report["agree"] and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

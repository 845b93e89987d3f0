"""The daemon's footprint on an install: start-up to READY, resident memory, the virtualenv's size, side by side.

    python bench/footprint.py --variant "line PC:.venv-slim/bin/python:.:MODEL" \\
                              --variant "full:.venv/bin/python:.:MODEL" [--images DIR] [--limit 20]

A variant is NAME:PYTHON:CODE:MODEL: a virtualenv's interpreter, the checkout whose ``monitor`` package it runs
(PYTHONPATH; "." for this one, or a worktree of an older version) and the model folder (fitted by that version).
For each: ``monitor run`` started with a notify socket, as systemd starts it, and the seconds to READY=1 (imports,
model loaded, compiled, the warm-up image scored); then the images (default: the 40 NanoTWICE test images) copied
into the export folder one by one under a temporary name and renamed, and the seconds until all are judged; VmRSS
then and VmHWM (the peak); whether torch was loaded (/proc/PID/maps); the virtualenv's size (du). Variants run one
after the other, each in a fresh folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT.parent / "shared/data/nanotwice/Dataset/SEM_Data/Anomalous/images"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(val.split()[0]) // 1024  # MB
    return out


def judged(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as db:
        return db.execute("SELECT count(*) FROM images WHERE state != 'pending'").fetchone()[0]


def run(name: str, python: str, code: str, model: str, images: list[Path]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="footprint-"))
    try:
        export, ledger = work / "export", work / "state" / "ledger.sqlite"
        export.mkdir()
        cfg = {"model": {"path": str(Path(model).resolve())}, "watch": {"dir": str(export)},
               "output": {"dir": str(work / "out"), "ledger": str(ledger)},
               "metrics": {"port": free_port()}, "web": {"port": free_port()}}
        (work / "c.yaml").write_text(yaml.safe_dump(cfg))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(work / "notify.sock"))
        sock.settimeout(120)
        env = {**os.environ, "NOTIFY_SOCKET": str(work / "notify.sock"),
               "PYTHONPATH": str(Path(code).resolve())}
        t0 = time.perf_counter()
        proc = subprocess.Popen([python, "-m", "monitor", "run", "--config", str(work / "c.yaml")],
                                stdout=subprocess.DEVNULL, stderr=open(work / "log", "wb"), env=env)
        try:
            while b"READY=1" not in sock.recv(4096):
                pass
            ready = time.perf_counter() - t0
            ready_rss = status(proc.pid)["VmRSS"]
            t1 = time.perf_counter()
            for i, p in enumerate(images):
                tmp = export / f".{i}.tmp"
                shutil.copyfile(p, tmp)
                os.rename(tmp, export / f"{i:03d}{p.suffix}")
            while judged(ledger) < len(images):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name}: the daemon exited: {(work / 'log').read_text()[-2000:]}")
                time.sleep(0.05)
            burst = time.perf_counter() - t1
            mem = status(proc.pid)
            torch = "torch" in Path(f"/proc/{proc.pid}/maps").read_text()
        finally:
            proc.terminate()
            proc.wait(60)
            sock.close()
        venv = Path(python).absolute().parent.parent  # the link, not the interpreter it points at
        du = subprocess.run(["du", "-sm", str(venv)], capture_output=True, text=True).stdout.split()[0]
        return {"start_to_ready_s": round(ready, 2), "rss_at_ready_mb": ready_rss,
                "images": len(images), "images_judged_s": round(burst, 1),
                "images_per_minute": round(60 * len(images) / burst, 1),
                "rss_after_mb": mem["VmRSS"], "peak_rss_mb": mem["VmHWM"], "torch_loaded": torch,
                "virtualenv_mb": int(du)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", action="append", required=True, help="NAME:PYTHON:CODE:MODEL")
    ap.add_argument("--images", default=str(IMAGES))
    ap.add_argument("--limit", type=int, default=40)
    a = ap.parse_args()
    images = sorted(p for p in Path(a.images).iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png"))[: a.limit]
    out = {}
    for v in a.variant:
        name, python, code, model = v.split(":", 3)
        out[name] = run(name, python, code, model, images)
        print(name, json.dumps(out[name]), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

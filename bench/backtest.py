"""`monitor backtest` in process against Ray, side by side in one run: the same archive, the same model, each run a
fresh `monitor backtest` into a fresh --out folder.

    .venv/bin/python bench/backtest.py --model MODEL_DIR --images DIR [DIR ...] [--copies 160] [--work DIR]

The archive is ``--copies`` images, copied round-robin from the images of ``--images`` into one folder (a
backtest reads each file whatever its content). Runs, in this order:

1. in process, 2 threads (``--ray off``), and 1 thread (``OMP_NUM_THREADS=1``);
2. a local Ray cluster (``--ray local``, the default): 1 actor of 1 CPU, then 2 actors of 1 CPU;
3. a multi-node cluster on this machine: `ray start --head` and `ray start --address` (2 nodes of 1 CPU each,
   its own token, usage statistics off), joined with ``--ray 127.0.0.1:PORT``: 1 node, then both.

Per run: the start-up (to the first scored batch: cluster, actors, models), the steady rate after it (images per
second, first batch to last), the judgement's own time per image (p50, p95, in the scoring process), the processes
that scored; and Ray's overhead per image: a Ray actor's steady time per image against the in-process run with the
same threads (1), as a share of the scoring time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _archive(images: list[Path], copies: int, into: Path) -> None:
    into.mkdir(parents=True)
    for i in range(copies):
        src = images[i % len(images)]
        shutil.copyfile(src, into / f"{i:05d}-{src.name}")


def _backtest(archive: Path, model: str, out: Path, env: dict, *extra: str) -> dict:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "monitor", "backtest", str(archive), "--model", model, "--out",
                        str(out), "--quiet", "--no-overlays", *extra], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"monitor backtest {' '.join(extra)} -> {r.returncode}\n{r.stderr[-3000:]}")
    s = json.loads((out / "report.json").read_text())
    import pyarrow.parquet as pq

    by = pq.read_table(out / "rows.parquet", columns=["scored_by"]).column("scored_by").to_pylist()
    return {"wall": wall, "startup": s["startup_seconds"], "steady_ips": s["steady_images_per_second"],
            "p50": s["seconds_per_image"]["p50"], "p95": s["seconds_per_image"]["p95"], "images": s["images"],
            "processes": len(set(by))}


def _ray(env: dict, *args: str) -> None:
    subprocess.run([str(BIN / "ray"), *args], env=env, check=True, capture_output=True, text=True, timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--copies", type=int, default=160)
    ap.add_argument("--work", help="working folder (default: a temporary one, removed)")
    a = ap.parse_args()
    from monitor.model.images import list_images

    images = list_images(a.images)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="bench-backtest-"))
    archive = work / "archive"
    _archive(images, a.copies, archive)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "OMP_NUM_THREADS"}
    runs: list[tuple[str, dict]] = []
    runs.append(("in process, 2 threads", _backtest(archive, a.model, work / "off2", base, "--ray", "off")))
    runs.append(("in process, 1 thread", _backtest(archive, a.model, work / "off1", {**base, "OMP_NUM_THREADS": "1"},
                                                   "--ray", "off")))
    runs.append(("local Ray, 1 actor x 1 CPU", _backtest(archive, a.model, work / "ray1", base, "--actors", "1")))
    runs.append(("local Ray, 2 actors x 1 CPU", _backtest(archive, a.model, work / "ray2", base)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**base, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    tmp = tempfile.mkdtemp(prefix="ray-")
    try:
        _ray(env, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
             "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", tmp)
        _ray(env, "start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1", "--num-cpus", "1")
        addr = f"127.0.0.1:{port}"
        runs.append(("2-node cluster, 1 actor", _backtest(archive, a.model, work / "mn1", env, "--ray", addr,
                                                          "--actors", "1")))
        runs.append(("2-node cluster, 2 actors (1 a node)", _backtest(archive, a.model, work / "mn2", env, "--ray",
                                                                      addr)))
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{a.copies} images ({', '.join(sorted({p.suffix for p in images}))}, from {len(images)} files); model "
          f"{Path(a.model).name}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| run | wall s | start-up s | steady images/s | s/image steady | judgement p50 | p95 | processes |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in runs:
        print(f"| {name} | {r['wall']:.1f} | {r['startup']:.1f} | {r['steady_ips']:.2f} | {1 / r['steady_ips']:.3f} "
              f"| {r['p50']:.3f} | {r['p95']:.3f} | {r['processes']} |")
    one, ray1 = dict(runs)["in process, 1 thread"], dict(runs)["local Ray, 1 actor x 1 CPU"]
    over = 1 / ray1["steady_ips"] - 1 / one["steady_ips"]
    print(f"\nRay's overhead per image (1 actor against 1 thread in process, steady): {1000 * over:+.1f} ms, "
          f"{100 * over * one['steady_ips']:+.1f}% of the scoring time")
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The feedback loop on NanoTWICE, end to end, with the real commands: a model fitted on fewer normal images than the
paper's protocol, a line streaming held-out normal and defect images into the export folder, operators labelling
false alarms and confirmed defects, `monitor refit` with its before/after table, `--apply` (the swap visible as a
model_id change in the metrics), and `monitor rollback`.

    .venv/bin/python bench/feedback_story.py --data ../shared/data/nanotwice [--work /tmp/feedback-story]
                                             [--defects 8] [--evaluate]

Every command is printed before it runs. The data set is only read: images are copied into the story's own
export folder (a temporary name, then a rename, as microscope software writes). ``--evaluate`` also runs
`monitor evaluate` on both models (pixel ROC-AUC on the 40 test images, about 2 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MONITOR = [sys.executable, "-m", "monitor"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args, check: bool = True) -> subprocess.CompletedProcess:
    print(f"\n$ monitor {shlex.join(map(str, args))}", flush=True)
    r = subprocess.run([*MONITOR, *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    out = "\n".join(x for x in r.stdout.splitlines())
    if out:
        print(out)
    for line in r.stderr.splitlines():
        if line.startswith("monitor:"):
            print(line)
    if check and r.returncode != 0:
        sys.exit(f"failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def model_id(port: int) -> str:
    for line in scrape(port).splitlines():
        if line.startswith("monitor_model_info{"):
            return line.split('model_id="')[1].split('"')[0]
    return ""


def wait(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"timed out waiting for {what}")


def history(cfg: Path) -> list[dict]:
    r = subprocess.run([*MONITOR, "history", "--config", str(cfg), "--json"], capture_output=True, text=True,
                       cwd=ROOT, check=True)
    return [json.loads(x) for x in r.stdout.splitlines()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "nanotwice"))
    ap.add_argument("--work", default="/tmp/feedback-story")
    ap.add_argument("--defects", type=int, default=8, help="test images streamed after the normal ones")
    ap.add_argument("--confirm", type=int, default=3, help="alarms the operators confirm")
    ap.add_argument("--coverage-threshold", type=float, default=0.0001,
                    help="alarm.coverage_threshold of the story's line (default 0.01%%: a sensitive line, where the "
                         "one-image model gives false alarms; the default configuration's 0.1%% gives none here)")
    ap.add_argument("--evaluate", action="store_true", help="pixel ROC-AUC of both models (monitor evaluate)")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from monitor.commands.evaluate import load_dataset

    ds = load_dataset(args.data, "nanotwice")  # the paper's split: four normal images, one for the threshold
    normal = [*ds.train, *ds.val]
    anomalous = [s.image for s in ds.test]
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    (work / "export").mkdir(parents=True)
    port = free_port()
    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"path": str(work / "model")},
        "watch": {"dir": str(work / "export"), "settle_seconds": 0.5},
        "output": {"dir": str(work / "output"), "ledger": str(work / "ledger.sqlite")},
        "alarm": {"coverage_threshold": args.coverage_threshold},
        "metrics": {"port": port}, "web": {"enabled": False}, "service": {"line": "nanotwice-story"}}))
    t_start = time.perf_counter()

    print(f"1. A model from one normal image ({normal[0].name}; the paper's protocol uses four), threshold from "
          f"{normal[-1].name}")
    run("fit", "--config", cfg, "--normal", normal[0], "--val", normal[-1], "--out", work / "model", "--quiet")

    print("\n2. The line runs: the monitor watches the export folder")
    log = open(work / "monitor.log", "wb")
    proc = subprocess.Popen([*MONITOR, "run", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait(lambda: model_id(port), 120, "the monitor's metrics")
        first = model_id(port)
        print(f"   monitor_model_info model_id={first}")
        stream = normal[1:-1] + anomalous[:args.defects]
        print(f"   the SEM exports {len(stream)} images: {len(normal) - 2} held-out normal ones, then "
              f"{args.defects} with defects")
        for p in stream:
            tmp = work / "export" / f".{p.name}.part"
            tmp.write_bytes(p.read_bytes())
            os.rename(tmp, work / "export" / p.name)
            time.sleep(0.3)
        wait(lambda: sum(r["state"] != "pending" for r in history(cfg)) >= len(stream), 300, "every image scored")
        run("history", "--config", cfg)

        print("\n3. The operators look at the alarms: on the normal images they are false alarms; they confirm "
              f"{args.confirm} of the others")
        rows = history(cfg)
        normal_names = {p.name for p in normal}
        false_alarms = [r for r in rows if r["verdict"] == "defect" and Path(r["path"]).name in normal_names]
        for r in false_alarms:
            run("label", Path(r["path"]).name, "--false-alarm", "--by", "operator-a", "--note",
                "clean mat, no defect", "--config", cfg)
        confirmed = [r for r in rows if r["verdict"] == "defect" and Path(r["path"]).name not in normal_names]
        confirmed = confirmed[:args.confirm]
        for r in confirmed:
            run("label", Path(r["path"]).name, "--confirmed", "--by", "operator-b", "--config", cfg)
        want = {"false_alarm": len(false_alarms), "confirmed": len(confirmed)}
        wait(lambda: all(f'monitor_labels_total{{kind="{k}",line="nanotwice-story"}} {float(n)}' in scrape(port)
                         for k, n in want.items()), 30, "the labels in the metrics")
        print("\n   " + "\n   ".join(x for x in scrape(port).splitlines() if x.startswith("monitor_labels_total")))

        print("\n4. A candidate from the line's history, validated on the labels (nothing installed yet)")
        r = run("refit", "--config", cfg, "--quiet", check=False)
        if r.returncode != 0:
            print("   the candidate fails validation: not applied; the story stops here")
            return 1
        print(f"   monitor_model_info model_id={model_id(port)} (unchanged)")

        print("\n5. Installed with --apply: the running monitor reloads it")
        run("refit", "--config", cfg, "--quiet", "--apply")
        candidate = json.loads((work / "model.candidate" / "refit.json").read_text())["candidate"]
        wait(lambda: model_id(port) == candidate, 120, "the new model in the metrics")
        print(f"   monitor_model_info model_id={model_id(port)} (was {first})")

        print("\n6. Rolled back")
        run("rollback", "--config", cfg)
        wait(lambda: model_id(port) == first, 120, "the old model in the metrics")
        print(f"   monitor_model_info model_id={model_id(port)}")
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    print(f"\nthe story took {time.perf_counter() - t_start:.0f} s; the monitor's log: {work / 'monitor.log'}")

    if args.evaluate:
        versions = work / "model.versions"
        print("\n7. Both models on the 40 NanoTWICE test images")
        run("evaluate", "--data", args.data, "--model", versions / first, "--model", versions / candidate,
            "--out", work / "evaluation")
    return 0


if __name__ == "__main__":
    sys.exit(main())

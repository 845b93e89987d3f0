"""The ledger after a year on the line: start-up, results page, history, refit, retention and the per-image ledger
calls on a real ledger of one image a minute for a year (525,600 rows), against the same on an empty or tiny one.

    nice -n 10 .venv/bin/python bench/year.py [--rows 525600] [--tiny 100] [--repeat N] [--work DIR] [--keep]
                                              [--json FILE]
    nice -n 10 .venv/bin/python bench/year.py --rows 2000     # quick check (--repeat 1): about 40 s

1. fits a small model on synthetic mats (as the tests do) and fills real ledgers (created by ``Ledger``, so the
   schema is the real one; rows by one ``executemany`` in one transaction) with a plausible year ending now:
   one image a minute, verdicts mostly ok, about 1% defect (alarm), 0.3% mismatch (every reason, with the result
   JSON the worker writes), a day of no-threshold, 0.5% failed (``ERROR_KINDS`` and ``crashed``), three pending
   at the end, a new model every two months (the last one is the fitted model, so that the drift window finds its
   clean images), operator labels on about half the alarms (some given twice), result JSON as the worker writes
   it, and the overlay and result files of the last 90 days in the output folder;
2. starts a real `monitor run` (NOTIFY_SOCKET, as under systemd) on an empty ledger and on the full one, in turn,
   ``--repeat`` times each, and times the start to READY=1;
3. on a running daemon of the tiny ledger and of the full one: the results list with each verdict filter and
   time windows, a result page and a label POST (write password and CSRF token, as the form sends them) over real
   HTTP, best of ``--repeat`` (default 3; 1 under 10,000 rows);
4. `monitor history` (``--since 1h``, ``--alarms``, ``--json --since 1d``, ``--limit 50``) and `monitor label` (by
   ledger id and by file name) as processes, each against the same command on an empty ledger (the interpreter's
   start is in both; `label` against the tiny ledger), and `monitor history` of every row once (the printing);
5. directly, in this process: the ledger's open (checked, as the daemon opens it; unchecked, as the commands do;
   the first open of a ledger written before the newest indexes, which makes them), the counters' totals, the
   drift window of the model in use and of a new model (a model swap), a result by file name, refit's gathering
   of the history (``refit.gather``), a retention pass (the first, at start, and the next, every turn of the serve
   loop), and the worker's and the intake's per-image ledger calls (record, known, claim the next pending, start,
   finish, queue depth), 200 of each on the empty and on the full ledger in turn, p50 and p95.

The three pending rows are failed ``missing`` by the first start (their files are not there), as after a crash
whose images were removed meanwhile.

Prints one table (milliseconds unless said) with the product owner's goals: start-up at most 5 s over the empty
ledger's, every page and command at most 0.5 s, and nothing in the per-image path that grows with the ledger.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import inspect
import json
import os
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from monitor.commands.fit import fit_model  # noqa: E402
from monitor.commands.refit import gather  # noqa: E402
from monitor.config import load_config, parse_config  # noqa: E402
from monitor.daemon.retention import Retention  # noqa: E402
from monitor.judge import load_model  # noqa: E402
from monitor.ledger import VERDICT_FILTERS, Ledger, LedgerReader  # noqa: E402
from monitor.model.images import ERROR_KINDS, list_images  # noqa: E402
from monitor.model.quality import QUALITY_REASONS  # noqa: E402
from monitor.model.synth import fiber_mat  # noqa: E402
from monitor.passwords import hash_password  # noqa: E402
from tests.daemon import Daemon, png_bytes  # noqa: E402  (the test suite's real `monitor run`, NOTIFY_SOCKET)

MONITOR = str(Path(sys.executable).parent / "monitor")  # the console script (quick exit, as installed)
SHAPE = (256, 320)
# the test suite's small model (tests/test_feedback.py): real pretrained weights, 512 words, 3x3 aggregation
SMALL = {"patch_dictionary": {"k": 512, "aggregate": 3}, "clip": [0.0, 1.0]}
PASSWORD = "line 3 writes"
EXPORT = "/srv/sem-export"
MINUTE = 60.0
MODEL_DAYS = 61  # a new model about every two months
OUTPUT_DAYS = 90  # output.max_age: overlay and result files are kept this long
START_GOAL_S, PAGE_GOAL_S = 5.0, 0.5
NAMES = ("Ana", "Ben", "Chen", "Dana", "Eli", "Farah")
FAILURES = {  # kind: (share of the failures, reason as the worker or the intake writes it)
    "corrupt": (0.30, "undecodable image data"),
    "missing": (0.20, "the file is gone"),
    "changed": (0.15, "the content changed after it was recorded (sha256 differs)"),
    "empty": (0.08, "the file is empty (0 bytes)"),
    "too_small": (0.05, "the image is 64x48 pixels, smaller than image.min_side 64"),
    "too_large": (0.05, "9000x9000 pixels, over 4x the training images' pixels (image.max_training_ratio)"),
    "unreadable": (0.07, "cannot identify image file"),
    "permission": (0.04, "[Errno 13] Permission denied"),
    "symlink": (0.03, "a symbolic link out of the export folder (watch.symlinks: inside)"),
    "crashed": (0.03, "the daemon stopped 3 times while scoring this image; not retried (service.max_attempts)"),
}
assert set(FAILURES) - {"crashed"} <= set(ERROR_KINDS)
MISMATCHES = {  # reason: share of the mismatches, text
    "size": (0.20, "the image is 1024x768 pixels, the model was fitted on 320x256"),
    "bit_depth": (0.05, "the image is 16-bit, the model was fitted on 8-bit images"),
    "pixel_size": (0.15, "the image's pixel size is 9.77 nm (TIFF tags), the model was fitted at 19.5 nm (another "
                         "magnification)"),
    "exposure": (0.20, "exposure: 41% of the pixels are clipped at white (the training images 2.1%; limit "
                       "mismatch.max_clipped 35% more); correct brightness or contrast"),
    "focus": (0.20, "out of focus: sharpness 1.07 against the training images' 1.31 (0.82x, below "
                    "mismatch.min_sharpness 0.9x); refocus"),
    "noise": (0.10, "too noisy: noise 0.0412 of the range against the training images' 0.0121 (3.4x, over "
                    "mismatch.max_noise 3x); scan slower or average more frames"),
    "coverage": (0.10, None),
}


# --------------------------------------------------------------------------------------------------------- the fill
def _local(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(t))


def _defects(rng: random.Random, n: int, big: bool) -> list[dict]:
    out = []
    for i in range(n):
        area = rng.randint(150, 9000) if big else rng.randint(4, 60)
        w = max(2, int(area ** 0.5 * rng.uniform(0.6, 1.6)))
        h = max(2, area // w + 1)
        x, y = rng.randint(0, 1023 - w), rng.randint(0, 699 - h)
        out.append({"area": area, "bbox": [x, y, w, h], "centroid": [round(x + w / 2, 1), round(y + h / 2, 1)],
                    "peak": round(rng.uniform(18.5, 40.0), 4)})
    out.sort(key=lambda d: -d["area"])
    return [{"number": i, **d} for i, d in enumerate(out, 1)]


def _quality(rng: random.Random) -> dict:
    return {"clipped_low": round(rng.uniform(0.001, 0.05), 5), "clipped_high": round(rng.uniform(0.001, 0.04), 5),
            "sharpness": round(rng.uniform(1.2, 1.4), 4), "noise": round(rng.uniform(0.01, 0.014), 5),
            "gain": round(rng.uniform(0.95, 1.05), 4), "offset": round(rng.uniform(-0.02, 0.02), 4)}


def _positions(rng: random.Random, n: int, share: float, taken: set[int], lo: int = 0) -> list[int]:
    """``share`` of the rows (at least one), at random positions not taken yet."""
    free = [i for i in range(lo, n) if i not in taken]
    pick = rng.sample(free, min(len(free), max(1, round(share * n))))
    taken.update(pick)
    return pick


def fill(path: Path, n: int, model_id: str, out_dir: Path, seed: int = 0) -> dict:
    """A ledger of ``n`` rows, one a minute up to now, as a year on the line leaves it; returns what it holds."""
    rng = random.Random(seed)
    Ledger(path).close()  # the real schema
    now = time.time()
    t0 = now - n * MINUTE
    n_models = max(1, round(n * MINUTE / 86400 / MODEL_DAYS))
    bounds = [round(k * n / n_models) for k in range(n_models + 1)]
    models = [hashlib.sha256(f"model-{k}".encode()).hexdigest()[:16] for k in range(n_models - 1)] + [model_id]

    kinds: dict[int, tuple] = {}
    taken: set[int] = set()
    pending = list(range(max(0, n - 3), n))
    taken.update(pending)
    # a model installed without validation images for a day, then replaced: its images are no-threshold
    start_nt = min(max(0, n - 1500), n // 2)
    nothr = [i for i in range(start_nt, min(n - 3, start_nt + 1440)) if i not in taken][:max(1, n // 365)]
    taken.update(nothr)
    defects = _positions(rng, n, 0.01, taken)
    for reason, (share, _) in MISMATCHES.items():
        for i in _positions(rng, n, 0.003 * share, taken):
            kinds[i] = ("mismatch", reason)
    for kind, (share, _) in FAILURES.items():
        for i in _positions(rng, n, 0.005 * share, taken):
            kinds[i] = ("failed", kind)
    for i in defects:
        kinds[i] = ("defect",)
    for i in nothr:
        kinds[i] = ("no-threshold",)
    for i in pending:
        kinds[i] = ("pending",)

    rows, files = [], []
    model_k = 0
    kept_after = now - OUTPUT_DAYS * 86400
    for i in range(n):
        while i >= bounds[model_k + 1]:
            model_k += 1
        model = "f" * 4 + models[0][4:] if kinds.get(i) == ("no-threshold",) else models[model_k]
        seen = t0 + i * MINUTE + rng.uniform(0, 5)
        name = f"SEM_{i + 1:07d}.tif"
        size = 716_912 + rng.randint(-2000, 2000)
        mtime_ns = int((seen - rng.uniform(0.3, 1.5)) * 1e9)
        sha = hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()
        kind = kinds.get(i, ("ok",))
        score_s = rng.uniform(0.17, 0.26)
        started = seen + rng.uniform(0.005, 0.05)
        finished = started + score_s + 0.004
        e2e = finished - seen
        head = {"image": f"{EXPORT}/{name}", "sha256": sha, "line": "spin-line-3", "model_id": model,
                "scored_at": _local(finished)}
        overlay = None
        row_id = i + 1
        if kind[0] == "pending":
            rows.append((f"{EXPORT}/{name}", size, mtime_ns, sha, "pending", seen, None, None, 0, None, None, None,
                         None, None, None, None, None, None, None, None, None, None))
            continue
        if kind[0] == "failed":
            k = kind[1]
            key = sha if k not in ("symlink", "unreadable") else f"{k}:{size}:{mtime_ns}"
            rows.append((f"{EXPORT}/{name}", size, mtime_ns, key, "failed", seen,
                         None if k == "symlink" else started, finished, 0 if k == "symlink" else 1,
                         None, None, None, None, None, None, None, e2e, model, None, None, k, FAILURES[k][1]))
            continue
        quality = _quality(rng)
        if kind[0] == "mismatch" and kind[1] != "coverage":
            reason = kind[1]
            result = {**head, "verdict": "mismatch", "mismatch": MISMATCHES[reason][1], "mismatch_reason": reason,
                      "score_seconds": round(score_s / 4, 4), "alarm": False}
            if reason in QUALITY_REASONS:
                result["quality"] = quality
                overlay = str(out_dir / f"SEM_{i + 1:07d}-{row_id}.png")
            rows.append((f"{EXPORT}/{name}", size, mtime_ns, sha, "done", seen, started, finished, 1, "mismatch", 0,
                         None, None, None, None, score_s / 4, e2e, model, overlay, json.dumps(result), None, None))
        else:
            if kind[0] == "defect":
                verdict, dl = "defect", _defects(rng, rng.choice((1, 1, 2, 2, 3, 4, 6, 9, 12)), True)
                coverage = sum(d["area"] for d in dl) / (1024 * 700)
            elif kind[0] == "mismatch":  # the defect mask over most of the image
                verdict, dl = "mismatch", _defects(rng, rng.randint(8, 25), True)
                coverage = rng.uniform(0.5, 0.9)
            else:  # ok or no-threshold; an ok image may hold specks below the alarm's coverage
                verdict = kind[0]
                dl = _defects(rng, rng.choice((1, 1, 2)), False) if rng.random() < 0.1 else []
                coverage = sum(d["area"] for d in dl) / (1024 * 700)
            threshold = None if verdict == "no-threshold" else 18.1042
            alarm = verdict == "defect"
            result = {**head, "verdict": verdict, "coverage": round(coverage, 6), "n_defects": len(dl),
                      "defects": dl, "max_score": round(rng.uniform(12, 45 if dl else 18), 4),
                      "threshold": threshold, "score_level": round(rng.gauss(9.8, 0.25), 6),
                      "score_seconds": round(score_s, 4), "alarm": alarm, "coverage_threshold": 0.001,
                      "max_defect_area": 100, "pixel_size_um": 0.0195, "quality": quality}
            for d in dl:
                d["area_um2"] = round(d["area"] * 0.0195 ** 2, 4)
            if verdict == "mismatch":
                result["mismatch"] = (f"the defect mask covers {100 * coverage:.1f}% of the image, over "
                                      "mismatch.max_coverage 50%: another material, another magnification, or a "
                                      "focus or detector fault")
                result["mismatch_reason"] = "coverage"
            if verdict in ("defect", "mismatch"):
                overlay = str(out_dir / f"SEM_{i + 1:07d}-{row_id}.png")
            rows.append((f"{EXPORT}/{name}", size, mtime_ns, sha, "done", seen, started, finished, 1, verdict,
                         int(alarm), coverage, len(dl), max((d["area"] for d in dl), default=0),
                         result["max_score"], score_s, e2e, model, overlay, json.dumps(result), None, None))
        if overlay and finished >= kept_after:
            files.append(overlay)

    labels = []
    defect_ids = sorted(i + 1 for i in defects)
    for row_id in defect_ids:
        u = rng.random()
        if u < 0.45:  # about half the alarms get a label, some twice (a changed mind)
            kind = "false_alarm" if u < 0.25 else "confirmed"
            at = t0 + (row_id - 1) * MINUTE + rng.uniform(60, 8 * 3600)
            labels.append((row_id, kind, rng.choice(("", "charging artefact", "bead cluster, real", "dust on the "
                                                     "stub", "film edge"))[:500], rng.choice(NAMES),
                           rng.choice(("web", "web", "cli")), at))
            if rng.random() < 0.03:
                labels.append((row_id, "confirmed" if kind == "false_alarm" else "false_alarm", "second look",
                               rng.choice(NAMES), "web", at + 3600))
    ok_ids = [i + 1 for i in range(n) if i not in kinds]
    for row_id in rng.sample(ok_ids, min(len(ok_ids), max(1, n // 5000))):  # defects the monitor missed
        labels.append((row_id, "confirmed", "small bead under the alarm line", rng.choice(NAMES), "cli",
                       t0 + (row_id - 1) * MINUTE + 600))
    labels.sort(key=lambda x: x[5])

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    db.executemany("INSERT INTO images (path, size, mtime_ns, sha256, state, seen_at, started_at, finished_at, "
                   "attempts, verdict, alarm, coverage, n_defects, largest_area, max_score, score_seconds, "
                   "e2e_seconds, model_id, overlay, result_json, error_kind, error) VALUES "
                   "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.executemany("INSERT INTO labels (image_id, kind, note, who, source, at) VALUES (?, ?, ?, ?, ?, ?)", labels)
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    json_bytes = db.execute("SELECT COALESCE(SUM(LENGTH(result_json)), 0) FROM images").fetchone()[0]
    db.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in files:  # the overlays and result files retention keeps (small stand-ins: only their names matter)
        Path(f).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 2048)
        Path(f).with_suffix(".json").write_text("{}")
    verdicts: dict[str, int] = {}
    for k in kinds.values():
        verdicts[k[0]] = verdicts.get(k[0], 0) + 1
    verdicts["ok"] = n - sum(verdicts.values())
    return {"rows": n, "models": n_models, "labels": len(labels), "verdicts": verdicts,
            "defect_ids": defect_ids, "labelled": sorted({x[0] for x in labels}),
            "result_json_mean_bytes": round(json_bytes / max(1, n)), "output_files": 2 * len(files)}


# ------------------------------------------------------------------------------------------------------- timings
def timed(fn, *args, **kw) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


def best(fn, repeat: int) -> float:
    return min(timed(fn)[0] for _ in range(repeat))


def request(port: int, method: str, target: str, body: bytes | None = None, headers: dict | None = None
            ) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def page_targets(info: dict, now: float) -> list[tuple[str, str]]:
    local = lambda t: datetime.fromtimestamp(t).strftime("%Y-%m-%dT%H:%M")  # noqa: E731
    span = info["rows"] * MINUTE
    half = now - span / 2
    out = [("/", "/")]
    out += [(f"/?verdict={v}", f"/?verdict={v}") for v in VERDICT_FILTERS]
    out += [("/?since=1h ago", f"/?since={local(now - 3600)}"),
            ("/?until=half the span ago", f"/?until={local(half)}"),
            ("/?since&until: a day, half the span ago", f"/?since={local(half - 86400)}&until={local(half)}"),
            ("/?until=the first hour", f"/?until={local(now - span + 3600)}"),
            ("/?verdict=ok&until=half the span ago", f"/?verdict=ok&until={local(half)}"),
            ("/?verdict=ok&until=the first hour", f"/?verdict=ok&until={local(now - span + 3600)}"),
            ("/?verdict=defect&until=half the span ago", f"/?verdict=defect&until={local(half)}"),
            ("/?verdict=failed&since&until: a day", f"/?verdict=failed&since={local(half - 86400)}"
                                                     f"&until={local(half)}"),
            ("/?limit=500", "/?limit=500")]
    return out


def web_bench(d: Daemon, info: dict, repeat: int) -> dict:
    port, out, now = d.web_port, {}, time.time()
    for name, target in page_targets(info, now):
        status, _ = request(port, "GET", target)
        assert status == 200, (target, status)
        out[f"GET {name}"] = best(lambda: request(port, "GET", target), repeat)
    alarms = sorted(set(info["labelled"]) & set(info["defect_ids"])) or info["labelled"]
    rid = alarms[len(alarms) // 2]
    assert request(port, "GET", f"/result/{rid}")[0] == 200
    out["GET /result/ID (a labelled alarm)"] = best(lambda: request(port, "GET", f"/result/{rid}"), repeat)
    posts = []
    for k in range(repeat):
        target = info["defect_ids"][k % len(info["defect_ids"])]
        status, body = request(port, "GET", f"/result/{target}")
        token = re.search(rb'name="csrf" value="([^"]+)"', body).group(1).decode()
        form = urllib.parse.urlencode({"csrf": token, "kind": "confirmed", "by": "Ana", "note": "bench",
                                       "password": PASSWORD}).encode()
        secs, (status, _) = timed(request, port, "POST", f"/result/{target}/label", form,
                                  {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 303, status
        posts.append(secs)
    out["POST /result/ID/label"] = min(posts)
    return out


CLI = {"history --since 1h": ["history", "--since", "1h"],
       "history --alarms": ["history", "--alarms"],
       "history --json --since 1d": ["history", "--json", "--since", "1d"],
       "history --limit 50": ["history", "--limit", "50"]}


def cli_bench(ledger: Path, repeat: int, label_id: int | None, only_label: bool = False) -> dict:
    out = {}
    for name, args in ({} if only_label else CLI).items():
        def go():
            r = subprocess.run([MONITOR, *args, "--ledger", str(ledger)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
            assert r.returncode == 0, r.stderr.decode()[-2000:]
        out[name] = best(go, repeat)
    if label_id is not None:
        for name, image in (("label ID --confirmed", str(label_id)),
                            ("label FILE-NAME --confirmed", f"SEM_{label_id:07d}.tif")):
            def lab():
                r = subprocess.run([MONITOR, "label", image, "--confirmed", "--by", "Ben", "--ledger", str(ledger)],
                                   capture_output=True)
                assert r.returncode == 0, r.stderr.decode()[-2000:]
            out[name] = best(lab, repeat)
    return out


def history_all(ledger: Path) -> dict:
    """`monitor history` of every row, once (its time is the printing of them all: no goal applies)."""
    t = time.perf_counter()
    r = subprocess.run([MONITOR, "history", "--ledger", str(ledger)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    return {"seconds": time.perf_counter() - t, "rc": r.returncode,
            "error": r.stderr.decode(errors="replace").strip().splitlines()[-1:] if r.returncode else []}


def direct_bench(d: Daemon, repeat: int) -> dict:
    """In this process, on the daemon's (stopped) ledger: the start-up's ledger work, refit's gathering and
    retention."""
    cfg = load_config(d.config)
    out = {}
    out["Ledger() open (the daemon's, checked)"] = best(lambda: Ledger(d.ledger_path).close(), repeat)
    if "check" in inspect.signature(Ledger).parameters:  # the commands' open (a ledger module without it: none)
        out["Ledger(check=False) open (the commands')"] = best(lambda: Ledger(d.ledger_path, check=False).close(),
                                                               repeat)
    with sqlite3.connect(d.ledger_path) as db:  # as a ledger written before its newest indexes: made at this open
        names = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name IN "
                                          "('images_alarm', 'images_overlay', 'images_model')")]
        for n in names:
            db.execute(f"DROP INDEX {n}")
    if names:
        out["first open of a ledger without the newest indexes"] = timed(lambda: Ledger(d.ledger_path).close())[0]
    led = Ledger(d.ledger_path)
    try:
        name = f"SEM_{min(100, led.totals()['received']):07d}.tif"  # an image of the ledger, whatever its size
        out["find(file name) (monitor label NAME)"] = best(lambda: led.find(name), repeat)
        out["totals() (the counters)"] = best(led.totals, repeat)
        model = load_model(cfg)
        out["recent_levels(model in use)"] = best(lambda: led.recent_levels(model.model_id, cfg.drift.window),
                                                  repeat)
        out["recent_levels(a new model)"] = best(lambda: led.recent_levels("0123456789abcdef", cfg.drift.window),
                                                 repeat)
        out["pending_count()"] = best(led.pending_count, repeat)
        first, nxt = [], []
        for _ in range(repeat):
            r = Retention(led, cfg.output.max_bytes, cfg.output.max_age_seconds)
            first.append(timed(r.enforce)[0])
            nxt.append(timed(r.enforce)[0])
        out["retention: first pass (start)"] = min(first)
        out["retention: next pass (serve loop)"] = min(nxt)
        reader = LedgerReader(d.ledger_path)
        try:
            out["refit.gather (recent 20)"] = best(lambda: gather(cfg, model, reader, 20), repeat)
        finally:
            reader.close()
    finally:
        led.close()
    return out


PER_IMAGE = ("known", "record", "pending(1)", "start", "finish", "pending_count")


def per_image(paths: dict[str, Path], n: int = 200, rounds: int = 2) -> dict:
    """The intake's and the worker's ledger calls per image on each ledger of ``paths``, ``n`` images in all in
    ``rounds`` turns (one ledger after the other, so that a busy moment of the machine falls on all): p50 and p95
    of each call, seconds."""
    os.sync()  # the fill's pages on disk: a commit's fsync must not write them
    calls = {k: {c: [] for c in PER_IMAGE} for k in paths}
    for r in range(rounds):
        for k, path in paths.items():
            _per_image(path, n // rounds, calls[k], f"{r}")
    out = {}
    for k, got in calls.items():
        out[k] = {}
        for c, v in got.items():
            v.sort()
            out[k][f"{c} p50"] = statistics.median(v)
            out[k][f"{c} p95"] = v[int(0.95 * (len(v) - 1))]
    return out


def _per_image(path: Path, n: int, calls: dict[str, list[float]], tag: str) -> None:
    led = Ledger(path)
    try:
        for k in range(n):
            p = f"{EXPORT}/bench_{os.getpid()}_{tag}_{k:05d}.tif"
            sha = hashlib.sha256(p.encode()).hexdigest()
            calls["known"].append(timed(led.known, p, 716_000, k)[0])
            secs, (row, _) = timed(led.record, p, 716_000, k, sha)
            calls["record"].append(secs)
            calls["pending(1)"].append(timed(led.pending, 1)[0])
            calls["start"].append(timed(led.start, row.id)[0])
            result = json.dumps({"image": p, "sha256": sha, "verdict": "ok", "coverage": 0.0, "n_defects": 0,
                                 "defects": [], "score_level": 9.8, "quality": {"noise": 0.012}})
            calls["finish"].append(timed(led.finish, row.id, verdict="ok", alarm=False, coverage=0.0, n_defects=0,
                                         largest_area=0, max_score=15.0, score_seconds=0.2, model_id="m",
                                         result_json=result)[0])
            calls["pending_count"].append(timed(led.pending_count)[0])
    finally:
        led.close()


def start(d: Daemon) -> float:
    """Start ``d``; returns the seconds from the process's start to its READY=1."""
    d.messages = []  # the READY=1 of an earlier run is not this one's
    t = time.perf_counter()
    d.start(wait_ready=True)
    return time.perf_counter() - t


def start_time(d: Daemon) -> float:
    secs = start(d)
    assert d.stop() == 0, d.log_text()[-3000:]
    return secs


# ---------------------------------------------------------------------------------------------------------- main
T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"year [{time.perf_counter() - T0:4.0f} s]: {msg}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=525_600, help="rows of the full ledger (one image a minute)")
    ap.add_argument("--tiny", type=int, default=100, help="rows of the tiny ledger the pages are compared with")
    ap.add_argument("--repeat", type=int, help="daemon starts of each kind, and tries of each page and command "
                                               "(the best counts; default 3, 1 with --rows under 10000)")
    ap.add_argument("--work", help="work folder (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (the ledgers)")
    ap.add_argument("--json", help="also write the measurements as JSON here")
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="year-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.repeat is None:
        args.repeat = 3 if args.rows >= 10_000 else 1
    tries = max(1, args.repeat)
    t_all = time.perf_counter()
    try:
        say(f"fitting a small model on synthetic mats in {work} ...")
        for folder, seeds in (("normal", range(6)), ("val", range(100, 102))):  # `monitor fit`'s own code, on
            (work / folder).mkdir(exist_ok=True)                                  # files: refit starts from them
            for s in seeds:
                (work / folder / f"n{s}.png").write_bytes(png_bytes(fiber_mat(SHAPE, seed=s)))
        _, model_id, _ = fit_model(parse_config({"model": SMALL}), list_images([work / "normal"]),
                                   list_images([work / "val"]), work / "model", quiet=True)
        web = {"write_password_hash": str(hash_password(PASSWORD))}  # the default iterations, as installed
        daemons = {k: Daemon(work / k, work / "model", model=SMALL, web=web, service={"line": "spin-line-3"})
                   for k in ("empty", "tiny", "full")}
        fills = {}
        for k, n in (("tiny", args.tiny), ("full", args.rows)):
            say(f"filling the {k} ledger with {n} rows ...")
            secs, fills[k] = timed(fill, daemons[k].ledger_path, n, model_id, daemons[k].out)
            fills[k]["fill_seconds"] = round(secs, 1)
        os.sync()  # the fill's pages on disk before anything is timed
        size = os.path.getsize(daemons["full"].ledger_path)
        say(f"full ledger {size / 1e6:.1f} MB, filled in {fills['full']['fill_seconds']} s")

        res: dict[str, dict] = {}
        starts: dict[str, list[float]] = {"empty": [], "full": []}
        for i in range(args.repeat):  # in turn, so that a busy moment of the machine falls on both
            for k in ("empty", "full"):
                if k == "empty":
                    shutil.rmtree(daemons[k].ledger_path.parent, ignore_errors=True)
                starts[k].append(start_time(daemons[k]))
                say(f"start-up {k} #{i + 1}: {starts[k][-1]:.2f} s")
        res["start-up to READY=1 (s, median)"] = {"empty": statistics.median(starts["empty"]),
                                                 "full": statistics.median(starts["full"])}

        pages, cli, direct = {}, {}, {}
        for k in ("tiny", "full"):
            d = daemons[k]
            say(f"pages on the {k} ledger ...")
            start(d)
            try:
                pages[k] = web_bench(d, fills[k], tries)
                cli[k] = cli_bench(d.ledger_path, tries, fills[k]["defect_ids"][0], only_label=k == "tiny")
            finally:
                d.stop()
            say(f"direct timings on the {k} ledger ...")
            direct[k] = direct_bench(d, tries)
        cli["empty"] = cli_bench(daemons["empty"].ledger_path, tries, None)  # the interpreter's start
        res["results page over HTTP (s, best)"] = {k: pages[k] for k in pages}
        res["commands (s, best)"] = cli
        res["in-process (s, best)"] = direct
        say("per-image ledger calls ...")
        empty_ledger = work / "per-image-empty.sqlite"
        res["per-image ledger calls (s)"] = per_image({"empty": empty_ledger, "full": daemons["full"].ledger_path})
        say("monitor history of every row ...")
        res["monitor history, every row (once)"] = history_all(daemons["full"].ledger_path)
        size_after = os.path.getsize(daemons["full"].ledger_path)
        report = {"machine": {"nproc": os.cpu_count(), "cpu": _cpu()}, "rows": args.rows,
                  "fill": {k: {x: v for x, v in f.items() if x not in ("defect_ids", "labelled")}
                           for k, f in fills.items()},
                  "ledger_bytes": size, "ledger_bytes_after": size_after, "results": res,
                  "wall_seconds": round(time.perf_counter() - t_all, 1)}
        print(render(report))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"kept {work}")
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def render(report: dict) -> str:
    res = report["results"]
    f = report["fill"]["full"]
    lines = [f"ledger: {report['rows']} rows ({f['verdicts']}), {f['models']} models, {f['labels']} labels, "
             f"result JSON {f['result_json_mean_bytes']} bytes a row on average; "
             f"{report['ledger_bytes'] / 1e6:.1f} MB ({report['ledger_bytes_after'] / 1e6:.1f} MB after the bench's "
             f"writes); filled in {f['fill_seconds']} s",
             f"machine: {report['machine']['nproc']} CPUs, {report['machine']['cpu']}", ""]
    s = res["start-up to READY=1 (s, median)"]
    over = s["full"] - s["empty"]
    lines += ["| measured | empty / tiny | full | full - empty | goal |", "|---|---|---|---|---|",
              f"| start-up to READY=1, s (median) | {s['empty']:.2f} | {s['full']:.2f} | {over:+.2f} | "
              f"{'ok' if over <= START_GOAL_S else 'MISSED'} (<= +{START_GOAL_S:g} s) |"]
    pages = res["results page over HTTP (s, best)"]
    for name in pages["full"]:
        a, b = pages["tiny"][name], pages["full"][name]
        lines.append(f"| {name}, ms | {1000 * a:.0f} | {1000 * b:.0f} | {1000 * (b - a):+.0f} | "
                     f"{'ok' if b <= PAGE_GOAL_S else 'MISSED'} (<= {1000 * PAGE_GOAL_S:.0f} ms) |")
    cli = res["commands (s, best)"]
    for name in cli["full"]:
        base = cli["empty"][name] if name in cli["empty"] else cli["tiny"][name]
        b = cli["full"][name]
        lines.append(f"| monitor {name}, ms (process) | {1000 * base:.0f} | {1000 * b:.0f} | "
                     f"{1000 * (b - base):+.0f} | {'ok' if b - base <= PAGE_GOAL_S else 'MISSED'} "
                     f"(<= {1000 * PAGE_GOAL_S:.0f} ms over empty) |")
    direct = res["in-process (s, best)"]
    for name in direct["full"]:
        a, b = direct["tiny"][name], direct["full"][name]
        lines.append(f"| {name}, ms | {1000 * a:.1f} | {1000 * b:.1f} | {1000 * (b - a):+.1f} | |")
    per = res["per-image ledger calls (s)"]
    for name in per["full"]:
        a, b = per["empty"][name], per["full"][name]
        flat = b <= 2 * a + 0.0002  # within twice the empty ledger's, or 0.2 ms
        lines.append(f"| per image: {name}, ms | {1000 * a:.2f} | {1000 * b:.2f} | {1000 * (b - a):+.2f} | "
                     f"{'ok' if flat else 'GROWS'} (flat) |")
    h = res["monitor history, every row (once)"]
    lines.append(f"| monitor history (all {report['rows']} rows, to /dev/null, once), ms | | {1000 * h['seconds']:.0f} "
                 f"| | exit {h['rc']}{': ' + h['error'][0] if h['error'] else ''} |")
    lines.append(f"\n(empty / tiny: start-up and per-image calls on an empty ledger, commands minus the same "
                 f"command on an empty ledger, pages and in-process calls on a tiny ledger of "
                 f"{report['fill']['tiny']['rows']} rows; bench wall time {report['wall_seconds']} s)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

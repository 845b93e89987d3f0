"""`monitor backtest ARCHIVE... --model NEW --out DIR`: what a new model would have said of the plant's archive.

Every image of the archive folders (the intake's rules) or of a ledger (``--from-ledger``) is judged as the daemon
judges it, by the new model and, with ``--baseline``, by the old one in the same run; one row per image goes to
Parquet (``rows.parquet``) and a report compares the verdicts with the baseline's or the ledger's
(``report.html``, ``report.json``). A rerun into the same ``--out`` scores only what has no row yet. The scoring
runs on a local Ray cluster by default, in this process with ``--ray off`` (or when Ray is not installed), or on
an existing cluster (``--ray ADDRESS``)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

from monitor import __version__
from monitor.commands.backtest import archive, report
from monitor.commands.backtest.engine import Cluster, in_process, ray_installed
from monitor.commands.backtest.scoring import COLUMNS, FAILED, BacktestError, ModelFiles, plain
from monitor.commands.backtest.store import RowStore
from monitor.config import Config
from monitor.files import atomic_write, fitting_stem
from monitor.times import local_time

log = logging.getLogger(__name__)


def overlay_name(path: str) -> str:
    """The overlay file of an image, unique per path (archives repeat names across days)."""
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:10]
    return f"overlays/{fitting_stem(Path(path).stem, f'-{digest}.png')}-{digest}.png"


def gather(cfg: Config, args) -> tuple[list[archive.Item], list[archive.Refused], str]:
    """The images to judge, what is refused, and what they are compared with."""
    ledger = None if args.baseline else args.against or args.from_ledger
    said = archive.line_said(ledger) if ledger else {}  # what the line said, by path (read once)
    items: dict[str, archive.Item] = {}
    if args.from_ledger:
        from monitor.commands.history import parse_since

        since = parse_since(args.since) if args.since else None
        items.update(said if args.from_ledger == ledger and since is None else
                     archive.line_said(args.from_ledger, since))
    found, refused = archive.from_folders(args.archive, cfg.watch) if args.archive else ([], [])
    for it in archive.against(found, said):
        items.setdefault(it.path, it)
    what = (f"baseline model {args.baseline}" if args.baseline else f"the ledger {ledger}" if ledger else
            "nothing (give --baseline or --against)")
    return list(items.values()), refused, what


def backtest(cfg: Config, args) -> int:
    out = Path(args.out)
    store = RowStore(out, args.flush_rows)
    new = ModelFiles.read(args.model)
    base = ModelFiles.read(args.baseline) if args.baseline else None
    items, refused, against = gather(cfg, args)
    if not items and not refused:
        raise BacktestError("no images to score: the archive folders hold no image the intake would take"
                            + (" and the ledger has no rows in that time" if args.from_ledger else ""))
    done = sum(i.path in store.done for i in items) + sum(r.path in store.done for r in refused)
    todo = [{"path": i.path, "sha256": i.sha256 or "", "old_verdict": i.old_verdict or "",
             "old_coverage": i.old_coverage, "old_sha256": i.old_sha256 or "", "label": i.label or ""}
            for i in items if i.path not in store.done]
    fresh = [r for r in refused if r.path not in store.done]
    for r in fresh:  # the intake's refusals (links, not regular files): a row of their own, never read
        store.add(_refused_row(r))
    print(f"{len(items) + len(refused)} images: {done} done already, {len(todo)} to score, {len(fresh)} refused "
          "(not read)", flush=True)
    mode = args.ray
    if mode != "off" and not ray_installed():
        print("Ray is not installed: scoring in this process (pip install 'sem-line-monitor[cluster]' for a "
              "cluster)", flush=True)
        mode = "off"
    judge = {"cfg": cfg, "new": new, "baseline": base, "overlays": not args.no_overlays, "version": __version__}
    (out / "overlays").mkdir(exist_ok=True)
    t0 = time.monotonic()
    engine = "in this process"
    clock: dict = {}
    if todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="images", desc="backtest", disable=args.quiet, smoothing=0.1)
        try:
            if mode == "off":
                _take(in_process(judge, todo, args.batch), store, out, bar, clock)
            else:
                with Cluster(mode) as cluster:
                    engine = (f"on a local Ray cluster ({cluster.total_cpus} CPU)" if mode == "local" else
                              f"on the Ray cluster {mode} ({cluster.total_cpus} CPU, {cluster.total_gpus} GPU)")
                    _take(cluster.run(judge, todo, args.batch, args.actors, args.cpus_per_actor), store, out,
                          bar, clock)
        finally:
            store.flush()  # what was scored is kept, also when the job fails or is interrupted
            bar.close()
    rows = store.join()
    for r in rows:
        f = overlay_name(r["path"])
        r["overlay_file"] = f if (out / f).exists() else None
    meta = {"new_model": new.model_id, "new_model_dir": str(args.model), "against": against,
            "baseline_model": base.model_id if base else None, "archive": [str(a) for a in args.archive or []]
            + ([f"ledger {args.from_ledger}" + (f" (last {args.since})" if args.since else "")]
               if args.from_ledger else []), "engine": engine, "finished_at": local_time(),
            "wall_seconds": round(time.monotonic() - t0, 1), "scored_now": len(todo),
            "duplicates_dropped": store.duplicates, **_throughput(clock, t0, len(todo))}
    summary = report.summarize(rows, base is not None, meta)
    report.write(out, summary)
    print(report.text(summary))
    print(f"rows: {out / 'rows.parquet'}\nreport: {out / 'report.html'}")
    return 0


def _take(batches, store: RowStore, out: Path, bar, clock: dict) -> None:
    """Each scored batch's rows into the store (an image that has a row already is not written twice), the
    overlays of changed verdicts beside them. ``clock`` gets when the first and the last batch arrived and the
    first one's size (the start-up and the steady throughput)."""
    for batch in batches:
        n = len(batch["path"])
        now = time.monotonic()
        if "first" not in clock:
            clock["first"], clock["first_n"] = now, n
        clock["last"] = now
        for i in range(n):
            row = {c: plain(batch[c][i]) for c in COLUMNS}
            png = batch["overlay"][i]
            if store.add(row) and png is not None and len(png):
                atomic_write(out / overlay_name(row["path"]), bytes(png))
        bar.update(n)


def _refused_row(r: archive.Refused) -> dict:
    return {**dict.fromkeys(COLUMNS), "path": r.path, "sha256": "", "verdict": FAILED,
            "reason": f"{r.kind}: {r.reason}"}


def _throughput(clock: dict, t0: float, n: int) -> dict:
    """The start-up (to the first batch: the cluster, the actors, the models' loading) and the steady rate after
    it (images per second from the first batch to the last)."""
    if "first" not in clock:
        return {}
    steady = clock["last"] - clock["first"]
    return {"startup_seconds": round(clock["first"] - t0, 2), "steady_seconds": round(steady, 2),
            "steady_images_per_second": round((n - clock["first_n"]) / steady, 3) if steady > 0 else None}

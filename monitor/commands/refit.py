"""`monitor refit`: a candidate model from the line's own history, validated on what the operators labelled.

The candidate is fitted on
* the model in use's own normal images (``training_images``; its validation images stay validation images),
* the images operators marked ``false_alarm`` (their latest label), and
* a sample of recent ``ok`` images with no defect region at all (an ``ok`` image may hold a defect below the
  alarm coverage): every other one joins the dictionary, the others the validation images that set the threshold,
taking only images still on disk whose content is what the ledger recorded (sha256): a file replaced or gone is
left out and listed. It is then checked on the labelled history, against the model in use scoring the same files:

* every ``confirmed`` defect that the model in use alarms on must still alarm (a defect the model in use missed is
  listed, not required),
* every false alarm the candidate was given must clear.

The table and a JSON report say image by image what changed. Only ``--apply`` installs the candidate, and only
when it passes, through `monitor install-model` (atomic swap, the running monitor reloads, `monitor rollback`
undoes it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

from monitor import judge
from monitor.commands.install import previous_link, versions_dir
from monitor.config import Config, in_export
from monitor.errors import MonitorError
from monitor.files import atomic_write, file_sha256, shown
from monitor.kinds import LabelKind, Verdict
from monitor.ledger import Ledger, LedgerReader, Row
from monitor.model.images import ImageError
from monitor.model.threshold import ThresholdConfig

log = logging.getLogger(__name__)

RECENT_POOL = 500  # the newest this many ok results are the pool the recent sample is drawn from


class RefitError(MonitorError, RuntimeError):
    """A refit that cannot be made; its message starts with "refit:"."""

    def __str__(self) -> str:
        return f"refit: {super().__str__()}"


def _unusable(model, cfg: Config, row: Row) -> str | None:
    """Why the row's image cannot join the candidate or its validation: gone, changed since it was scored,
    unreadable, or not fitting the model in use (as the daemon judges it); None when it can."""
    try:
        image, info = judge.read(cfg, model, row.path, row.sha256)
    except ImageError as exc:
        return "gone or changed since it was scored" if exc.kind in ("missing", "changed") else exc.reason
    unfit = judge.check(cfg, model, image, info)
    return None if unfit is None else f"does not fit the model in use: {unfit.document.mismatch}"


def gather(cfg: Config, model, ledger: Ledger, recent: int, seed: int = 0) -> dict:
    """The candidate's images: {"normal": [...], "val": [...], "sha256": {path: sha}, "left_out": [...],
    "labelled": [(row, label)], "sources": counts}. An image whose current label is ``confirmed`` (a defect) is
    never taken as normal, even when it was a training image of the model in use; images that do not fit the model
    in use (another recipe's) are not taken at all."""
    sha: dict[Path, str] = {}
    left_out = []
    normal: list[Path] = []
    val: list[Path] = []
    labels = ledger.current_labels()
    rows = {image_id: ledger.get(image_id) for image_id in labels}
    # by content, wherever the file lies: a training image is outside the export folder, its label on a copy in it
    confirmed = {r.sha256 for i, r in rows.items() if labels[i].kind == LabelKind.CONFIRMED}

    def original(paths, hashes, into, what):
        for i, p in enumerate(paths):
            want = hashes[i] if i < len(hashes) else None
            try:
                ok = want is not None and file_sha256(p) == want
            except OSError:
                ok = False
            if not ok:
                left_out.append({"image": p, "source": what, "why": "gone or changed since the model was fitted"})
            elif want in confirmed:
                left_out.append({"image": p, "source": what, "why": "labelled confirmed (a defect) since"})
            else:
                into.append(Path(p))
                sha[Path(p)] = want

    train = model.meta.training_images
    if not train:
        raise RefitError("the model in use does not record its training images (fitted before 0.3.0): fit it "
                         "once with `monitor fit` and install it (`monitor install-model`), then refit")
    original(train, model.meta.training_sha256, normal, "training")
    original(model.meta.validation_images, model.meta.validation_sha256, val,
             "validation")
    n_train, n_val = len(normal), len(val)
    fitted = set(normal) | set(val)

    labelled = []
    false_alarms = 0
    for image_id in sorted(labels):
        row, label = rows[image_id], labels[image_id]
        why = _unusable(model, cfg, row)
        if why:
            left_out.append({"image": row.path, "id": row.id, "source": label.kind, "why": why})
            continue
        labelled.append((row, label))
        if label.kind == LabelKind.FALSE_ALARM and Path(row.path) not in fitted:
            normal.append(Path(row.path))
            sha[Path(row.path)] = row.sha256
            fitted.add(Path(row.path))
            false_alarms += 1

    # ok with no defect region at all: an ok image may hold a defect below alarm.coverage_threshold, which the
    # dictionary must not learn as normal
    pool = [r for r in ledger.results(RECENT_POOL, "ok") if r.id not in labels and Path(r.path) not in fitted
            and r.n_defects == 0 and r.sha256 not in confirmed]
    random.Random(seed).shuffle(pool)
    sample = []
    for row in pool:
        if len(sample) >= recent:
            break
        if _unusable(model, cfg, row) is None:
            sample.append(row)
    sample.sort(key=lambda r: r.id)
    for i, row in enumerate(sample):
        (normal if i % 2 == 0 else val).append(Path(row.path))
        sha[Path(row.path)] = row.sha256
    if not normal:
        raise RefitError("no normal image left (the model's own are gone or changed, and no false alarm or recent "
                         "ok image can stand in): nothing to fit a candidate on")
    if not val:
        raise RefitError("no validation image left (the model's own are gone and there are no recent ok images): "
                         "the candidate would have no threshold")
    return {"normal": normal, "val": val, "sha256": sha, "left_out": left_out, "labelled": labelled,
            "sources": {"training": n_train, "false_alarms": false_alarms, "recent_ok_train": (len(sample) + 1) // 2,
                        "validation": n_val, "recent_ok_val": len(sample) // 2}}


def _judge(model, cfg: Config, row: Row) -> dict:
    """The verdict ``model`` gives the row's image, as the daemon would (``judge``: a misfit is a mismatch, not
    scored), read with the content the ledger recorded."""
    try:
        j = judge.judge(cfg, model, row.path, row.sha256)
    except ImageError as exc:
        return {"verdict": "failed", "coverage": None, "error": exc.reason}
    return {"verdict": j.verdict, "coverage": j.document.coverage}


def validate(before, after, cfg: Config, labelled: list) -> tuple[list[dict], bool]:
    """One row per labelled image: its label, the verdict of the model in use and of the candidate, and whether
    the candidate passes on it; True when it passes on all."""
    table, passed = [], True
    for row, label in labelled:
        b, a = _judge(before, cfg, row), _judge(after, cfg, row)
        if label.kind == LabelKind.CONFIRMED:
            need = "alarm" if b["verdict"] == Verdict.DEFECT else "(missed before)"
            ok = a["verdict"] == Verdict.DEFECT if b["verdict"] == Verdict.DEFECT else True
        else:
            need, ok = "clear", a["verdict"] == Verdict.OK
        passed &= ok
        table.append({"id": row.id, "image": row.path, "label": label.kind, "by": label.who, "needs": need,
                      "before": b, "after": a, "pass": ok})
    return table, passed


def candidate_dir(cfg: Config, out: Path | None) -> Path:
    """Where the candidate goes (``<model.path>.candidate`` by default): never the model in use, a version the
    install keeps, nor anything in the export folder; an existing folder only when a refit made it."""
    target = Path(cfg.model.path)
    out = Path(out) if out else target.with_name(target.name + ".candidate")
    out = Path(os.path.abspath(out))
    for kept in (target, versions_dir(target), previous_link(target)):
        kept = Path(os.path.abspath(kept))
        # as named (model.path is a link to the version in use) and with links resolved
        if out.is_relative_to(kept) or out.resolve().is_relative_to(kept.resolve()):
            raise RefitError(f"--out {out}: that is the model in use or a version `monitor install-model` keeps; "
                             "give another folder")
    inside_export(out, cfg, "--out")
    if out.is_symlink() or (out.exists() and not (out / "refit.json").is_file()):
        raise RefitError(f"--out {out} exists and is not a candidate a refit made; give another folder")
    return out


def inside_export(path: Path, cfg: Config, what: str) -> None:
    if in_export(path, cfg.watch.dir):
        raise RefitError(f"{what} {path} lies inside the export folder watch.dir ({cfg.watch.dir}); the monitor "
                         "never writes there")


def refit(cfg: Config, recent: int = 20, out: Path | None = None, apply: bool = False, seed: int = 0,
          quiet: bool = False) -> dict:
    """Fit, validate and (``apply``, when it passes) install a candidate; returns the report. The candidate has the
    settings of the model in use (its method's, its threshold's and its defects'), not those of the configuration:
    the same model with more of the line's images."""
    from monitor.commands.fit import fit_model
    from monitor.commands.install import install_model

    out = candidate_dir(cfg, out)
    before = judge.load_model(cfg)
    ledger = LedgerReader(cfg.output.ledger)
    try:
        got = gather(cfg, before, ledger, recent, seed)
    finally:
        ledger.close()
    th = before.threshold
    fit_cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, path=str(out), **{before.scorer.method: before.scorer.config}),
        defects=before.defects,
        threshold=cfg.threshold if th is None else ThresholdConfig(alpha=th.alpha, target_fpr=th.target_fpr,
                                                                   use=th.use))
    if out.exists():
        shutil.rmtree(out)
    provenance = {"refit_of": before.model_id, "at": time.time(), **got["sources"]}
    t0 = time.perf_counter()
    after, model_id, _ = fit_model(fit_cfg, got["normal"], got["val"], out, quiet, got["sha256"], provenance)
    fit_seconds = time.perf_counter() - t0
    table, passed = validate(before, after, cfg, got["labelled"])
    report = {"model_in_use": before.model_id, "candidate": model_id, "candidate_dir": str(out),
              "fit_seconds": round(fit_seconds, 1), "images": got["sources"], "left_out": got["left_out"],
              "settings": dataclasses.asdict(before.scorer.config),
              "threshold": {"before": before.threshold.value if before.threshold else None,
                            "after": after.threshold.value if after.threshold else None},
              "validation": table, "passed": passed, "applied": None}
    (out / "refit.json").write_text(json.dumps(report, indent=2) + "\n")  # marks the folder as a candidate
    if apply and passed:
        report["applied"] = install_model(out, cfg)
    return report


def render(report: dict) -> str:
    """The before/after table an operator reads."""
    lines = [f"candidate {report['candidate'][:12]} (from {report['model_in_use'][:12]}), fitted in "
             f"{report['fit_seconds']} s on {report['images']['training']} original + "
             f"{report['images']['false_alarms']} false-alarm + {report['images']['recent_ok_train']} recent ok "
             f"images; threshold from {report['images']['validation']} original + "
             f"{report['images']['recent_ok_val']} recent ok images",
             f"map threshold {_num(report['threshold']['before'])} -> {_num(report['threshold']['after'])}", ""]
    rows = [("id", "image", "label", "needs", "before", "after", "")]
    for r in report["validation"]:
        rows.append((str(r["id"]), shown(Path(r["image"]).name), r["label"], r["needs"], _verdict(r["before"]),
                     _verdict(r["after"]), "ok" if r["pass"] else "FAIL"))
    if len(rows) == 1:
        lines.append("no labelled image to validate on (label results with `monitor label` or on the results page)")
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for x in report["left_out"]:
        lines.append(f"left out: {shown(x['image'])} ({x['source']}): {x['why']}")
    n = len(report["validation"])
    fails = sum(not r["pass"] for r in report["validation"])
    lines.append("")
    lines.append(f"validation: {'PASSED' if report['passed'] else 'FAILED'} ({n - fails}/{n} labelled images)")
    return "\n".join(lines)


def _verdict(j: dict) -> str:
    return j["verdict"] + ("" if j.get("coverage") is None else f" {100 * j['coverage']:.3f}%")


def _num(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def write_report(report: dict, path: Path) -> None:
    """The report, written atomically and durably (``files.atomic_write``: fsync'd before the rename)."""
    atomic_write(path, (json.dumps(report, indent=2) + "\n").encode())

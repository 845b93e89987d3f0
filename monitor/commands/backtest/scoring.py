"""Scoring a batch of archive images, in this process or in a Ray actor: the model's files travel with the job
(their hashes checked where they are loaded), each image is judged as the daemon judges it (``judge.judge_files``),
and each gets one row; an image whose verdict the new model changes gets its overlay."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2

from monitor.config import Config
from monitor.errors import MonitorError

MODEL_FILES_MAX_BYTES = 2 << 30  # a model directory larger than this is not a model of ours


class BacktestError(MonitorError):
    """A backtest that cannot run as asked."""


@dataclass(frozen=True)
class ModelFiles:
    """A model directory's files as bytes, to load the model where the job runs (another node of a cluster):
    ``Model.load`` checks each against the sha256 model.json records, and the loaded model must have ``model_id``."""

    name: str
    model_id: str
    files: dict[str, bytes]

    @classmethod
    def read(cls, directory: str | os.PathLike) -> "ModelFiles":
        d = Path(directory)
        meta = d / "model.json"
        if not meta.is_file():
            raise BacktestError(f"{d}: no fitted model there (no model.json)")
        files, total = {}, 0
        for p in sorted(d.resolve().iterdir()):
            if p.is_file() and not p.name.startswith("."):
                total += p.stat().st_size
                if total > MODEL_FILES_MAX_BYTES:
                    raise BacktestError(f"{d}: the model's files exceed {MODEL_FILES_MAX_BYTES >> 20} MB")
                files[p.name] = p.read_bytes()
        try:
            model_id = json.loads(files["model.json"])["model_id"]
        except (ValueError, KeyError):
            raise BacktestError(f"{meta}: not a model saved by `monitor fit` (no model_id)") from None
        return cls(d.name, str(model_id), files)

    def load(self, cfg: Config, into: str | os.PathLike):
        """The model, written under ``into`` and loaded as the daemon loads its model (hashes checked)."""
        from monitor.model.model import Model, expectations

        d = Path(into) / self.model_id
        d.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (d / name).write_bytes(data)
        m = cfg.model
        model = Model.load(d, m.device, expectations(m.method_config), runtime=m.runtime, precision=m.precision)
        if model.model_id != self.model_id:
            raise BacktestError(f"model {self.name}: loaded {model.model_id}, expected {self.model_id}")
        return model


# the columns of a row, in order: the image, the new model's judgement, the baseline model's, what the line said
COLUMNS = ("path", "sha256", "verdict", "coverage", "defects", "level", "max_score", "reason", "seconds",
           "fibre_diameter_px", "baseline_verdict", "baseline_coverage", "baseline_defects", "baseline_level",
           "baseline_reason", "old_verdict", "old_coverage", "old_sha256", "label", "scored_by", "document")
FAILED = "failed"  # the verdict column of an image that could not be judged


def judgement_columns(res, prefix: str = "") -> dict:
    """The row's columns of one judgement (``judge.Judgement``) or ``judge.Failure``; all None for None (no
    baseline)."""
    from monitor.judge import Failure

    if res is None:
        return dict.fromkeys(f"{prefix}{c}" for c in ("verdict", "coverage", "defects", "level", "reason"))
    if isinstance(res, Failure):
        return {f"{prefix}verdict": FAILED, f"{prefix}coverage": None, f"{prefix}defects": None,
                f"{prefix}level": None, f"{prefix}reason": f"{res.kind}: {res.reason}"}
    ins, doc = res.inspection, res.document
    return {f"{prefix}verdict": str(res.verdict),
            f"{prefix}coverage": None if ins is None or ins.report is None else float(ins.report.coverage),
            f"{prefix}defects": None if ins is None or ins.report is None else len(ins.report.defects),
            f"{prefix}level": None if ins is None or ins.level is None else float(ins.level),
            f"{prefix}reason": doc.mismatch_reason and f"{doc.mismatch_reason}: {doc.mismatch}"}


class BatchJudge:
    """Judges batches of archive images (``__call__``: a batch of columns path, sha256, old_verdict, old_sha256,
    label in, the rows' columns out, plus ``overlay``: the PNG of an image whose verdict the new model changes,
    else empty). One per process or Ray actor: the models are loaded once, in its constructor."""

    def __init__(self, cfg: Config, new, baseline=None, overlays: bool = True, version: str | None = None,
                 threads: int | None = None):
        from monitor import __version__

        if threads is not None:  # a Ray actor's CPUs: OpenVINO reads OMP_NUM_THREADS, OpenCV has its own pool
            os.environ["OMP_NUM_THREADS"] = str(threads)
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():
            cv2.setNumThreads(max(1, int(os.environ["OMP_NUM_THREADS"])))

        if version is not None and version != __version__:
            raise BacktestError(f"this node has sem-line-monitor {__version__}, the job's is {version}: install the "
                                "same version on every node")
        self.cfg = cfg
        self._dir = tempfile.TemporaryDirectory(prefix="monitor-backtest-")
        self.model = _files(new).load(cfg, self._dir.name)
        self.baseline = _files(baseline).load(cfg, self._dir.name) if baseline is not None else None
        self.overlays = overlays
        self.name = f"{socket.gethostname()}:{os.getpid()}"  # the host and process that scored a row
        from monitor.judge import warm

        warm(self.model)

    def __call__(self, batch: dict) -> dict:
        from monitor.judge import Failure, judge_files

        n = len(batch["path"])
        paths = [str(p) for p in batch["path"]]
        said = {c: _column(batch, c, n) for c in ("sha256", "old_verdict", "old_coverage", "old_sha256", "label")}
        files = list(zip(paths, [s or None for s in said["sha256"]]))
        t0 = time.perf_counter()
        judged = judge_files(self.cfg, self.model, files)
        per_image = (time.perf_counter() - t0) / max(n, 1)
        base = judge_files(self.cfg, self.baseline, files) if self.baseline else [(None, {})] * n
        rows: dict[str, list] = {c: [] for c in (*COLUMNS, "overlay")}
        for i, ((res, info), (bres, _)) in enumerate(zip(judged, base)):
            row = {"path": paths[i], "sha256": info.get("sha256", ""), "scored_by": self.name,
                   "seconds": round(res.seconds if not isinstance(res, Failure) else per_image, 4),
                   **judgement_columns(res), "max_score": None, "fibre_diameter_px": None, "document": None,
                   **judgement_columns(bres, "baseline_"),
                   **{c: said[c][i] or None for c in ("old_verdict", "old_sha256", "label")},
                   "old_coverage": said["old_coverage"][i]}
            overlay = b""
            if not isinstance(res, Failure):
                doc = res.document.with_head(image=paths[i], sha256=row["sha256"], model_id=self.model.model_id)
                row["document"] = doc.to_json()
                row["max_score"] = doc.max_score
                row["fibre_diameter_px"] = doc.fibres.diameter_px.mean if doc.fibres is not None else None
                before = row["baseline_verdict"] or row["old_verdict"]
                if self.overlays and before is not None and before != row["verdict"]:
                    overlay = self._overlay(res, doc)
            for c in COLUMNS:
                rows[c].append(row[c])
            rows["overlay"].append(overlay)
        return rows

    @staticmethod
    def _overlay(res, doc) -> bytes:
        from monitor.daemon.alarm import picture

        ok, buf = cv2.imencode(".png", picture(res.image, res.inspection, doc))
        return buf.tobytes() if ok else b""


def _files(m) -> ModelFiles:
    """A model's files, given as they are or, on a cluster, as a reference to them in Ray's object store (in a
    list, so that Ray hands the reference over instead of the files: the job holds it while it runs, and an actor
    restarted after a crash fetches them again)."""
    if isinstance(m, ModelFiles):
        return m
    import ray

    return ray.get(m[0])


def _column(batch: dict, name: str, n: int) -> list:
    """A column of a batch as Python values (``plain``); all None where the batch lacks it."""
    col = batch.get(name)
    return [None] * n if col is None else [plain(v) for v in col]


def plain(v):
    """A numpy scalar as its Python value, NaN as None (a batch's columns come as numpy arrays from Ray)."""
    if hasattr(v, "item"):
        v = v.item()
    return None if isinstance(v, float) and v != v else v

"""Model directory: ``arrays.npz`` (plain arrays, loaded with ``allow_pickle=False``), ``model.json`` and the
files a model carries besides (the inference graph: ``scorer.xml`` + ``scorer.bin``, see ``graph.py``).

``model_id`` is the first 16 hex digits of a sha256 over the arrays (names, dtypes, shapes, bytes) and the
canonical JSON of the metadata that defines the model (everything except ``created_at`` and ``library_versions``),
which holds the other files' sha256 (``files``). ``model.json`` also records the sha256 of ``arrays.npz`` so that
any change to any file is caught at load.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from monitor.errors import MonitorError
from monitor.files import file_sha256

FORMAT = "sem-monitor-model/1"
_VOLATILE = ("created_at", "library_versions", "model_id", "arrays_sha256", "fit_seconds")


class ArtifactError(MonitorError, ValueError):
    """A model directory is missing, corrupt, or made for another configuration."""


def compute_model_id(meta: dict, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    stable = {k: v for k, v in meta.items() if k not in _VOLATILE}
    h.update(json.dumps(stable, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    from monitor.extras import installed

    out = {"python": platform.python_version(), "numpy": np.__version__}
    out.update({dist: v for dist in ("torch", "scikit-learn", "openvino") if (v := installed(dist))})
    return out


def save_artifact(directory: str | os.PathLike, meta: dict, arrays: dict[str, np.ndarray],
                  files: dict[str, bytes] | None = None) -> str:
    """Write the model atomically (a temporary sibling directory, then rename) with ``files`` beside (name ->
    content, their sha256 in ``model.json``'s ``files``). Returns the model_id."""
    directory = Path(directory)
    meta = dict(meta)
    meta["format"] = FORMAT
    files = files or {}
    if any(n in ("model.json", "arrays.npz") or Path(n).name != n or n.startswith(".") for n in files):
        raise ArtifactError(f"bad model file names: {sorted(files)}")
    if files:
        meta["files"] = {n: hashlib.sha256(b).hexdigest() for n, b in sorted(files.items())}
    meta["model_id"] = compute_model_id(meta, arrays)
    meta["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta["library_versions"] = library_versions()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        np.savez(tmp / "arrays.npz", **arrays)
        for name, content in files.items():
            (tmp / name).write_bytes(content)
        meta["arrays_sha256"] = file_sha256(tmp / "arrays.npz")
        (tmp / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if directory.exists():
            if not (directory / "model.json").exists():
                raise ArtifactError(f"{directory} exists and is not a model directory; not overwriting it")
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta["model_id"]


def load_artifact(directory: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    directory = Path(directory)
    mpath, apath = directory / "model.json", directory / "arrays.npz"
    if not mpath.is_file() or not apath.is_file():
        raise ArtifactError(f"{directory} is not a model directory (needs model.json and arrays.npz)")
    try:
        meta = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{mpath} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{mpath}: unknown format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                            f"expected {FORMAT!r}")
    if file_sha256(apath) != meta.get("arrays_sha256"):
        raise ArtifactError(f"{apath} does not match the sha256 recorded in model.json (corrupt or modified)")
    try:
        with np.load(apath, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile/ValueError: a damaged archive
        raise ArtifactError(f"cannot read {apath}: {exc}") from None
    recorded = meta.get("files") or {}
    if not isinstance(recorded, dict):
        raise ArtifactError(f"{mpath}: files must be a mapping of names to sha256")
    for name, sha in recorded.items():
        path = directory / str(name)
        if Path(str(name)).name != name or not path.is_file():
            raise ArtifactError(f"{directory}: the model's file {name!r} is missing")
        if file_sha256(path) != sha:
            raise ArtifactError(f"{path} does not match the sha256 recorded in model.json (corrupt or modified)")
    if compute_model_id(meta, arrays) != meta.get("model_id"):
        raise ArtifactError(f"{directory}: model_id does not match the content (model.json was edited?)")
    return meta, arrays

"""`monitor install-model` and `monitor rollback`: the model lifecycle on the line PC.

``model.path`` becomes a symbolic link into ``<model.path>.versions/<model_id>/``; ``<model.path>.previous``
links to the model in use before. Installing copies the new model into the versions folder (a temporary name,
then a rename), points ``<model.path>.previous`` at the current one, then swaps ``model.path`` to the new one
with one ``rename`` of a link: the daemon sees the old model or the new one, never a half-written one. A plain
model folder left there by `monitor fit --out` is moved into the versions folder the first time. Rollback swaps
the two links. Both then send SIGHUP to a monitor running on this configuration (found through its ledger lock),
which reloads and keeps the old model if the new one does not load. The newest KEEP versions besides the current
and the previous one are kept; older ones are deleted.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
from pathlib import Path

from monitor.config import Config
from monitor.errors import MonitorError
from monitor.judge import load_model
from monitor.ledger import ledger_holder
from monitor.model.artifact import ArtifactError, load_artifact
from monitor.model.model import Model

log = logging.getLogger(__name__)

KEEP = 3


class InstallError(MonitorError, RuntimeError):
    pass


def versions_dir(target: Path) -> Path:
    return target.with_name(target.name + ".versions")


def previous_link(target: Path) -> Path:
    return target.with_name(target.name + ".previous")


def validate(model_dir: Path, cfg: Config) -> Model:
    """The model at ``model_dir`` loads and fits ``cfg`` (method, backbone, mode, a threshold to judge by)."""
    if not (model_dir / "model.json").is_file():
        raise InstallError(f"{model_dir}: not a model directory (no model.json); `monitor fit --out` makes one")
    try:  # as the daemon will load it (its inference graph where it has one), on the CPU
        model = load_model(dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, path=str(model_dir), device="cpu")))
    except (ArtifactError, ValueError, RuntimeError, OSError) as exc:
        msg = str(exc)
        raise InstallError(msg if str(model_dir) in msg else f"{model_dir}: {msg}") from None
    if model.threshold is None:
        raise InstallError(f"{model_dir} has no threshold (fitted without --val): it would give no verdicts")
    return model


def _swap_link(link: Path, dest: Path) -> None:
    """Point ``link`` at ``dest`` (relative), atomically."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(dest, link.parent), tmp)
    os.replace(tmp, link)


def _adopt(target: Path) -> None:
    """A plain model folder at ``target`` (from `monitor fit --out`) moves into the versions folder."""
    if target.is_symlink() or not target.exists():
        return
    if not target.is_dir():
        raise InstallError(f"model.path {target}: exists and is not a model folder")
    mid = load_artifact(target)[0]["model_id"] if (target / "model.json").is_file() else "unversioned"
    dest = versions_dir(target) / mid
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        shutil.rmtree(target)
    else:
        os.rename(target, dest)
    _swap_link(target, dest)


def _hand_over(folder: Path, state: Path) -> None:
    """The copied model readable by the service: a model folder is written 0700 (it is made with mkdtemp), and
    copied by root it would stay root's, which the service's own user cannot read. The folder becomes 0755, its
    files 0644, and, for root, owned like the state folder it lives in (the service's)."""
    st = os.stat(state)
    for p in (folder, *folder.iterdir()):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
        if os.geteuid() == 0:
            os.chown(p, st.st_uid, st.st_gid)


def _current(target: Path) -> Path | None:
    return target.resolve() if target.is_symlink() and target.exists() else None


def install_model(model_dir: Path, cfg: Config) -> dict:
    """Validate, copy in, swap; returns {"model_id", "path", "previous", "reloaded_pid"}."""
    model_dir = Path(model_dir)
    model = validate(model_dir, cfg)
    target = Path(cfg.model.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _adopt(target)
    vdir = versions_dir(target)
    vdir.mkdir(parents=True, exist_ok=True)
    dest = vdir / model.model_id
    if not dest.exists():
        tmp = vdir / f".{model.model_id}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(model_dir, tmp, symlinks=False)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        load_artifact(tmp)  # the copy's files against the hashes in its model.json
        _hand_over(tmp, target.parent)
        os.rename(tmp, dest)
    current = _current(target)
    if current is not None and current != dest.resolve():
        _swap_link(previous_link(target), current)
    _swap_link(target, dest)
    _prune(target)
    return {"model_id": model.model_id, "path": str(target), "previous": _name(current),
            "reloaded_pid": reload_running(cfg)}


def rollback(cfg: Config) -> dict:
    target = Path(cfg.model.path)
    prev = previous_link(target)
    if not prev.is_symlink() or not prev.exists():
        raise InstallError(f"{prev}: no previous model to roll back to (`monitor install-model` keeps one)")
    current, before = _current(target), prev.resolve()
    validate(before, cfg)
    _swap_link(target, before)
    if current is not None:
        _swap_link(prev, current)
    return {"model_id": before.name, "path": str(target), "previous": _name(current),
            "reloaded_pid": reload_running(cfg)}


def _name(p: Path | None) -> str | None:
    return None if p is None else p.name


def _prune(target: Path) -> None:
    keep = {p for p in (_current(target), previous_link(target).resolve() if previous_link(target).exists()
                        else None) if p is not None}
    others = sorted((d for d in versions_dir(target).iterdir() if d.is_dir() and not d.name.startswith(".")
                     and d.resolve() not in keep), key=lambda d: d.stat().st_mtime, reverse=True)
    for d in others[KEEP:]:
        shutil.rmtree(d, ignore_errors=True)


def reload_running(cfg: Config) -> int | None:
    """SIGHUP to the monitor holding this configuration's ledger lock; its pid, or None when none runs."""
    pid = ledger_holder(cfg.output.ledger)
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGHUP)
    except PermissionError:
        raise InstallError(f"installed, but the monitor (pid {pid}) cannot be told to reload by this user: "
                           "`systemctl reload` it") from None
    except ProcessLookupError:  # it ended since
        return None
    return pid

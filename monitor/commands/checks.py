"""`monitor check-config`: what the daemon needs from the host, checked before it starts.

Beyond what loading the configuration validates (keys, types, ranges): the model directory holds a model that
loads and matches the configuration, the export folder exists and can be read, the output folder and the ledger's
folder exist (or can be created) and can be written, TLS files can be read, and the metrics and web ports are
free. Each problem is one line naming the key, the path and what is wrong.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

from monitor.config import Config
from monitor.judge import load_model
from monitor.model.artifact import ArtifactError
from monitor.model.methods import BackboneError


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable_folder(key: str, path: Path, problems: list[str]) -> None:
    """``path`` is a folder the daemon writes into, or one it can create."""
    if path.exists():
        if not path.is_dir():
            problems.append(f"{key} {path}: not a folder")
        elif not os.access(path, os.W_OK | os.X_OK):
            problems.append(f"{key} {path}: not writable by this user")
        return
    parent = _nearest_existing(path)
    if not parent.is_dir():
        problems.append(f"{key} {path}: {parent} is not a folder")
    elif not os.access(parent, os.W_OK | os.X_OK):
        problems.append(f"{key} {path}: does not exist and {parent} is not writable by this user")


def _port(key: str, address: str, port: int, problems: list[str]) -> None:
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as exc:
            problems.append(f"{key} {address}:{port}: cannot bind ({exc.strerror or exc}; is a monitor running?)")


def under(root: str | None, path: str) -> Path:
    """``path`` as seen from a staged root (`make install-service DESTDIR=...`): absolute paths move under it."""
    return Path(root, path.lstrip("/")) if root and os.path.isabs(path) else Path(path)


def check(cfg: Config, ports: bool = True, root: str | None = None) -> list[str]:
    """The problems of ``cfg`` on this host (empty: ready to run); ``root``: a staged installation's root, under
    which the configuration's absolute paths are looked up (as ``systemd-analyze verify --root`` does)."""
    problems: list[str] = []
    if root:
        def moved(section, *keys):
            return dataclasses.replace(section, **{k: getattr(section, k) and str(under(root, getattr(section, k)))
                                                   for k in keys})
        cfg = dataclasses.replace(cfg, model=moved(cfg.model, "path"), watch=moved(cfg.watch, "dir"),
                                  output=moved(cfg.output, "dir", "ledger"),
                                  metrics=moved(cfg.metrics, "certfile", "keyfile"),
                                  web=moved(cfg.web, "certfile", "keyfile"))
    watch = Path(cfg.watch.dir)
    if not watch.exists():
        problems.append(f"watch.dir {watch}: does not exist (the microscope export folder)")
    elif not watch.is_dir():
        problems.append(f"watch.dir {watch}: not a folder")
    elif not os.access(watch, os.R_OK | os.X_OK):
        problems.append(f"watch.dir {watch}: not readable by this user")
    out = Path(cfg.output.dir)
    if watch.exists() and _nearest_existing(out).resolve().is_relative_to(watch.resolve()):
        problems.append(f"output.dir {out}: inside watch.dir {watch} (the export folder is never written)")
    _writable_folder("output.dir", out, problems)
    ledger = Path(cfg.output.ledger)
    if ledger.exists() and not ledger.is_file():
        problems.append(f"output.ledger {ledger}: not a file")
    elif ledger.exists() and not os.access(ledger, os.R_OK | os.W_OK):
        problems.append(f"output.ledger {ledger}: not writable by this user")
    else:
        _writable_folder("output.ledger", ledger.absolute().parent, problems)
    for section in ("metrics", "web"):
        sec = getattr(cfg, section)
        for key in ("certfile", "keyfile"):
            f = getattr(sec, key)
            if f and not os.access(f, os.R_OK):
                problems.append(f"{section}.{key} {f}: " + ("not readable by this user" if os.path.exists(f)
                                                          else "does not exist"))
        if ports and sec.enabled:
            _port(f"{section}.port", sec.address, sec.port, problems)
    mpath = Path(cfg.model.path)
    if not mpath.exists():
        problems.append(f"model.path {mpath}: does not exist (install one: `monitor install-model MODEL_DIR "
                        "--config FILE`)")
    else:
        try:
            load_model(cfg)
        except (ArtifactError, BackboneError, RuntimeError, ValueError, OSError) as exc:
            msg = str(exc).removeprefix(f"{mpath}: ")
            problems.append(msg if msg.startswith("model.path") else f"model.path {mpath}: {msg}")
    return problems

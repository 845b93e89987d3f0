"""Helpers to run the real daemon (`python -m monitor run`) in a subprocess on real folders, a real SQLite ledger,
a real metrics endpoint, a real results page and a real NOTIFY_SOCKET; or, where the process itself is not under
test, the same ``Service`` in the test's own process (``InProcessDaemon``)."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import yaml
from prometheus_client.parser import text_string_to_metric_families

from monitor.model.synth import to_uint8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", to_uint8(img))
    assert ok
    return buf.tobytes()


def write_renamed(folder: Path, name: str, data: bytes) -> Path:
    """The way microscope software writes: a temporary name, then a rename into place."""
    tmp = folder / f"{name}.tmp"
    tmp.write_bytes(data)
    dest = folder / name
    os.rename(tmp, dest)
    return dest


def wait_for(predicate, timeout: float = 30, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Daemon:
    def __init__(self, root: Path, model_dir: Path, **sections):
        self.root = root
        self.export = root / "export"
        self.export.mkdir(parents=True, exist_ok=True)
        self.out = root / "out"
        self.ledger_path = root / "state" / "ledger.sqlite"
        self.port = free_port()
        self.web_port = free_port()
        cfg = {"model": {"path": str(model_dir)},
               "watch": {"dir": str(self.export), "settle_seconds": 0.5, "poll_seconds": 0.2},
               "output": {"dir": str(self.out), "ledger": str(self.ledger_path)},
               "metrics": {"port": self.port},
               "web": {"port": self.web_port},
               "service": {"stall_seconds": 60}}
        for key, val in sections.items():
            cfg.setdefault(key, {}).update(val)
        self.config = root / "config.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen | None = None
        self.messages: list[str] = []
        self.log = root / "daemon.log"

    # ------------------------------------------------------------------------------------------------ process
    def start(self, wait_ready: bool = True, watchdog_usec: int = 1_000_000) -> "Daemon":
        sock_path = self.root / f"notify-{len(self.messages)}-{time.monotonic_ns()}.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(sock_path))
        self._sock.settimeout(0.2)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": str(watchdog_usec)}
        env.pop("WATCHDOG_PID", None)
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(self.config)],
                                     stdout=self._logf, stderr=subprocess.STDOUT, env=env)
        if wait_ready:
            self.wait_message("READY=1", timeout=90)
        return self

    def _read(self):
        while True:
            try:
                data = self._sock.recv(4096)
            except socket.timeout:
                if self.proc is not None and self.proc.poll() is not None:
                    return
                continue
            except OSError:
                return
            self.messages.extend(data.decode().split("\n"))

    def wait_message(self, msg: str, timeout: float = 30):
        def seen():
            if self.proc.poll() is not None and msg not in self.messages:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before {msg}:\n{self.log_text()}")
            return msg in self.messages
        wait_for(seen, timeout, msg)

    def send(self, sig) -> None:
        self.proc.send_signal(sig)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._logf.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._logf.close()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # ---------------------------------------------------------------------------------------------- observing
    def rows(self) -> list[dict]:
        if not self.ledger_path.exists():
            return []
        with sqlite3.connect(f"file:{self.ledger_path}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM images ORDER BY id")]

    def finished(self) -> list[dict]:
        return [r for r in self.rows() if r["state"] != "pending"]

    def wait_finished(self, n: int, timeout: float = 60) -> list[dict]:
        return wait_for(lambda: len(self.finished()) >= n and self.finished(), timeout, f"{n} finished rows")

    def scrape(self) -> dict:
        """{(name, frozenset(labels)): value} of every sample on /metrics, over real HTTP; the constant ``line``
        label, checked to be on every sample with the configured service.line, is left out of the keys."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        line = yaml.safe_load(self.config.read_text()).get("service", {}).get("line", "line1")
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels = dict(s.labels)
                assert labels.pop("line", None) == line, f"{s.name} lacks line={line!r}: {s.labels}"
                out[(s.name, frozenset(labels.items()))] = s.value
        return out

    @staticmethod
    def value(metrics: dict, name: str, **labels) -> float:
        return metrics[(name, frozenset(labels.items()))]


class _Messages:
    """The Notifier of an in-process daemon: what it would send to systemd, kept in a list. A watchdog of 1 s, as
    ``Daemon.start`` gives the process: the serve loop turns every 0.5 s."""

    watchdog_seconds = 1.0

    def __init__(self, messages: list[str]):
        self.messages = messages

    def __call__(self, *lines: str) -> None:
        self.messages.extend(lines)


class InProcessDaemon(Daemon):
    """The same daemon (``monitor.service.Service``, its real folders, ledger, endpoints and log lines) in this
    process: it spares each test the interpreter's start and torch's import (about 1.5 s). For everything that is
    not about the process itself; signals, kill -9, exit codes and the systemd watchdog use ``Daemon``. SIGHUP and
    SIGTERM are given as the service's own events (``send``); ``proc`` stays None."""

    def start(self, wait_ready: bool = True, watchdog_usec: int = 0) -> "InProcessDaemon":
        import logging

        from monitor.cli import OneLineFormatter
        from monitor.config import load_config
        from monitor.daemon.service import Service

        # as the process logs: every logger (watchdog's too) at INFO into the log file, and an exception that ends
        # any thread (the process prints it to stderr, which is the log file) as an ERROR line with its traceback
        self._handler = logging.FileHandler(self.log)
        self._handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._logger = logging.getLogger()
        self._level = self._logger.level
        self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self._handler)
        self._hook = threading.excepthook
        self.crashes: list[BaseException] = []

        def crashed(args):
            self.crashes.append(args.exc_value)
            logging.getLogger("thread").error("thread %s died", args.thread.name if args.thread else "?",
                                              exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
        threading.excepthook = crashed
        self.service = Service(load_config(self.config), self.config, notifier=_Messages(self.messages))
        try:
            self.service.start()
        except BaseException:
            try:
                self.service.stop(quiet=True)
            finally:
                self._unhook()
            raise
        self._thread = threading.Thread(target=self.service.serve, name="in-process daemon", daemon=True)
        self._thread.start()
        return self

    def _unhook(self) -> None:
        threading.excepthook = self._hook
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._level)
        self._handler.close()

    def send(self, sig) -> None:
        if sig == signal.SIGHUP:
            self.service.reload_event.set()
        elif sig in (signal.SIGTERM, signal.SIGINT):
            self.service.stop_event.set()
        else:
            raise NotImplementedError(f"{sig!r}: use Daemon (a real process) for this")
        self.service._wake.set()

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> int | None:
        if getattr(self, "service", None) is None:
            return None
        self.send(sig)
        self._thread.join(timeout)
        try:
            assert not self._thread.is_alive(), f"the serve loop did not stop within {timeout} s"
            self.service.stop()
        finally:
            self._unhook()
        code, self.service = self.service.exit_code, None
        if self.crashes:  # a thread of the daemon died: the process would have said so in its log, and failed
            raise AssertionError(f"a daemon thread died: {self.crashes[0]!r}\n{self.log_text()[-3000:]}")
        return code

    def alive(self) -> bool:
        return getattr(self, "service", None) is not None

    def wait_message(self, msg: str, timeout: float = 30):
        wait_for(lambda: msg in self.messages, timeout, msg)

    def kill(self) -> None:
        raise NotImplementedError("kill -9 needs a real process: use Daemon")

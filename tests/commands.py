"""The one way the tests run a `monitor` command: a fresh interpreter, as a user's shell runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def monitor(*args, check: bool = False, cwd: str | Path | None = ROOT, stdin: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m monitor ARGS`` (each argument through ``str``), output captured as text; ``check``: a non-zero
    exit raises AssertionError with the command line and its stderr."""
    r = subprocess.run([sys.executable, "-m", "monitor", *map(str, args)], input=stdin, capture_output=True,
                       text=True, cwd=cwd, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"monitor {' '.join(map(str, args))} -> {r.returncode}\n{r.stderr}")
    return r

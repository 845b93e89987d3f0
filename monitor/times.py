"""Times as the monitor writes them, and durations as the configuration and the commands take them."""

from __future__ import annotations

import time
from datetime import datetime

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def local(t: float | None = None) -> datetime:
    """``t`` (unix time, default now) as an aware local datetime."""
    return datetime.fromtimestamp(time.time() if t is None else t).astimezone()


def local_time(t: float | None = None) -> str:
    """For people: local time with its UTC offset, e.g. 2026-12-01 23:05:09 +0100 (overlays, result files, logs)."""
    return local(t).strftime("%Y-%m-%d %H:%M:%S %z")


def iso_time(t: float | None = None) -> str:
    """For programs: ISO 8601 local time with its UTC offset, e.g. 2026-12-01T23:05:09+01:00 (the commands' output,
    the results page's machine-readable times)."""
    return local(t).isoformat(timespec="seconds")


def parse_duration(text: str, key: str, zero: str | None = "none") -> float:
    """"90d", "12h", "30m", "45s", "2w" -> seconds. "0" -> 0 where ``zero`` says what it means (e.g. "no limit");
    ``zero`` None: 0 is refused. ValueError naming ``key`` otherwise."""
    t = str(text).strip()
    try:
        if t == "0" and zero is not None:
            return 0.0
        value = float(t[:-1])
        if t[-1:] in UNITS and value > 0:
            return value * UNITS[t[-1]]
    except ValueError:
        pass
    raise ValueError(f"{key} must be a duration such as 90d, 12h, 30m (s, m, h, d, w)"
                     + (f" or 0 for {zero}" if zero is not None else "") + f", got {text!r}")

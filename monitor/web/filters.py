"""The results page's template filters: plain text in, plain text out (the templates escape what these return; the
markup is the templates' own), and ``printable``, Jinja's finalize for every value a template prints."""

from __future__ import annotations

from datetime import datetime

from markupsafe import Markup

from monitor.files import shown
from monitor.kinds import State, Verdict
from monitor.ledger import Row

NAME_CHARS = 28  # longer file names are elided in the middle on the list


def fmt_pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.3f} %"


def fmt_secs(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f} s"


def thousands(n) -> str:
    return f"{n:,}"


def utc_offset(dt: datetime) -> str:
    """+01:00"""
    off = dt.strftime("%z")
    return f"{off[:3]}:{off[3:]}"


def elide(name: str, n: int = NAME_CHARS) -> str:
    if len(name) <= n:
        return name
    keep = (n - 1) // 2
    return name[:keep] + "…" + name[-(n - 1 - keep):]


def verdict_of(row: Row) -> tuple[str, str]:
    """(badge text, css class) of a row."""
    if row.state == State.PENDING:
        return "pending", "b-other"
    if row.state == State.FAILED:
        return f"failed: {row.error_kind or '?'}", "b-other"
    if row.verdict == Verdict.DEFECT:
        return "defect", "b-defect"
    if row.verdict == Verdict.OK:
        return "ok", "b-ok"
    if row.verdict == Verdict.MISMATCH:
        return "mismatch", "b-mismatch"
    return row.verdict or "no verdict", "b-other"


def short_model(model_id: str | None) -> str:
    return (model_id or "–")[:8]


def printable(value):
    """Jinja's finalize: every value a template prints, as ``files.shown`` shows it (bytes of a file name that are not
    UTF-8 as \\xNN, control characters escaped); autoescape then escapes it. Markup (a macro's) is left as it is."""
    if isinstance(value, Markup):
        return value
    return shown(str(value))

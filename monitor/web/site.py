"""The results page: a small HTTP(S) server inside the daemon, server-rendered HTML, no JavaScript.

URLs (GET and HEAD; POST only to label a result; anything else is 405):

    /                           the last results, newest first; filters ?verdict=&since=&until=&limit=
    /result/<id>                one result: verdict, times, coverage vs threshold, overlay, defect table
    /result/<id>/overlay.png    the overlay file named in that ledger row (404 when it is gone or was never written)
    /result/<id>/image.png      the original image, decoded with ``read_image`` and sent as PNG: only the bytes that
                                were scored (their sha256 the ledger's), never through a symbolic link the intake
                                refuses (``watch.symlinks``); 410 when the file is gone or changed since it was scored
    /result/<id>/label          POST: an operator's label (false alarm / confirmed, name, note), only when
                                ``web.write_password_hash`` is set; the form carries that password and a CSRF token
    /healthz                    "ok" (no auth)

Only ledger rows are ever served: a URL names a row id (digits), never a path; everything else is 404. Text from
the ledger is HTML-escaped. With ``web.username``/``web.password_hash`` every page but /healthz needs HTTP basic
auth; with ``web.certfile``/``web.keyfile`` the server speaks TLS. The server is
``httpd.GuardedServer``: the handshake in the connection's thread, every connection bounded in time and number.
Reads go through a read-only ledger connection of their own; a label is written by the daemon's ledger (the
``labeller`` callback). Requests are logged at debug level.

A label form is safe from cross-site requests three ways: it needs the write password (never remembered by the
browser as basic auth is), a CSRF token (an HMAC of the result id and the time under a key of this process, valid
for ``CSRF_SECONDS``), and a POST whose Origin or Sec-Fetch-Site, when the browser sends them, is this site.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import ipaddress
import json
import logging
import math
import os
import re
import socket
import ssl
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from typing import Callable
from urllib.parse import parse_qsl, urlsplit

import cv2
import numpy as np

from monitor.config import RESULTS_MAX, Config, WebSection
from monitor.files import link_problem, shown
from monitor.ledger import LABEL_KINDS, NOTE_CHARS, VERDICT_FILTERS, WHO_CHARS, Label, LabelError, LedgerQueries, Row
from monitor.model.images import ImageError, read_image
from monitor.model.quality import QUALITY_REASONS
from monitor.passwords import parse_hash, verify_password
from monitor.times import local
from monitor.web.server import GuardedServer, server_tls

log = logging.getLogger(__name__)

REALM = "SEM line monitor"
CSP = ("default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "X-Frame-Options": "DENY",
                    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on the label form,
                    # and the origin check needs the real one; other sites still get no referrer
                    "Referrer-Policy": "same-origin"}
CONNECTION_TIMEOUT = 15.0  # seconds a client may take over one read or write (the TLS handshake included)
REQUEST_DEADLINE = 60.0  # seconds a connection may last, the request and the reply together (``httpd``)
NAME_CHARS = 28  # longer file names are elided in the middle on the list
_ROUTE = re.compile(r"/result/([1-9][0-9]{0,17})(?:/(overlay|image)\.png)?")
_LABEL_ROUTE = re.compile(r"/result/([1-9][0-9]{0,17})/label")
CSRF_SECONDS = 8 * 3600  # a label form stays valid this long (a shift); a restart of the daemon expires it too
MAX_FORM_BYTES = 8192
LABEL_TEXT = {"false_alarm": "false alarm", "confirmed": "confirmed defect"}
Labeller = Callable[[int, str, str, str], Label]  # (result id, kind, who, note) -> the label written
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class WebError(RuntimeError):
    pass


class BadRequest(ValueError):
    pass


def esc(value) -> str:
    """HTML-escaped text; bytes of a file name that are not UTF-8 shown as \\xNN (``files.shown``)."""
    return html.escape(shown(str(value)), quote=True)


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: dict = field(default_factory=dict)


def text(status: int, message: str, **headers) -> Response:
    return Response(status, (message + "\n").encode(), "text/plain; charset=utf-8", headers)


def exposure_warnings(cfg: WebSection) -> list[str]:
    """What is open to the network about a page bound to a non-loopback address (logged at start)."""
    try:
        local = cfg.address == "localhost" or ipaddress.ip_address(cfg.address).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        local = False
    if local:
        return []
    out = []
    if not cfg.username:
        out.append(f"it listens on {cfg.address} without basic auth: anyone on that network can read the results; "
                   "set web.username and web.password_hash")
    if not cfg.certfile:
        if cfg.username:
            out.append("basic auth without TLS sends the password in clear text; set web.certfile and web.keyfile")
        if cfg.write_password_hash:
            out.append("the write password of labels travels in clear text without TLS; set web.certfile and "
                       "web.keyfile")
    return out


def _own_names() -> set[str]:
    """This PC's host name and its short form (no resolver call: a line PC's DNS may be slow or absent)."""
    name = socket.gethostname().lower().rstrip(".")
    return {name, name.partition(".")[0]} - {""}


def _too_many(exc: "Locked") -> Response:
    return text(429, f"429 too many wrong passwords from your address: try again in {exc.retry_after} s",
                **{"Retry-After": str(exc.retry_after)})


# ------------------------------------------------------------------------------------------------------- filters
@dataclass(frozen=True)
class Filters:
    verdict: str | None = None  # None = any
    since: datetime | None = None  # naive local time
    until: datetime | None = None
    limit: int = 50


def parse_filters(query: str, default_limit: int) -> Filters:
    """The list page's GET parameters; unknown ones are ignored, bad values raise BadRequest."""
    try:
        params = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False, max_num_fields=20))
    except ValueError:
        raise BadRequest("too many query parameters") from None
    verdict = params.get("verdict", "").strip() or "any"
    if verdict != "any" and verdict not in VERDICT_FILTERS:
        raise BadRequest(f"verdict must be one of any, {', '.join(VERDICT_FILTERS)}; got {verdict!r}")
    raw = params.get("limit", "").strip()
    if raw and not (raw.isascii() and raw.isdigit() and len(raw) <= 6 and 1 <= int(raw) <= RESULTS_MAX):
        raise BadRequest(f"limit must be a whole number from 1 to {RESULTS_MAX}; got {raw!r}")
    since, until = (_parse_local(name, params.get(name, "")) for name in ("since", "until"))
    if since and until and since >= until:
        raise BadRequest(f"since ({_local_input(since)}) must be before until ({_local_input(until)})")
    return Filters(None if verdict == "any" else verdict, since, until, int(raw) if raw else default_limit)


def _parse_local(name: str, raw: str) -> datetime | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        dt = datetime.fromisoformat(raw)
        dt.timestamp()  # years the platform cannot convert fail here, not later
    except (ValueError, OverflowError, OSError):
        raise BadRequest(f"{name} must be a local date and time like 2026-11-24T08:00; got {raw[:40]!r}") from None
    if dt.tzinfo is not None:
        raise BadRequest(f"{name} is taken as the server's local time; give it without a UTC offset")
    return dt


def _local_input(dt: datetime | None) -> str:
    """The value of an <input type=datetime-local>."""
    if dt is None:
        return ""
    return dt.strftime("%Y-%m-%dT%H:%M:%S" if dt.second or dt.microsecond else "%Y-%m-%dT%H:%M")


# ---------------------------------------------------------------------------------------------------- formatting
def fmt_time(ts: float | None, stacked: bool = False) -> str:
    """Local time with its UTC offset, as <time>; ``stacked``: the time of day first, the date and offset below."""
    if ts is None:
        return "–"
    dt = local(ts)
    off = dt.strftime("%z")
    off = f"{off[:3]}:{off[3:]}"
    iso = esc(dt.isoformat(timespec="seconds"))
    if stacked:
        return f'<time datetime="{iso}"><b>{dt:%H:%M:%S}</b><small>{dt:%Y-%m-%d} {off}</small></time>'
    return f'<time datetime="{iso}">{dt:%Y-%m-%d %H:%M:%S} <small>{off}</small></time>'



def fmt_pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.3f} %"


def fmt_secs(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f} s"


def elide(name: str, n: int = NAME_CHARS) -> str:
    if len(name) <= n:
        return name
    keep = (n - 1) // 2
    return name[:keep] + "…" + name[-(n - 1 - keep):]


def verdict_of(row: Row) -> tuple[str, str]:
    """(badge text, css class) of a row."""
    if row.state == "pending":
        return "pending", "b-other"
    if row.state == "failed":
        return f"failed: {row.error_kind or '?'}", "b-other"
    if row.verdict == "defect":
        return "defect", "b-defect"
    if row.verdict == "ok":
        return "ok", "b-ok"
    if row.verdict == "mismatch":
        return "mismatch", "b-mismatch"
    return row.verdict or "no verdict", "b-other"


def badge(row: Row, label: Label | None = None) -> str:
    text_, cls = verdict_of(row)
    out = f'<span class="badge {cls}">{esc(text_)}</span>'
    if label is not None:
        out += f'<span class="badge b-label" title="operator label">{esc(LABEL_TEXT[label.kind])}</span>'
    return out


def short_model(model_id: str | None) -> str:
    return esc((model_id or "–")[:8])


CSS = """
:root{--red:#c62828;--green:#2e7d32;--grey:#5f6b76;--bg:#f2f4f7;--fg:#16202a;--line:#d5dae0;--link:#0b57d0}
*{box-sizing:border-box}
html{font-size:18px;-webkit-text-size-adjust:100%}
body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","DejaVu Sans",sans-serif;
 background:var(--bg);color:var(--fg);line-height:1.4}
a{color:var(--link)}
.top{background:#1f2933;color:#fff;padding:0 1rem;display:flex;align-items:center;gap:1.5rem;flex-wrap:wrap}
.top a{color:#fff;text-decoration:none;font-weight:700;font-size:1.15rem;min-height:56px;display:inline-flex;
 align-items:center}
.top .line{color:#c3ccd5;font-size:.95rem}
main{padding:1rem;max-width:1500px;margin:0 auto}
h1{font-size:1.35rem;margin:.2rem 0 .8rem}
.badge{display:inline-block;padding:.2rem .75rem;border-radius:999px;color:#fff;font-weight:700;font-size:.9rem;
 white-space:nowrap}
.b-defect{background:var(--red)}.b-ok{background:var(--green)}.b-other{background:var(--grey)}
.b-mismatch{background:#8a5a00}.b-label{background:#fff;color:var(--fg);border:2px solid var(--grey)}
form.label{display:flex;flex-wrap:wrap;gap:.75rem 1rem;align-items:flex-end;background:#fff;padding:.75rem 1rem;
 border:1px solid var(--line);border-radius:10px;margin-bottom:1rem}
form.label label{display:flex;flex-direction:column;font-size:.85rem;font-weight:600;gap:.2rem}
form.label fieldset{border:0;padding:0;margin:0;display:flex;gap:1rem}
form.label fieldset label{flex-direction:row;align-items:center;gap:.4rem;font-size:1rem;min-height:48px}
input[type=radio]{min-height:0;width:1.4rem;height:1.4rem}
.done{background:#e8f5e9;border:2px solid var(--green);border-radius:10px;padding:1rem;margin-bottom:1rem}
form.filters{display:flex;flex-wrap:wrap;gap:.75rem 1rem;align-items:flex-end;background:#fff;padding:.75rem 1rem;
 border:1px solid var(--line);border-radius:10px;margin-bottom:.75rem}
form.filters label{display:flex;flex-direction:column;font-size:.85rem;font-weight:600;gap:.2rem}
input,select,button{font:inherit;min-height:48px;padding:.35rem .6rem;border:1px solid #8d98a3;border-radius:8px;
 background:#fff;color:var(--fg)}
input[type=number]{width:6.5rem}
button{background:var(--link);color:#fff;border:0;font-weight:700;padding:0 1.6rem;cursor:pointer}
.chips{display:flex;flex-wrap:wrap;gap:.5rem;margin:.25rem 0 .75rem}
.chips a,.nav a{display:inline-flex;align-items:center;min-height:48px;padding:0 1.1rem;border-radius:999px;
 background:#fff;border:1px solid var(--line);text-decoration:none;font-weight:600}
.chips a.on{background:var(--fg);color:#fff;border-color:var(--fg)}
.count{color:#4a5560;font-size:.9rem;margin:.25rem 0 .5rem}
.rows{background:#fff;border:1px solid var(--line);border-radius:10px;overflow:hidden}
.row{display:grid;grid-template-columns:9rem minmax(8rem,1fr) 10.5rem 6.5rem 5rem 6.5rem 5.5rem;
 grid-template-areas:"time name verdict cov n big model";align-items:center;gap:.25rem 1rem;padding:.6rem 1rem;
 min-height:60px;border-top:1px solid var(--line);color:inherit;text-decoration:none}
.row:first-child{border-top:0}
a.row:hover,a.row:focus{background:#e8f0fe;outline:none}
a.row:focus-visible{outline:3px solid var(--link);outline-offset:-3px}
.head{min-height:0;font-weight:700;font-size:.78rem;text-transform:uppercase;letter-spacing:.03em;color:#4a5560;
 background:#f7f8fa}
.c-time{grid-area:time;font-variant-numeric:tabular-nums}.c-time b{display:block;font-size:1.05rem}
.c-time small{display:block}.c-name{grid-area:name;font-weight:600;
 overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.c-verdict{grid-area:verdict;display:flex;flex-wrap:wrap;gap:.3rem}.c-cov{grid-area:cov}.c-n{grid-area:n}.c-big{grid-area:big}
.c-model{grid-area:model;font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.85rem;color:#4a5560}
.head .c-model{font-family:inherit;font-size:inherit}
.num{text-align:right;font-variant-numeric:tabular-nums}
small{color:#5f6b76;font-size:.8em}
.empty{padding:1.5rem 1rem;color:#4a5560}
.error{background:#fdecea;border:2px solid var(--red);border-radius:10px;padding:1rem;font-weight:600}
.banner{display:flex;flex-wrap:wrap;align-items:center;gap:.5rem 1.25rem;padding:1rem 1.25rem;border-radius:10px;
 color:#fff;margin-bottom:.75rem}
.banner .v{font-size:1.6rem;font-weight:800;letter-spacing:.02em;text-transform:uppercase}
.banner .f{font-size:1.15rem;font-weight:600;word-break:break-all}
.banner .meta{flex-basis:100%;font-size:.85rem;word-break:break-all}.banner small{color:inherit}
.nav{display:flex;flex-wrap:wrap;gap:.5rem;margin-bottom:.75rem}
.nav .off{display:inline-flex;align-items:center;min-height:48px;padding:0 1.1rem;color:#9aa4ad}
.split{display:grid;grid-template-columns:minmax(0,1fr) 27rem;gap:0 1rem;align-items:start}
.facts{display:grid;grid-template-columns:1fr 1fr;gap:.75rem;margin-bottom:.75rem}
.fact{background:#fff;border:1px solid var(--line);border-radius:10px;padding:.6rem .9rem}
.fact b{display:block;font-size:.78rem;text-transform:uppercase;letter-spacing:.03em;color:#4a5560}
.fact span{font-size:1.3rem;font-weight:700;font-variant-numeric:tabular-nums}
.over{color:var(--red)}
figure{margin:0 0 1rem;background:#fff;border:1px solid var(--line);border-radius:10px;padding:.5rem}
figure img{display:block;width:100%;height:auto;border-radius:6px;background:#000}
figcaption{font-size:.85rem;color:#4a5560;padding:.4rem .2rem 0}
.notice{background:#fff8e1;border:2px solid #f0b400;border-radius:10px;padding:1rem;margin-bottom:1rem}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid var(--line);border-radius:10px;
 overflow:hidden;margin-bottom:1rem}
th,td{padding:.6rem .5rem;border-top:1px solid var(--line);text-align:left;font-variant-numeric:tabular-nums}
td{white-space:nowrap}
.scroll{overflow-x:auto}
table.defects{font-size:.9rem}
th{font-size:.8rem;text-transform:uppercase;letter-spacing:.03em;color:#4a5560;background:#f7f8fa;border-top:0}
td.num,th.num{text-align:right}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.45rem 1.25rem;background:#fff;border:1px solid var(--line);
 border-radius:10px;padding:.9rem 1rem;margin:0 0 1rem}
dt{font-weight:700;color:#4a5560}dd{margin:0;word-break:break-all}
h2{font-size:1.1rem;margin:1.2rem 0 .5rem}
@media (max-width:1100px){.split{grid-template-columns:minmax(0,1fr)}.facts{grid-template-columns:repeat(4,1fr)}}
@media (max-width:900px){
 html{font-size:17px}
 .head{display:none}
 .row{grid-template-columns:1fr auto auto;grid-template-areas:"name name verdict" "time time time" "cov n big";
  gap:.2rem .8rem;padding:.7rem 1rem}
 .c-model{display:none}
 .c-verdict,.c-n,.c-big{justify-self:end}
 .num{text-align:left}
 .c-cov::before{content:"coverage ";color:#5f6b76;font-size:.85em}
 .c-n::before{content:"defects ";color:#5f6b76;font-size:.85em}
 .c-big::before{content:"largest ";color:#5f6b76;font-size:.85em}
 .c-time b,.c-time small{display:inline;margin-right:.5rem}
 .facts{grid-template-columns:1fr 1fr}
 dl{grid-template-columns:1fr}dt{margin-top:.4rem}
}
"""


def page(title: str, body: str, line: str) -> bytes:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{esc(title)}</title><style>{CSS}</style></head><body>'
            f'<header class="top"><a href="/">SEM line monitor</a><span class="line">{esc(line)}</span></header>'
            f'<main>{body}</main></body></html>\n').encode("utf-8")


# ----------------------------------------------------------------------------------------------------------- auth
AUTH_KINDS = ("basic", "write")  # the passwords of the page: basic auth, the write password of labels
FREE_GUESSES = 5  # wrong passwords a client address may send before it is locked out
MAX_LOCKOUT = 300.0  # seconds; the lockout doubles with every wrong password after the free ones, up to this


class Locked(Exception):
    def __init__(self, seconds: float):
        super().__init__(f"locked for {seconds:.0f} s")
        self.seconds = seconds
        self.retry_after = math.ceil(seconds)  # whole seconds, for the reply and its Retry-After header


class Guesses:
    """Wrong passwords per client address. After ``FREE_GUESSES`` wrong ones in a row an address is locked out for
    1 s, then 2, 4, ... up to ``MAX_LOCKOUT`` after each further wrong one; while locked, its passwords are not
    even checked (no PBKDF2: a guesser costs nothing). A right password clears the address. At most ``remember``
    addresses are kept (the oldest forgotten first), so a flood of addresses cannot fill the memory."""

    def __init__(self, remember: int = 4096, clock: Callable[[], float] = time.monotonic):
        self._failed: OrderedDict[str, list] = OrderedDict()  # address -> [wrong in a row, locked until]
        self._remember = remember
        self._clock = clock
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        """Raises Locked while ``client`` is locked out."""
        with self._lock:
            entry = self._failed.get(client)
            left = entry[1] - self._clock() if entry else 0.0
        if left > 0:
            raise Locked(left)

    def wrong(self, client: str) -> tuple[int, float]:
        """Count a wrong password; returns (wrong in a row, seconds now locked out)."""
        with self._lock:
            entry = self._failed.pop(client, [0, 0.0])
            entry[0] += 1
            lockout = (0.0 if entry[0] <= FREE_GUESSES
                       else min(MAX_LOCKOUT, 2.0 ** min(entry[0] - FREE_GUESSES - 1, 16)))
            entry[1] = self._clock() + lockout
            self._failed[client] = entry
            while len(self._failed) > self._remember:
                self._failed.popitem(last=False)
            return entry[0], lockout

    def right(self, client: str) -> None:
        with self._lock:
            self._failed.pop(client, None)


class Password:
    """One password of the page (``kind`` in AUTH_KINDS) checked against its PBKDF2 hash: at most one PBKDF2 of it
    at a time (a flood of guesses takes one core at most from the scoring), each kind with its own lock (guessers
    at the basic auth do not delay an operator's label), wrong ones throttled per client address and logged at
    WARNING, and ``on_failure(kind)`` called for each (the metric ``monitor_web_auth_failures_total``)."""

    def __init__(self, kind: str, stored: str, on_failure: Callable[[str], None] | None = None):
        self.kind = kind
        self.hash = parse_hash(stored)
        self.guesses = Guesses()
        self.on_failure = on_failure
        self._kdf = threading.Lock()

    def verify(self, password: str, client: str, about: str = "", also: bool = True) -> bool:
        """True for the right password (and ``also``: basic auth's user name); raises Locked, without checking
        it, while ``client`` is locked out. The PBKDF2 always runs, so that the time says nothing of ``also``.
        ``about``: what the log line says it was for ("for user X", "for a label of result N")."""
        self.guesses.check(client)
        with self._kdf:
            self.guesses.check(client)  # locked while this request waited for the lock
            ok = verify_password(password, self.hash) and bool(password) and also
        if ok:
            self.guesses.right(client)
            return True
        n, lockout = self.guesses.wrong(client)
        what = "password" if self.kind == "basic" else "write password"
        log.warning("results page: wrong %s%s from %s (%d in a row%s)", what, f" {about}" if about else "",
                    shown(client), n, f"; locked out for {lockout:.0f} s" if lockout else "")
        if self.on_failure is not None:
            self.on_failure(self.kind)
        return False


class BasicAuth:
    """HTTP basic auth against one user and a PBKDF2 hash (``Password``). Verified credentials are remembered (as
    an HMAC under a key of this process, at most ``remember`` of them) so that a page with its images costs one
    PBKDF2, not three, and an operator already signed in is not locked out by a guesser on the same address; a
    wrong password is never remembered."""

    def __init__(self, username: str, password_hash: str, remember: int = 32,
                 on_failure: Callable[[str], None] | None = None):
        self.username = username.encode("utf-8")
        self.password = Password("basic", password_hash, on_failure)
        self._key = os.urandom(32)
        self._good: OrderedDict[bytes, None] = OrderedDict()
        self._remember = remember
        self._lock = threading.Lock()  # the remembered credentials

    def check(self, header: str | None, client: str = "") -> bool:
        """True for the right credentials; raises Locked while ``client`` is locked out."""
        if not header:
            return False  # a browser's first request: not a wrong password
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "basic" or not token:
            return False
        tag = hmac.new(self._key, token.encode("latin-1", "replace"), "sha256").digest()
        with self._lock:
            if tag in self._good:
                self._good.move_to_end(tag)
                return True
        try:
            user, sep, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, ValueError):
            return False
        if not sep:
            return False
        user_ok = hmac.compare_digest(user.encode("utf-8"), self.username)
        about = f"for user {shown(user[:64])}" if user else ""
        if not self.password.verify(password, client, about, also=user_ok):
            return False
        with self._lock:
            self._good[tag] = None
            while len(self._good) > self._remember:
                self._good.popitem(last=False)
        return True


# ------------------------------------------------------------------------------------------------------------ site
class ResultsSite:
    """The pages, as a function of the request: ``handle(method, target, authorization) -> Response``."""

    def __init__(self, cfg: WebSection, ledger: LedgerQueries, settings: Callable[[], Config],
                 labeller: Labeller | None = None, on_auth_failure: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.ledger = ledger
        self.settings = settings  # the daemon's configuration now (SIGHUP may change alarm and image settings)
        self.auth = BasicAuth(cfg.username, cfg.password_hash, on_failure=on_auth_failure) if cfg.username else None
        # labelling from the page: the write password (checked like basic auth, throttled on its own)
        self.writer = (Password("write", cfg.write_password_hash, on_auth_failure)
                       if cfg.write_password_hash and labeller is not None else None)
        self.labeller = labeller
        self._csrf_key = os.urandom(32)
        self._hosts = {"localhost", *cfg.allowed_hosts, *_own_names()}
        if cfg.external_url:
            self._hosts.add((urlsplit(cfg.external_url).hostname or "").rstrip("."))
        self._decode = threading.Semaphore(1)  # one original image decoded at a time (up to 64 MP as float32)

    def handle(self, method: str, target: str, authorization: str | None, headers=None, body: bytes = b"",
               client: str = "") -> Response:
        path, _, query = target.partition("?")
        query = query.partition("#")[0]
        label_route = _LABEL_ROUTE.fullmatch(path)
        if method == "POST" and label_route is None or method not in ("GET", "HEAD", "POST"):
            return text(405, "405 method not allowed: this server answers GET and HEAD (and POST to "
                             "/result/<id>/label)", Allow="GET, HEAD")
        if label_route is not None and method != "POST":
            return text(405, "405 method not allowed: a label is sent by POST", Allow="POST")
        if path == "/healthz":
            return text(200, "ok")
        if not self.host_allowed((headers or {}).get("Host")):
            return text(400, "400 bad request: this results page does not answer to that host name (the Host "
                             "header); add the name to web.allowed_hosts if operators reach the page by it")
        try:
            if self.auth is not None and not self.auth.check(authorization, client):
                return text(401, "401 unauthorized: this page needs the line monitor's user name and password",
                            **{"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'})
        except Locked as exc:
            return _too_many(exc)
        if label_route is not None:
            return self.post_label(int(label_route.group(1)), headers or {}, body, client)
        if path == "/":
            return self.list_page(query)
        m = _ROUTE.fullmatch(path)
        if m is None:
            return text(404, "404 not found")
        row = self.ledger.get(int(m.group(1)))
        if row is None:
            return self._missing_row(int(m.group(1)), m.group(2))
        if m.group(2) == "overlay":
            return self.overlay_png(row)
        if m.group(2) == "image":
            return self.original_png(row)
        return self.result_page(row, query=query)

    def host_allowed(self, host: str | None) -> bool:
        """The Host a request names: an IP address (any), localhost, this PC's names, ``web.external_url``'s host
        or one of ``web.allowed_hosts``. Any other name is a page reached through someone else's DNS name (DNS
        rebinding: a web site whose name resolves to this PC would read the page with its visitor's browser)."""
        if host is None:  # HTTP/1.0 without Host: not a browser's request
            return True
        name = host.strip().lower()
        if name.startswith("["):  # [IPv6]:port
            name = name[1:].partition("]")[0]
        elif name.count(":") == 1:
            name = name.partition(":")[0]
        name = name.rstrip(".")
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            pass
        return name in self._hosts

    @property
    def line(self) -> str:
        return self.settings().service.line

    def _missing_row(self, row_id: int, asset: str | None) -> Response:
        if asset:
            return text(404, f"404 not found: no result {row_id} in the ledger")
        body = (f'<p class="error">No result {row_id} in the ledger.</p>'
                f'<p class="nav"><a href="/">All results</a></p>')
        return Response(404, page("Not found", body, self.line))

    # ---------------------------------------------------------------------------------------------------- list
    def list_page(self, query: str) -> Response:
        try:
            f = parse_filters(query, self.cfg.results)
        except BadRequest as exc:
            body = (f'<h1>Bad filter</h1><p class="error">{esc(exc)}</p>'
                    f'<p class="nav"><a href="/">Show all results</a></p>')
            return Response(400, page("Bad filter", body, self.line))
        rows = self.ledger.results(f.limit, f.verdict, f.since and f.since.timestamp(),
                                   f.until and f.until.timestamp())
        chips = "".join(f'<a href="{esc(href)}"{" class=on" if on else ""}>{label}</a>' for label, href, on in (
            ("All", "/", f == Filters(limit=self.cfg.results)),
            ("Defects", "/?verdict=defect", f == Filters("defect", limit=self.cfg.results)),
            ("Failed", "/?verdict=failed", f == Filters("failed", limit=self.cfg.results)),
            ("Pending", "/?verdict=pending", f == Filters("pending", limit=self.cfg.results))))
        options = "".join(f'<option value="{v}"{" selected" if (f.verdict or "any") == v else ""}>{v}</option>'
                          for v in ("any", *VERDICT_FILTERS))
        form = (f'<form class="filters" method="get" action="/">'
                f'<label>Verdict<select name="verdict">{options}</select></label>'
                f'<label>Since (local time)<input type="datetime-local" name="since" step="1" '
                f'value="{esc(_local_input(f.since))}"></label>'
                f'<label>Until<input type="datetime-local" name="until" step="1" '
                f'value="{esc(_local_input(f.until))}"></label>'
                f'<label>Rows<input type="number" name="limit" min="1" max="{RESULTS_MAX}" value="{f.limit}"></label>'
                f'<button type="submit">Show</button></form>')
        head = ('<div class="row head"><span class="c-time">Recorded</span><span class="c-name">Image</span>'
                '<span class="c-verdict">Verdict</span><span class="c-cov num">Coverage</span>'
                '<span class="c-n num">Defects</span><span class="c-big num">Largest px</span>'
                '<span class="c-model">Model</span></div>')
        labels = self.ledger.current_labels([r.id for r in rows])
        items = "".join(self._list_row(r, labels.get(r.id)) for r in rows)
        if not rows:
            items = '<p class="empty">No results match these filters.</p>'
        what = f"{len(rows)} result{'s' if len(rows) != 1 else ''}, newest first"
        if len(rows) == f.limit:
            what += f" (the newest {f.limit}; set Until or raise Rows for older ones)"
        body = (f'<h1>Results</h1><nav class="chips">{chips}</nav>{form}<p class="count">{esc(what)}</p>'
                f'<div class="rows">{head}{items}</div>')
        return Response(200, page(f"Results · line {self.line}", body, self.line))

    @staticmethod
    def _list_row(r: Row, label: Label | None = None) -> str:
        name = os.path.basename(r.path)
        largest = "–" if r.largest_area is None or not r.n_defects else f"{r.largest_area:,}"
        n = "–" if r.n_defects is None else str(r.n_defects)
        return (f'<a class="row" href="/result/{r.id}"><span class="c-time">{fmt_time(r.seen_at, True)}</span>'
                f'<span class="c-name" title="{esc(name)}">{esc(elide(name))}</span>'
                f'<span class="c-verdict">{badge(r, label)}</span><span class="c-cov num">{fmt_pct(r.coverage)}</span>'
                f'<span class="c-n num">{n}</span><span class="c-big num">{largest}</span>'
                f'<span class="c-model" title="{esc(r.model_id or "")}">{short_model(r.model_id)}</span></a>')

    # -------------------------------------------------------------------------------------------------- result
    def result_page(self, r: Row, labels_html: str | None = None, query: str = "") -> Response:
        try:
            result = json.loads(r.result_json) if r.result_json else {}
        except ValueError:
            result = {}
        if not isinstance(result, dict):
            result = {}
        name = os.path.basename(r.path)
        label, cls = verdict_of(r)
        current = self.ledger.current_labels([r.id]).get(r.id)
        if current is not None:
            label += f" · {LABEL_TEXT[current.kind]}"
        prev_id, next_id = self.ledger.neighbours(r.id)
        nav = ['<a href="/">All results</a>']
        nav.append(f'<a href="/result/{prev_id}" rel="prev">← Older</a>' if prev_id else
                   '<span class="off">← Older</span>')
        nav.append(f'<a href="/result/{next_id}" rel="next">Newer →</a>' if next_id else
                   '<span class="off">Newer →</span>')
        nav.append(f'<a href="/result/{r.id}/image.png">Original image</a>')
        settings = self.settings()
        th = result.get("coverage_threshold")
        th_note = "" if isinstance(th, (int, float)) else " (current setting)"
        th = th if isinstance(th, (int, float)) else settings.alarm.coverage_threshold
        over = r.coverage is not None and r.coverage > th
        facts = [("Coverage", f'<span class="{"over" if over else ""}">{fmt_pct(r.coverage)}</span>'),
                 ("Alarm threshold", f"<span>{fmt_pct(th)}</span>{esc(th_note)}"),
                 ("Defects", f"<span>{'–' if r.n_defects is None else r.n_defects}</span>"),
                 ("Largest defect", f"<span>{'–' if not r.n_defects else f'{r.largest_area:,} px'}</span>")]
        facts_html = "".join(f'<div class="fact"><b>{k}</b>{v}</div>' for k, v in facts)
        meta = (f'recorded {fmt_time(r.seen_at)} · line {esc(result.get("line", "–"))} · '
                f'model {esc(r.model_id or "–")}<br>{esc(r.path)}')
        body = [f'<div class="banner {cls}"><span class="v">{esc(label)}</span>'
                f'<span class="f">{esc(name)}</span><span class="meta">{meta}</span></div>',
                f'<nav class="nav">{"".join(nav)}</nav>']
        if r.state == "failed":
            body.append(f'<p class="error">Not scored ({esc(r.error_kind or "?")}): {esc(r.error or "")}</p>')
        if r.verdict == "mismatch" and result.get("mismatch") and result.get("mismatch_reason") in QUALITY_REASONS:
            body.append(f'<p class="notice">Not judged: an acquisition problem, {esc(result["mismatch"])}. The '
                        'material is not inspected while the microscope acquires such images: ask its operator.</p>')
        elif r.verdict == "mismatch" and result.get("mismatch"):
            body.append(f'<p class="notice">Not scored against this model: {esc(result["mismatch"])}. A recipe '
                        'changeover needs its own model (monitor install-model), a focus or detector fault a look at '
                        'the microscope.</p>')
        body.append(f'<div class="split"><div>{self._overlay_figure(r, name, settings)}</div>'
                    f'<div><div class="facts">{facts_html}</div>{self._defect_table(r, result)}'
                    f'{self._labels_html(r, saved=query == "labelled=1") if labels_html is None else labels_html}'
                    '</div></div>')
        details = [("File", esc(name)), ("Path", esc(r.path)), ("Recorded", fmt_time(r.seen_at)),
                   ("Scoring started", fmt_time(r.started_at)), ("Finished", fmt_time(r.finished_at)),
                   ("Scoring time", fmt_secs(r.score_seconds)), ("File to result", fmt_secs(r.e2e_seconds)),
                   ("Attempts", str(r.attempts)), ("Line", esc(result.get("line", "–"))),
                   ("Model", esc(r.model_id or "–")),
                   ("Max score", "–" if r.max_score is None else f"{r.max_score:.4f}"),
                   ("Map threshold", esc(result.get("threshold") if result.get("threshold") is not None else "–")),
                   ("SHA-256", esc(r.sha256 if len(r.sha256) == 64 else "–")), ("Ledger id", str(r.id))]
        q = result.get("quality")
        if isinstance(q, dict):  # the acquisition-quality figures (monitor/quality.py)
            shown_q = (f"{k.replace('_', ' ')} {v}" for k, v in q.items()
                       if k in ("clipped_low", "clipped_high", "sharpness", "noise"))
            details.append(("Acquisition", esc(", ".join(shown_q))))
        if r.state == "failed":
            details.append(("Error", f"{esc(r.error_kind or '?')}: {esc(r.error or '')}"))
        body.append("<h2>Details</h2><dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in details) + "</dl>")
        return Response(200, page(f"{label} · {name}", "".join(body), self.line))

    # ------------------------------------------------------------------------------------------------- labels
    def _labels_html(self, r: Row, error: str = "", form: dict | None = None, saved: bool = False) -> str:
        if r.state != "done":
            return ""
        labels = self.ledger.labels(r.id)
        out = ['<h2 id="label">Operator label</h2>']
        if saved:
            out.append('<p class="done">Label saved.</p>')
        if labels:
            items = "".join(f'<li><b>{esc(LABEL_TEXT[x.kind])}</b> by {esc(x.who)} {fmt_time(x.at)}'
                            f'{" (" + esc(x.source) + ")" if x.source != "web" else ""}'
                            f'{": " + esc(x.note) if x.note else ""}</li>' for x in labels)
            out.append(f'<ul class="count">{items}</ul>')
            if len(labels) > 1:
                out.append('<p class="count">The last label is the one that counts.</p>')
        if self.writer is None:
            if not labels:
                out.append('<p class="count">No label. Labelling from this page is off (web.write_password_hash); '
                           f'on the line PC: <code>monitor label {r.id} --false-alarm|--confirmed</code></p>')
            return "".join(out)
        if error:
            out.append(f'<p class="error">{esc(error)}</p>')
        form = form or {}
        kinds = [k for k in LABEL_KINDS if k != "false_alarm" or r.verdict == "defect"]
        want = form.get("kind")  # nothing chosen in advance: the operator says which
        radios = "".join(f'<label><input type="radio" name="kind" value="{k}" required'
                         f'{" checked" if k == want else ""}>{esc(LABEL_TEXT[k])}</label>' for k in kinds)
        out.append(f'<form class="label" method="post" action="/result/{r.id}/label">'
                   f'<input type="hidden" name="csrf" value="{self.csrf_token(r.id)}">'
                   f'<fieldset><legend class="count">This image is</legend>{radios}</fieldset>'
                   f'<label>Your name<input name="by" required maxlength="{WHO_CHARS}" autocomplete="name" '
                   f'value="{esc(form.get("by", ""))}"></label>'
                   f'<label>Note<input name="note" maxlength="{NOTE_CHARS}" value="{esc(form.get("note", ""))}">'
                   f'</label><label>Write password<input type="password" name="password" required '
                   f'autocomplete="current-password"></label><button type="submit">Save label</button></form>')
        return "".join(out)

    def csrf_token(self, row_id: int, now: float | None = None) -> str:
        issued = str(int(now if now is not None else time.time()))
        return f"{issued}.{self._csrf_mac(row_id, issued)}"

    def _csrf_mac(self, row_id: int, issued: str) -> str:
        return hmac.new(self._csrf_key, f"label:{row_id}:{issued}".encode(), "sha256").hexdigest()[:40]

    def _csrf_ok(self, row_id: int, token: str) -> bool:
        issued, _, mac = token.partition(".")
        if not (issued.isascii() and issued.isdigit() and len(issued) <= 12):
            return False
        return (hmac.compare_digest(mac.encode(), self._csrf_mac(row_id, issued).encode())
                and 0 <= time.time() - int(issued) <= CSRF_SECONDS)

    def post_label(self, row_id: int, headers, body: bytes, client: str = "") -> Response:
        """A label from the result page's form: checks, then the daemon's ledger writes it; 303 back to the page."""
        if self.writer is None:
            return text(403, "403 forbidden: labelling from the results page is off (set web.write_password_hash)")
        site = headers.get("Sec-Fetch-Site")
        origin = headers.get("Origin")
        # this server as the browser reached it: its Host, or web.external_url behind a proxy that rewrites Host
        ours = {headers.get("Host"), urlsplit(self.cfg.external_url).netloc if self.cfg.external_url else None}
        if site not in (None, "same-origin", "none") or (origin and urlsplit(origin).netloc not in ours - {None}):
            return text(403, "403 forbidden: a label must be sent from this results page (cross-site request)")
        if (headers.get("Content-Type") or "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            return text(415, "415 unsupported media type: send the label form (application/x-www-form-urlencoded)")
        row = self.ledger.get(row_id)
        if row is None:
            return self._missing_row(row_id, None)
        try:
            form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                                  max_num_fields=10))
        except UnicodeDecodeError:
            return text(400, "400 bad request: the form is not valid UTF-8")
        except ValueError:
            return text(400, "400 bad request: the form has more fields than the label form's")

        def again(status: int, why: str) -> Response:
            resp = self.result_page(row, self._labels_html(row, why, form))
            resp.status = status
            return resp
        if not self._csrf_ok(row_id, form.get("csrf", "")):
            return again(403, "This form has expired or did not come from this page (CSRF check). The page is "
                              "reloaded with a new form: enter the label again.")
        try:
            password_ok = self.writer.verify(form.get("password", ""), client, f"for a label of result {row_id}")
        except Locked as exc:
            resp = again(429, f"Too many wrong write passwords from your address: try again in "
                              f"{exc.retry_after} s. The label was not saved.")
            resp.headers["Retry-After"] = str(exc.retry_after)
            return resp
        if not password_ok:  # logged by Password.verify
            return again(403, "Wrong write password: the label was not saved.")
        try:
            lab = self.labeller(row_id, form.get("kind", ""), form.get("by", ""), form.get("note", ""))
        except LabelError as exc:
            return again(400, f"The label was not saved: {exc}.")
        log.info("results page: result %d labelled %s by %s", row_id, lab.kind, lab.who)
        return Response(303, b"", "text/plain; charset=utf-8", {"Location": f"/result/{row_id}?labelled=1#label"})

    @staticmethod
    def _overlay_figure(r: Row, name: str, settings: Config) -> str:
        if r.state != "done":
            why = "not scored yet" if r.state == "pending" else "the image could not be scored"
            return f'<p class="notice">No overlay: {why}.</p>'
        if r.verdict == "mismatch" and r.coverage is None and not r.overlay:
            return (f'<p class="notice">No overlay: the image was not scored (it does not fit the model). '
                    f'<a href="/result/{r.id}/image.png">Open the original image</a>.</p>')
        if not r.overlay:
            mode = settings.output.overlays
            if mode == "all" or (mode == "alarms" and r.verdict in ("defect", "mismatch")):
                return '<p class="notice">No overlay: it could not be written (see the daemon\'s log).</p>'
            which = {"alarms": "for defect and mismatch images only", "all": "for every image"}.get(mode,
                                                                                               "for no image")
            return (f'<p class="notice">No overlay was written for this image (output.overlays: {esc(mode)} '
                    f'writes them {which}). <a href="/result/{r.id}/image.png">Open the original image</a>.</p>')
        if not os.path.isfile(r.overlay):
            return (f'<p class="notice">The overlay file is gone (removed by retention or by hand): '
                    f'{esc(r.overlay)}. <a href="/result/{r.id}/image.png">Open the original image</a>.</p>')
        src = f"/result/{r.id}/overlay.png"
        if r.verdict == "mismatch" and r.coverage is None:  # not scored: the image and its reason, no heat map
            return (f'<figure><a href="{src}"><img src="{src}" alt="{esc(name)} as acquired, not judged" '
                    f'></a><figcaption>The image as acquired, not judged (tap to open full size)</figcaption></figure>')
        return (f'<figure><a href="{src}"><img src="{src}" alt="Overlay of {esc(name)}: defects outlined and numbered" '
                f'></a><figcaption>Overlay: heat map of the anomaly score, defects outlined in white and numbered as '
                f'in the table (tap to open full size)</figcaption></figure>')

    @staticmethod
    def _defect_table(r: Row, result: dict) -> str:
        defects = result.get("defects")
        if r.state != "done" or (r.verdict == "mismatch" and r.coverage is None):  # not scored
            return ""
        if not isinstance(defects, list) or not defects:
            return "<h2>Defects</h2><p class=\"count\">No defects found.</p>"
        cells = []
        for i, d in enumerate(defects, 1):
            if not isinstance(d, dict):
                continue
            bbox, cen = d.get("bbox") or [], d.get("centroid") or []
            box = f"{bbox[0]}, {bbox[1]} · {bbox[2]}×{bbox[3]}" if len(bbox) == 4 else "–"
            c = f"{cen[0]}, {cen[1]}" if len(cen) == 2 else "–"
            area = d.get("area")
            peak = d.get("peak")
            cells.append(f'<tr><td class="num">{i}</td><td class="num">'
                         f'{esc(f"{area:,}" if isinstance(area, int) else "–")}</td><td>{esc(box)}</td>'
                         f'<td>{esc(c)}</td><td class="num">{esc(peak if peak is not None else "–")}</td></tr>')
        return ('<h2>Defects</h2><div class="scroll"><table class="defects"><thead><tr><th class="num">#</th>'
                '<th class="num">Area px</th><th>Box x, y · w×h</th><th>Centroid x, y</th><th class="num">Peak</th>'
                f'</tr></thead><tbody>{"".join(cells)}</tbody></table></div>')

    # -------------------------------------------------------------------------------------------------- images
    @staticmethod
    def overlay_png(r: Row) -> Response:
        """The overlay named in the row, nothing else."""
        if not r.overlay:
            return text(404, f"404 not found: no overlay was written for result {r.id}")
        try:
            with open(r.overlay, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise FileNotFoundError
                data = fh.read()
        except OSError:
            return text(404, f"404 not found: the overlay of result {r.id} is gone (retention or removed)")
        if not data.startswith(_PNG_SIGNATURE):
            return text(404, f"404 not found: the overlay of result {r.id} is not a PNG file")
        return Response(200, data, "image/png", {"Cache-Control": "private, max-age=600"})

    def original_png(self, r: Row) -> Response:
        """The original, read as the worker reads it (no data-bar crop) and sent as 8-bit gray PNG. Only what was
        scored is shown: the file is read once into memory, those bytes are checked against the sha256 the ledger
        recorded and decoded (nothing can change between the check and what is sent: another file swapped in
        under the name, pixels rewritten in place with the old mtime put back), and never through a symbolic link
        the intake refuses (``watch.symlinks``: the page must not follow a link out of the folder either)."""
        gone = text(410, f"410 gone: the original of result {r.id} is no longer in the export folder "
                         "as it was scored (removed, or changed since)")
        if r.state != "done":  # not scored: possibly refused before decoding (too large, a link out of the folder)
            return text(404, f"404 not found: result {r.id} was not scored; its original is not shown")
        if not _SHA256.fullmatch(r.sha256):  # read by the worker, never hashed (unreadable when it was recorded)
            return text(410, f"410 gone: the original of result {r.id} cannot be shown as it was scored (no content "
                             "hash was recorded for it)")
        if not self._unchanged(r):  # cheap first: a file removed or touched is not read
            return gone
        settings = self.settings()
        if link_problem(r.path, settings.watch.symlinks, os.path.realpath(settings.watch.dir)):
            return gone
        limits = replace(settings.image, crop_bottom=0)
        with self._decode:
            try:
                gray = read_image(r.path, limits, sha256=r.sha256)
            except ImageError as exc:
                if exc.kind in ("missing", "changed"):
                    return gone
                return text(422, f"422 the original of result {r.id} cannot be shown: {exc.reason}")
            ok, buf = cv2.imencode(".png", np.rint(gray * 255).astype(np.uint8))
        if not ok:
            return text(500, "500 cannot encode the image as PNG")
        return Response(200, buf.tobytes(), "image/png", {"Cache-Control": "private, max-age=600"})

    @staticmethod
    def _unchanged(r: Row) -> bool:
        try:
            st = os.stat(r.path)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == r.size and st.st_mtime_ns == r.mtime_ns


# ---------------------------------------------------------------------------------------------------------- server
class _Handler(BaseHTTPRequestHandler):
    server_version = "sem-line-monitor"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive threads at shutdown
    timeout = CONNECTION_TIMEOUT

    def do_GET(self):
        self._serve()

    def do_HEAD(self):
        self._serve()

    def do_POST(self):
        self._serve()

    def __getattr__(self, name: str):
        if name.startswith("do_"):  # every other method: 405, not the stdlib's 501
            return self._serve
        raise AttributeError(name)

    def _serve(self) -> None:
        body = b""
        if self.command == "POST":
            length = self.headers.get("Content-Length", "")
            if not (length.isascii() and length.isdigit()):
                return self._reply(text(411, "411 length required"))
            if int(length) > MAX_FORM_BYTES:
                return self._reply(text(413, f"413 the form is larger than {MAX_FORM_BYTES} bytes"))
            body = self.rfile.read(int(length))
        try:
            resp = self.server.site.handle(self.command, self.path, self.headers.get("Authorization"), self.headers,
                                           body, self.client_address[0])
        except Exception:
            log.exception("results page: %s %s failed", self.command, self.path[:200])
            resp = text(500, "500 internal error (see the daemon's log)")
        self._reply(resp)

    def _reply(self, resp: Response) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        if "Cache-Control" not in resp.headers:
            self.send_header("Cache-Control", "no-store")
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp.body)

    def end_headers(self):  # also on the stdlib's own error replies (bad request lines)
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        super().end_headers()

    def log_message(self, format, *args):  # noqa: A002 (the stdlib's signature)
        log.debug("results page: %s %s", self.address_string(), format % args)


class ResultsServer:
    """The results page in a daemon thread; ``start()`` binds and returns the port, ``close()`` stops it."""

    def __init__(self, cfg: WebSection, ledger: LedgerQueries, settings: Callable[[], Config],
                 labeller: Labeller | None = None, on_auth_failure: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.site = ResultsSite(cfg, ledger, settings, labeller, on_auth_failure)
        self._server: GuardedServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def start(self) -> int:
        cfg = self.cfg
        tls = None
        if cfg.certfile:
            try:
                tls = server_tls(cfg.certfile, cfg.keyfile)
            except (OSError, ssl.SSLError) as exc:
                raise WebError(f"results page: cannot load web.certfile {cfg.certfile} / web.keyfile {cfg.keyfile}: "
                               f"{getattr(exc, 'strerror', None) or exc}") from None
        try:
            self._server = GuardedServer((cfg.address, cfg.port), _Handler, tls, name="results page",
                                         timeout=CONNECTION_TIMEOUT, deadline=REQUEST_DEADLINE)
            self._server.site = self.site
        except OSError as exc:
            raise WebError(f"results page {cfg.address}:{cfg.port}: {exc.strerror or exc} "
                           "(web.address / web.port)") from None
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="web", daemon=True)
        self._thread.start()
        for warning in exposure_warnings(cfg):
            log.warning("results page: %s", warning)
        return self.port

    @property
    def url(self) -> str:
        """The URL operators reach the page at: web.external_url, else built from the bound address."""
        if self.cfg.external_url:
            return self.cfg.external_url.rstrip("/")
        host = self.cfg.address
        if host in ("", "0.0.0.0", "::"):
            host = socket.getfqdn()
        if ":" in host:
            host = f"[{host}]"
        return f"http{'s' if self.cfg.certfile else ''}://{host}:{self.port}"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None
        self.site.ledger.close()

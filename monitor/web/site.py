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
    /static/monitor.css         the pages' style sheet (the one file of ``static/``)
    /healthz                    "ok" (no auth)

Besides the style sheet and /healthz only ledger rows are served: a URL names a row id (digits), never a path;
everything else is 404. The pages are Jinja2 templates (``templates/``, found through the package) with autoescape
on: every value put into a page is HTML-escaped (and shown printable, ``files.shown``) unless it is markup a template
built itself. The style is one file, ``static/monitor.css``; the pages carry no inline style or script, so the
Content-Security-Policy allows styles from this site only. With ``web.username``/``web.password_hash`` every page
but /healthz needs HTTP basic auth (``auth``); with ``web.certfile``/``web.keyfile`` the server speaks TLS. The
server is ``server.GuardedServer``: the handshake in the connection's thread, every connection bounded in time and
number. Reads go through a read-only ledger connection of their own; a label is written by the daemon's ledger (the
``labeller`` callback). Requests are logged at debug level.

A label form is safe from cross-site requests three ways: it needs the write password (never remembered by the
browser as basic auth is), a CSRF token (an HMAC of the result id and the time under a key of this process, valid
for ``CSRF_SECONDS``), and a POST whose Origin or Sec-Fetch-Site, when the browser sends them, is this site.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import os
import re
import socket
import stat
import threading
from dataclasses import dataclass, replace
from datetime import datetime
from importlib import resources
from typing import Callable
from urllib.parse import parse_qsl, urlsplit

import cv2
import jinja2
import numpy as np

from monitor.config import RESULTS_MAX, Config, WebSection
from monitor.document import ResultDocument
from monitor.errors import MonitorError
from monitor.files import link_problem
from monitor.kinds import State, Verdict
from monitor.ledger import VERDICT_FILTERS, Label, LedgerQueries, Row
from monitor.model.images import ImageError, read_image
from monitor.model.quality import QUALITY_REASONS
from monitor.times import local
from monitor.web.auth import BasicAuth, Locked, Password
from monitor.web.filters import elide, fmt_pct, fmt_secs, printable, short_model, thousands, utc_offset, verdict_of
from monitor.web.forms import CSRF_SECONDS, LabelForm  # noqa: F401 (CSRF_SECONDS: re-exported)
from monitor.web.server import CONNECTION_TIMEOUT, MAX_FORM_BYTES, REQUEST_DEADLINE, SECURITY_HEADERS, Response, text  # noqa: F401

log = logging.getLogger(__name__)

REALM = "SEM line monitor"
_ROUTE = re.compile(r"/result/([1-9][0-9]{0,17})(?:/(overlay|image)\.png)?")
# a Host header: a name or an IPv4 address, or an IPv6 address in brackets, and an optional port; nothing else
_HOST = re.compile(r"(?:\[([0-9a-f:.]+)\]|([a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9.])?))(?::([0-9]{1,5}))?")
_LABEL_ROUTE = re.compile(r"/result/([1-9][0-9]{0,17})/label")
LABEL_TEXT = {"false_alarm": "false alarm", "confirmed": "confirmed defect"}
Labeller = Callable[[int, str, str, str], Label]  # (result id, kind, who, note) -> the label written
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SHA256 = re.compile(r"[0-9a-f]{64}")
CSS_PATH = "/static/monitor.css"
# the style sheet's URL names its content (``assets``): a browser may keep it long, and fetches the new one after an
# upgrade
CSS_CACHE = "private, max-age=31536000, immutable"


class WebError(MonitorError, RuntimeError):
    pass


class BadRequest(ValueError):
    pass


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


PAGES = ("list.html", "result.html", "message.html")  # the templates the site renders (they include the others)


@dataclass(frozen=True)
class Assets:
    templates: jinja2.Environment
    css: bytes  # the style sheet
    css_url: str  # CSS_PATH?v=<its hash>


@functools.cache
def assets() -> Assets:
    """The templates, every one compiled, and the style sheet, read once from the package (an installed wheel as much
    as a checkout: ``templates/`` and ``static/`` beside this module). OSError, ValueError (no templates folder) or
    jinja2.TemplateError when the installation lacks one: ``ResultsServer.start`` then leaves the page off."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("monitor.web", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, finalize=printable, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, auto_reload=False)
    env.filters.update(pct=fmt_pct, secs=fmt_secs, thousands=thousands, elide=elide, verdict=verdict_of,
                       short_model=short_model, basename=os.path.basename, local=local, utc_offset=utc_offset)
    css = resources.files("monitor.web").joinpath("static", "monitor.css").read_bytes()
    css_url = f"{CSS_PATH}?v={hashlib.sha256(css).hexdigest()[:12]}"
    env.globals.update(label_text=LABEL_TEXT, css_url=css_url)
    for name in {*PAGES, *env.list_templates()}:
        env.get_template(name)
    return Assets(env, css, css_url)


def render(template: str, **context) -> bytes:
    """A page of ``templates/`` as UTF-8."""
    return assets().templates.get_template(template).render(**context).encode("utf-8")


# ------------------------------------------------------------------------------------------------------------ site
class ResultsSite(LabelForm):
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
        hosts = headers.get_all("Host") if hasattr(headers, "get_all") else None
        # a malformed header line ("Host : x") ends the parsed headers there, as a defect: the rest would be unseen
        if hosts is not None and len(hosts) > 1 or getattr(headers, "defects", None):
            return text(400, "400 bad request: more than one Host header, or a malformed header line")
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
        if path == CSS_PATH:
            return Response(200, assets().css, "text/css; charset=utf-8", {"Cache-Control": CSS_CACHE})
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
        if host is None:  # HTTP/1.0 without Host: not a browser's request (a browser always sends it)
            return True
        m = _HOST.fullmatch(host.strip().lower())
        if m is None:  # "[::1]evil", "localhost:evil", a port of letters
            return False
        name = (m.group(1) or m.group(2)).rstrip(".")
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            pass
        return name in self._hosts

    @property
    def line(self) -> str:
        return self.settings().service.line

    def render(self, status: int, template: str, title: str, **context) -> Response:
        return Response(status, render(template, title=title, line=self.line, **context))

    def _missing_row(self, row_id: int, asset: str | None) -> Response:
        if asset:
            return text(404, f"404 not found: no result {row_id} in the ledger")
        return self.render(404, "message.html", "Not found", heading=None, message=f"No result {row_id} in the ledger.",
                           back="All results")

    # ---------------------------------------------------------------------------------------------------- list
    def list_page(self, query: str) -> Response:
        try:
            f = parse_filters(query, self.cfg.results)
        except BadRequest as exc:
            return self.render(400, "message.html", "Bad filter", heading="Bad filter", message=str(exc),
                               back="Show all results")
        rows = self.ledger.results(f.limit, f.verdict, f.since and f.since.timestamp(),
                                   f.until and f.until.timestamp())
        chips = [{"label": label, "href": href, "on": on} for label, href, on in (
            ("All", "/", f == Filters(limit=self.cfg.results)),
            ("Defects", "/?verdict=defect", f == Filters("defect", limit=self.cfg.results)),
            ("Failed", "/?verdict=failed", f == Filters("failed", limit=self.cfg.results)),
            ("Pending", "/?verdict=pending", f == Filters("pending", limit=self.cfg.results)))]
        what = f"{len(rows)} result{'s' if len(rows) != 1 else ''}, newest first"
        if len(rows) == f.limit:
            what += f" (the newest {f.limit}; set Until or raise Rows for older ones)"
        return self.render(200, "list.html", f"Results · line {self.line}", chips=chips,
                           verdicts=("any", *VERDICT_FILTERS), verdict=f.verdict or "any",
                           since=_local_input(f.since), until=_local_input(f.until), limit=f.limit,
                           results_max=RESULTS_MAX, count=what, rows=rows,
                           labels=self.ledger.current_labels([r.id for r in rows]))

    # -------------------------------------------------------------------------------------------------- result
    def result_page(self, r: Row, query: str = "", label_error: str = "", form: dict | None = None) -> Response:
        """One result; ``label_error`` and ``form``: the label form sent back with why it was not saved."""
        result = ResultDocument.from_json(r.result_json)
        name = os.path.basename(r.path)
        label, cls = verdict_of(r)
        current = self.ledger.current_labels([r.id]).get(r.id)
        if current is not None:
            label += f" · {LABEL_TEXT[current.kind]}"
        prev_id, next_id = self.ledger.neighbours(r.id)
        settings = self.settings()
        th = result.coverage_threshold
        th_note = "" if th is not None else " (current setting)"
        th = th if th is not None else settings.alarm.coverage_threshold
        mismatch = None
        if r.verdict == Verdict.MISMATCH and result.mismatch and result.mismatch_reason in QUALITY_REASONS:
            mismatch = "acquisition"
        elif r.verdict == Verdict.MISMATCH and result.mismatch:
            mismatch = "model"
        acquisition = None
        q = result.quality
        if q is not None:  # the acquisition-quality figures (monitor/quality.py)
            acquisition = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in q.items()
                                    if k in ("clipped_low", "clipped_high", "sharpness", "noise"))
        return self.render(
            200, "result.html", f"{label} · {name}", r=r, name=name, banner=label, cls=cls,
            prev_id=prev_id, next_id=next_id, result_line=result.line or "–",
            mismatch=mismatch, mismatch_text=result.mismatch,
            over=r.coverage is not None and r.coverage > th, threshold=th, threshold_note=th_note,
            overlay=self._overlay(r, settings), defects=self._defects(r, result),
            labels=self._labels(r, label_error, form, saved=query == "labelled=1"),
            max_score="–" if r.max_score is None else f"{r.max_score:.4f}",
            map_threshold=result.threshold if result.threshold is not None else "–",
            sha256=r.sha256 if len(r.sha256) == 64 else "–", acquisition=acquisition,
            fibres=self._fibres(r, result))

    # ------------------------------------------------------------------------------------------------- labels
    @staticmethod
    def _overlay(r: Row, settings: Config) -> dict:
        """What the result page shows in place of the overlay, or the overlay (``_overlay.html``)."""
        if r.state != State.DONE:
            why = "not scored yet" if r.state == State.PENDING else "the image could not be scored"
            return {"show": "none", "why": why}
        if r.verdict == Verdict.MISMATCH and r.coverage is None and not r.overlay:
            return {"show": "unscored"}
        if not r.overlay:
            mode = settings.output.overlays
            if mode == "all" or (mode == "alarms" and r.verdict in ("defect", "mismatch")):
                return {"show": "unwritten"}
            which = {"alarms": "for defect and mismatch images only", "all": "for every image"}.get(mode,
                                                                                               "for no image")
            return {"show": "off", "mode": mode, "which": which}
        if not os.path.isfile(r.overlay):
            return {"show": "gone"}
        # not scored: the image and its reason, no heat map
        return {"show": "acquired" if r.verdict == Verdict.MISMATCH and r.coverage is None else "heatmap",
                "src": f"/result/{r.id}/overlay.png"}

    @staticmethod
    def _defects(r: Row, result: ResultDocument) -> dict | None:
        """The defect table's rows (``_defects.html``); None: no table (not scored)."""
        defects = result.defects
        if r.state != State.DONE or (r.verdict == Verdict.MISMATCH and r.coverage is None):  # not scored
            return None
        if not defects:
            return {"found": False, "rows": []}
        rows = []
        for i, d in enumerate(defects, 1):
            bbox, cen = d.get("bbox") or [], d.get("centroid") or []
            area, peak = d.get("area"), d.get("peak")
            rows.append({"n": i, "area": f"{area:,}" if isinstance(area, int) else "–",
                         "box": f"{bbox[0]}, {bbox[1]} · {bbox[2]}×{bbox[3]}" if len(bbox) == 4 else "–",
                         "centroid": f"{cen[0]}, {cen[1]}" if len(cen) == 2 else "–",
                         "peak": peak if peak is not None else "–"})
        return {"found": True, "rows": rows}

    @staticmethod
    def _fibres(r: Row, result: ResultDocument) -> dict | None:
        """The fibre section (``_fibres.html``): the figures and the diameter histogram's bars; None: no section
        (not scored, or a result of a version that did not measure fibres)."""
        f = result.fibres
        if r.state != State.DONE or (f is None and not result.fibres_reason):
            return None
        if f is None:
            return {"reason": result.fibres_reason.removeprefix("not measured: ")}
        um = f.pixel_size_um

        def size(px: float) -> str:
            return f"{px:.2f} px" + (f" · {px * um:.3g} µm" if um else "")

        d = f.diameter_px
        facts = [("Mean diameter", size(d.mean)), ("Median", size(d.median)), ("Spread (sd)", size(d.std)),
                 ("p10 – p90", f"{d.p10:.1f} – {d.p90:.1f} px"),
                 ("Orientation", f"{f.orientation_deg:.0f}°"), ("Coherency", f"{f.coherency:.2f}"),
                 ("Porosity", f"{100 * f.porosity:.1f}%"),
                 ("Beads", f"{len(f.beads)}" + (f" · {f.beads_per_mm2:,.0f}/mm²" if f.beads_per_mm2 is not None
                                                 else ""))]
        w, h, base = 480, 150, 128
        edges, counts = f.histogram_edges_px, f.histogram_counts
        span = (edges[-1] - edges[0]) or 1.0
        top = max(counts) if counts and max(counts) > 0 else 1

        def x_of(v: float) -> float:
            return round(w * (v - edges[0]) / span, 1)

        bars = [{"x": x_of(a), "w": max(round(x_of(b) - x_of(a) - 1, 1), 0.5), "h": round((base - 8) * c / top, 1),
                 "y": round(base - (base - 8) * c / top, 1), "title": f"{a:g}–{b:g} px: {c:,} centreline px"}
                for a, b, c in zip(edges, edges[1:], counts)]
        ticks = [{"x": 0, "anchor": "start", "label": f"{edges[0]:g} px"},
                 {"x": w / 2, "anchor": "middle", "label": f"{(edges[0] + edges[-1]) / 2:g} px"},
                 {"x": w, "anchor": "end", "label": f"{edges[-1]:g} px"}]
        note = (f"Measured along {d.n:,} centreline pixels away from crossings and borders; orientation in degrees "
                "from the image's x axis (y down), coherency 0 = isotropic, 1 = all parallel; porosity: the share "
                "not covered by the top layer." + ("" if um else " Pixel size unknown: sizes in pixels."))
        return {"reason": None, "facts": facts, "bars": bars, "ticks": ticks, "w": w, "h": h, "base": base,
                "mean_x": x_of(min(d.mean, edges[-1])), "mean": size(d.mean), "note": note}

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
        if r.state != State.DONE:  # not scored: possibly refused before decoding (too large, a link out of the folder)
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



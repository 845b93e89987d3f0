"""The results page, served by a real running daemon (`python -m monitor run`) over real HTTP(S): the list and its
filters, the result page with its defect table, the overlay and original images, what a URL must never reach,
escaping, basic auth over TLS, and a real headless Chromium clicking through."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from monitor.ledger import Ledger
from monitor.model.synth import defective_image, fiber_mat
from monitor.passwords import verify_password
from tests import browser
from tests.commands import monitor
from tests.conftest import ROOT, SHAPE
from tests.daemon import Daemon, png_bytes, wait_for, write_renamed

SCRIPT_NAME = "<script>x.png"
LONG_NAME = "sample_" + "0123456789" * 7 + "_end.png"
PASSWORD = "Fibres & beads: 7 times ünd $ome"


class Page(HTMLParser):
    """The parts of a page the tests look at: links, images, table rows, title attributes."""

    def __init__(self, text: str):
        super().__init__()
        self.links, self.imgs, self.titles, self.rows = [], [], [], []
        self._row = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and "href" in a:
            self.links.append(a)
        if tag == "img":
            self.imgs.append(a)
        if "title" in a:
            self.titles.append(a["title"])
        if tag == "tr":
            self._row = []
        if tag == "td":
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        if tag == "tr" and self._row:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def get(port: int, path: str, method: str = "GET", headers: dict | None = None, tls: ssl.SSLContext | None = None,
        body: bytes | None = None, source: str = "127.0.0.1"):
    """(status, headers, body) for a raw request target: http.client sends the path exactly as given. ``source``:
    the client's address (any of 127.0.0.0/8; wrong passwords are throttled per address)."""
    conn = (http.client.HTTPSConnection("127.0.0.1", port, context=tls, timeout=10, source_address=(source, 0))
            if tls else http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0)))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


def html_of(port: int, path: str) -> str:
    status, headers, body = get(port, path)
    assert status == 200, (path, status, body[:300])
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    return body.decode("utf-8")


def list_names(text: str) -> list[str]:
    """File names on the list, top to bottom (the full name is the title of each row's name cell)."""
    return [html_unescape(t) for t in re.findall(r'<span class="c-name" title="([^"]*)"', text)]


def html_unescape(s: str) -> str:
    import html

    return html.unescape(s)


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def line(tmp_path_factory, saved_model):
    """One daemon for the module, with a few images scored: clean, defective (twice), a name with markup, a very
    long name, an unreadable file, and two whose originals the tests take away or touch."""
    d = Daemon(tmp_path_factory.mktemp("web"), saved_model, alarm={"coverage_threshold": 0.005})
    d.start()
    clean = png_bytes(fiber_mat(SHAPE, seed=303))
    defect = png_bytes(defective_image(SHAPE, kinds=("bead", "film", "clot"), seed=9)[0])
    files = [("clean.png", clean), ("defect.png", defect), (SCRIPT_NAME, png_bytes(fiber_mat(SHAPE, seed=304))),
             (LONG_NAME, clean), ("broken.png", b"\x89PNG\r\n\x1a\n" + b"not an image at all" * 20),
             ("defect_retained.png", defect), ("gone.png", png_bytes(fiber_mat(SHAPE, seed=305))),
             ("touched.png", png_bytes(fiber_mat(SHAPE, seed=306)))]
    for i, (name, data) in enumerate(files):
        write_renamed(d.export, name, data)
        wait_for(lambda: len(d.rows()) == i + 1, 30, f"{name} recorded")  # arrival order = ledger order
    d.wait_finished(len(files), timeout=90)
    d.files = dict(files)
    d.ids = {os.path.basename(r["path"]): r["id"] for r in d.rows()}
    yield d
    d.stop()


@pytest.fixture(scope="module")
def rows(line):
    return {os.path.basename(r["path"]): r for r in line.rows()}


# -------------------------------------------------------------------------------------------------------- list
def test_list_shows_the_images_just_scored_newest_first_with_local_time_and_offset(line, rows):
    text = html_of(line.web_port, "/")
    assert list_names(text) == [os.path.basename(r["path"]) for r in reversed(line.rows())]
    assert set(list_names(text)) == set(line.files)
    page = Page(text)
    assert {a["href"] for a in page.links} >= {f"/result/{i}" for i in line.ids.values()}
    # time: local, with the UTC offset shown
    off = datetime.now().astimezone().strftime("%z")
    assert re.search(r"<b>\d\d:\d\d:\d\d</b><small>\d{4}-\d\d-\d\d " + re.escape(f"{off[:3]}:{off[3:]}"), text)
    assert 'class="badge b-defect">defect<' in text and 'class="badge b-ok">ok<' in text
    assert re.search(r'class="badge b-other">failed: (unreadable|corrupt)<', text)
    d = rows["defect.png"]
    assert f"{100 * d['coverage']:.3f} %" in text and f"{d['largest_area']:,}" in text
    assert d["model_id"][:8] in text


def test_long_names_are_elided_in_the_middle_with_the_full_name_in_the_title(line):
    text = html_of(line.web_port, "/")
    shown = re.search(r'<span class="c-name" title="' + re.escape(LONG_NAME) + r'">([^<]*)</span>', text).group(1)
    assert "…" in shown and len(shown) < len(LONG_NAME) and shown.startswith("sample_") and shown.endswith("_end.png")


@pytest.mark.parametrize("verdict,expected", [
    ("defect", {"defect.png", "defect_retained.png"}),
    ("failed", {"broken.png"}),
    ("pending", set()),
    ("no-threshold", set()),
])
def test_the_verdict_filter_shows_only_those_rows(line, verdict, expected):
    assert set(list_names(html_of(line.web_port, f"/?verdict={verdict}"))) == expected


def test_ok_filter_and_any(line):
    ok = set(list_names(html_of(line.web_port, "/?verdict=ok")))
    assert "clean.png" in ok and not ok & {"defect.png", "broken.png"}
    assert set(list_names(html_of(line.web_port, "/?verdict=any&since=&until=&limit="))) == set(line.files)


def test_time_window_and_limit(line):
    fmt = "%Y-%m-%dT%H:%M"
    now = datetime.now()
    hour_ago, in_an_hour = (now - timedelta(hours=1)).strftime(fmt), (now + timedelta(hours=1)).strftime(fmt)
    assert set(list_names(html_of(line.web_port, f"/?since={hour_ago}"))) == set(line.files)
    assert list_names(html_of(line.web_port, f"/?since={in_an_hour}")) == []
    assert list_names(html_of(line.web_port, f"/?until={hour_ago}")) == []
    assert set(list_names(html_of(line.web_port, f"/?since={hour_ago}&until={in_an_hour}:30"))) == set(line.files)
    newest = [os.path.basename(r["path"]) for r in reversed(line.rows())][:3]
    assert list_names(html_of(line.web_port, "/?limit=3")) == newest


@pytest.mark.parametrize("query,message", [
    ("verdict=bogus", "verdict must be one of"),
    ("limit=0", "limit must be a whole number from 1 to 500"),
    ("limit=501", "limit must be a whole number from 1 to 500"),
    ("limit=abc", "limit must be a whole number"),
    ("limit=-5", "limit must be a whole number"),
    ("since=yesterday", "since must be a local date and time"),
    ("until=2026-13-45T99:00", "until must be a local date and time"),
    ("since=2026-01-02T00:00&until=2026-01-01T00:00", "must be before until"),
    ("since=2026-01-01T00:00%2B01:00", "without a UTC offset"),
    ("since=%3Cscript%3E", "since must be a local date and time"),
])
def test_bad_filter_values_give_400_with_a_clear_message(line, query, message):
    status, headers, body = get(line.web_port, f"/?{query}")
    text = body.decode()
    assert status == 400 and message in text
    assert "Traceback" not in text and "<script" not in text


# ------------------------------------------------------------------------------------------------ result page
def test_result_page_shows_verdict_times_coverage_overlay_and_the_defect_table(line, rows):
    r = rows["defect.png"]
    result = json.loads(r["result_json"])
    text = html_of(line.web_port, f"/result/{r['id']}")
    page = Page(text)
    assert 'class="banner b-defect"' in text and ">defect<" in text
    for piece in ("defect.png", r["path"], r["model_id"], f"{100 * r['coverage']:.3f} %", "0.500 %"):
        assert piece in text
    # the defect table: numbered 1..n in the result JSON's order (largest first), area, bbox, centroid, peak
    defects = result["defects"]
    assert len(defects) == r["n_defects"] >= 1
    table = [row for row in page.rows if len(row) == 5]
    assert [int(row[0]) for row in table] == list(range(1, len(defects) + 1))
    for row, d in zip(table, defects):
        x, y, w, h = d["bbox"]
        assert row[1] == f"{d['area']:,}" and row[2] == f"{x}, {y} · {w}×{h}"
        assert row[3] == f"{d['centroid'][0]}, {d['centroid'][1]}" and float(row[4]) == d["peak"]
    assert [img["src"] for img in page.imgs] == [f"/result/{r['id']}/overlay.png"]
    hrefs = {a["href"] for a in page.links}
    assert {"/", f"/result/{r['id']}/image.png"} <= hrefs
    ids = sorted(line.ids.values())
    i = ids.index(r["id"])
    assert {a["href"] for a in page.links if a.get("rel") == "prev"} == {f"/result/{ids[i - 1]}"}
    assert {a["href"] for a in page.links if a.get("rel") == "next"} == {f"/result/{ids[i + 1]}"}


def test_overlay_png_is_the_overlay_file_of_that_row(line, rows):
    r = rows["defect.png"]
    status, headers, body = get(line.web_port, f"/result/{r['id']}/overlay.png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert body[:8] == b"\x89PNG\r\n\x1a\n" and body == Path(r["overlay"]).read_bytes()
    pic = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
    assert pic.shape == cv2.imread(r["overlay"], cv2.IMREAD_UNCHANGED).shape
    assert pic.shape[1] == SHAPE[1] and pic.shape[0] > SHAPE[0]  # the image plus its caption band


def test_image_png_returns_the_originals_pixels(line, rows):
    r = rows["clean.png"]
    status, headers, body = get(line.web_port, f"/result/{r['id']}/image.png")
    assert status == 200 and headers["Content-Type"] == "image/png" and body[:8] == b"\x89PNG\r\n\x1a\n"
    served = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
    original = cv2.imdecode(np.frombuffer(line.files["clean.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert served.dtype == np.uint8 and np.array_equal(served, original)


def test_an_image_without_overlay_says_why_instead_of_a_broken_image(line, rows):
    r = rows["clean.png"]
    assert r["verdict"] == "ok" and r["overlay"] is None  # output.overlays: alarms
    text = html_of(line.web_port, f"/result/{r['id']}")
    assert "No overlay was written for this image" in text and Page(text).imgs == []
    status, _, body = get(line.web_port, f"/result/{r['id']}/overlay.png")
    assert status == 404 and b"no overlay" in body


def test_an_overlay_removed_by_retention_is_reported_and_404(line, rows):
    r = rows["defect_retained.png"]
    Path(r["overlay"]).unlink()  # what retention does to old overlays
    text = html_of(line.web_port, f"/result/{r['id']}")
    assert "The overlay file is gone" in text and Page(text).imgs == []
    status, _, body = get(line.web_port, f"/result/{r['id']}/overlay.png")
    assert status == 404 and b"gone" in body


def test_a_failed_image_shows_its_error(line, rows):
    r = rows["broken.png"]
    text = html_of(line.web_port, f"/result/{r['id']}")
    assert f"failed: {r['error_kind']}" in text and "Not scored" in text and Page(text).imgs == []


def test_image_png_is_410_when_the_original_is_gone_or_changed(line, rows):
    gone, touched = rows["gone.png"], rows["touched.png"]
    (line.export / "gone.png").unlink()
    p = line.export / "touched.png"
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 1_000_000_000))  # same bytes, new mtime
    for r in (gone, touched):
        status, headers, body = get(line.web_port, f"/result/{r['id']}/image.png")
        assert status == 410 and headers["Content-Type"].startswith("text/plain") and b"changed since" in body


def test_head_answers_like_get_without_a_body(line):
    status, headers, body = get(line.web_port, "/", "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 1000


# ------------------------------------------------------------------------------------------------------ safety
TRAVERSALS = [
    "/result/abc", "/result/../../etc/passwd", "/../etc/passwd", "/result/1/../../x", "/result/1/../../../etc/passwd",
    "/result/%2e%2e/%2e%2e/etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/result/1%2f..%2f..%2fetc%2fpasswd",
    "/result/1/overlay.png/../../../../etc/passwd", "/result/1/..%2f..%2f..%2fetc%2fpasswd", "/etc/passwd",
    "//etc/passwd", "/result//etc/passwd", "/result/1/overlay.png%00", "/result/1/original.png", "/result/1/",
    "/result/0", "/result/01", "/result/-1", "/result/99999", "/result/99999999999999999999999999",
    "/result/1.png", "/result/%31", "/result/1/overlay.png/", "/RESULT/1", "/result/1/../2", "/static/../config.yaml",
    "/result/1\\..\\..\\etc\\passwd", "/result/99999/overlay.png", "/result/99999/image.png",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_paths_that_are_not_a_ledger_row_are_404(line, path):
    status, headers, body = get(line.web_port, path)
    assert status == 404, (path, status)
    assert b"root:" not in body and b"model:" not in body
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND"])
def test_methods_other_than_get_and_head_are_405(line, method):
    status, headers, _ = get(line.web_port, "/", method)
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_security_headers(line, rows):
    for path in ("/", f"/result/{rows['defect.png']['id']}", "/result/abc"):
        _, headers, _ = get(line.web_port, path)
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp
        assert "style-src 'self'" in csp and "unsafe-inline" not in csp  # no inline style: the style sheet only
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "Python" not in headers["Server"]
    _, headers, _ = get(line.web_port, "/")
    assert headers["Cache-Control"] == "no-store"


def test_a_file_name_with_markup_is_escaped_everywhere(line, rows):
    r = rows[SCRIPT_NAME]
    for path in ("/", f"/result/{r['id']}", "/?verdict=ok"):
        text = html_of(line.web_port, path)
        assert "&lt;script&gt;x.png" in text, path
        assert "<script" not in text.lower(), path
    assert SCRIPT_NAME in list_names(html_of(line.web_port, "/"))


def test_a_label_with_markup_in_its_name_and_note_is_escaped(line, rows):
    r = rows[SCRIPT_NAME]
    ledger = Ledger(line.ledger_path)  # as `monitor label` does, from another process
    try:
        ledger.label(r["id"], "confirmed", "<script>who</script>", "<script>alert('note')</script> & <b>more</b>")
    finally:
        ledger.close()
    text = html_of(line.web_port, f"/result/{r['id']}")
    assert "<b>confirmed defect</b> by &lt;script&gt;who&lt;/script&gt; <time" in text
    assert ": &lt;script&gt;alert(&#39;note&#39;)&lt;/script&gt; &amp; &lt;b&gt;more&lt;/b&gt;</li>" in text
    assert "&lt;script&gt;x.png" in text and "<script" not in text.lower() and "<b>more" not in text
    listed = html_of(line.web_port, "/")
    assert 'title="operator label">confirmed defect<' in listed and "<script" not in listed.lower()


# ------------------------------------------------------------------------------------------------- style sheet
def test_the_style_sheet_is_served_from_the_package_and_linked_from_every_page(line, rows):
    from importlib import resources

    css = resources.files("monitor.web").joinpath("static", "monitor.css").read_bytes()
    hrefs = set()
    for path in ("/", f"/result/{rows['defect.png']['id']}", "/?limit=abc", "/result/99999"):
        _, _, body = get(line.web_port, path)
        text = body.decode()
        assert "<style" not in text and " style=" not in text, path  # CSP style-src 'self': no inline style
        hrefs |= set(re.findall(r'<link rel="stylesheet" href="([^"]+)">', text))
    [href] = hrefs  # one style sheet, the same on every page
    assert href.startswith("/static/monitor.css?v=")  # the URL names the content: cached long, renewed by an upgrade
    for target in (href, "/static/monitor.css"):
        status, headers, body = get(line.web_port, target)
        assert status == 200 and body == css and b":root{" in body
        assert headers["Content-Type"] == "text/css; charset=utf-8"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "style-src 'self'" in headers["Content-Security-Policy"]
        assert "max-age=31536000" in headers["Cache-Control"] and "no-store" not in headers["Cache-Control"]
    status, headers, body = get(line.web_port, href, "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(css)
    for path in ("/static/", "/static/monitor.css/", "/static/other.css", "/static/../static/monitor.css",
                 "/static/%6donitor.css", "/STATIC/monitor.css", "/static/monitor.css%00"):
        assert get(line.web_port, path)[0] == 404, path
    assert get(line.web_port, "/static/monitor.css", "POST")[0] == 405


def test_templates_and_style_sheet_come_from_the_imported_package_wherever_it_lies(tmp_path):
    """A copy of the package elsewhere, run from another folder, renders with its own templates and style sheet:
    nothing is read relative to the checkout or the working directory."""
    copy = tmp_path / "site-packages"
    shutil.copytree(ROOT / "monitor", copy / "monitor", ignore=shutil.ignore_patterns("__pycache__"))
    web = copy / "monitor" / "web"
    base = web / "templates" / "base.html"
    base.write_text(base.read_text().replace("<main>", "<main><!-- the copy's template -->"))
    (web / "static" / "monitor.css").write_text("/* the copy's style */ body{margin:0}\n")
    code = """if True:
        import json, sys
        from monitor.config import WebSection, parse_config
        from monitor.ledger import Ledger
        import monitor.web.site as site
        s = site.ResultsSite(WebSection(), Ledger("ledger.sqlite"), lambda: parse_config({}))
        resp = s.handle("GET", "/", None, {"Host": "127.0.0.1"})
        css = s.handle("GET", "/static/monitor.css", None, {"Host": "127.0.0.1"})
        print(json.dumps([site.__file__, site.assets().templates.get_template("base.html").filename, resp.status,
                          resp.body.decode(), css.status, css.body.decode()]))
    """
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(copy)}
    r = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    module, template, status, page, css_status, css = json.loads(r.stdout.splitlines()[-1])
    assert Path(module).is_relative_to(copy) and Path(template).is_relative_to(copy)
    assert status == 200 and "<!-- the copy's template -->" in page and "No results match these filters." in page
    assert css_status == 200 and css == "/* the copy's style */ body{margin:0}\n"


def test_an_installation_without_its_templates_leaves_the_page_off(tmp_path, monkeypatch):
    """The daemon logs a page that cannot start and monitors without it (``WebError``), as for a port in use."""
    import types

    import monitor.web.site as site
    from monitor.config import WebSection, parse_config

    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "monitor.css").write_text("body{}")
    monkeypatch.setattr(site, "resources", types.SimpleNamespace(files=lambda package: tmp_path))
    monkeypatch.setattr(site.jinja2, "PackageLoader", lambda package, folder: site.jinja2.FileSystemLoader(
        str(tmp_path / folder)))  # the templates folder of this "package": absent
    site.assets.cache_clear()
    from monitor.web.server import ResultsServer

    server = ResultsServer(WebSection(port=0), Ledger(tmp_path / "l.sqlite"), lambda: parse_config({}))
    try:
        with pytest.raises(site.WebError, match="templates or style sheet cannot be read"):
            server.start()
        (tmp_path / "templates").mkdir()
        (tmp_path / "templates" / "base.html").write_text("{% block main %}")  # a broken template
        with pytest.raises(site.WebError, match="templates or style sheet cannot be read"):
            server.start()
    finally:
        server.close()
        monkeypatch.undo()
        site.assets.cache_clear()
    assert site.assets().css.startswith(b"/*") and "result.html" in site.assets().templates.list_templates()


def test_the_templates_and_the_style_sheet_are_package_data():
    """pyproject.toml ships every file of templates/ and static/ in the wheel, and jinja2 is a dependency."""
    import fnmatch
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = project["tool"]["setuptools"]["package-data"]["monitor.web"]
    web = ROOT / "monitor" / "web"
    files = [p.relative_to(web).as_posix() for d in ("templates", "static") for p in (web / d).iterdir()]
    assert any(f.endswith(".html") for f in files) and "static/monitor.css" in files
    for f in files:
        assert any(fnmatch.fnmatch(f, g) for g in globs), f
    assert any(d.replace(" ", "").startswith("jinja2>=3.1") for d in project["project"]["dependencies"])


def test_no_template_carries_inline_style_or_script():
    for p in (ROOT / "monitor" / "web" / "templates").iterdir():
        text = p.read_text().lower()
        assert "<style" not in text and "style=" not in text and "<script" not in text, p.name


def test_healthz_and_no_link_announced_without_an_external_url(line):
    assert get(line.web_port, "/healthz")[:1] == (200,) and get(line.web_port, "/healthz")[2] == b"ok\n"
    info = [k for k in line.scrape() if k[0] == "monitor_web_info"]
    assert dict(info[0][1])["external_url"] == ""  # a 127.0.0.1 link in an operator's e-mail would lead nowhere


def test_requests_are_not_logged_at_info_and_nothing_is_written_to_the_export_folder(line):
    html_of(line.web_port, "/")
    log = line.log_text()
    assert f"results page on http://127.0.0.1:{line.web_port}" in log
    assert '"GET / HTTP' not in log and "Traceback" not in log
    # exactly the files the test wrote (gone.png is taken away by another test of the module, which may or may not
    # have run before this one in this worker)
    assert set(line.files) - {"gone.png"} <= set(os.listdir(line.export)) <= set(line.files)


# -------------------------------------------------------------------------------------------------------- auth
@pytest.fixture(scope="module")
def password_hash():
    r = monitor("hash-password", stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert line.startswith("pbkdf2_sha256$600000$") and len(r.stdout.splitlines()) == 1
    return line


def test_hash_password_output_verifies(password_hash):
    assert verify_password(PASSWORD, password_hash)
    assert not verify_password(PASSWORD + " ", password_hash) and not verify_password("", password_hash)


BAD_HASHES = [
    "secret", "pbkdf2_sha256$600000$c2FsdA==", "md5$600000$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",
    "pbkdf2_sha256$many$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==", "pbkdf2_sha256$1000$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",
    "pbkdf2_sha256$600000$not base64!$aGFzaGhhc2hoYXNoaGFzaA==", "pbkdf2_sha256$600000$c2FsdA==$c2hvcnQ=",
    "pbkdf2_sha256$600000$$aGFzaGhhc2hoYXNoaGFzaA==",
]


def test_a_malformed_password_hash_is_rejected_by_check_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"web": {"username": "operator", "password_hash": BAD_HASHES[-1]}}))
    r = monitor("check-config", "--config", cfg)  # the real command, once
    assert r.returncode == 2 and "web.password_hash" in r.stderr and "monitor hash-password" in r.stderr


@pytest.mark.parametrize("bad", BAD_HASHES)
def test_malformed_password_hashes(tmp_path, capsys, bad):
    from monitor.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"web": {"username": "operator", "password_hash": bad}}))
    assert main(["check-config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "monitor: error: web: web.password_hash:" in err and "monitor hash-password" in err
    assert bad not in err  # says what is wrong without echoing the secret


@pytest.fixture(scope="module")
def secured(tmp_path_factory, saved_model, password_hash):
    """A second daemon: basic auth and TLS (a self-signed certificate for 127.0.0.1), one defective image."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl not installed (Debian package openssl)")
    root = tmp_path_factory.mktemp("secured")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    d = Daemon(root, saved_model, web={"username": "operator", "password_hash": password_hash,
                                       "certfile": str(cert), "keyfile": str(key),
                                       "external_url": "https://linepc-3.example:9880/"})
    d.start()
    write_renamed(d.export, "a.png", png_bytes(fiber_mat(SHAPE, seed=303)))
    d.wait_finished(1)
    d.tls = ssl.create_default_context(cafile=str(cert))  # verified: the certificate, the host 127.0.0.1
    yield d
    d.stop()


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_auth_no_credentials_wrong_ones_and_the_right_ones(secured):
    port, tls = secured.web_port, secured.tls
    row_id = secured.rows()[0]["id"]
    for path in ("/", f"/result/{row_id}", f"/result/{row_id}/image.png", "/result/99999", "/result/abc",
                 "/static/monitor.css"):  # the style sheet as every page
        status, headers, body = get(port, path, tls=tls)
        assert status == 401 and headers["WWW-Authenticate"].startswith('Basic realm="SEM line monitor"'), path
        assert b"a.png" not in body and b":root{" not in body
    for creds in (basic("operator", "wrong"), basic("admin", PASSWORD), basic("operator", PASSWORD + "x"),
                  basic("operator", ""), {"Authorization": "Basic !!!"}, {"Authorization": "Bearer abc"},
                  {"Authorization": "Basic " + base64.b64encode(PASSWORD.encode()).decode()}):
        # from an address of their own: five wrong passwords in a row lock an address out (tested below)
        assert get(port, "/", headers=creds, tls=tls, source="127.0.1.1")[0] == 401, creds
    ok = basic("operator", PASSWORD)
    status, _, body = get(port, "/", headers=ok, tls=tls)
    assert status == 200 and b"a.png" in body
    assert get(port, f"/result/{row_id}/image.png", headers=ok, tls=tls)[0] == 200
    assert get(port, "/healthz", tls=tls)[:1] == (200,)  # no auth for the health check
    status, headers, body = get(port, "/static/monitor.css", headers=ok, tls=tls)  # 401 without (above)
    assert status == 200 and headers["Content-Type"] == "text/css; charset=utf-8" and b":root{" in body


def test_tls_only_and_the_external_url_in_the_metrics(secured):
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine)):
        get(secured.web_port, "/healthz")  # plain HTTP to the TLS port
    assert get(secured.web_port, "/healthz", tls=secured.tls)[0] == 200  # the server survived it
    info = [k for k in secured.scrape() if k[0] == "monitor_web_info"]
    assert dict(info[0][1])["external_url"] == "https://linepc-3.example:9880"
    assert "results page on https://linepc-3.example:9880" in secured.log_text()


def test_a_port_in_use_leaves_the_page_off_and_the_line_monitored(tmp_path, saved_model, line):
    """Two lines' monitors on one PC with the same web.port: the second logs why and monitors without its page."""
    d = Daemon(tmp_path, saved_model, web={"port": line.web_port, "external_url": "http://linepc:9880"})
    d.start()
    try:
        assert f"results page 127.0.0.1:{line.web_port}" in d.log_text() and "web.port" in d.log_text()
        assert "running without the results page" in d.log_text()
        write_renamed(d.export, "a.png", png_bytes(fiber_mat(SHAPE, seed=77)))
        assert d.wait_finished(1)[0]["state"] == "done"
        info = [k for k in d.scrape() if k[0] == "monitor_web_info"]
        assert dict(info[0][1])["external_url"] == ""  # no page, no link
    finally:
        assert d.stop() == 0


# ----------------------------------------------------------------------------------------------------- browser
def test_a_real_browser_lists_the_images_clicks_through_and_sees_the_overlay(line, rows, tmp_path):
    why = browser.missing()
    if why:
        pytest.fail(why)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser.chromium(str(tmp_path / "profile"), 1280, 900)
    try:
        driver.get(f"http://127.0.0.1:{line.web_port}/")
        names = [e.get_attribute("title") for e in driver.find_elements(By.CSS_SELECTOR, "a.row .c-name")]
        assert set(names) == set(line.files) and names[0] == "touched.png"
        badge = driver.find_element(By.CSS_SELECTOR, f'a.row[href="/result/{rows["defect.png"]["id"]}"] .badge')
        assert badge.text == "defect" and badge.value_of_css_property("background-color") == "rgba(198, 40, 40, 1)"
        assert badge.value_of_css_property("border-radius") == "999px"  # the style sheet, /static/monitor.css
        driver.save_screenshot(str(tmp_path / "list.png"))
        driver.find_element(By.CSS_SELECTOR, f'a.row[href="/result/{rows["defect.png"]["id"]}"]').click()
        WebDriverWait(driver, 10).until(lambda d: d.current_url.endswith(f"/result/{rows['defect.png']['id']}"))
        img = driver.find_element(By.CSS_SELECTOR, "figure img")
        WebDriverWait(driver, 10).until(lambda d: img.get_property("complete"))
        assert img.get_property("naturalWidth") == SHAPE[1] and img.size["width"] > 640  # large: over half the screen
        cells = driver.find_elements(By.CSS_SELECTOR, "table tbody tr td:first-child")
        assert [c.text for c in cells] == [str(i) for i in range(1, rows["defect.png"]["n_defects"] + 1)]
        driver.save_screenshot(str(tmp_path / "result.png"))
        # the filter form, submitted as an operator would
        driver.get(f"http://127.0.0.1:{line.web_port}/")
        from selenium.webdriver.support.select import Select

        Select(driver.find_element(By.NAME, "verdict")).select_by_value("defect")
        driver.find_element(By.CSS_SELECTOR, "form.filters button").click()
        WebDriverWait(driver, 10).until(lambda d: "verdict=defect" in d.current_url)
        names = [e.get_attribute("title") for e in driver.find_elements(By.CSS_SELECTOR, "a.row .c-name")]
        assert set(names) == {"defect.png", "defect_retained.png"}
        csp = [e for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
        assert csp == []  # nothing refused: the style sheet is this site's, no inline style or script
    finally:
        driver.quit()
    for shot in ("list.png", "result.png"):
        pic = cv2.imread(str(tmp_path / shot))
        assert pic is not None and pic.shape[:2] == (900, 1280) and pic.std() > 10


def test_wrong_passwords_are_throttled_per_address_logged_and_counted(secured):
    """Five wrong passwords in a row from one address are answered 401; after that the address is locked out
    (429 with Retry-After, its passwords not even checked, so guessing costs the monitor nothing); another address
    is served at once. Each wrong one is a WARNING line and counts in monitor_web_auth_failures_total{kind="basic"}.
    How the lockout grows and clears: the tests below, on a clock of their own."""
    port, tls = secured.web_port, secured.tls
    before = Daemon.value(secured.scrape(), "monitor_web_auth_failures_total", kind="basic")
    guesser, operator = "127.0.2.1", "127.0.2.2"
    wrong = basic("operator", "guess")
    for _ in range(6):  # the 6th is still checked (401), and locks the address out for 1 s
        assert get(port, "/", headers=wrong, tls=tls, source=guesser)[0] == 401
    t0 = time.monotonic()
    status, headers, body = get(port, "/", headers=basic("operator", "guess again"), tls=tls, source=guesser)
    assert status == 429 and headers["Retry-After"] == "1" and b"too many wrong passwords" in body
    assert time.monotonic() - t0 < 0.1  # refused without a PBKDF2
    assert get(port, "/", headers=basic("operator", PASSWORD), tls=tls, source=operator)[0] == 200
    assert get(port, "/", headers=basic("operator", PASSWORD), tls=tls, source=guesser)[0] == 429  # even the right one
    assert Daemon.value(secured.scrape(), "monitor_web_auth_failures_total", kind="basic") == before + 6
    log = secured.log_text()
    assert re.search(r"WARNING monitor\.web\.site: results page: wrong password for user operator from 127\.0\.2\.1 "
                     r"\(6 in a row; locked out for 1 s\)", log), log[-2000:]


def test_guessers_at_the_basic_auth_do_not_delay_a_label(tmp_path):
    """Basic auth and the write password each have their own PBKDF2 lock: while a basic-auth check runs (held
    here), the write password is checked at once."""
    from monitor.config import WebSection
    from monitor.passwords import MIN_ITERATIONS, hash_password
    from monitor.web.site import ResultsSite

    h = hash_password("a long password", MIN_ITERATIONS)
    site = ResultsSite(WebSection(username="operator", password_hash=h, write_password_hash=h), Ledger(tmp_path / "l"),
                       lambda: None, labeller=lambda *a: None)
    with site.auth.password._kdf:  # a basic-auth PBKDF2 in progress
        done = threading.Event()
        threading.Thread(target=lambda: (site.writer.verify("a long password", "127.0.0.9"), done.set())).start()
        assert done.wait(5)


def test_the_lockout_doubles_up_to_five_minutes_and_a_right_password_clears_it():
    from monitor.web.auth import MAX_LOCKOUT, Guesses, Locked

    now = [0.0]
    g = Guesses(remember=3, clock=lambda: now[0])
    got = [g.wrong("a")[1] for _ in range(16)]
    assert got[:5] == [0.0] * 5 and got[5:10] == [1.0, 2.0, 4.0, 8.0, 16.0] and got[-1] == MAX_LOCKOUT == 300.0
    with pytest.raises(Locked):
        g.check("a")
    g.check("b")  # per address
    now[0] += 299.0
    with pytest.raises(Locked):
        g.check("a")
    now[0] += 1.0
    g.check("a")
    g.right("a")
    assert g.wrong("a") == (1, 0.0)
    for addr in "bcde":  # a flood of addresses: the oldest are forgotten, the memory stays bounded
        g.wrong(addr)
    assert len(g._failed) == 3


def test_a_locked_out_address_gets_no_200_for_the_right_password_even_while_an_operator_is_signed_in():
    """A guesser on the operator's address (or behind the same NAT) must not learn the password from the cache of
    accepted credentials: the lockout holds for the right password too. Credentials accepted for one address are
    not remembered for another."""
    from monitor.passwords import MIN_ITERATIONS, hash_password
    from monitor.web.auth import BasicAuth, Guesses, Locked

    now = [0.0]
    auth = BasicAuth("operator", hash_password("a long password", MIN_ITERATIONS))
    auth.password.guesses = Guesses(clock=lambda: now[0])
    right, wrong = basic("operator", "a long password")["Authorization"], basic("operator", "x")["Authorization"]
    assert auth.check(right, "10.0.0.7")  # the operator signs in: remembered for 10.0.0.7
    for _ in range(6):
        assert not auth.check(wrong, "10.0.0.7")  # a guesser on the same address: locked out after the 6th
    with pytest.raises(Locked):
        auth.check(right, "10.0.0.7")  # before the fix: True from the cache, the guess confirmed
    assert auth.check(right, "10.0.0.8")  # another address is not locked
    now[0] += 1.5
    assert auth.check(right, "10.0.0.7")  # the lockout over: the right password clears it
    assert len(auth._good) == 2  # one entry per address


def test_hash_password_refuses_a_short_password(monkeypatch, capsys):
    from monitor.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("seven77\n"))
    assert main(["hash-password"]) == 2
    assert "at least 8 characters" in capsys.readouterr().err


def test_a_wrong_user_name_costs_the_same_pbkdf2_as_a_wrong_password(monkeypatch):
    """No timing oracle on the user name: the password is always checked."""
    import monitor.web.auth as web
    from monitor.passwords import MIN_ITERATIONS, hash_password

    calls = []
    real = web.verify_password
    monkeypatch.setattr(web, "verify_password", lambda p, h: calls.append(p) or real(p, h))
    auth = web.BasicAuth("operator", hash_password("a long password", MIN_ITERATIONS))
    for user, password in (("admin", "a long password"), ("operator", ""), ("operator", "wrong")):
        assert not auth.check(basic(user, password)["Authorization"], "127.0.3.1")
    assert calls == ["a long password", "", "wrong"]
    g = web.Guesses()
    for _ in range(1100):  # days of guessing: the lockout stays at its bound, no overflow
        assert g.wrong("a")[1] <= web.MAX_LOCKOUT

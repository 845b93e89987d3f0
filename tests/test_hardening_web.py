"""Hostile clients of the results page's and the metrics' server (real sockets): the original image never served
through a swapped link or with other pixels, requests that trickle, one address holding every connection, idle
connections, header floods, Host headers, HTTP/0.9, names with bidirectional and invisible characters
(docs/daemon.md, "Reliability")."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import cv2
import numpy as np

from monitor.daemon.metrics import Metrics
from monitor.model.synth import defective_image
from tests.conftest import SHAPE
from tests.daemon import png_bytes, wait_for, write_renamed
from tests.hardening import (
    HOSTS_REFUSED,
    INVISIBLE,
    _clean,
    _closed_by_peer,
    _get,
    _get_ok,
    _page,
    _raw,
    _rss_mb,
    _same_size,
    _scrape_from,
    _try_get,
    get_page_ok,
)


def test_the_original_is_never_served_through_a_link_swapped_in_for_it(new_daemon, tmp_path):
    """The scored bait.png replaced by a symbolic link out of the folder with the same size and mtime: the page
    checked only size and mtime and followed the link, serving any file the daemon can read. Refused now as the
    intake refuses it (``watch.symlinks: inside``), even to a file of the very bytes scored; a link inside is
    followed."""
    d = new_daemon().start()
    bait, secret = _same_size(_clean(76), png_bytes(defective_image(SHAPE, kinds=("film",), seed=77)[0]))
    path = write_renamed(d.export, "bait.png", bait)
    row = d.wait_finished(1)[0]
    assert row["state"] == "done" and _get(d.web_port, f"/result/{row['id']}/image.png")[0] == 200
    for n, content in enumerate((secret, bait)):  # other pixels; then the very same bytes, but out of the folder
        target = tmp_path / f"secret{n}.png"
        target.write_bytes(content)
        os.utime(target, ns=(row["mtime_ns"], row["mtime_ns"]))
        subprocess.run(f"ln -s '{target}' '{d.export}/.l' && mv -T '{d.export}/.l' '{path}'", shell=True, check=True)
        assert (path.stat().st_size, path.stat().st_mtime_ns) == (row["size"], row["mtime_ns"])
        status, body = _get(d.web_port, f"/result/{row['id']}/image.png")
        assert status == 410 and b"410 gone" in body, (n, status, body[:200])
        os.unlink(path)
    kept = d.export / ".kept.png"  # the same bytes inside the folder (hidden: no image of its own): a link taken
    kept.write_bytes(bait)
    os.utime(kept, ns=(row["mtime_ns"], row["mtime_ns"]))
    subprocess.run(f"ln -s .kept.png '{d.export}/.l' && mv -T '{d.export}/.l' '{path}'", shell=True, check=True)
    assert _get(d.web_port, f"/result/{row['id']}/image.png")[0] == 200


def test_the_original_is_never_other_pixels_than_those_scored(new_daemon):
    """A scored file rewritten in place with other pixels and its mtime put back: the page served the new pixels
    with 200 under the old row. It serves only the bytes whose sha256 the ledger recorded."""
    d = new_daemon().start()
    a, b = _same_size(_clean(78), _clean(79))
    path = write_renamed(d.export, "x.png", a)
    row = d.wait_finished(1)[0]
    with open(path, "r+b") as f:
        f.write(b)
        f.flush()
        os.utime(f.fileno(), ns=(row["mtime_ns"], row["mtime_ns"]))
    status, body = _get(d.web_port, f"/result/{row['id']}/image.png")
    assert status == 410 and b"changed since" in body, (status, body[:200])
    with open(path, "r+b") as f:  # the scored content back: shown again
        f.write(a)
        f.flush()
        os.utime(f.fileno(), ns=(row["mtime_ns"], row["mtime_ns"]))
    status, body = _get(d.web_port, f"/result/{row['id']}/image.png")
    served = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
    assert status == 200 and np.array_equal(served, cv2.imdecode(np.frombuffer(a, np.uint8), cv2.IMREAD_UNCHANGED))


def test_a_client_that_trickles_its_request_is_cut_off_at_the_deadline(guarded):
    """A per-read timeout alone lets a client that sends a byte a second hold a connection (and its thread) for
    ever: the connection is closed at its deadline, whatever it is doing."""
    port = guarded(timeout=5, deadline=2)
    s = socket.create_connection(("127.0.0.1", port))
    start, closed = time.monotonic(), None
    try:
        for ch in b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 40:
            try:
                s.sendall(bytes([ch]))
                if s.recv(1, socket.MSG_DONTWAIT) == b"":
                    closed = time.monotonic() - start
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed = time.monotonic() - start
                break
            time.sleep(0.25)
    finally:
        s.close()
    assert closed is not None and 1.5 < closed < 4, closed
    assert _get_ok(port) == 200


def test_one_address_cannot_take_every_connection(guarded):
    """Connections from one address beyond ``per_client`` are closed at once; another address is still served,
    and once the first address's connections end it is served again."""
    port = guarded(timeout=30, deadline=60, per_client=3, max_connections=10)
    idle = [socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0)) for _ in range(6)]
    try:
        wait_for(lambda: sum(map(_closed_by_peer, idle)) == 3, 5, "3 of the 6 connections closed by the server")
        assert _get_ok(port) == 200  # another address: served at once
        assert _try_get(port, "127.0.0.2") is None  # the full address: closed unanswered
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: _try_get(port, "127.0.0.2") == 200, 5, "the address served again")


def test_a_name_with_a_bidirectional_override_reads_as_it_is_on_the_page_and_in_the_log(new_daemon):
    """U+202E (right-to-left override) makes "invoice\\u202egnp.exe" display as "invoiceexe.png"; such characters
    (and C1 controls, zero widths, the BOM) are shown as \\uXXXX on the page and in the log."""
    d = new_daemon().start()
    name = "mat\u202egnp.\u200bgood\u0085.png"
    write_renamed(d.export, name, _clean(52))
    d.wait_finished(1)
    log = d.log_text()
    assert "mat\\u202egnp.\\u200bgood\\u0085.png" in log and "\u202e" not in log and "\u0085" not in log
    status, body = _page(d.web_port, "/")
    assert status == 200 and "mat\\u202egnp.\\u200bgood\\u0085.png" in body and "\u202e" not in body
    status, body = _page(d.web_port, f"/result/{d.rows()[0]['id']}")
    assert status == 200 and "\u202e" not in body and "\u200b" not in body


def test_the_results_page_answers_only_to_its_own_host_names(new_daemon):
    """DNS rebinding: a web site whose name is made to resolve to the line PC would read the page through its
    visitor's browser (no auth on a line network). Requests naming another Host are refused; IP addresses,
    localhost, this PC's name and web.allowed_hosts are served."""
    d = new_daemon(web={"allowed_hosts": ["linepc-3.plant.example"]}).start()
    for host in ("127.0.0.1", f"127.0.0.1:{d.web_port}", f"localhost:{d.web_port}", "[::1]:9880",
                 f"{socket.gethostname()}:{d.web_port}", "LinePC-3.plant.example.", "10.1.2.3"):
        assert _page(d.web_port, "/", host)[0] == 200, host
    for host in ("evil.example", f"evil.example:{d.web_port}", "linepc-3.plant.example.evil.example", ""):
        status, body = _page(d.web_port, "/", host)
        assert status == 400 and "web.allowed_hosts" in body, host
    assert _page(d.web_port, "/healthz", "evil.example")[0] == 200  # the health check says nothing


def test_a_page_open_to_the_network_says_so_at_start():
    from monitor.config import WebSection
    from monitor.passwords import MIN_ITERATIONS, hash_password
    from monitor.web.site import exposure_warnings

    h = hash_password("a long password", MIN_ITERATIONS)
    assert exposure_warnings(WebSection()) == []  # loopback, the default
    assert exposure_warnings(WebSection(address="::1", write_password_hash=h)) == []
    open_page = exposure_warnings(WebSection(address="0.0.0.0", write_password_hash=h))
    assert len(open_page) == 2 and "without basic auth" in open_page[0] and "write password" in open_page[1]
    assert exposure_warnings(WebSection(address="0.0.0.0", username="op", password_hash=h, certfile="c",
                                        keyfile="k", write_password_hash=h)) == []


def test_a_connection_that_gets_no_thread_gives_its_place_back(guarded, monkeypatch):
    """Threads or memory exhausted for a moment: a connection whose thread cannot start must not keep its place
    in the bounds, else a few such moments leave the endpoint refusing everyone for good."""
    import socketserver

    port = guarded(timeout=5, deadline=10, max_connections=2, per_client=2)
    real = socketserver.ThreadingMixIn.process_request
    failing = [3]

    def no_thread(self, request, client_address):
        if failing[0]:
            failing[0] -= 1
            raise RuntimeError("can't start new thread")
        return real(self, request, client_address)

    monkeypatch.setattr(socketserver.ThreadingMixIn, "process_request", no_thread)
    for _ in range(3):
        assert _try_get(port, "127.0.0.1") is None
    assert _get_ok(port) == 200


def test_closing_the_server_ends_its_open_connections(guarded):
    port = guarded(timeout=30, deadline=60)
    server = guarded.servers[-1]
    s = socket.create_connection(("127.0.0.1", port))
    try:
        wait_for(server.open_connections, 5, "the connection open")
        server.shutdown()
        server.server_close()
        s.settimeout(5)
        assert s.recv(1) == b""  # closed by the server at once, not after the 60 s deadline
    finally:
        s.close()


def test_invisible_and_format_characters_in_names_are_shown_escaped_on_the_page_and_in_the_log(new_daemon):
    """A soft hyphen, an invisible operator, the Mongolian vowel separator, deprecated format characters,
    interlinear annotations, tag characters, the Hangul fillers, the blank Braille pattern and the combining
    grapheme joiner show as nothing: "ITIA\\u00ad1142.tif" would read as a second "ITIA1142.tif". Every character
    of Unicode category Cf and these invisibles are shown as \\uXXXX (\\UXXXXXXXX) on the page and in the log."""
    from monitor.files import shown

    d = new_daemon().start()
    names = [f"ITIA{c}1142.png" for c in INVISIBLE[:6]] + ["ITIA1142" + "".join(INVISIBLE[6:]) + ".png"]
    for i, name in enumerate(names):
        write_renamed(d.export, name, _clean(60 + i))
    d.wait_finished(len(names))
    wait_for(lambda: all(shown(n) in d.log_text() for n in names), 10, "each image's log line")  # after its row
    log = d.log_text()
    status, body = _page(d.web_port, "/")
    assert status == 200
    for name in names:
        escaped = shown(name)
        assert escaped != name and escaped.isascii(), name
        assert escaped in log and escaped in body, escaped
    for c in INVISIBLE:
        assert c not in log and c not in body, hex(ord(c))
    for row in d.rows():
        status, body = _page(d.web_port, f"/result/{row['id']}")
        assert status == 200 and not any(c in body for c in INVISIBLE)


def test_idle_connections_from_four_addresses_do_not_starve_the_scrape_of_a_fifth(tmp_path):
    """The campaign's attack: eight idle TCP connections from each of four loopback addresses (the per-address
    cap, 4 x 8 = the metrics endpoint's total of 32), reopened when closed; a scrape from a fifth address failed 16
    times in 21. Now the longest-waiting unanswered connection of the address holding most is closed for it."""

    m = Metrics(line="line1")
    port = m.serve("127.0.0.1", 0)
    holders = [f"127.0.0.{i}" for i in range(2, 6)]
    idle: list[socket.socket] = []
    stop = threading.Event()

    def gone(s: socket.socket) -> bool:
        try:
            return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, TimeoutError):
            return False
        except OSError:  # reset by the server
            return True

    def hold():  # keep eight open from each address, reopening what the server closes
        while not stop.is_set():
            for s in [s for s in idle if gone(s)]:
                idle.remove(s)
                s.close()
            for src in holders:
                while sum(1 for s in idle if s.getsockname()[0] == src) < 8 and not stop.is_set():
                    try:
                        s = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(src, 0))
                    except OSError:
                        break
                    s.settimeout(None)  # blocking: MSG_DONTWAIT alone decides (a timeout would make gone() wait)
                    idle.append(s)
            stop.wait(0.05)

    t = threading.Thread(target=hold)
    t.start()
    try:
        wait_for(lambda: len(idle) >= 30, 10, "the endpoint full of idle connections (32)")
        got = []
        for _ in range(15):
            try:
                got.append(b"monitor_alarm" in _scrape_from(port, "127.0.0.6"))
            except OSError:
                got.append(False)
            time.sleep(0.05)
        assert all(got), f"{got.count(False)} of {len(got)} scrapes failed"
        assert t.is_alive()  # the attack went on throughout
    finally:
        stop.set()
        t.join(10)
        for s in idle:
            s.close()
        m.close()


def test_a_header_flood_before_authentication_is_answered_431_and_costs_no_memory(new_daemon):
    """The campaign's attack: sixteen connections that each send about 6 MB of request headers (96 lines of 65,000
    bytes, under the standard library's per-line and count limits) and stall raised the daemon's RSS by 0.7 GB, for
    good. Now a request's line and headers may take MAX_HEADER_BYTES: 431, and the connection is closed."""
    d = new_daemon().start()  # in this process: its memory is the page's (the clients' lines are one shared bytes)
    pid = os.getpid()
    before = _rss_mb(pid)
    replies, peak = [], [before]
    line = b"X-Fill: " + b"a" * 64990 + b"\r\n"

    def flood(src: str):
        try:
            s = socket.create_connection(("127.0.0.1", d.web_port), timeout=10, source_address=(src, 0))
        except OSError:
            return
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            for _ in range(96):
                s.sendall(line)
        except OSError:
            pass  # closed by the server: what we want
        try:
            replies.append(s.recv(200))
        except OSError:
            replies.append(b"")
        finally:
            s.close()

    threads = [threading.Thread(target=flood, args=(f"127.0.1.{1 + i % 4}",)) for i in range(16)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak.append(_rss_mb(pid))
        time.sleep(0.05)
    for t in threads:
        t.join()
    after = _rss_mb(pid)
    print(f"RSS before {before:.0f} MB, peak {max(peak):.0f} MB, after {after:.0f} MB")
    assert max(peak) - before < 50 and after - before < 50, (before, max(peak), after)
    assert sum(r.startswith(b"HTTP/1.0 431") for r in replies) >= 12, replies  # a few may see the reset first
    assert get_page_ok(d.web_port)  # the page still answers


def test_a_host_header_that_is_not_one_plain_host_is_refused(new_daemon):
    """The Host check accepted "[::1]evil", "localhost:evil", a second Host header after a good one, and skipped a
    malformed "Host :" line (the name with a space is not "Host")."""
    d = new_daemon().start()
    for head in HOSTS_REFUSED:
        reply = _raw(d.web_port, b"GET / HTTP/1.1\r\n" + head + b"Connection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.0 400"), (head, reply[:300])
    ok = _raw(d.web_port, b"GET / HTTP/1.1\r\nHost: localhost:8080\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.0 200"), ok[:300]


def test_an_http_0_9_request_gets_no_page_without_headers(new_daemon):
    """"GET /" alone (HTTP/0.9) got the page with no header at all: no Content-Security-Policy, no no-store."""
    d = new_daemon().start()
    reply = _raw(d.web_port, b"GET /\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 400") and b"Content-Security-Policy" in reply  # the headers, and
    assert b"SEM line monitor" not in reply  # not the page

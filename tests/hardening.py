"""What the hardening tests share: a daemon on the suite's small model, clean images, a bounded HTTP server, raw
requests (tests/test_hardening_*.py)."""

from __future__ import annotations

import http.client
import io
import os
import socket
import sqlite3
import struct

import numpy as np
import pytest
from PIL import Image

from monitor.ledger import Ledger
from monitor.model.synth import fiber_mat
from tests.conftest import SHAPE
from tests.daemon import png_bytes

LATIN1_NAME = os.fsdecode(b"lat\xe4n.png")  # "latän" written by a Windows-1252 microscope PC: not UTF-8


def _clean(seed: int) -> bytes:
    return png_bytes(fiber_mat(SHAPE, seed=seed))


def _fill(ledger: Ledger) -> sqlite3.Connection:
    """Make the ledger full as a full disk does (SQLite's own "database or disk is full", max_page_count reached):
    no room for a page more, the last one filled with rows already done. Returns its connection."""
    db = ledger._db
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    i = 0
    with pytest.raises(sqlite3.OperationalError, match="full"):
        while True:
            db.execute("INSERT INTO images (path, size, mtime_ns, sha256, state, seen_at) "
                       "VALUES (?, 1, ?, ?, 'done', 0)", (f"/elsewhere/filler{i}.png", i, f"{i:064d}"))
            i += 1
    return db


def _tiff_with_a_tag_of_the_wrong_type() -> bytes:
    """A 16-bit TIFF whose StripOffsets tag says UNDEFINED instead of LONG: Pillow fails with a TypeError."""
    buf = io.BytesIO()
    Image.fromarray((np.arange(96 * 96).reshape(96, 96) % 60000).astype(np.uint16)).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, at)[0] == 273:
            struct.pack_into("<H", data, at + 2, 7)
    return bytes(data)


def _as_a_normal_user(monkeypatch, folder) -> None:
    """Refuse to open a file of ``folder`` that has no read permission bit, as the kernel does for the service's
    user (the tests run as root, whom it lets read anything)."""
    real_open = os.open

    def fake_open(path, flags, *a, **kw):
        if str(path).startswith(str(folder) + os.sep) and not os.stat(path).st_mode & 0o444:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", fake_open)


def _get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of a GET on the results page."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _same_size(a: bytes, b: bytes) -> tuple[bytes, bytes]:
    """Two PNGs padded to one size (trailing bytes after IEND: still PNGs)."""
    size = max(len(a), len(b))
    return a.ljust(size, b"\0"), b.ljust(size, b"\0")


def _get_ok(port: int, source: str = "127.0.0.1") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    finally:
        conn.close()


def _closed_by_peer(s: socket.socket) -> bool:
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False


def _try_get(port: int, source: str) -> int | None:
    try:
        return _get_ok(port, source)
    except OSError:
        return None


def _page(port: int, path: str, host: str | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        conn.close()


INVISIBLE = ["\u00ad", "\u2064", "\u180e", "\u206a", "\u206f", "\ufff9", "\ufffb", "\U000e0041", "\u3164", "\u115f",
             "\u2800", "\u034f"]


def _scrape_from(port: int, source: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        assert r.status == 200
        return r.read()
    finally:
        conn.close()


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:")) / 1024


def get_page_ok(port: int) -> bool:
    return _page(port, "/")[0] == 200


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


HOSTS_REFUSED = [b"Host: [::1]evil\r\n", b"Host: localhost:evil\r\n", b"Host: localhost\r\nHost: evil.example\r\n",
                 b"Host : evil.example\r\n", b"Host: 127.0.0.1 evil\r\n"]

"""The HTTP(S) server of the results page and of the metrics endpoint, bounded against clients that stall.

Both endpoints may be reachable from the line's network, where a client that sends nothing (or one byte every
few seconds) must not stop the page or blind the defect alerts. ``GuardedServer`` is the stdlib's threading
server with four bounds:

* the TLS handshake runs in the connection's thread, never in the accepting one, so one silent client cannot hold
  up the accept loop (prometheus-client's own server wraps the listening socket and handshakes while accepting);
* every read and write of a connection times out after ``timeout`` seconds;
* every connection is closed ``deadline`` seconds after it was accepted, whatever it is doing (a client trickling
  a byte at a time renews a per-read timeout forever): one reaper thread shuts the socket down, so the blocked
  read in the connection's thread returns;
* at most ``max_connections`` connections at a time, and ``per_client`` from one address: a further one from an
  address that holds ``per_client`` is closed at once; when the total is full, the connection that waits longest
  without a request being answered on it (in its TLS handshake, its headers, or idle between two requests), from
  the address that holds the most, is closed to make room: idle connections from several addresses cannot keep a
  scraper on another one out (the scrape gets through: it is answered within milliseconds of connecting);
* a request's line and headers together may take ``MAX_HEADER_BYTES``; more is answered 431 and the connection
  closed, so a client cannot make the server hold megabytes of headers per connection before it is answered.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from monitor.config import Config, WebSection
    from monitor.ledger import LedgerQueries
    from monitor.web.site import Labeller

log = logging.getLogger(__name__)
page_log = logging.getLogger("monitor.web.site")  # one logger for everything the results page says (auth.py too)

# how often the accept loop looks at a shutdown request (the stdlib's default of 0.5 s made every stop wait for it,
# once per server); a select() wake-up ten times a second costs nothing measurable
POLL_SECONDS = 0.1
# a request line and its headers, in bytes (a browser's with basic auth and a long URL: under 2 KB); more: 431
MAX_HEADER_BYTES = 16 * 1024


class _TooLarge(Exception):
    pass


class _Counted:
    """The connection's reader while the headers are read: at most ``left`` bytes, then _TooLarge."""

    def __init__(self, fp, left: int):
        self.fp, self.left = fp, left

    def readline(self, size: int = -1) -> bytes:
        want = self.left + 1 if size < 0 or size > self.left + 1 else size
        line = self.fp.readline(want)
        self.left -= len(line)
        if self.left < 0:
            raise _TooLarge
        return line

    def __getattr__(self, name):
        return getattr(self.fp, name)


class GuardedHandler:
    """Mixed into each endpoint's handler by ``GuardedServer``: the header bound, and telling the server when a
    request is being answered (a connection is then not the one to close for room)."""

    def parse_request(self):
        real = self.rfile
        self.rfile = _Counted(real, MAX_HEADER_BYTES - len(self.raw_requestline))
        try:
            ok = super().parse_request()
        except _TooLarge:
            self.close_connection = True
            self.rfile = real
            self.send_error(431, f"Request header fields too large (more than {MAX_HEADER_BYTES} bytes)")
            return False
        finally:
            self.rfile = real
        if ok and self.request_version == "HTTP/0.9":  # no headers at all in the reply: no CSP, no no-store
            self.request_version = "HTTP/1.0"
            self.close_connection = True
            self.send_error(400, "HTTP/0.9 is not served")
            return False
        if ok:
            self.server.answering(self.connection, True)
        return ok

    def handle_one_request(self):
        try:
            super().handle_one_request()
        finally:
            self.server.answering(self.connection, False)


def server_tls(certfile: str, keyfile: str = "") -> ssl.SSLContext:
    """The TLS context of an endpoint: TLS 1.2 or newer, this certificate (OSError or ssl.SSLError if unreadable)."""
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    tls.load_cert_chain(certfile, keyfile or None)
    return tls


class GuardedServer(ThreadingHTTPServer):
    daemon_threads = True  # a client that stalls does not hold up the daemon's exit (the deadline closes it anyway)
    request_queue_size = 128  # the listen backlog (the stdlib's 5 made a burst of connects wait for SYN retries)

    def __init__(self, address: tuple[str, int], handler, tls: ssl.SSLContext | None = None, *, name: str,
                 timeout: float = 10.0, deadline: float = 30.0, max_connections: int = 64, per_client: int = 16):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.tls = tls
        self.name = name  # in log lines: "results page", "metrics endpoint"
        self.conn_timeout = timeout
        self.deadline = deadline
        self.max_connections = max_connections
        self.per_client = per_client
        # accepted socket -> [client address, deadline, the socket read from now (TLS: the wrapped one),
        #                     accepted at, a request is being answered on it]
        self._open: dict[socket.socket, list] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        if not issubclass(handler, GuardedHandler):
            handler = type(handler.__name__, (GuardedHandler, handler), {})
        super().__init__(address, handler)
        self._reaper = threading.Thread(target=self._reap, name=f"{name} reaper", daemon=True)
        self._reaper.start()

    # ----------------------------------------------------------------------------------------- the bounds
    def process_request(self, request, client_address):
        host = client_address[0]
        with self._lock:
            total = len(self._open)
            held: dict[str, int] = {}
            for h, *_ in self._open.values():
                held[h] = held.get(h, 0) + 1
            mine = held.get(host, 0)
            full = mine >= self.per_client
            if not full and total >= self.max_connections:
                # room from the connection that waits longest without being answered, of the address that holds
                # the most; none (every one is being answered): refused
                waiting = [(-held[e[0]], e[3], r) for r, e in self._open.items() if not e[4]]
                if waiting:
                    _, _, victim = min(waiting, key=lambda w: w[:2])
                    entry = self._open.pop(victim)
                    try:  # its thread's blocked read returns; the thread closes its socket
                        socket.socket.shutdown(entry[2], socket.SHUT_RDWR)
                    except OSError:
                        pass
                    log.debug("%s: connection from %s closed for one from %s (%d open)", self.name, entry[0],
                              host, total)
                else:
                    full = True
            if not full:
                now = time.monotonic()
                self._open[request] = [host, now + self.deadline, request, now, False]
        if full:
            log.debug("%s: connection from %s refused (%d open, %d from it)", self.name, host, total, mine)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def answering(self, conn, on: bool) -> None:
        """A request is being answered on ``conn`` (the handler's socket), or no longer."""
        with self._lock:
            for entry in self._open.values():
                if entry[2] is conn:
                    entry[4] = on
                    return

    def _close(self, request, sock) -> None:
        """Forget a connection, then close its socket: a socket the reaper can still see is never closed (its
        file descriptor number could otherwise be reused by a new connection under the reaper's hands)."""
        with self._lock:
            self._open.pop(request, None)
        sock.close()

    def shutdown_request(self, request):
        """Every connection ends here, served or not (the stdlib calls it after the request, and when no thread
        could be started for it): its place in the bounds is free again."""
        with self._lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def _shut(self, expired_before: float | None) -> None:
        """Shut down the connections past their deadline (all: ``None``), under the lock (see ``_close``)."""
        with self._lock:
            for _, end, s, *_ in self._open.values():
                if expired_before is None or end <= expired_before:
                    try:  # the plain socket's shutdown (an SSLSocket's own would drop its TLS state under the reader)
                        socket.socket.shutdown(s, socket.SHUT_RDWR)  # the blocked read or write in its thread returns
                    except OSError:
                        pass

    def _reap(self) -> None:
        while not self._closing.wait(0.5):
            self._shut(time.monotonic())

    def finish_request(self, request, client_address):
        """Runs in the connection's thread: the TLS handshake happens here, not in the accepting thread."""
        request.settimeout(self.conn_timeout)
        if self.tls is None:
            return super().finish_request(request, client_address)
        conn = None
        try:
            conn = self.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
            with self._lock:
                if request in self._open:
                    self._open[request][2] = conn  # the reaper reaches the handshake and the request through it
            conn.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            log.debug("%s: TLS handshake with %s failed: %s", self.name, client_address[0], exc)
            if conn is not None:
                self._close(request, conn)
            return
        try:
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            self._close(request, conn)

    def handle_error(self, request, client_address):  # the stdlib prints these to stderr
        log.debug("%s: connection from %s failed", self.name, client_address[0], exc_info=True)

    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    def serve_forever(self, poll_interval: float = POLL_SECONDS):
        super().serve_forever(poll_interval)

    def server_close(self):
        """Stop accepting, and end the connections still open (their threads return at once)."""
        self._closing.set()
        super().server_close()
        self._shut(None)


# ----------------------------------------------------------------------------------------------- the results page
# The page's HTTP side: what every reply carries, the request handler, and the server's life cycle. The pages
# themselves are ``site.ResultsSite`` (imported when the page starts: the metrics endpoint, which shares
# ``GuardedServer``, does not load the page).
# no inline style or script anywhere: styles only from this site (the style sheet), no script at all
CSP = ("default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "X-Frame-Options": "DENY",
                    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on the label form,
                    # and the origin check needs the real one; other sites still get no referrer
                    "Referrer-Policy": "same-origin"}
CONNECTION_TIMEOUT = 15.0  # seconds a client may take over one read or write (the TLS handshake included)
REQUEST_DEADLINE = 60.0  # seconds a connection may last, the request and the reply together (``server``)
MAX_FORM_BYTES = 8192


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: dict = field(default_factory=dict)


def text(status: int, message: str, **headers) -> Response:
    return Response(status, (message + "\n").encode(), "text/plain; charset=utf-8", headers)


class PageHandler(BaseHTTPRequestHandler):
    """One request to the results page, answered by ``server.site`` (a ``site.ResultsSite``)."""

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
            page_log.exception("results page: %s %s failed", self.command, self.path[:200])
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
        page_log.debug("results page: %s %s", self.address_string(), format % args)


class ResultsServer:
    """The results page in a daemon thread; ``start()`` binds and returns the port, ``close()`` stops it."""

    def __init__(self, cfg: "WebSection", ledger: "LedgerQueries", settings: Callable[[], "Config"],
                 labeller: "Labeller | None" = None, on_auth_failure: Callable[[str], None] | None = None):
        from monitor.web.site import ResultsSite

        self.cfg = cfg
        self.site = ResultsSite(cfg, ledger, settings, labeller, on_auth_failure)
        self._server: GuardedServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def start(self) -> int:
        import jinja2

        from monitor.web.site import WebError, assets, exposure_warnings

        cfg = self.cfg
        try:
            assets()
        except (OSError, ValueError, jinja2.TemplateError) as exc:
            raise WebError(f"results page: its templates or style sheet cannot be read from the package "
                           f"monitor.web (a broken installation?): {exc}") from None
        tls = None
        if cfg.certfile:
            try:
                tls = server_tls(cfg.certfile, cfg.keyfile)
            except (OSError, ssl.SSLError) as exc:
                raise WebError(f"results page: cannot load web.certfile {cfg.certfile} / web.keyfile {cfg.keyfile}: "
                               f"{getattr(exc, 'strerror', None) or exc}") from None
        try:
            self._server = GuardedServer((cfg.address, cfg.port), PageHandler, tls, name="results page",
                                         timeout=CONNECTION_TIMEOUT, deadline=REQUEST_DEADLINE)
            self._server.site = self.site
        except OSError as exc:
            raise WebError(f"results page {cfg.address}:{cfg.port}: {exc.strerror or exc} "
                           "(web.address / web.port)") from None
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="web", daemon=True)
        self._thread.start()
        for warning in exposure_warnings(cfg):
            page_log.warning("results page: %s", warning)
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

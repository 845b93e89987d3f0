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
from http.server import ThreadingHTTPServer

log = logging.getLogger(__name__)

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

"""The passwords of the results page: HTTP basic auth and the write password of labels, each checked against its
PBKDF2 hash, wrong ones throttled per client address (``Guesses``: five free, then a lockout that doubles up to
``MAX_LOCKOUT``).

Its log lines are the results page's (the logger ``monitor.web.site``): one logger for everything the page says.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from typing import Callable

from monitor.files import shown
from monitor.passwords import parse_hash, verify_password

log = logging.getLogger("monitor.web.site")

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
    an HMAC of the client address and the credentials under a key of this process, at most ``remember`` of them)
    so that a page with its images costs one PBKDF2, not three; a wrong password is never remembered. The lockout
    comes first, for remembered credentials too: a guesser locked out on an address must not learn the password
    from a 200 that the cache gives while an operator on that address is signed in (the operator waits out the
    lockout as well), and credentials remembered for one address do nothing for another."""

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
        self.password.guesses.check(client)  # raises Locked: before the cache, whatever the credentials
        tag = hmac.new(self._key, f"{client}\n{token}".encode("latin-1", "replace"), "sha256").digest()
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

"""Password hashes for the results page's HTTP basic auth: PBKDF2-SHA256, stdlib only.

The stored form is ``pbkdf2_sha256$<iterations>$<salt, base64>$<hash, base64>`` (standard base64 with padding),
what ``monitor hash-password`` prints and ``web.password_hash`` holds. Verification derives the key again with
``hashlib.pbkdf2_hmac`` and compares in constant time with ``hmac.compare_digest``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass

ALGORITHM = "pbkdf2_sha256"
ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256; about 0.15 s on one core of our VM
MIN_ITERATIONS = 100_000  # weaker hashes are refused at configuration load
SALT_BYTES = 16
MIN_HASH_BYTES = 16
MIN_PASSWORD_CHARS = 8  # `monitor hash-password` refuses shorter ones (the page is throttled, not unguessable)
FORM = f"{ALGORITHM}$<iterations>$<salt base64>$<hash base64>, as `monitor hash-password` prints it"


@dataclass(frozen=True)
class PasswordHash:
    iterations: int
    salt: bytes
    digest: bytes

    def __str__(self) -> str:
        b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
        return f"{ALGORITHM}${self.iterations}${b64(self.salt)}${b64(self.digest)}"


def parse_hash(text: str) -> PasswordHash:
    """Parse the stored form; raises ValueError saying what is wrong (never echoing the hash)."""
    parts = text.split("$")
    if len(parts) != 4 or parts[0] != ALGORITHM:
        raise ValueError(f"must have the form {FORM}")
    _, iters, salt, digest = parts
    if not iters.isdigit() or int(iters) < MIN_ITERATIONS:
        raise ValueError(f"iterations must be a whole number >= {MIN_ITERATIONS} (the form: {FORM})")
    try:
        salt_b = base64.b64decode(salt, validate=True)
        digest_b = base64.b64decode(digest, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"salt and hash must be standard base64 (the form: {FORM})") from None
    if not salt_b or len(digest_b) < MIN_HASH_BYTES:
        raise ValueError(f"salt must not be empty and the hash must be >= {MIN_HASH_BYTES} bytes (the form: {FORM})")
    return PasswordHash(int(iters), salt_b, digest_b)


def hash_password(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    if iterations < MIN_ITERATIONS:
        raise ValueError(f"iterations must be >= {MIN_ITERATIONS}, got {iterations}")
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return str(PasswordHash(iterations, salt, digest))


def verify_password(password: str, stored: PasswordHash | str) -> bool:
    h = parse_hash(stored) if isinstance(stored, str) else stored
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), h.salt, h.iterations, len(h.digest))
    return hmac.compare_digest(digest, h.digest)

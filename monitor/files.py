"""File helpers shared by the model and the daemon: content hashes, atomic writes, file names that fit.

Atomic writes go to a short temporary name beside the target (never derived from a long target name, so a name
near the 255-byte limit still works), then ``os.replace``; a failed write leaves nothing behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
import unicodedata
from pathlib import Path

NAME_MAX = 255  # bytes in one file name on Linux file systems


def open_regular(path: str | os.PathLike):
    """``open(path, "rb")`` for a regular file only (NotRegularFile otherwise). Opened without blocking: a FIFO
    swapped in under an image's name would otherwise block its reader for good."""
    fh = os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb")
    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        fh.close()
        raise NotRegularFile(f"{os.fsdecode(path)}: not a regular file")
    return fh


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open_regular(path) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_regular(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The content of a regular file of at most ``max_bytes``; NotRegularFile or FileTooLarge otherwise (refused
    before a byte is read)."""
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise FileTooLarge(size, max_bytes)
        return fh.read(max_bytes + 1)


class NotRegularFile(OSError):
    pass


class FileTooLarge(OSError):
    def __init__(self, size: int, limit: int):
        super().__init__(f"{size} bytes, more than the {limit} bytes any image within the pixel limit can take")
        self.size, self.limit = size, limit


_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}
# C1 controls, and the invisible characters that reorder or hide text (bidirectional overrides and isolates, zero
# widths, line and paragraph separators, the byte order mark): a name such as "report\u202egnp.exe" would read as
# another name on the page and in the log. As \uXXXX (\xNN stays for bytes that are not UTF-8).
_CONTROLS.update({c: f"\\u{c:04x}" for c in (*range(0x80, 0xA0), 0x061C, *range(0x200B, 0x2010), 0x2028, 0x2029,
                                               *range(0x202A, 0x202F), *range(0x2060, 0x2065), *range(0x2066, 0x206A),
                                               0xFEFF)})


# characters that show as nothing, or as a blank, without being a format character: the combining grapheme joiner,
# the Hangul fillers, the blank Braille pattern, the variation selectors ("ITIA\u3164.tif" looks like "ITIA.tif")
_INVISIBLE = frozenset((0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x2800, 0x3164, 0xFFA0, *range(0xFE00, 0xFE10),
                        *range(0xE0100, 0xE01F0)))


def _escaped(c: str) -> str:
    n = ord(c)
    if n < 0xA0 or not (n in _INVISIBLE or unicodedata.category(c) == "Cf"):
        return c
    return f"\\u{n:04x}" if n <= 0xFFFF else f"\\U{n:08x}"


def shown(text: str) -> str:
    """``text`` (a path or name) printable on one line: bytes that are not UTF-8 (kept by Python as surrogates)
    and control characters (a newline would forge a log line, an escape sequence recolour a terminal) as
    ``\\xNN``, C1 controls, every format character (Unicode category Cf: bidirectional controls, zero widths, the
    soft hyphen, tags, ...) and the other invisible characters (``_INVISIBLE``) as ``\\uXXXX``: "ITIA\u00ad1142.tif"
    must not read as a second "ITIA1142.tif". The path itself stays as it is for opening the file."""
    out = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace").translate(_CONTROLS)
    return out if out.isascii() else "".join(map(_escaped, out))


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsync'd, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{secrets.token_hex(6)}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fitting_stem(stem: str, suffix: str, limit: int = NAME_MAX) -> str:
    """``stem`` shortened (at a character boundary, keeping its end, which tells images apart) so that
    ``stem + suffix`` fits ``limit`` bytes; undecodable bytes of the name are kept as ``surrogateescape``."""
    room = limit - len(os.fsencode(suffix))
    raw = os.fsencode(stem)
    if len(raw) <= room:
        return stem
    keep = raw[len(raw) - room + 1:]  # "~" marks the cut
    while keep and (keep[0] & 0xC0) == 0x80:  # do not start inside a UTF-8 sequence
        keep = keep[1:]
    return "~" + os.fsdecode(keep)


def link_problem(path: str, symlinks: str, folder: str | os.PathLike) -> str | None:
    """Why ``path`` may not be read under the ``watch.symlinks`` policy ``symlinks`` for the export folder
    ``folder`` (resolved), or None. A link loop is always refused. The intake's rule, and the results page's."""
    if not os.path.islink(path):
        return None
    if symlinks == "never":
        return "a symbolic link (watch.symlinks: never)"
    try:
        real = os.path.realpath(path, strict=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        return None  # dangling or vanished: reported as missing when it is read
    inside = real.startswith(str(folder) + os.sep)
    if symlinks == "inside" and not inside:
        return f"a symbolic link out of the export folder, to {real} (watch.symlinks: inside)"
    return None

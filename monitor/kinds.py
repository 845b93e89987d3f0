"""The names the monitor gives things, as types: an image's verdict, a ledger row's state, an operator's label.
They are ``StrEnum``s: each member is its string, so the JSON, the ledger's columns, the metrics' labels and the
page's query strings keep their values, and a member compares equal to the text it stands for."""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    """What the monitor says of a judged image (``defects.decide``, ``judge``)."""

    OK = "ok"
    DEFECT = "defect"
    NO_THRESHOLD = "no-threshold"  # a model fitted without validation images: scored, not judged
    MISMATCH = "mismatch"  # not scored: the image does not fit the model (acquisition, size, content)


class State(StrEnum):
    """Where a ledger row is."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class LabelKind(StrEnum):
    """What an operator says of a result."""

    FALSE_ALARM = "false_alarm"
    CONFIRMED = "confirmed"


class FailureKind(StrEnum):
    """Why an image could not be judged (the ledger's ``error_kind``, the failed-images metric's ``reason``): the
    file (``ImageError``) or the monitor."""

    MISSING = "missing"
    PERMISSION = "permission"
    EMPTY = "empty"
    TOO_LARGE = "too_large"
    TOO_SMALL = "too_small"
    UNREADABLE = "unreadable"
    CORRUPT = "corrupt"
    CHANGED = "changed"
    SYMLINK = "symlink"
    CRASHED = "crashed"  # the daemon stopped while scoring it, too many times
    OUT_OF_MEMORY = "out_of_memory"
    DEVICE = "device"  # a torch or CUDA error
    INTERNAL = "internal"  # anything else (logged with its traceback)


FILE_FAILURES = (FailureKind.MISSING, FailureKind.PERMISSION, FailureKind.EMPTY, FailureKind.TOO_LARGE,
                 FailureKind.TOO_SMALL, FailureKind.UNREADABLE, FailureKind.CORRUPT, FailureKind.CHANGED,
                 FailureKind.SYMLINK)  # the file's: ImageError's kinds


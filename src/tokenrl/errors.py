"""Errors that reach the user as one message and exit status 2 (no traceback)."""

from __future__ import annotations

import errno


class UsageError(Exception):
    """Bad input from the user: printed as one message, exit status 2."""


class ConfigError(ValueError):
    """A configuration problem; the message says what is wrong and how to fix it."""


class ModelError(RuntimeError):
    """A model spec could not be turned into a model; the message says how to fix it."""


class RunError(RuntimeError):
    """A run folder problem (exists, missing, corrupt); the message says what to do."""


class Interrupted(Exception):
    """The user or a scheduler stopped a run (Ctrl-C, SIGTERM); the message says what was saved
    and how to resume. The command line exits with ``128 + signal``, the shell's code for it
    (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, *, signal: int = 2) -> None:
        super().__init__(message)
        self.signal = signal


# errno values of a write that failed because of the disk or the folder, not a bug
DISK_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a parent of the path is a file, not a folder",
}


def disk_problem(err: OSError) -> str | None:
    """``"cannot write PATH: the disk is full"`` for a write that failed because of the disk or
    permissions, or ``None`` when ``err`` is some other failure."""
    if err.errno not in DISK_ERRNOS:
        return None
    where = f" {err.filename}" if err.filename else ""
    return f"cannot write{where}: {DISK_ERRNOS[err.errno]}"


def describe_disk_error(err: OSError) -> str | None:
    """One message for a write that failed because of the disk or permissions (naming the path
    and what to do), or ``None`` when ``err`` is some other failure."""
    problem = disk_problem(err)
    if problem is None:
        return None
    return (
        f"{problem} ({err.strerror}). Fix: free some space or choose a writable --out; a training "
        "run keeps its last complete checkpoint, so `tokenrl train --resume RUN_DIR` continues "
        "from there"
    )

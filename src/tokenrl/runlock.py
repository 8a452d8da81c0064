"""One trainer per run folder: an exclusive lock on ``RUN/.lock``, held for the run's life.

The lock is an advisory ``flock`` on an open file, so the operating system releases it when the
process ends in any way (exit, crash, ``kill -9``): a stale lock cannot outlive its trainer. The
file keeps the holder's PID, host and start time for the message a second trainer gets. Where
``fcntl`` is missing (Windows) runs are not locked.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from types import TracebackType

from tokenrl.errors import RunError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class RunFolderBusy(RunError):
    """Another process holds the run folder's lock (exit status 2)."""


class RunLock:
    """``with RunLock(out):`` holds ``out/.lock`` (creating ``out``) or raises
    :class:`RunFolderBusy` naming the holder."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._fd is not None or fcntl is None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunFolderBusy(
                f"{self.path.parent} is in use by another tokenrl train ({holder}); two trainers "
                "on one folder would overwrite each other's checkpoints and logs. Wait for it to "
                "end or stop it, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {when}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "its PID is not recorded yet"

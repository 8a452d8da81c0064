"""``tokenrl train`` with a pause inside every checkpoint write (test helper, not a test).

Run as ``python tests/slow_checkpoints.py ARGS...`` (the arguments of ``tokenrl train``). The
pause (``$SLOW_CHECKPOINT_SECONDS``, default 0.2 s) sits before each fsync of the temporary
checkpoint folder, so a test that sees ``checkpoints/.tmp-step-*`` appear can kill the process
while the checkpoint is half written.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import tokenrl.checkpoints as checkpoints
from tokenrl.cli import main

PAUSE = float(os.environ.get("SLOW_CHECKPOINT_SECONDS", "0.2"))
_fsync_dir = checkpoints._fsync_dir


def slow_fsync_dir(path: Path) -> None:
    """Pause, then fsync as the trainer does."""
    time.sleep(PAUSE)
    _fsync_dir(path)


if __name__ == "__main__":
    checkpoints._fsync_dir = slow_fsync_dir
    sys.exit(main(["train", *sys.argv[1:]]))

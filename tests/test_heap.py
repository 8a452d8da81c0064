"""tokenrl.heap: malloc_trim or a fixed glibc mmap threshold keeps resident memory near live memory."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tokenrl.heap import bound_heap, heap_mode, release_free_heap, trim_heap


def _glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallopt")
    except OSError:
        return False


needs_glibc = pytest.mark.skipif(
    not _glibc(), reason="glibc malloc only (Linux); elsewhere bound_heap does nothing"
)

# Allocate and free 16 MiB tensors (below glibc's 32 MiB cap on the dynamic threshold) a few
# times, with small ones between so a freed big block cannot be trimmed from the heap's top, and
# print the resident MiB kept after everything big is freed.
PROBE = textwrap.dedent(
    """
    import sys, torch
    from benchmarks.trl.measure import RssSampler
    from tokenrl.heap import bound_heap, trim_heap
    assert bound_heap() == (sys.argv[1] == "bounded")
    def rss():
        return RssSampler().rss() / 2**20
    base = rss()
    keep = []
    for _ in range(3):
        big = [torch.ones(4 * 2**20) for _ in range(4)]  # 4 x 16 MiB
        keep += [torch.ones(1024) for _ in range(200)]  # keeps the heap top busy
        del big
    trim_heap()  # what the trainer does after each step
    print(rss() - base)
    """
)


def kept_mib(mode: str) -> float:
    """Resident MiB the probe keeps after freeing, with ``TOKENRL_MALLOC=mode``."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    env["TOKENRL_MALLOC"] = mode
    root = str(Path(__file__).resolve().parents[1])  # the checkout, for benchmarks.trl
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


@needs_glibc
def test_trim_and_bounded_modes_return_freed_big_tensors_to_the_os() -> None:
    default, trim, bounded = kept_mib("default"), kept_mib("trim"), kept_mib("bounded")
    # glibc's default raises the threshold after the first free: the next 16 MiB blocks live in
    # the heap and stay resident; malloc_trim hands them back, a fixed threshold unmaps them
    assert default > 48, (
        f"glibc's default kept only {default:.1f} MiB: the probe no longer shows the drift"
    )
    assert trim < 16, f"{trim:.1f} MiB still resident after trim_heap"
    assert bounded < 16, f"{bounded:.1f} MiB still resident after freeing with a fixed threshold"


def test_heap_mode_defaults_to_trim_and_respects_the_users_choice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TOKENRL_MALLOC", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert heap_mode() == "trim"
    assert bound_heap() is False  # only the bounded mode touches the threshold
    monkeypatch.setenv("TOKENRL_MALLOC", "bounded")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")  # the user's own setting wins
    assert heap_mode() == "default"
    assert bound_heap() is False


def test_unknown_heap_mode_names_the_allowed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("TOKENRL_MALLOC", "fast")
    with pytest.raises(
        ValueError, match="TOKENRL_MALLOC='fast' is not one of trim, bounded, default"
    ):
        heap_mode()


def test_release_and_trim_run_anywhere() -> None:
    release_free_heap()  # no error where the C library has no malloc_trim
    trim_heap()

"""Keep a long CPU run's resident memory close to what it really holds (glibc malloc).

glibc serves a block larger than its mmap threshold with ``mmap`` and unmaps it on ``free``, but
by default it raises that threshold (up to 32 MiB) each time such a block is freed. From then on
the transient tensors of generation and of the update (activations, logits) come from the heap,
and freed heap pages stay resident: over a training run RSS drifts far above the live memory
(SmolLM2-135M on multiplication: 8.7 GB by step 51 left alone, 4.4 GB with ``trim``).

``TOKENRL_MALLOC`` picks what tokenrl does about it (docs/reliability.md):

- ``trim`` (default): glibc's allocator as it is, and ``malloc_trim`` after every training step
  and evaluation hands the freed pages back, at little cost in speed.
- ``bounded``: the mmap threshold fixed at 128 KiB, so every large block is unmapped when freed;
  the lowest peak, but each large allocation is fresh pages from the kernel (measured: updates
  about 1.5x slower on CPU).
- ``default``: nothing (also when ``MALLOC_MMAP_THRESHOLD_`` is set: the user's own choice).
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os

M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
FIXED_MMAP_THRESHOLD = 128 * 1024  # glibc's initial value; blocks above it are unmapped on free
ENV = "TOKENRL_MALLOC"
MODES = ("trim", "bounded", "default")


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, Windows, musl): nothing to do
        return None


def heap_mode() -> str:
    """The mode from ``TOKENRL_MALLOC`` (``trim`` when unset; ``default`` when the user set
    ``MALLOC_MMAP_THRESHOLD_``); an unknown value is an error naming the allowed ones."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return "default"
    mode = os.environ.get(ENV, "trim").strip().lower() or "trim"
    if mode not in MODES:
        raise ValueError(
            f"{ENV}={mode!r} is not one of {', '.join(MODES)} (see docs/reliability.md)"
        )
    return mode


def bound_heap(threshold: int = FIXED_MMAP_THRESHOLD) -> bool:
    """In ``bounded`` mode fix glibc's mmap threshold at ``threshold`` bytes; returns whether set."""
    if heap_mode() != "bounded":
        return False
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))


def trim_heap() -> None:
    """Between training steps: hand freed heap pages back to the OS, unless the mode is ``default``."""
    if heap_mode() != "default":
        _malloc_trim()


def release_free_heap() -> None:
    """Collect garbage and hand freed heap pages back to the OS (``malloc_trim``, glibc only)."""
    gc.collect()
    _malloc_trim()


def _malloc_trim() -> None:
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)

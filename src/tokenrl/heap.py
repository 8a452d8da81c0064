"""Keep a long CPU run's resident memory close to what it really holds (glibc malloc).

glibc serves a block larger than its mmap threshold with ``mmap`` and unmaps it on ``free``, but
by default it raises that threshold (up to 32 MiB) each time such a block is freed. From then on
the transient tensors of generation and of the update (activations, logits) come from the heap,
and freed heap pages stay resident: over a training run RSS grows to several times the live
memory (SmolLM2-135M on SVAMP reached 13.7 GB RSS and was killed for memory after 74 steps,
while the model, adapter, optimiser and caches held under 1 GB between steps). A fixed threshold
stops the drift; :func:`release_free_heap` returns what is left after an evaluation.
"""

from __future__ import annotations

import ctypes
import gc
import os

M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
FIXED_MMAP_THRESHOLD = 128 * 1024  # glibc's initial value; blocks above it are unmapped on free
OPT_OUT = "TOKENRL_MALLOC"  # set to "default" to keep glibc's dynamic threshold


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, Windows, musl): nothing to do
        return None


def bound_heap(threshold: int = FIXED_MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; returns whether it was set.

    Left alone when the user chose a threshold (``MALLOC_MMAP_THRESHOLD_``) or opted out
    (``TOKENRL_MALLOC=default``), and where the C library is not glibc.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or os.environ.get(OPT_OUT) == "default":
        return False
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))


def release_free_heap() -> None:
    """Collect garbage and hand freed heap pages back to the OS (``malloc_trim``, glibc only)."""
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)

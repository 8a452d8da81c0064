"""Peak memory and time of one phase, timing summaries, and whether trl is installed.

CPU: peak resident set size (RSS) added during the phase. A background thread reads
``/proc/self/statm`` every ``interval_s`` (2 ms); before the baseline is read, ``gc.collect()``
and glibc's ``malloc_trim(0)`` hand freed heap pages back to the OS, so the baseline is the
memory really held between steps (model, optimiser state) and not the allocator's cache.
CUDA: ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` before the phase.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from importlib import metadata
from typing import Any

from tokenrl.heap import release_free_heap


class RssSampler:
    """Highest RSS seen between ``start()`` and ``stop()`` (bytes), sampled by a thread."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval_s)

    def start(self) -> int:
        """Start sampling; returns the current RSS (the baseline)."""
        self.peak = base = self.rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return base

    def stop(self) -> int:
        """Stop sampling; returns the peak RSS seen."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.rss())
        return self.peak


class PhaseMeter:
    """Time and peak added memory of one phase: ``begin()`` ... ``end() -> (seconds, bytes)``.

    ``memory=False`` skips the RSS thread (speed runs: nothing competes with the work).
    """

    def __init__(self, device: str, memory: bool) -> None:
        self.cuda = device.startswith("cuda")
        self.memory = memory
        self._sampler = RssSampler() if memory and not self.cuda else None
        self._base = 0
        self._t0 = 0.0

    def begin(self) -> None:
        import torch

        release_free_heap()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        elif self._sampler is not None:
            self._base = self._sampler.start()
        self._t0 = time.perf_counter()

    def end(self) -> tuple[float, int | None]:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - self._t0
        if self.cuda:
            return elapsed, torch.cuda.max_memory_allocated() - self._base
        if self._sampler is not None:
            return elapsed, self._sampler.stop() - self._base
        return elapsed, None


def timing_summary(times: dict[str, list[float]]) -> dict[str, Any]:
    """``{name}_median_s`` and ``{name}_min_max_s`` for each list of seconds in ``times``."""
    out: dict[str, Any] = {}
    for name, values in times.items():
        out[f"{name}_median_s"] = statistics.median(values)
        out[f"{name}_min_max_s"] = [min(values), max(values)]
    return out


def trl_available() -> bool:
    try:
        metadata.version("trl")
    except metadata.PackageNotFoundError:
        return False
    import importlib.util

    return importlib.util.find_spec("trl") is not None

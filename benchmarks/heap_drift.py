"""Resident memory between and during training steps, with glibc's allocator bounded or as it is.

    TOKENRL_MALLOC=MODE python benchmarks/heap_drift.py configs/smollm2/multiplication_sgrpo.yaml 6

MODE is trim (tokenrl's default), bounded or default (glibc left alone); see tokenrl.heap.

Prints RSS (MB) after loading, after each generation and after each step (with TRIM=1 also after
``malloc_trim(0)``, i.e. what is really in use), with the process's peak so far. One thread.
See docs/reliability.md (Memory over long runs). Writes only to /tmp/heap_drift.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: benchmarks.trl

from benchmarks.trl.measure import RssSampler  # noqa: E402
from tokenrl import step, trainer  # noqa: E402
from tokenrl.config import load_config  # noqa: E402
from tokenrl.heap import bound_heap, release_free_heap, trim_heap  # noqa: E402


def rss_mb() -> int:
    return RssSampler().rss() // 2**20


def main(config: str, steps: int) -> None:
    bound_heap()  # as tokenrl train does (only the bounded mode changes glibc's threshold)
    torch.set_num_threads(1)
    trim = os.environ.get("TRIM") == "1"
    print(f"before load: rss {rss_mb()}", flush=True)
    tr = trainer.build_trainer(load_config(Path(config)), Path("/tmp/heap_drift"))
    print(f"after load: rss {rss_mb()} peak {step.peak_rss_mb():.0f}", flush=True)

    generate = tr.engine.generate

    def generate_and_report(*args, **kwargs):
        batch = generate(*args, **kwargs)
        print(f"  after generation: rss {rss_mb()} peak {step.peak_rss_mb():.0f}", flush=True)
        return batch

    tr.engine.generate = generate_and_report
    for _ in range(steps):
        t0 = time.perf_counter()
        m = step.train_step(tr)
        trim_heap()  # as tokenrl train does after every step (not in the default mode)
        line = f"step {m['step']}: {time.perf_counter() - t0:.1f} s, update {m['time/update']:.1f} s, rss {rss_mb()}"
        if trim:
            release_free_heap()
            line += f" in use {rss_mb()}"
        print(f"{line} peak {step.peak_rss_mb():.0f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

"""One benchmark configuration in this (fresh) process; prints one JSON line.

    python -m benchmarks.trl.worker '{"workload": "A", "impl": "tspmo", "measure": "memory", ...}'

Spec keys: workload, impl (trl | grpo | sgrpo | tspmo), measure (memory | speed), warmup,
repeats, device, dtype (fp32 | bf16), threads, seed, and optional overrides of the workload
(completion_len, group) and of gradient checkpointing (trl_gc, ours_gc).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from benchmarks.trl.workloads import WORKLOADS
    from tokenrl.models import resolve_dtype

    torch.set_num_threads(spec["threads"])
    w = WORKLOADS[spec["workload"]]
    overrides = {k: spec[k] for k in ("completion_len", "group") if spec.get(k) is not None}
    w = dataclasses.replace(w, **overrides)
    trl_gc = spec.get("trl_gc")
    ours_gc = spec.get("ours_gc")
    trl_gc = w.trl_gradient_checkpointing if trl_gc is None else trl_gc
    ours_gc = w.ours_gradient_checkpointing if ours_gc is None else ours_gc
    dtype = resolve_dtype(spec["dtype"])
    common = dict(
        device=spec["device"], warmup=spec["warmup"], repeats=spec["repeats"], seed=spec["seed"]
    )
    impl = spec["impl"]
    if impl == "trl":
        from benchmarks.trl.trl_runner import run_trl

        out = run_trl(
            w, dtype=dtype, measure=spec["measure"], gradient_checkpointing=trl_gc, **common
        )
        gc_used = trl_gc
    elif w.kind == "update":
        from benchmarks.trl.ours import run_update

        out = run_update(
            w, impl, dtype=dtype, measure=spec["measure"], gradient_checkpointing=ours_gc, **common
        )
        gc_used = ours_gc
    else:
        from benchmarks.trl.ours import run_step

        out = run_step(w, impl, dtype=spec["dtype"], **common)
        gc_used = ours_gc
    out.update(
        {
            "gradient_checkpointing": gc_used,
            "threads_used": torch.get_num_threads(),
            "completion_len": w.completion_len,
            "group": w.group,
        }
    )
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    result = run(json.loads(argv[0]))
    print("TOKENRL_BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

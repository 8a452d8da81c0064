"""Run benchmark configurations, each in a fresh process, and report them side by side.

Every (workload, measure, implementation) runs in its own subprocess (``benchmarks.trl.worker``)
with ``torch.set_num_threads`` and ``OMP_NUM_THREADS`` pinned, ``warmup`` unmeasured steps and
then ``repeats`` measured ones; the report gives medians with min-max, each figure's ratio to TRL
from the same run, the goal and whether it is met, the machine and the library versions.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.trl.measure import trl_available
from benchmarks.trl.workloads import IMPLS, Workload
from tokenrl.machine import machine_info, versions

TRL_MISSING = "trl not installed (pip install tokenrl[bench])"
ROOT = Path(__file__).resolve().parents[2]  # the checkout: benchmarks/trl/run.py -> the root
MB = 2**20

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
"""Environment of CPU memory runs. glibc serves blocks above the mmap threshold with mmap and
gives them back to the OS on free, but by default it raises the threshold (up to 32 MiB) each
time such a block is freed, after which freed tensors stay in the heap and RSS keeps the
allocator's cache: the forward's transient activations then count as if alive (SmolLM2 T-SPMO
update with checkpointing: ~1.2 GB peak added RSS, ~0.17 GB with a fixed threshold). Fixing it
at glibc's initial 128 KiB makes peak RSS follow live memory, for TRL and ours alike. Speed runs
keep the default allocator."""


@dataclass
class Settings:
    """How every configuration of one ``tokenrl bench`` call runs."""

    device: str = "cpu"
    dtype: str = "fp32"
    threads: int = 2
    warmup: int = 1
    repeats_memory: int = 3
    repeats_speed: int = 5
    seed: int = 0
    trl_gc: bool | None = None  # None = the workload's setting
    ours_gc: bool | None = None
    timeout_s: float | None = None  # per configuration
    fixed_mmap_threshold: bool = True
    """CPU memory runs: set MALLOC_MMAP_THRESHOLD_ (glibc) so RSS follows live tensors; see
    :data:`MALLOC_ENV`. False = glibc's default, dynamic threshold."""


def worker_spec(
    w: Workload, impl: str, measure: str, s: Settings, **overrides: Any
) -> dict[str, Any]:
    return {
        "workload": w.name,
        "impl": impl,
        "measure": measure,
        "warmup": s.warmup,
        "repeats": s.repeats_memory if measure == "memory" else s.repeats_speed,
        "device": s.device,
        "dtype": s.dtype,
        "threads": s.threads,
        "seed": s.seed,
        "trl_gc": s.trl_gc,
        "ours_gc": s.ours_gc,
        **overrides,
    }


def run_worker(
    spec: dict[str, Any],
    threads: int,
    timeout_s: float | None = None,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run one configuration in a fresh Python process; its result dict, or {"error": ...}.

    The worker is ``python -P -m benchmarks.trl.worker`` with the checkout first on ``PYTHONPATH``:
    it finds this package (and the reward ``benchmarks.trl.rewards:bench_reward``) from any working
    folder, and ``-P`` keeps the working folder off ``sys.path``, so no ``benchmarks`` there shadows it.
    """
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(
        os.environ,
        PYTHONPATH=path,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        OMP_WAIT_POLICY="PASSIVE",
        TOKENIZERS_PARALLELISM="false",
        **(extra_env or {}),
    )
    cmd = [sys.executable, "-P", "-m", "benchmarks.trl.worker", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("TOKENRL_BENCH_RESULT "):
            out = json.loads(line.split(" ", 1)[1])
            out["process_s"] = time.perf_counter() - t0
            return out
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
    return {"error": f"exit status {proc.returncode}: " + " | ".join(tail)}


def worker_env(s: Settings, measure: str) -> dict[str, str]:
    """Extra environment of a worker: :data:`MALLOC_ENV` for CPU memory runs (when enabled)."""
    cpu_memory = measure == "memory" and not s.device.startswith("cuda")
    return dict(MALLOC_ENV) if cpu_memory and s.fixed_mmap_threshold else {}


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(w: Workload, impl: str, measure: str, raw: dict[str, Any]) -> dict[str, Any]:
    """One report row: the figure (median, min, max, samples) in its unit; no ratios yet."""
    row: dict[str, Any] = {"workload": w.name, "measure": measure, "impl": impl}
    if "error" in raw:
        row.update(status=raw["error"])
        return row
    row["status"] = "ok"
    if measure == "memory":
        samples = [p / MB for p in raw["peaks_bytes"]]
        row.update(metric="peak_added_mb", unit="MB", samples=samples, **_stats(samples))
    elif w.kind == "update":
        samples = raw["times_s"]
        row.update(metric="update_s", unit="s", samples=samples, **_stats(samples))
    else:
        samples = [w.rows / t for t in raw["times_s"]]
        row.update(
            metric="completions_per_s", unit="completions/s", samples=samples, **_stats(samples)
        )
        row["step_s"] = _stats(raw["times_s"])
    row["gradient_checkpointing"] = raw.get("gradient_checkpointing")
    row["threads_used"] = raw.get("threads_used")
    row["completion_len"] = raw.get("completion_len")
    row["group"] = raw.get("group")
    row["info"] = raw.get("info", {})
    return row


def add_ratios(rows: list[dict[str, Any]], workloads: dict[str, Workload]) -> None:
    """Each of our rows gets its ratio to the TRL row of the same workload and measure, the goal
    and whether it is met. Memory: ratio = ours / TRL, goal met when ratio <= goal. Speed:
    speedup = TRL time / our time (whole steps: our completions/s / TRL's), met when >= goal."""
    trl = {(r["workload"], r["measure"]): r for r in rows if r["impl"] == "trl"}
    for r in rows:
        w = workloads[r["workload"]]
        goals = w.memory_goals if r["measure"] == "memory" else w.speed_goals
        r["goal"] = goals.get(r["impl"])
        r["ratio_to_trl"] = r["speedup_vs_trl"] = r["met"] = None
        base = trl.get((r["workload"], r["measure"]))
        if (
            r["impl"] == "trl"
            or r.get("status") != "ok"
            or base is None
            or base.get("status") != "ok"
        ):
            continue
        r["ratio_to_trl"] = r["median"] / base["median"] if base["median"] else None
        if r["measure"] == "speed" and r["ratio_to_trl"]:
            higher_is_better = r["metric"] == "completions_per_s"
            r["speedup_vs_trl"] = r["ratio_to_trl"] if higher_is_better else 1 / r["ratio_to_trl"]
        if r["goal"] is not None and r["ratio_to_trl"] is not None:
            if r["measure"] == "memory":
                r["met"] = r["ratio_to_trl"] <= r["goal"]
            else:
                r["met"] = r["speedup_vs_trl"] >= r["goal"]


def run_benchmarks(
    measures: list[str],
    workloads: list[Workload],
    settings: Settings,
    impls: tuple[str, ...] = IMPLS,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every (workload, measure, impl) in a fresh process; the whole report as one dict."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    have_trl = trl_available()
    rows: list[dict[str, Any]] = []
    for measure in measures:
        for w in workloads:
            if measure == "memory" and w.kind == "step":
                continue  # whole steps have a speed measure only
            for impl in impls:
                if impl == "trl" and not have_trl:
                    rows.append(
                        {
                            "workload": w.name,
                            "measure": measure,
                            "impl": impl,
                            "status": TRL_MISSING,
                        }
                    )
                    continue
                log(f"[bench] {measure} {w.name} {impl} ...")
                spec = worker_spec(w, impl, measure, settings)
                env = worker_env(settings, measure)
                raw = run_worker(spec, settings.threads, settings.timeout_s, env)
                row = summarise(w, impl, measure, raw)
                rows.append(row)
                done = (
                    f"{row['median']:.4g} {row['unit']}" if row["status"] == "ok" else row["status"]
                )
                log(f"[bench] {measure} {w.name} {impl}: {done}")
    add_ratios(rows, {w.name: w for w in workloads})
    return {
        "tool": "tokenrl bench",
        "measures": measures,
        "machine": machine_info(settings.device),
        "versions": versions(),
        "settings": {
            "device": settings.device,
            "dtype": settings.dtype,
            "threads": settings.threads,
            "warmup": settings.warmup,
            "repeats_memory": settings.repeats_memory,
            "repeats_speed": settings.repeats_speed,
            "seed": settings.seed,
            "trl_gradient_checkpointing": settings.trl_gc,
            "ours_gradient_checkpointing": settings.ours_gc,
            "fresh_process_per_configuration": True,
            "memory_runs_env": worker_env(settings, "memory"),
        },
        "workloads": {
            w.name: {"kind": w.kind, "description": w.describe(), "notes": w.notes}
            for w in workloads
        },
        "rows": rows,
    }


# ---------------------------------------------------------------------------------------------
# the table


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def _versus(r: dict[str, Any]) -> str:
    if r["impl"] == "trl":
        return "1.00x" if r.get("status") == "ok" else "-"
    if r.get("ratio_to_trl") is None:
        return "-"
    if r["measure"] == "memory":
        return f"{r['ratio_to_trl']:.2f}x"
    x = r["speedup_vs_trl"]
    return f"{x:.2f}x faster" if x >= 1 else f"{x:.2f}x (slower)"


def _goal(r: dict[str, Any]) -> str:
    if r.get("goal") is None:
        return "-"
    return f"<= {r['goal']:.2f}x" if r["measure"] == "memory" else f">= {r['goal']:.1f}x faster"


def _met(r: dict[str, Any]) -> str:
    if r.get("met") is None:
        return "-" if r.get("goal") is None else "n/a"
    return "met" if r["met"] else "NOT met"


MEASURE_LABEL = {
    "peak_added_mb": "peak added memory (MB)",
    "update_s": "update time (s)",
    "completions_per_s": "whole step (completions/s)",
}


def format_report(report: dict[str, Any]) -> str:
    """The report as Markdown: header (machine, versions, settings), one table, workload notes."""
    m, v, s = report["machine"], report["versions"], report["settings"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM"
        + (f"; GPU {m['gpu']} ({m['gpu_memory_gib']} GiB)" if m.get("gpu") else ""),
        "versions: " + ", ".join(f"{k} {val or 'not installed'}" for k, val in v.items()),
        f"settings: device {s['device']}, {s['dtype']}, {s['threads']} threads, {s['warmup']} warm-up, "
        f"median of {s['repeats_memory']} (memory) / {s['repeats_speed']} (speed) repeats [min-max], "
        "each configuration in a fresh process"
        + (
            f"; memory runs with {' '.join(f'{k}={v}' for k, v in s['memory_runs_env'].items())}"
            if s.get("memory_runs_env")
            else ""
        ),
        "",
        "| workload | measure | impl | median | min-max | vs TRL | goal | goal met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if r.get("status") != "ok":
            lines.append(
                f"| {r['workload']} | {r['measure']} | {r['impl']} | {r.get('status')} | | | {_goal(r)} | |"
            )
            continue
        label = MEASURE_LABEL[r["metric"]]
        lines.append(
            f"| {r['workload']} | {label} | {r['impl']} | {_fmt(r['median'])} | "
            f"{_fmt(r['min'])}-{_fmt(r['max'])} | {_versus(r)} | {_goal(r)} | {_met(r)} |"
        )
    lines.append("")
    for name, w in report["workloads"].items():
        lines.append(f"- {name}: {w['description']}" + (f" ({w['notes']})" if w["notes"] else ""))
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")

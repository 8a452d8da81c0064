"""Update memory and time against completion length and group size, on workload A's model.

Two sweeps (or the full grid with ``grid=True``): completion length L in ``lengths`` at G = 8,
and G in ``groups`` at L = 256 (the middle values when 8 or 256 are not listed). Each point is one
fresh process (as ``tokenrl bench``) running
``warmup`` + ``repeats`` updates with the RSS sampler on; the time comes from the same runs (the
sampler thread wakes every 2 ms; ``tokenrl bench speed`` times without it).
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from typing import Any

from benchmarks.trl.measure import trl_available
from benchmarks.trl.run import TRL_MISSING, Settings, run_worker, summarise, worker_env, worker_spec
from benchmarks.trl.workloads import IMPLS, WORKLOADS
from tokenrl.machine import machine_info, versions

LENGTHS = (64, 128, 256, 512, 1024)
GROUPS = (4, 8, 16)


def centre(lengths, groups) -> tuple[int, int]:
    """The (L, G) both sweeps pass through: (256, 8) when listed, else the middle values."""
    L = 256 if 256 in lengths else sorted(lengths)[len(lengths) // 2]
    G = 8 if 8 in groups else sorted(groups)[len(groups) // 2]
    return L, G


def scaling_points(lengths, groups, grid: bool) -> list[tuple[int, int]]:
    """(L, G) pairs: the two one-dimensional sweeps through :func:`centre`, or the full grid."""
    if grid:
        return [(L, G) for G in groups for L in lengths]
    Lc, Gc = centre(lengths, groups)
    points = [(L, Gc) for L in lengths] + [(Lc, G) for G in groups]
    return list(dict.fromkeys(points))  # drop the repeated centre, keep order


def run_scaling(
    settings: Settings,
    *,
    workload: str = "A",
    lengths=LENGTHS,
    groups=GROUPS,
    grid: bool = False,
    impls: tuple[str, ...] = IMPLS,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    w = WORKLOADS[workload]
    have_trl = trl_available()
    rows = []
    for L, G in scaling_points(lengths, groups, grid):
        for impl in impls:
            if impl == "trl" and not have_trl:
                rows.append({"impl": impl, "completion_len": L, "group": G, "status": TRL_MISSING})
                continue
            log(f"[scaling] L={L} G={G} {impl} ...")
            spec = worker_spec(w, impl, "memory", settings, completion_len=L, group=G)
            raw = run_worker(
                spec, settings.threads, settings.timeout_s, worker_env(settings, "memory")
            )
            mem = summarise(w, impl, "memory", raw)
            row: dict[str, Any] = {
                "impl": impl,
                "completion_len": L,
                "group": G,
                "status": mem["status"],
            }
            if mem["status"] == "ok":
                row["peak_added_mb"] = {k: mem[k] for k in ("median", "min", "max")}
                times = raw["times_s"]
                row["update_s"] = {
                    "median": statistics.median(times),
                    "min": min(times),
                    "max": max(times),
                }
                row["info"] = mem["info"]
            rows.append(row)
            log(
                f"[scaling] L={L} G={G} {impl}: {row.get('peak_added_mb', {}).get('median', row['status'])}"
            )
    return {
        "tool": "tokenrl bench scaling",
        "workload": workload,
        "model": w.model.describe(),
        "machine": machine_info(settings.device),
        "versions": versions(),
        "settings": {
            "device": settings.device,
            "dtype": settings.dtype,
            "threads": settings.threads,
            "warmup": settings.warmup,
            "repeats": settings.repeats_memory,
            "grid": grid,
            "memory_runs_env": worker_env(settings, "memory"),
        },
        "centre": dict(zip(("completion_len", "group"), centre(lengths, groups))),
        "rows": rows,
    }


def plot_scaling(report: dict[str, Any], path: str) -> None:
    """Memory and time against L (at G = 8) and against G (at L = 256), one line per impl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in report["rows"] if r["status"] == "ok"]
    Lc, Gc = report["centre"]["completion_len"], report["centre"]["group"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for col, (axis_key, fixed_key, fixed_val, label) in enumerate(
        [
            ("completion_len", "group", Gc, f"completion length L (G = {Gc})"),
            ("group", "completion_len", Lc, f"G (L = {Lc})"),
        ]
    ):
        for impl in dict.fromkeys(r["impl"] for r in ok):
            pts = sorted(
                (r[axis_key], r) for r in ok if r["impl"] == impl and r[fixed_key] == fixed_val
            )
            if not pts:
                continue
            xs = [x for x, _ in pts]
            for row_i, metric in enumerate(("peak_added_mb", "update_s")):
                ys = [r[metric]["median"] for _, r in pts]
                axes[row_i][col].plot(xs, ys, marker="o", label=impl)
        for row_i, ylabel in enumerate(("peak added memory (MB)", "update time (s)")):
            ax = axes[row_i][col]
            ax.set_xscale("log", base=2)
            ax.set_xlabel(label)
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            ax.legend()
    fig.suptitle(
        f"one update on workload {report['workload']} "
        f"({report['settings']['threads']} threads, {report['settings']['device']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_scaling(report: dict[str, Any]) -> str:
    lines = [
        "| impl | L | G | peak added MB (median, min-max) | update s (median, min-max) |",
        "|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if r["status"] != "ok":
            lines.append(
                f"| {r['impl']} | {r['completion_len']} | {r['group']} | {r['status']} | |"
            )
            continue
        m, t = r["peak_added_mb"], r["update_s"]
        lines.append(
            f"| {r['impl']} | {r['completion_len']} | {r['group']} | {m['median']:.0f} ({m['min']:.0f}-{m['max']:.0f}) "
            f"| {t['median']:.3g} ({t['min']:.3g}-{t['max']:.3g}) |"
        )
    return "\n".join(lines)

"""The quickstart's report: ``report.json``, ``report.md`` and ``report.png``."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tokenrl.recipes.quickstart.plan import QuickstartPlan


def machine() -> dict[str, Any]:
    """Where the report was made; ``processor`` is the CPU model: the numbers (the warm-up's
    included) differ between CPU models, whose float kernels round differently."""
    import torch

    from tokenrl.machine import cpu_model

    return {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "openmp": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")},
    }


def build_report(
    plan: QuickstartPlan,
    base_model: str,
    warmup: dict[str, Any] | None,
    methods: dict[str, dict[str, Any]],
    total_seconds: float,
) -> dict[str, Any]:
    """The figures of report.json (report.md shows the same)."""
    first = next(iter(methods.values()))
    before = first["before"]
    return {
        "settings": {
            "model": plan.model,
            "task": plan.task,
            "task_options": plan.task_options,
            "seed": plan.seed,
            "steps": plan.steps,
            "algos": list(plan.algos),
            "warmup": asdict(plan.warmup) if plan.is_tiny else None,
            "rl": plan.rl_settings,
            "jobs": plan.job_count,
            "threads_per_method": plan.child_threads,
        },
        "machine": machine(),
        "base": {
            "model": base_model,
            "accuracy": before["accuracy"],
            "ci95": before["ci95"],
            "n": before["n"],
            "warmup": warmup,
        },
        "methods": {
            algo: {
                "accuracy": s["after"]["accuracy"],
                "ci95": s["after"]["ci95"],
                "gain_points": s.get("gain_points"),
                "tokens_update_frac": s.get("tokens_update_frac"),
                "peak_rss_mb": s.get("peak_rss_mb"),
                "train_seconds": s.get("train_seconds"),
                "cpu_seconds": s.get("train_cpu_seconds"),
                "wall_seconds": s["wall_seconds"],
                "run_dir": s["run_dir"],
            }
            for algo, s in methods.items()
        },
        "total_seconds": total_seconds,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def report_markdown(report: dict[str, Any]) -> str:
    s, base = report["settings"], report["base"]
    lo, hi = base["ci95"]
    lines = [
        f"# tokenrl quickstart: {s['task']}, seed {s['seed']}",
        "",
        f"Base: `{s['model']}`"
        + (f" after {base['warmup']['steps']} supervised warm-up steps" if base.get("warmup") else "")
        + f"; {s['steps']} RL steps per method with LoRA; held-out accuracy is greedy on {base['n']} test problems"
        " never used in training.",
        "",
        "| model | held-out accuracy % (95% CI) | change (points) | completion tokens in the loss % "
        "| peak memory MB | RL CPU time s | wall time s |",
        "|---|---|---|---|---|---|---|",
        f"| base | {_pct(base['accuracy'])} ({_pct(lo)}-{_pct(hi)}) | - | - | - | - | "
        f"{base['warmup']['seconds']:.0f} |" if base.get("warmup") else
        f"| base | {_pct(base['accuracy'])} ({_pct(lo)}-{_pct(hi)}) | - | - | - | - | - |",
    ]  # fmt: skip
    for algo, m in report["methods"].items():
        lo, hi = m["ci95"]
        gain = "-" if m["gain_points"] is None else f"{m['gain_points']:+.1f}"
        cpu = "-" if m.get("cpu_seconds") is None else f"{m['cpu_seconds']:.0f}"
        lines.append(
            f"| {algo} | {_pct(m['accuracy'])} ({_pct(lo)}-{_pct(hi)}) | {gain} | {_pct(m['tokens_update_frac'])} "
            f"| {m['peak_rss_mb'] or 0:.0f} | {cpu} | {m['wall_seconds']:.0f} |"
        )
    mc = report["machine"]
    jobs, threads = s.get("jobs", 1), s.get("threads_per_method")
    at_once = (
        f"The {len(report['methods'])} methods trained {jobs} at a time"
        + (f", {threads} torch thread(s) each" if threads else "")
        + "; RL CPU time (the training steps' process CPU time, all threads) compares their cost, as wall "
        "times overlap when they run at once. "
    )
    lines += [
        "",
        f"Total {report['total_seconds']:.0f} s on {mc['cpu_count']} CPU cores ({mc['processor']}), "
        f"torch {mc['torch']}. "
        + at_once
        + "Peak memory is each method's training process (resident set). Run folders: "
        + ", ".join(f"`{m['run_dir']}`" for m in report["methods"].values())
        + ".",
    ]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> None:
    from tokenrl.report import plot_runs
    from tokenrl.runlog import read_jsonl, write_atomic

    write_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
    write_atomic(out / "report.md", report_markdown(report))
    runs = {
        algo: read_jsonl(Path(m["run_dir"]) / "metrics.jsonl")
        for algo, m in report["methods"].items()
    }
    s = report["settings"]
    plot_runs(runs, out / "report.png", f"tokenrl quickstart: {s['task']}, seed {s['seed']}")


# ---------------------------------------------------------------------------------------------
# progress

"""``tokenrl quickstart``: the paper's experiment in miniature, on a CPU, in minutes.

1. A weak base model: by default the tiny local Qwen2 after a short supervised warm-up on the
   task's train split (:mod:`tokenrl.recipes.quickstart.warmup`), stopped once it answers 40% of a held-out slice of
   train problems. A pretrained ``--model`` is used as it is.
2. Full-token GRPO, S-GRPO and T-SPMO, each with a fresh LoRA adapter on that base, the same
   seed and the same budget, each in its own ``tokenrl train`` process (so that each one's peak
   memory is its own; all at once by default, the CPU cores shared out, ``--jobs``), evaluated
   greedily on the test split before and after.
3. ``report.md`` / ``report.json`` / ``report.png`` in the output folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tokenrl.config import save_config
from tokenrl.errors import RunError
from tokenrl.recipes.quickstart.plan import QuickstartPlan
from tokenrl.recipes.quickstart.report import build_report, write_report


def run_quickstart(plan: QuickstartPlan, *, show_progress: bool = True) -> dict[str, Any]:
    """Warm-up (tiny model), then each method in its own process; writes and returns the report."""
    t_start = time.perf_counter()
    plan.out.mkdir(parents=True, exist_ok=True)
    total = plan.steps * len(plan.algos) + (plan.warmup.max_steps if plan.is_tiny else 0)
    with Bar(total, show=show_progress) as bar:
        if plan.is_tiny:
            base_model, warmup_info = make_base(plan, bar)
        else:
            base_model, warmup_info = plan.model, None
        done = bar.completed
        bar.describe("RL: " + ", ".join(plan.algos))
        methods = train_methods(plan, base_model, lambda steps: bar.set(done + sum(steps.values())))
    report = build_report(plan, base_model, warmup_info, methods, time.perf_counter() - t_start)
    write_report(plan.out, report)
    return report


def make_base(plan: QuickstartPlan, bar: Bar) -> tuple[str, dict[str, Any]]:
    """Build the tiny model, warm it up on the train split, save it to ``out/base``."""
    import torch

    from tokenrl.models import build_tiny
    from tokenrl.recipes.quickstart.warmup import save_base, supervised_warmup

    if plan.threads:
        torch.set_num_threads(plan.threads)
    torch.manual_seed(plan.seed)
    model, tok = build_tiny(plan.model)
    task = plan.warmup_task()
    bar.describe("supervised warm-up")

    def on_step(step: int, loss: float, val: float | None) -> None:
        bar.set(step)
        if val is not None:
            bar.describe(f"supervised warm-up (train-slice accuracy {100 * val:.0f}%)")

    info = supervised_warmup(
        model, tok, task, replace(plan.warmup, seed=plan.seed), on_step=on_step
    )
    folder = save_base(model, tok, plan.out / "base")
    bar.set(plan.warmup.max_steps)
    return str(folder), info


@dataclass
class MethodRun:
    """One method's ``tokenrl train`` child process while it runs."""

    algo: str
    child: subprocess.Popen
    run_dir: Path
    log_path: Path
    started: float


def start_method(plan: QuickstartPlan, base_model: str, algo: str) -> MethodRun:
    """Launch ``tokenrl train`` for one method in a child process.

    The child writes ``out/ALGO`` (config.yaml, metrics.jsonl, eval.json, adapter); its output
    goes to ``out/logs/ALGO.log``; its config is saved as ``out/configs/ALGO.yaml``.
    """
    cfg = plan.rl_config(base_model, algo)
    (plan.out / "configs").mkdir(exist_ok=True)
    (plan.out / "logs").mkdir(exist_ok=True)
    cfg_path = plan.out / "configs" / f"{algo}.yaml"
    save_config(cfg, cfg_path)
    run_dir = plan.out / algo
    cmd = [
        sys.executable,
        "-m",
        "tokenrl",
        "train",
        str(cfg_path),
        "--out",
        str(run_dir),
        "--overwrite",
    ]
    if plan.child_threads:
        cmd += ["--threads", str(plan.child_threads)]
    log_path = plan.out / "logs" / f"{algo}.log"
    with open(log_path, "w", encoding="utf-8") as log:  # the child keeps its own handle
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(plan))
    return MethodRun(algo, child, run_dir, log_path, time.perf_counter())


def child_env(plan: QuickstartPlan) -> dict[str, str]:
    """The environment of a method's process: this one's, without a progress bar, and without
    GOMP_SPINCOUNT when methods run at once: they share the cores, where spinning idle OpenMP
    threads slow each other down (the warm-up, alone, spins; see ``tokenrl.machine.apply_thread_policy``)."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if plan.job_count > 1:
        env.pop("GOMP_SPINCOUNT", None)
    return env


def finish_method(run: MethodRun) -> dict[str, Any]:
    """The summary of a method whose process has ended, plus its wall time; raises
    :class:`RunError` with the end of its log if it failed."""
    wall = time.perf_counter() - run.started
    if run.child.returncode != 0:
        tail = run.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        raise RunError(
            f"{run.algo} training failed (exit status {run.child.returncode}); end of {run.log_path}:\n"
            + "\n".join(tail)
        )
    summary = json.loads((run.run_dir / "eval.json").read_text())
    return {**summary, "wall_seconds": wall, "run_dir": str(run.run_dir)}


def train_methods(
    plan: QuickstartPlan, base_model: str, on_progress: Callable[[dict[str, int]], None]
) -> dict[str, dict[str, Any]]:
    """Train every method of the plan, ``plan.job_count`` processes at a time; their summaries
    in the plan's order. ``on_progress({algo: steps done})`` is called while they run.

    If one fails (or this process is interrupted), the others are stopped and the error raised.
    """
    queue, running = list(plan.algos), []
    results: dict[str, dict[str, Any]] = {}
    steps = {algo: 0 for algo in plan.algos}
    try:
        while queue or running:
            while queue and len(running) < plan.job_count:
                running.append(start_method(plan, base_model, queue.pop(0)))
            time.sleep(0.5)
            for run in running:
                steps[run.algo] = last_step(run.run_dir / "metrics.jsonl")
            on_progress(dict(steps))
            for run in [r for r in running if r.child.poll() is not None]:
                running.remove(run)
                results[run.algo] = finish_method(run)
                steps[run.algo] = plan.steps
    except BaseException:
        for run in running:
            run.child.terminate()
        for run in running:
            run.child.wait()
        raise
    on_progress(dict(steps))
    return {algo: results[algo] for algo in plan.algos}


def train_method(
    plan: QuickstartPlan, base_model: str, algo: str, on_step: Callable[[int], None]
) -> dict[str, Any]:
    """One method alone (``tokenrl train`` in a child process): its summary plus the wall time."""
    alone = replace(plan, algos=(algo,), jobs=1)
    return train_methods(alone, base_model, lambda steps: on_step(steps[algo]))[algo]


def last_step(metrics: Path) -> int:
    """The highest training step recorded so far in a run's metrics.jsonl (0 when none)."""
    if not metrics.exists():
        return 0
    step = 0
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            step = max(step, int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError):
            continue  # a line being written right now
    return step


class Bar:
    """One rich progress bar over the whole quickstart (warm-up steps + every method's steps)."""

    def __init__(self, total: int, *, show: bool = True) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            disable=not show,
        )
        self.task = self.progress.add_task("starting", total=total)
        self.completed = 0

    def __enter__(self) -> Bar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def set(self, completed: int) -> None:
        self.completed = completed
        self.progress.update(self.task, completed=completed)

    def describe(self, text: str) -> None:
        self.progress.update(self.task, description=text)

"""``tokenrl quickstart``: the paper's experiment in miniature, on a CPU, in minutes.

1. A weak base model: by default the tiny local Qwen2 after a short supervised warm-up on the
   task's train split (:mod:`tokenrl.warmup`), stopped once it answers 40% of a held-out slice of
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
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenrl.config import Config, load_config, save_config
from tokenrl.errors import RunError
from tokenrl.warmup import WarmupConfig

if TYPE_CHECKING:
    from tokenrl.tasks import Task

DEFAULT_MODEL = "tiny:hidden=256,layers=4,heads=4,kv_heads=2,inter=1024"
DEFAULT_TASK = "multiplication:3x1"
ALGOS = ("grpo", "sgrpo", "tspmo")

# The quickstart's RL settings for a warmed-up tiny model on compact multiplication ("891*4=" ->
# "3564"): answers are at most 5 tokens, so S-GRPO's alpha is lowered to 2 (with the default 16
# it would select every token, the same as GRPO); many prompts with small groups (128 x 4) learned
# faster than 32 x 16 at the same 512 completions a step, and skip more all-equal groups in the
# update; 5 new tokens hold the longest answer (4 digits) and its newline; sampling with the
# adapter folded into the weights is faster and samples the same tokens. How these were chosen:
# docs/quickstart.md.
TINY_RL: dict[str, Any] = {
    "task.style": "compact",
    "task.eval_limit": None,
    "rollout.group_size": 4,
    "rollout.prompts_per_step": 128,
    "rollout.max_new_tokens": 5,
    "rollout.merge_lora": True,
    "rollout.temperature": 1.0,
    "rollout.batch_size": 512,
    "optim.lr": 1e-3,
    "optim.warmup_steps": 0,
    "optim.schedule": "constant",
    "sgrpo.alpha": 2,
    "sgrpo.p": 0.5,
    "train.checkpoint_every": 0,
    "log.samples_every": 0,
    "log.progress": False,
}
# A pretrained chat model writes longer answers: smaller batches, longer completions.
PRETRAINED_RL: dict[str, Any] = {
    "task.eval_limit": 100,
    "rollout.group_size": 8,
    "rollout.prompts_per_step": 4,
    "rollout.max_new_tokens": 48,
    "optim.lr": 1e-4,
    "train.checkpoint_every": 0,
    "log.samples_every": 0,
    "log.progress": False,
}

# settings the plan fills from its own fields, with the flag that chooses each
_PLAN_KEYS = {
    "model.name": "--model",
    "task.name": "--task",
    "task.options": "--seed (the problems follow it)",
    "train.algo": "--algos",
    "train.steps": "--steps",
    "train.seed": "--seed",
    "train.eval_every": "the default (5 evaluations a run)",
}


@dataclass(frozen=True)
class QuickstartPlan:
    """Everything a quickstart run does; the CLI fills it from its flags."""

    out: Path
    model: str = DEFAULT_MODEL
    task: str = DEFAULT_TASK
    seed: int = 0
    steps: int = 225
    """RL steps of each method."""
    algos: tuple[str, ...] = ALGOS
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    """Used for a ``tiny`` model only (a pretrained model is its own base)."""
    task_options: dict[str, Any] = field(default_factory=lambda: {"n_train": 4000, "n_test": 300})
    """Task options for the built-in multiplication task (300 held-out problems, 4,000 train)."""
    threads: int | None = None
    """torch threads of the warm-up and of each method's process (default: see ``child_threads``)."""
    jobs: int | None = None
    """Methods trained at once, each in its own process (default: all of them)."""
    eval_every: int | None = None
    """Held-out evaluations during training (default: 5 per run)."""
    rl_overrides: dict[str, Any] = field(default_factory=dict)
    """``tokenrl train`` settings that replace the quickstart's own (``{"rollout.temperature": 0.7}``)."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        unknown = [a for a in self.algos if a not in ALGOS]
        if unknown or not self.algos:
            raise ValueError(f"--algos {','.join(self.algos)}: choose from {', '.join(ALGOS)}")
        reserved = sorted(set(self.rl_overrides) & set(_PLAN_KEYS))
        if reserved:
            raise ValueError(
                f"--set {reserved[0]}: the quickstart sets this one itself; use "
                f"{_PLAN_KEYS[reserved[0]]}"
            )
        if self.jobs is not None and self.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {self.jobs}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.is_tiny and not self.task.startswith("multiplication"):
            raise ValueError(
                f"--task {self.task} with a tiny model: the warm-up builds a base for multiplication only; "
                "pass a pretrained --model (e.g. smollm2-135m-instruct) for other tasks"
            )

    @property
    def is_tiny(self) -> bool:
        return self.model == "tiny" or self.model.startswith("tiny:")

    @property
    def job_count(self) -> int:
        """Methods trained at once: ``jobs``, at most one per method (default: every method)."""
        return min(self.jobs or len(self.algos), len(self.algos))

    @property
    def child_threads(self) -> int | None:
        """torch threads of each method's process: ``threads`` if given; else the CPU cores
        shared out between the methods that run at once (at least 1); ``None`` (torch's own
        choice) when they run one after another."""
        if self.threads is not None:
            return self.threads
        if self.job_count == 1:
            return None
        return max(1, (os.cpu_count() or 1) // self.job_count)

    @property
    def rl_settings(self) -> dict[str, Any]:
        """The quickstart's RL settings for this model, with ``rl_overrides`` applied."""
        return {**(TINY_RL if self.is_tiny else PRETRAINED_RL), **self.rl_overrides}

    @property
    def split_options(self) -> dict[str, Any]:
        """Options that give the task this seed's train/test split: ``task_options`` and the seed
        for the built-in multiplication task, none for other tasks (their split is fixed)."""
        return {**self.task_options, "seed": self.seed} if self.task.startswith("multiplication") else {}

    def warmup_task(self) -> Task:
        """The task the supervised warm-up trains on: ``task`` in the compact style, on this
        seed's split (the RL configs use the same split)."""
        from tokenrl.tasks import get_task

        return get_task(self.task, style="compact", **self.split_options)

    def rl_config(self, base_model: str, algo: str) -> Config:
        """The ``tokenrl train`` config of one method (validated like any config)."""
        settings = self.rl_settings
        settings.update(
            {
                "model.name": base_model,
                "task.name": self.task,
                "task.options": self.split_options,
                "train.algo": algo,
                "train.steps": self.steps,
                "train.seed": self.seed,
                "train.eval_every": self.eval_every or max(1, self.steps // 5),
            }
        )
        return load_config(None, list(settings.items()))


# ---------------------------------------------------------------------------------------------
# the run


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
    from tokenrl.warmup import save_base, supervised_warmup

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

    info = supervised_warmup(model, tok, task, replace(plan.warmup, seed=plan.seed), on_step=on_step)
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
    cmd = [sys.executable, "-m", "tokenrl", "train", str(cfg_path), "--out", str(run_dir), "--overwrite"]
    if plan.child_threads:
        cmd += ["--threads", str(plan.child_threads)]
    log_path = plan.out / "logs" / f"{algo}.log"
    with open(log_path, "w", encoding="utf-8") as log:  # the child keeps its own handle
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(plan))
    return MethodRun(algo, child, run_dir, log_path, time.perf_counter())


def child_env(plan: QuickstartPlan) -> dict[str, str]:
    """The environment of a method's process: this one's, without a progress bar, and without
    GOMP_SPINCOUNT when methods run at once: they share the cores, where spinning idle OpenMP
    threads slow each other down (the warm-up, alone, spins; see ``cli.spin_while_alone``)."""
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
            f"{run.algo} training failed (exit status {run.child.returncode}); end of {run.log_path}:\n" + "\n".join(tail)
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


# ---------------------------------------------------------------------------------------------
# the report


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
        "| model | held-out accuracy % (95% CI) | change (points) | completion tokens in the loss % | peak memory MB | RL CPU time s | wall time s |",
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
        f"Total {report['total_seconds']:.0f} s on {mc['cpu_count']} CPU cores ({mc['processor']}), torch {mc['torch']}. "
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
    runs = {algo: read_jsonl(Path(m["run_dir"]) / "metrics.jsonl") for algo, m in report["methods"].items()}
    s = report["settings"]
    plot_runs(runs, out / "report.png", f"tokenrl quickstart: {s['task']}, seed {s['seed']}")


# ---------------------------------------------------------------------------------------------
# progress


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

"""``tokenrl quickstart``: the command's options and what it runs (the CLI imports this module
only when the command is used)."""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import replace
from pathlib import Path

from tokenrl.cli import parse_key_values, setup_torch
from tokenrl.errors import UsageError
from tokenrl.recipes.quickstart.plan import ALGOS, DEFAULT_MODEL, DEFAULT_TASK, QuickstartPlan
from tokenrl.recipes.quickstart.report import report_markdown
from tokenrl.recipes.quickstart.run import run_quickstart
from tokenrl.recipes.quickstart.warmup import WarmupConfig


def add_arguments(p: argparse.ArgumentParser) -> None:

    p.add_argument("--out", default=None, help="output folder (default: runs/quickstart-TIME)")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="a tiny:... spec (warmed up first) or a pretrained model (default: %(default)s)",
    )
    p.add_argument("--task", default=DEFAULT_TASK, help="task name (default: %(default)s)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the warm-up, the problems and every RL run (default: %(default)s)",
    )
    p.add_argument(
        "--steps", type=int, default=225, help="RL steps per method (default: %(default)s)"
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="most supervised warm-up steps (default: 1200; it stops earlier at 40%% validation accuracy)",
    )
    p.add_argument(
        "--warmup-target",
        type=float,
        default=None,
        help="validation accuracy at which the warm-up stops (default: 0.4)",
    )
    p.add_argument(
        "--algos",
        default=",".join(ALGOS),
        help="methods to train, comma-separated (default: %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads of the warm-up and of each method "
        "(default: the cores shared out between the methods that run at once)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="methods trained at once, each in its own process (default: all; 1: one after another)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a tokenrl train setting replacing the quickstart's, e.g. rollout.temperature=0.7 (repeatable)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out or f"runs/quickstart-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose another --out")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"{out} is not empty; pass --overwrite to replace it, or another --out")
    try:
        warmup = WarmupConfig()
        if args.warmup_steps is not None:
            warmup = replace(warmup, max_steps=args.warmup_steps)
        if args.warmup_target is not None:
            warmup = replace(warmup, target_accuracy=args.warmup_target)
        plan = QuickstartPlan(
            out=out,
            model=args.model,
            task=args.task,
            seed=args.seed,
            steps=args.steps,
            algos=tuple(a.strip() for a in args.algos.split(",") if a.strip()),
            warmup=warmup,
            threads=args.threads,
            jobs=args.jobs,
            rl_overrides=parse_key_values(args.set, "--set", "rollout.temperature=0.7"),
        )
        for algo in plan.algos:
            plan.rl_config("tiny", algo)  # a bad task name or option fails here, before any work
    except ValueError as err:  # ConfigError is a ValueError
        raise UsageError(str(err)) from None
    setup_torch(args)
    if out.exists() and args.overwrite:
        shutil.rmtree(out)
    report = run_quickstart(plan, show_progress=not args.no_progress)
    print(report_markdown(report))
    print(f"report: {out / 'report.md'}, {out / 'report.json'}, {out / 'report.png'}")
    return 0

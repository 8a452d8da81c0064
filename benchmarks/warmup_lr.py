"""How many supervised warm-up steps the quickstart's base needs, for a given warm-up lr recipe.

The quickstart's warm-up (full-parameter AdamW, lr 1e-3 constant, 64 problems a step) stops at
the first check where the held-out train slice reaches 40%; on the 2-core machine it is a third
of the quickstart's 10 minutes. This runs the same warm-up alone (no RL) for one seed with
``WarmupConfig`` fields replaced, and prints the steps it took and its last checks:

    python benchmarks/warmup_lr.py --seed 0 --threads 1 --set lr=2e-3 --set lr_warmup=100 --set grad_clip=1.0

Steps, not seconds, are the figure to compare (the float rounding, and so the run, also depends
on the thread count and the CPU model). The figures in docs/quickstart.md come from it.
"""

from __future__ import annotations

import argparse
import json
import typing
from dataclasses import replace

import torch

from tokenrl.cli import UsageError, parse_key_values
from tokenrl.config import coerce
from tokenrl.models import build_tiny
from tokenrl.quickstart import QuickstartPlan
from tokenrl.warmup import WarmupConfig, supervised_warmup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a WarmupConfig field, repeatable")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fields = typing.get_type_hints(WarmupConfig)
    try:
        raw = parse_key_values(args.set, "--set", "lr=2e-3")
    except UsageError as err:
        ap.error(str(err))
    changes = {}
    for key, value in raw.items():
        if key not in fields:
            ap.error(f"--set {key}: not a WarmupConfig field ({', '.join(fields)})")
        changes[key] = coerce(value, fields[key], key)
    plan = QuickstartPlan(out=None, seed=args.seed)  # type: ignore[arg-type]  # only its model, task and options
    torch.manual_seed(plan.seed)  # as the quickstart does before building the tiny model
    model, tok = build_tiny(plan.model)
    task = plan.warmup_task()
    cfg = replace(WarmupConfig(), seed=plan.seed, **changes)
    info = supervised_warmup(model, tok, task, cfg)
    print(json.dumps({"seed": plan.seed, **changes, "steps": info["steps"], "reached_target": info["reached_target"],
                      "seconds": round(info["seconds"], 1), "last_checks": info["checks"][-6:]}))  # fmt: skip


if __name__ == "__main__":
    main()

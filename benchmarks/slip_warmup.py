"""What RL learns fast and what it learns slowly: a planted slip against the arithmetic itself.

The quickstart's base (tiny Qwen2 after a supervised warm-up on 3x1 multiplication) gained only
7-15 points in 100 RL steps of 32 prompts x 16 completions, because what it gets wrong is the
arithmetic. This experiment gives the base a *behaviour* to unlearn instead: in the warm-up, a
share of the answers carry a stray trailing zero ("891*4=35640", the product times ten), so the
base knows the arithmetic about as well but often writes the slip. Each method then trains as in
the quickstart (its RL settings, with the 32 x 16 groups it used when the documented figures were
measured; the same base for all) and we report held-out accuracy, the slip rate and the accuracy
with slips forgiven (the arithmetic alone), before and after.

    python benchmarks/slip_warmup.py [--seed 0] [--slip 0.5] [--warmup-steps 1400] [--steps 60]
        [--algos grpo,sgrpo,tspmo] [--threads N] [--out runs/slip-SEED]

Writes OUT/summary.json and prints a table. The figures in docs/quickstart.md come from it.
Not part of the quickstart: the slip is planted on purpose, so the gain measures how quickly RL
removes a behaviour the base already shows half of the time, not new skill.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from tokenrl.evaluation import evaluate
from tokenrl.models import build_tiny
from tokenrl.recipes.quickstart.plan import DEFAULT_MODEL, QuickstartPlan
from tokenrl.recipes.quickstart.run import train_method
from tokenrl.recipes.quickstart.warmup import collate, encode_pairs, save_base
from tokenrl.runlog import read_jsonl

# the quickstart's settings when the documented slip figures were measured (it now uses 128 x 4
# groups and at most 5 new tokens; a slipped answer such as "35640" plus its newline needs 6)
SLIP_RL = {"rollout.prompts_per_step": 32, "rollout.group_size": 16, "rollout.max_new_tokens": 6}


def slip_stats(records: list[dict[str, Any]]) -> dict[str, float]:
    """Accuracy, share of answers that are the product with a trailing zero, and both together."""
    n = len(records)
    right = sum(r["completion"].strip() == r["gold"] for r in records)
    slips = sum(r["completion"].strip() == r["gold"] + "0" for r in records)
    return {
        "accuracy": right / n,
        "slip_rate": slips / n,
        "slip_forgiven_accuracy": (right + slips) / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--slip",
        type=float,
        default=0.5,
        help="share of warm-up answers written with a trailing zero",
    )
    ap.add_argument("--warmup-steps", type=int, default=1400)
    ap.add_argument("--steps", type=int, default=60, help="RL steps per method")
    ap.add_argument("--algos", default="grpo,sgrpo,tspmo")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path(f"runs/slip-{args.seed}")
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    # the quickstart's base model and task, with the slip planted in the warm-up data
    plan = QuickstartPlan(
        out=out,
        seed=args.seed,
        steps=args.steps,
        algos=tuple(args.algos.split(",")),
        threads=args.threads,
        rl_overrides=SLIP_RL,
    )
    torch.manual_seed(args.seed)
    model, tok = build_tiny(DEFAULT_MODEL)
    task = plan.warmup_task().resolved(tok)
    fit = task.examples("train")[plan.warmup.validation :]
    clean = encode_pairs(task, tok, fit)
    slipped = [
        (p, tok(e.answer + "0" + task.stop[0], add_special_tokens=False)["input_ids"])
        for (p, _), e in zip(clean, fit, strict=True)
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.warmup.lr, weight_decay=0.0)
    draws = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for _ in range(args.warmup_steps):
        idx = torch.randint(len(clean), (plan.warmup.batch_size,), generator=draws).tolist()
        flip = (torch.rand(plan.warmup.batch_size, generator=draws) < args.slip).tolist()
        loss = model(
            **collate(
                [(slipped if f else clean)[i] for i, f in zip(idx, flip, strict=True)],
                tok.pad_token_id,
            )
        ).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    warmup_seconds = time.perf_counter() - t0
    model.eval()
    test = task.examples("test")
    before = slip_stats(
        evaluate(model, tok, task, test, max_new_tokens=8, batch_size=len(test)).records
    )
    base = save_base(model, tok, out / "base")

    summary: dict[str, Any] = {
        "settings": vars(args) | {"out": str(out)},
        "warmup_seconds": warmup_seconds,
        "base": before,
        "methods": {},
    }
    for algo in plan.algos:  # each in its own `tokenrl train` process, as in the quickstart
        train_method(plan, str(base), algo, on_step=lambda step: None)
        records = read_jsonl(out / algo / "eval_completions.jsonl")
        curve = [
            (row["step"], row["eval/accuracy"])
            for row in read_jsonl(out / algo / "metrics.jsonl")
            if "eval/accuracy" in row
        ]
        summary["methods"][algo] = slip_stats(records) | {"curve": curve}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    print(
        f"seed {args.seed}, slip {args.slip}, {args.warmup_steps} warm-up steps ({warmup_seconds:.0f} s), "
        f"{args.steps} RL steps"
    )
    print("| model | accuracy % | slip rate % | accuracy with slips forgiven % |")
    print("|---|---|---|---|")
    for name, s in [("base", before), *summary["methods"].items()]:
        print(
            f"| {name} | {100 * s['accuracy']:.1f} | {100 * s['slip_rate']:.1f} "
            f"| {100 * s['slip_forgiven_accuracy']:.1f} |"
        )


if __name__ == "__main__":
    main()

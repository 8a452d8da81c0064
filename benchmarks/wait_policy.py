"""How fast is the quickstart's supervised warm-up step under each OpenMP wait policy?

    python benchmarks/wait_policy.py                  # idle machine and one busy core
    python benchmarks/wait_policy.py --steps 20 --rounds 3 --json

The warm-up (tokenrl.recipes.quickstart.warmup) runs alone in the quickstart's own process, with every core.
OpenMP's worker threads either sleep as soon as a parallel region ends (OMP_WAIT_POLICY=PASSIVE,
what `tokenrl` sets by default because spinning threads slow small models badly when other work
shares the cores) or spin for a while first (GOMP_SPINCOUNT iterations; libgomp's default when
no policy is set). Each variant runs in a fresh process (the policy is read once, when OpenMP
loads): warm-up steps of the quickstart's tiny model on 64 multiplication problems, full AdamW
step, median step time over ``--steps`` after 3 untimed steps. The variants are interleaved over
``--rounds`` rounds (this shared machine's speed drifts), each on an idle machine and beside a
busy-looping process (one core taken). Ratios are against PASSIVE with the same threads and
load, in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS: dict[str, dict[str, str]] = {
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin_1k": {"GOMP_SPINCOUNT": "1000"},
    "spin_10k": {"GOMP_SPINCOUNT": "10000"},
    "spin_100k": {"GOMP_SPINCOUNT": "100000"},
    "default": {},
}
BUSY_LOOP = "while True: pass"


def worker(steps: int, threads: int) -> None:
    import torch

    from tokenrl.models import build_tiny
    from tokenrl.recipes.quickstart.plan import QuickstartPlan
    from tokenrl.recipes.quickstart.warmup import collate, encode_pairs

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    plan = QuickstartPlan(out=Path("."))  # seed 0's model and task only; nothing is written
    model, tok = build_tiny(plan.model)
    task = plan.warmup_task().resolved(tok)
    pairs = encode_pairs(task, tok, task.examples("train")[200:264])
    batch = collate(pairs, tok.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    times = []
    for i in range(steps + 3):
        t = time.perf_counter()
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    print(json.dumps({"median_s": statistics.median(times)}))


def run_variant(name: str, threads: int, busy: bool, steps: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(VARIANTS[name])
    competitor = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if busy else None
    try:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                "--steps",
                str(steps),
                "--threads",
                str(threads),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return json.loads(out.strip().splitlines()[-1])["median_s"]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=20, help="timed warm-up steps per process")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repeats of every variant")
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads (default: all cores)",
    )
    ap.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated, from: %(default)s"
    )
    ap.add_argument(
        "--loads", default="idle,busy", help="idle, busy (one core busy-looping) or both"
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.steps, args.threads)
        return

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: benchmarks.trl
    from benchmarks.trl.measure import timing_summary
    from tokenrl.machine import cpu_model, versions

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    loads = [v.strip() for v in args.loads.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS] + [
        v for v in loads if v not in ("idle", "busy")
    ]
    if unknown or not variants or not loads:
        ap.error(
            f"unknown variant or load {unknown}: variants {', '.join(VARIANTS)}; loads idle, busy"
        )
    cases = [("passive", 1)] + [
        (name, args.threads) for name in variants if (name, args.threads) != ("passive", 1)
    ]
    if ("passive", args.threads) not in cases:
        cases.append(("passive", args.threads))  # the baseline of the ratios
    times: dict[tuple[str, int, bool], list[float]] = {}
    for _ in range(args.rounds):
        for busy in [load == "busy" for load in loads]:
            for name, threads in cases:
                times.setdefault((name, threads, busy), []).append(
                    run_variant(name, threads, busy, args.steps)
                )
    rows = []
    for (name, threads, busy), values in times.items():
        base = statistics.median(times[("passive", threads, busy)])
        summary = timing_summary({"step": values})  # step_median_s, step_min_max_s
        rows.append(
            {
                "variant": name,
                "threads": threads,
                "load": "one core busy" if busy else "idle",
                **summary,
                "vs_passive_same_threads": base / summary["step_median_s"],
            }
        )
    result = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "steps": args.steps,
        "rounds": args.rounds,
        **versions(),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{result['cpu']}, {result['cores']} cores; median warm-up step over {args.rounds} rounds x {args.steps} steps"
    )
    print(f"{'variant':>10} {'threads':>7} {'load':>14} {'step s':>8} {'speed vs PASSIVE':>17}")
    for r in rows:
        print(
            f"{r['variant']:>10} {r['threads']:>7} {r['load']:>14} {r['step_median_s']:8.3f} "
            f"{r['vs_passive_same_threads']:16.2f}x"
        )


if __name__ == "__main__":
    main()

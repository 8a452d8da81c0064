"""Do the quickstart's RL processes run faster when glibc's malloc keeps the memory it frees?

    python benchmarks/rl_malloc.py OUT               # OUT: a finished quickstart folder
    python benchmarks/rl_malloc.py OUT --steps 25 --rounds 3 --json

By default glibc serves every allocation above 128 KiB (most activation tensors) with its own
mmap and gives it back to the kernel when freed, so each RL step pays page faults to get fresh,
zeroed pages again. ``MALLOC_ENV`` below serves allocations up to 32 MiB from the heap and keeps
freed memory in the process (no trim below 1 GiB, grown 256 MiB at a time). Tried for the
quickstart's methods' processes and not adopted (docs/quickstart.md). This runs the RL phase of
a quickstart (``OUT/configs/ALGO.yaml``, the methods at once, one torch thread each, in the
environment the quickstart gives them) for ``--steps`` steps without evaluations, once with the
plain environment and once with ``MALLOC_ENV``, interleaved over
``--rounds`` rounds (this shared machine's speed drifts), and reports each method's median
wall time per step (after 3 untimed steps), the ratio, and each process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tokenrl.recipes.quickstart.plan import ALGOS, QuickstartPlan
from tokenrl.recipes.quickstart.run import child_env

MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_TOP_PAD_": str(256 << 20),
}


def run_phase(out: Path, steps: int, malloc: bool, work: Path) -> dict[str, dict[str, float]]:
    """The methods at once for ``steps`` steps; per method: median step seconds, peak RSS MB."""
    # the environment the quickstart gives its methods when they run at once, then MALLOC_ENV or not
    env = {k: v for k, v in child_env(QuickstartPlan(out=out)).items() if k not in MALLOC_ENV}
    env.update(MALLOC_ENV if malloc else {})
    children = {}
    for algo in ALGOS:
        cmd = [sys.executable, "-m", "tokenrl", "train", str(out / "configs" / f"{algo}.yaml"), "--threads", "1",
               "--out", str(work / algo), "--overwrite", "--train.steps", str(steps), "--train.eval_every", "0",
               "--train.eval_before", "false"]  # fmt: skip
        children[algo] = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
    result = {}
    for algo, child in children.items():
        _, err = child.communicate()
        if child.returncode != 0:
            raise SystemExit(f"{algo} failed:\n{err[-2000:]}")
        rows = [
            json.loads(line) for line in (work / algo / "metrics.jsonl").read_text().splitlines()
        ]
        steps_s = [r["time/step"] for r in rows if "time/step" in r][3:]
        peak = max(
            (r["memory/peak_rss_mb"] for r in rows if r.get("memory/peak_rss_mb") is not None),
            default=float("nan"),
        )
        result[algo] = {"step_s": statistics.median(steps_s), "peak_rss_mb": peak}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "out", type=Path, help="a finished quickstart folder (its configs/ALGO.yaml are run)"
    )
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args()
    missing = [a for a in ALGOS if not (args.out / "configs" / f"{a}.yaml").exists()]
    if missing:
        ap.error(
            f"{args.out}/configs has no {', '.join(missing)}.yaml: pass a quickstart output folder"
        )
    if args.steps < 4:
        ap.error("--steps must be >= 4 (3 untimed steps first)")

    from tokenrl.machine import cpu_model, versions

    runs: dict[bool, list[dict[str, dict[str, float]]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for malloc in (False, True):
                runs[malloc].append(run_phase(args.out, args.steps, malloc, Path(tmp)))
    rows = []
    for algo in ALGOS:
        plain = statistics.median(r[algo]["step_s"] for r in runs[False])
        tuned = statistics.median(r[algo]["step_s"] for r in runs[True])
        rows.append(
            {
                "algo": algo,
                "step_s_plain": plain,
                "step_s_malloc_env": tuned,
                "speed_up": plain / tuned,
                "peak_rss_mb_plain": max(r[algo]["peak_rss_mb"] for r in runs[False]),
                "peak_rss_mb_malloc_env": max(r[algo]["peak_rss_mb"] for r in runs[True]),
            }
        )
    result = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "steps": args.steps,
        "rounds": args.rounds,
        "malloc_env": MALLOC_ENV,
        **versions(),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{result['cpu']}, {result['cores']} cores; the 3 methods at once, median step over {args.rounds} rounds"
    )
    print(
        f"{'method':>7} {'plain s':>8} {'MALLOC_ENV s':>12} {'speed-up':>8} {'peak MB plain / env':>20}"
    )
    for r in rows:
        print(
            f"{r['algo']:>7} {r['step_s_plain']:8.3f} {r['step_s_malloc_env']:12.3f} {r['speed_up']:7.2f}x "
            f"{r['peak_rss_mb_plain']:>9.0f} / {r['peak_rss_mb_malloc_env']:.0f}"
        )


if __name__ == "__main__":
    main()

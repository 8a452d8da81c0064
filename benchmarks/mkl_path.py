"""Matrix products with and without MKL's Intel code path (tokenrl.mklpath), alternated.

Each round starts two fresh processes, one with the preload library and one without
(MKL's own choice, ``TOKENRL_MKL_INTEL_PATH=0``), which time ``F.linear`` at the trainer's shapes (the 0.5B's MLP
projections, a 1.5B one) and row counts (1-8: a decode step of few rows; 32: the step's 4 x 8
rows; 128-512: prefill and update) in fp32 and bf16, plus a large square product; the best of
``--rounds`` per cell is reported, with the largest relative difference between the two
processes' outputs (the same inputs, seeded).

    python benchmarks/mkl_path.py --threads 2 --json > docs/results/bench-mkl/NAME.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: benchmarks.*

SHAPES = [
    (896, 4864),
    (4864, 896),
    (1536, 8960),
]  # (in, out): 0.5B gate/up, 0.5B down, 1.5B gate/up
ROWS = [1, 8, 32, 128, 512]


def child(threads: int) -> dict:
    import torch

    from benchmarks.step_bounds import best_seconds
    from tokenrl.mklpath import is_active

    torch.set_num_threads(threads)
    times: dict[str, float] = {}
    outputs: dict[str, list[float]] = {}
    best = partial(best_seconds, device="cpu")

    gen = torch.Generator().manual_seed(0)
    for k, n in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            w = torch.randn(n, k, generator=gen).to(dtype)
            for rows in ROWS:
                x = torch.randn(rows, k, generator=gen).to(dtype)
                key = f"{k}x{n} {str(dtype).removeprefix('torch.')} rows={rows}"
                times[key] = best(
                    partial(torch.nn.functional.linear, x, w), repeats=20 if rows <= 32 else 5
                )
                outputs[key] = torch.nn.functional.linear(x, w).float().flatten()[:4096].tolist()
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(2048, 2048, generator=gen).to(dtype)
        b = torch.randn(2048, 2048, generator=gen).to(dtype)
        times[f"2048x2048 square {str(dtype).removeprefix('torch.')}"] = best(
            partial(torch.matmul, a, b), repeats=3
        )
    return {"active": is_active(), "times": times, "outputs": outputs}


def run_child(threads: int, intel: bool) -> dict:
    from tokenrl.mklpath import SWITCH, library_path

    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if intel:
        lib = library_path()
        if lib is None:
            raise SystemExit("mkl_path: no C compiler to build the preload library")
        env["LD_PRELOAD"] = str(lib)
    else:
        env[SWITCH] = "0"
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--threads", str(threads)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    result = json.loads(out.stdout)
    if result["active"] != intel:
        raise SystemExit(f"mkl_path: the preload was {'not ' if intel else ''}in force")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.threads)))
        return
    from tokenrl.machine import machine_info

    best: dict[str, dict[str, float]] = {"default": {}, "intel": {}}
    outputs: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, intel in (("default", False), ("intel", True)):
            res = run_child(args.threads, intel)
            outputs[name] = res["outputs"]
            for key, sec in res["times"].items():
                best[name][key] = min(sec, best[name].get(key, float("inf")))
    rows = []
    for key in best["default"]:
        a, b = best["default"][key], best["intel"][key]
        diff = None
        if key in outputs["default"]:
            ref, new = outputs["default"][key], outputs["intel"][key]
            scale = max(abs(v) for v in ref) or 1.0
            diff = max(abs(x - y) for x, y in zip(ref, new, strict=True)) / scale
        rows.append(
            {
                "product": key,
                "default_ms": a * 1e3,
                "intel_ms": b * 1e3,
                "speedup": a / b,
                "max_rel_diff": diff,
            }
        )
    report = {
        "machine": machine_info(),
        "threads": args.threads,
        "rounds": args.rounds,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"{report['machine']['cpu']}, {args.threads} threads, best of {args.rounds} rounds")
    print(
        f"{'product':34s} {'default ms':>10s} {'intel ms':>9s} {'speed-up':>8s} {'max rel diff':>12s}"
    )
    for r in rows:
        d = "" if r["max_rel_diff"] is None else f"{r['max_rel_diff']:.1e}"
        print(
            f"{r['product']:34s} {r['default_ms']:10.2f} {r['intel_ms']:9.2f} {r['speedup']:7.2f}x {d:>12s}"
        )


if __name__ == "__main__":
    main()

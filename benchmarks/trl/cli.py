"""``tokenrl bench memory|speed|all|scaling|step``: options and the command (imports stay light).

``step`` is not a TRL comparison: one real RL step against the machine's measured bounds
(``benchmarks/step_bounds.py``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

WHAT = ("memory", "speed", "all", "scaling", "step")


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=WHAT, help="memory: peak added memory of one update; speed: update time and "
                   "whole-step completions/s; all: both, one table; scaling: update memory and time against L "
                   "and G")  # fmt: skip
    p.add_argument("--workloads", default=None, help="comma-separated: A, B (update), C-i, C-ii (whole step), "
                   "tiny, tiny-step (smoke), gpu-1.5b (default: A,B for memory; A,B,C-i,C-ii for speed)")  # fmt: skip
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: the tiny workloads, 1 repeat (seconds; not a measurement)",
    )
    p.add_argument(
        "--impls",
        default="trl,grpo,sgrpo,tspmo",
        help="implementations to run (default: %(default)s)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="measured runs after the warm-up (default: 3 memory, 5 speed)",
    )
    p.add_argument(
        "--warmup", type=int, default=1, help="unmeasured runs first (default: %(default)s)"
    )
    p.add_argument(
        "--threads", type=int, default=2, help="torch threads in each worker (default: %(default)s)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["fp32", "bf16", "auto"],
        help="(default: fp32 on CPU, bf16 on CUDA; step: auto, what --dtype auto picks for "
        "training)",
    )
    p.add_argument("--trl-gc", choices=["on", "off", "workload"], default="workload",
                   help="TRL gradient checkpointing (default: the workload's setting)")  # fmt: skip
    p.add_argument("--ours-gc", choices=["on", "off", "workload"], default="workload",
                   help="tokenrl gradient checkpointing (default: the workload's setting)")  # fmt: skip
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds allowed per configuration (default: none)",
    )
    p.add_argument("--malloc", choices=["fixed", "default"], default="fixed",
                   help="CPU memory runs: fixed = MALLOC_MMAP_THRESHOLD_=131072 so RSS follows live tensors "
                   "(docs/benchmarks.md); default = glibc's dynamic threshold (default: %(default)s)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument(
        "--out",
        default=None,
        help="also write the JSON report here (scaling: default runs/bench-scaling.json)",
    )
    g = p.add_argument_group("scaling")
    g.add_argument(
        "--lengths", default="64,128,256,512,1024", help="completion lengths (default: %(default)s)"
    )
    g.add_argument("--groups", default="4,8,16", help="group sizes G (default: %(default)s)")
    g.add_argument(
        "--grid", action="store_true", help="every (L, G) pair, not the two sweeps through (256, 8)"
    )
    g.add_argument("--plot", default=None, help="plot file (default: the --out path with .png)")
    g = p.add_argument_group("step (one real RL step against the machine's bounds)")
    g.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="(default: %(default)s)")
    g.add_argument(
        "--task", default="svamp", help="svamp or mult:3x1 shapes (default: %(default)s)"
    )
    g.add_argument("--algos", default="grpo,sgrpo,tspmo", help="(default: %(default)s)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="(default: the task's shape)")
    g.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a train setting"
    )
    g.add_argument(
        "--one-process",
        action="store_true",
        help="the algorithms one after the other in this process (default: each in its own)",
    )


def _gc(flag: str) -> bool | None:
    return None if flag == "workload" else flag == "on"


def _ints(text: str, what: str) -> tuple[int, ...]:
    from tokenrl.cli import UsageError

    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UsageError(f"--{what} needs positive integers, got {text!r}")
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "step" and args.dtype is None:  # the step: what --dtype auto trains in
        args.dtype = "auto"
    if args.dtype == "auto":  # the dtype training would pick on this device (tokenrl.devices)
        from tokenrl.devices import dtype_name, resolve_device, resolve_dtype

        args.dtype = dtype_name(resolve_dtype("auto", resolve_device(args.device)))
    if args.what == "step":
        from benchmarks.step_bounds import main as step_main

        argv = ["--model", args.model, "--task", args.task, "--algos", args.algos,
                "--dtype", args.dtype, "--threads", str(args.threads),
                "--warmup", str(args.warmup), "--device", args.device]  # fmt: skip
        argv += ["--max-new-tokens", str(args.max_new_tokens)] if args.max_new_tokens else []
        argv += [x for kv in args.set for x in ("--set", kv)] + (["--json"] if args.json else [])
        argv += ["--one-process"] if args.one_process else []
        return step_main(argv)
    from benchmarks.trl.run import Settings, format_report, run_benchmarks, write_report
    from benchmarks.trl.workloads import DEFAULT_WORKLOADS, IMPLS, QUICK_WORKLOADS, get_workloads
    from tokenrl.cli import UsageError

    impls = tuple(x.strip() for x in args.impls.split(",") if x.strip())
    bad = [i for i in impls if i not in IMPLS]
    if bad or not impls:
        raise UsageError(
            f"--impls: unknown {', '.join(bad) or '(empty)'}; choose from {', '.join(IMPLS)}"
        )
    if args.repeats is not None and args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        raise UsageError("--repeats and --threads must be at least 1, --warmup at least 0")
    quick_repeats = 1 if args.quick else None
    repeats = args.repeats or quick_repeats
    settings = Settings(
        device=args.device,
        dtype=args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32"),
        threads=args.threads,
        warmup=args.warmup,
        repeats_memory=repeats or 3,
        repeats_speed=repeats or 5,
        seed=args.seed,
        trl_gc=_gc(args.trl_gc),
        ours_gc=_gc(args.ours_gc),
        timeout_s=args.timeout,
        fixed_mmap_threshold=args.malloc == "fixed",
    )
    if args.what == "scaling":
        from benchmarks.trl.scaling import format_scaling, plot_scaling, run_scaling

        workload = args.workloads or ("tiny" if args.quick else "A")
        if "," in workload:
            raise UsageError("scaling runs on one workload's model (default A)")
        get_workloads(workload, "memory")
        report = run_scaling(
            settings, workload=workload, lengths=_ints(args.lengths, "lengths"), groups=_ints(args.groups, "groups"),
            grid=args.grid, impls=impls,
        )  # fmt: skip
        out = Path(args.out or "runs/bench-scaling.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        write_report(report, str(out))
        plot = args.plot or str(out.with_suffix(".png"))
        plot_scaling(report, plot)
        print(json.dumps(report, indent=1) if args.json else format_scaling(report))
        print(f"wrote {out} and {plot}", file=sys.stderr)
        return 0

    measures = ["memory", "speed"] if args.what == "all" else [args.what]
    if args.workloads:
        names = args.workloads
    else:
        table = QUICK_WORKLOADS if args.quick else DEFAULT_WORKLOADS
        names = ",".join(dict.fromkeys(n for m in measures for n in table[m]))
    try:
        workloads = get_workloads(names, "memory" if measures == ["memory"] else "speed")
    except ValueError as err:
        raise UsageError(str(err)) from None
    report = run_benchmarks(measures, workloads, settings, impls=impls)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_report(report, args.out)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    failed = [
        r
        for r in report["rows"]
        if r.get("status") not in ("ok", None) and not r["status"].startswith("trl not")
    ]
    return 1 if failed else 0

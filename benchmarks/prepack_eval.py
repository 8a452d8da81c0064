"""Evaluation's greedy decoding with and without one of the engine's CPU decode options.

``--option prepack_weights`` (the default): pre-packed bf16 weights (tokenrl.packing);
``--option grouped_attention``: a bf16 decode step's attention in the stacked grouped-query
layout (tokenrl.attention). Runs
:func:`tokenrl.evaluation.evaluate` on the task's first ``--problems`` test problems through the
shared engine with the option off and on (the other at its default), alternated over
``--repeats`` after a warm-up of each; reports the median seconds, the speed-up, each side's
accuracy and how many completions differ.

    python benchmarks/prepack_eval.py --model qwen2.5-coder-0.5b-instruct --task svamp \
        --style chat --problems 64 --max-new-tokens 256 --repeats 2 --threads 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from tokenrl.engines import make_engine  # noqa: E402
from tokenrl.evaluation import evaluate  # noqa: E402
from tokenrl.machine import machine_info  # noqa: E402
from tokenrl.models import load_model  # noqa: E402
from tokenrl.tasks import get_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--task", default="svamp")
    ap.add_argument("--style", default="chat")
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--option", choices=("prepack_weights", "grouped_attention"), default="prepack_weights"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model, dtype=args.dtype)
    task = get_task(args.task, style=args.style)
    examples = task.examples("test")[: args.problems]
    seconds: dict[bool, list[float]] = {False: [], True: []}
    texts: dict[bool, list[str]] = {}
    accuracy: dict[bool, float] = {}
    for rep in range(args.repeats + 1):  # the first round warms both up
        for enabled in (False, True):
            engine = make_engine("shared", lm.model, lm.tokenizer, **{args.option: enabled})
            result = evaluate(
                lm.model, lm.tokenizer, task, examples,
                max_new_tokens=args.max_new_tokens, batch_size=64, engine=engine,
            )  # fmt: skip
            texts[enabled] = [r["completion"] for r in result.records]
            accuracy[enabled] = result.accuracy
            if rep:
                seconds[enabled].append(result.seconds)
    off, on = statistics.median(seconds[False]), statistics.median(seconds[True])
    report = {
        "model": args.model, "dtype": args.dtype, "task": args.task, "problems": len(examples),
        "max_new_tokens": args.max_new_tokens, "threads": args.threads, "option": args.option,
        "seconds_off": seconds[False], "seconds_on": seconds[True], "speedup": off / on,
        "same_completions": texts[False] == texts[True],
        "differing_completions": sum(a != b for a, b in zip(texts[False], texts[True])),
        "accuracy_off": accuracy[False], "accuracy_on": accuracy[True], "machine": machine_info(),
    }  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(
            f"{args.option} off {off:.1f} s, on {on:.1f} s: {off / on:.2f}x; "
            f"{report['differing_completions']} completions differ; accuracy "
            f"{accuracy[False]:.3f} off, {accuracy[True]:.3f} on"
        )


if __name__ == "__main__":
    main()

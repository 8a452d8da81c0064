"""Does running each distinct completion prefix once per decode step pay off? Times both paths.

    python benchmarks/shared_decode.py --model OUT/base          # a quickstart's warmed-up base
    python benchmarks/shared_decode.py --model smollm2-135m-instruct --dtype bf16 --task svamp \\
        --prompts 4 --group-size 8 --max-new-tokens 64 --style auto

``rollout.shared_decode`` (:func:`tokenrl.rollout._generate_shared`) against Hugging Face
``generate`` with the shared prefill, on the task's first ``--prompts`` train problems, keyed
sampling as the trainer does it (one seed per group), alternating the two paths over
``--repeats`` after a warm-up. Reports the median seconds of each, the speed-up, whether both
sampled the same tokens, and how many prefix rows the decode steps ran against ``generate``'s
rows x steps. A random-weight model's rows part at their first token, so pass a trained one
(the defaults are the quickstart's shapes: 128 prompts x 4, 5 new tokens). ``--greedy
--group-size 1 --split test`` times evaluation's decoding instead (the shared path's gain there:
the KV cache written in place, and rows that have ended leave the batch):

    python benchmarks/shared_decode.py --model qwen2.5-coder-0.5b-instruct --dtype bf16 \
        --task svamp --style chat --split test --prompts 64 --group-size 1 --greedy \
        --max-new-tokens 256 --repeats 2 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: benchmarks.trl
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from benchmarks.trl.measure import timing_summary  # noqa: E402
from tokenrl.machine import cpu_model  # noqa: E402
from tokenrl.models import load_model  # noqa: E402
from tokenrl.rollout import SamplingConfig, generate_rollouts  # noqa: E402
from tokenrl.tasks import get_task  # noqa: E402


def decode_rows(batch) -> int:
    """Rows the shared decode runs over the steps after the first token: for each t >= 1, the
    distinct (prompt, first t tokens) prefixes among the rows not ended within them."""
    comp, length = batch.completion_ids.tolist(), batch.completion_mask.sum(1).tolist()
    index = batch.prompt_index.tolist()
    T = batch.completion_ids.shape[1]
    return sum(
        len({(index[r], tuple(comp[r][:t])) for r in range(len(comp)) if length[r] > t})
        for t in range(1, T)
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model",
        default="tiny",
        help="a model name, tiny spec or saved folder (e.g. a quickstart's base)",
    )
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--task", default="multiplication:3x1")
    ap.add_argument("--style", default="compact")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=5)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--greedy", action="store_true", help="greedy decoding (evaluation's mode)")
    ap.add_argument("--split", default="train", help="the task split the prompts come from")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model, dtype=args.dtype)
    tok = lm.tokenizer
    task = get_task(args.task, style=args.style).resolved(tok)
    examples = task.examples(args.split)[: args.prompts]
    prompts = [task.render_prompt(e, tok) for e in examples]
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, greedy=args.greedy,
                         stop=tuple(task.stop_strings(tok)), batch_size=args.prompts * args.group_size)  # fmt: skip
    paths = {"shared": cfg, "generate": dataclasses.replace(cfg, shared_decode=False)}
    times: dict[str, list[float]] = {name: [] for name in paths}
    batches = {}
    for rep in range(args.repeats + 1):
        for name, c in paths.items():
            t = time.perf_counter()
            batches[name] = generate_rollouts(lm.model, tok, prompts, c, group_size=args.group_size,
                                              group_seeds=list(range(len(prompts))))  # fmt: skip
            if rep:  # rep 0 is the warm-up
                times[name].append(time.perf_counter() - t)
    shared, plain = batches["shared"], batches["generate"]
    result = {
        "model": args.model, "dtype": args.dtype, "task": args.task, "prompts": len(prompts), "G": args.group_size,
        "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "greedy": args.greedy,
        "split": args.split, "threads": args.threads,
        "machine": f"{cpu_model()}, {os.cpu_count()} cpus", "torch": torch.__version__,
        "same_tokens": torch.equal(shared.completion_ids, plain.completion_ids),
        "decode_rows_shared": decode_rows(shared),
        "decode_rows_generate": len(prompts) * args.group_size * max(plain.completion_ids.shape[1] - 1, 0),
        **timing_summary(times),
    }  # fmt: skip
    result["speedup"] = result["generate_median_s"] / result["shared_median_s"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

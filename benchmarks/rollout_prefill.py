"""Does encoding each prompt once per group (shared prefill) pay off? Times both rollout paths.

    python benchmarks/rollout_prefill.py --model smollm2-135m-instruct --dtype bf16

Same prompts, same G, alternating the two paths, median over repeats after a warm-up.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model, dtype=args.dtype)
    tok = lm.tokenizer
    questions = [
        f"What is {10 + 7 * i} times {3 + i}? Answer with the number only."
        for i in range(args.prompts)
    ]
    if getattr(tok, "chat_template", None):
        prompts = [
            tok.apply_chat_template(
                [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
            )
            for q in questions
        ]
    else:
        prompts = questions
    times: dict[str, list[float]] = {"shared": [], "per_row": []}
    for rep in range(args.repeats + 1):
        for name, shared in (("shared", True), ("per_row", False)):
            cfg = SamplingConfig(
                max_new_tokens=args.max_new_tokens, temperature=1.0, shared_prefill=shared
            )
            torch.manual_seed(rep)
            t = time.perf_counter()
            generate_rollouts(lm.model, tok, prompts, cfg, group_size=args.group_size)
            if rep:  # rep 0 is the warm-up
                times[name].append(time.perf_counter() - t)
    prompt_len = len(tok(prompts[0])["input_ids"])
    result = {
        "model": args.model,
        "dtype": args.dtype,
        "prompts": args.prompts,
        "G": args.group_size,
        "prompt_tokens": prompt_len,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "machine": f"{cpu_model()}, {os.cpu_count()} cpus",
        "torch": torch.__version__,
        **timing_summary(times),
    }
    result["speedup"] = result["per_row_median_s"] / result["shared_median_s"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Does sampling with the LoRA adapter folded into the weights (rollout.merge_lora) pay off?

    python benchmarks/merged_sampling.py                      # the quickstart's shapes
    python benchmarks/merged_sampling.py --model smollm2-135m-instruct --dtype bf16 \\
        --prompts 4 --group-size 8 --max-new-tokens 32

Times the trainer's rollout call (keyed sampling, shared prefill) on one LoRA model with a
non-zero adapter, alternating the adapter path and tokenrl.lorafold.lora_merged (the fold and
the swap back included), median over repeats after a warm-up. Also checks that both paths
sampled the same tokens.
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

from benchmarks.trl.inputs import randomise_lora_b  # noqa: E402
from benchmarks.trl.measure import timing_summary  # noqa: E402
from tokenrl.lorafold import lora_merged  # noqa: E402
from tokenrl.machine import machine_info, versions  # noqa: E402
from tokenrl.models import LoraSpec, load_model  # noqa: E402
from tokenrl.recipes.quickstart.plan import DEFAULT_MODEL  # noqa: E402
from tokenrl.rollout import SamplingConfig, generate_rollouts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=5)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(
        args.model, dtype=args.dtype, lora=LoraSpec(r=args.lora_r, alpha=2 * args.lora_r)
    )
    randomise_lora_b(lm.model)  # B starts at zero; a trained adapter does not
    tok = lm.tokenizer
    prompt_ids = [
        tok(f"{100 + 7 * i}*{1 + i % 9}=", add_special_tokens=False)["input_ids"]
        for i in range(args.prompts)
    ]
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens, batch_size=args.prompts * args.group_size
    )

    def rollout():
        seeds = list(range(args.prompts))
        return generate_rollouts(
            lm.model,
            tok,
            [],
            sampling,
            group_size=args.group_size,
            prompt_ids=prompt_ids,
            group_seeds=seeds,
        )

    times: dict[str, list[float]] = {"adapter": [], "merged": []}
    same = True
    for rep in range(args.repeats + 1):
        t = time.perf_counter()
        plain = rollout()
        elapsed_plain = time.perf_counter() - t
        t = time.perf_counter()
        with lora_merged(lm.model) as merged:
            folded = rollout()
        elapsed_merged = time.perf_counter() - t
        assert merged, "lora_merged did not fold this model's adapter"
        same = same and torch.equal(plain.completion_ids, folded.completion_ids)
        if rep:  # rep 0 is the warm-up
            times["adapter"].append(elapsed_plain)
            times["merged"].append(elapsed_merged)
    result = {
        "model": args.model, "dtype": args.dtype, "prompts": args.prompts, "G": args.group_size,
        "max_new_tokens": args.max_new_tokens, "lora_r": args.lora_r, "threads": args.threads,
        "machine": machine_info(), "versions": versions(),
        **timing_summary(times),
        "same_tokens": same,
    }  # fmt: skip
    result["speedup"] = result["adapter_median_s"] / result["merged_median_s"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

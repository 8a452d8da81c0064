"""Does running each group's prompt once in the update (optim.share_prompt) pay off?

    python benchmarks/shared_prompt.py                         # the quickstart's shapes
    python benchmarks/shared_prompt.py --model smollm2-135m-instruct --dtype bf16 \\
        --prompts 4 --group-size 8 --prompt-len 450 --completion-len 64 --repeats 2

One full-token GRPO update (completion_logprobs at every completion token -> policy_loss ->
backward -> AdamW) on a fixed batch: ``--prompts`` random prompts of ``--prompt-len`` tokens, each
with ``--group-size`` random completions of ``--completion-len`` tokens and random rewards.
Modes, alternated within each repeat after a warm-up: "whole" = every row runs prompt +
completion (share_prompt off), "shared" = each prompt once, its KV cache copied to its rows,
"checkpointed" = whole rows under gradient checkpointing (what configs/smollm2/svamp_*.yaml use
to save memory; sharing is off there). Time: median of the repeats. Memory: the peak resident
set added during one more update of each mode (benchmarks.trl.measure.PhaseMeter). Also checks
that "shared" gives the same log-probs as "whole".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: benchmarks.trl
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from benchmarks.trl.inputs import randomise_lora_b  # noqa: E402
from benchmarks.trl.measure import PhaseMeter, timing_summary  # noqa: E402
from tokenrl.algorithms import completion_logprobs, get_algorithm, policy_loss  # noqa: E402
from tokenrl.machine import machine_info, versions  # noqa: E402
from tokenrl.models import LoraSpec, load_model  # noqa: E402
from tokenrl.recipes.quickstart.plan import DEFAULT_MODEL  # noqa: E402
from tokenrl.rollout import RolloutBatch  # noqa: E402

MODES = ("whole", "shared", "checkpointed")


def fixed_batch(args: argparse.Namespace, vocab: int) -> tuple[RolloutBatch, torch.Tensor]:
    """``prompts`` x ``group_size`` rows of random tokens (ids below min(vocab, 256) + offset)."""
    gen = torch.Generator().manual_seed(0)
    n, G, P, T = args.prompts, args.group_size, args.prompt_len, args.completion_len
    hi = min(vocab, 256)  # byte ids for the byte-level tiny model; ordinary ids otherwise
    prompts = torch.randint(0, hi, (n, P), generator=gen).repeat_interleave(G, 0)  # [n*G, P]
    batch = RolloutBatch(
        prompt_ids=prompts,
        prompt_mask=torch.ones(n * G, P, dtype=torch.bool),
        completion_ids=torch.randint(0, hi, (n * G, T), generator=gen),
        completion_mask=torch.ones(n * G, T, dtype=torch.bool),
        truncated=torch.zeros(n * G, dtype=torch.bool),
        texts=[""] * (n * G),
        group_size=G,
        prompt_index=torch.arange(n).repeat_interleave(G),
    )
    return batch, torch.rand(n * G, generator=gen)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument(
        "--prompt-len", type=int, default=6, help="the quickstart's '891*4=' is 6 byte tokens"
    )
    ap.add_argument("--completion-len", type=int, default=5)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    modes = args.modes.split(",")
    torch.set_num_threads(args.threads)
    lm = load_model(args.model, dtype=args.dtype, lora=LoraSpec(r=16, alpha=32))
    model = lm.model
    model.train()
    randomise_lora_b(model)  # B starts at zero; a trained adapter does not
    batch, rewards = fixed_batch(args, model.get_output_embeddings().weight.shape[0])
    spec = get_algorithm("grpo")
    cfg = spec.config_cls()
    inputs = spec.prepare(batch, rewards, cfg, [torch.Generator() for _ in range(args.prompts)])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)

    def update(mode: str) -> torch.Tensor:
        if mode == "checkpointed":
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        logp = completion_logprobs(model, batch, inputs.logprob_mask, share_prompt=mode == "shared")
        loss, _ = policy_loss(logp, None, inputs, clip_low=cfg.clip_low, clip_high=cfg.clip_high)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if mode == "checkpointed":
            model.gradient_checkpointing_disable()
        return logp.detach()

    with torch.no_grad():
        max_diff = float((completion_logprobs(model, batch, inputs.logprob_mask, share_prompt=True)
                          - completion_logprobs(model, batch, inputs.logprob_mask, share_prompt=False))
                         .abs().max())  # fmt: skip
    times: dict[str, list[float]] = {m: [] for m in modes}
    peaks: dict[str, float] = {}
    timer = PhaseMeter("cpu", memory=False)
    for rep in range(args.repeats + 1):
        for mode in modes:
            timer.begin()
            update(mode)
            if rep:  # rep 0 is the warm-up
                times[mode].append(timer.end()[0])
    for mode in modes:
        meter = PhaseMeter("cpu", memory=True)
        meter.begin()
        update(mode)
        peaks[mode] = meter.end()[1] / 2**20
    result = {
        "model": args.model, "dtype": args.dtype, "prompts": args.prompts, "G": args.group_size,
        "prompt_len": args.prompt_len, "completion_len": args.completion_len, "threads": args.threads,
        "machine": machine_info(), "versions": versions(),
        **timing_summary(times),
        **{f"{m}_peak_added_mb": round(v, 1) for m, v in peaks.items()},
        "shared_vs_whole_max_abs_logp_diff": max_diff,
    }  # fmt: skip
    if "whole" in times and "shared" in times:
        result["speedup_shared_vs_whole"] = result["whole_median_s"] / result["shared_median_s"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

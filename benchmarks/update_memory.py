"""Peak memory and time of one policy update (forward + backward of the loss), per algorithm.

Model: a small random Qwen2 body (hidden 256, 2 layers, intermediate 1024, 4 heads, 2 kv heads,
tied embeddings) with the real 151,936-token Qwen2 vocabulary, so the LM head dominates as in the
real model; LoRA r=16, alpha=32 on q,k,v,o,gate,up,down; fp32. Rollouts: 1 prompt of 64 random
tokens, G=8 completions of exactly 256 tokens that share prefixes and branch at a few points (so
T-SPMO's trie has pairs), uniform random rewards in [0, 1); all fixed by --seed.

Algorithms: "plain" = the naive reference most code uses (model(...).logits -> log_softmax ->
gather, full-token GRPO loss); "grpo", "sgrpo", "tspmo" = tokenrl's prepare -> completion_logprobs
-> policy_loss. Each runs in a fresh subprocess (1 warm-up + --repeats runs, median reported).
Peak memory = the maximum resident set size sampled every ~2 ms from /proc/self/statm during the
update minus the RSS just before it (after gc.collect() and malloc_trim(0)); on CUDA,
torch.cuda.max_memory_allocated() minus the memory allocated before the update.

    python benchmarks/update_memory.py                    # table
    python benchmarks/update_memory.py --json             # JSON list
    python benchmarks/update_memory.py --algos grpo,tspmo --chunk-size 256
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: benchmarks.trl

from benchmarks.trl.measure import RssSampler  # noqa: E402
from tokenrl.heap import release_free_heap  # noqa: E402

ALGOS = ("plain", "grpo", "sgrpo", "tspmo")
VOCAB = 151_936


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--algos", default=",".join(ALGOS), help="comma-separated subset of " + ",".join(ALGOS)
    )
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each worker")
    ap.add_argument("--repeats", type=int, default=3, help="measured runs after 1 warm-up (median)")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--completion-len", type=int, default=256)
    ap.add_argument("--group", type=int, default=8, help="G completions of the one prompt")
    ap.add_argument("--chunk-size", type=int, default=1024, help="LM-head rows per chunk")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--algo", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# worker: one algorithm in this process


def build_model(device: str):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tokenrl.models import LoraSpec, apply_lora

    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=256,
        num_hidden_layers=2,
        intermediate_size=1024,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    return apply_lora(model, LoraSpec(r=16, alpha=32)).to(device)


def build_rollouts(args: argparse.Namespace, device: str):
    """One prompt, G completions of exactly completion_len tokens sharing prefixes.

    Completion i is made of 4 segments: [0, 8) shared by all, [8, 32) one of 2 variants
    (i % 2), [32, 96) one of 4 (i % 4), [96, end) its own; siblings differ from the first token
    of their segment, so the trie branches at 8, 32 and 96.
    """
    import torch

    from tokenrl.rollout import RolloutBatch

    gen = torch.Generator().manual_seed(args.seed)
    G, P, T = args.group, args.prompt_len, args.completion_len
    cuts = [0] + [c for c in (8, 32, 96) if c < T] + [T]
    variants = [1, 2, 4, G][: len(cuts) - 1]
    completion = torch.empty(G, T, dtype=torch.long)
    for (lo, hi), n in zip(zip(cuts[:-1], cuts[1:], strict=True), variants, strict=True):
        segs = torch.randint(0, VOCAB, (n, hi - lo), generator=gen)  # [n, hi - lo]
        segs[:, 0] = torch.randperm(VOCAB, generator=gen)[:n]  # distinct first tokens
        completion[:, lo:hi] = segs[torch.arange(G) % n]
    # Uniform rewards: sibling branches then (almost surely) differ in mean reward, so every
    # branching edge is a T-SPMO pair (0/1 rewards can tie whole subtrees and hide pairs).
    rewards = torch.rand(G, generator=gen)
    batch = RolloutBatch(
        prompt_ids=torch.randint(0, VOCAB, (1, P), generator=gen).expand(G, P).clone(),
        prompt_mask=torch.ones(G, P, dtype=torch.bool),
        completion_ids=completion,
        completion_mask=torch.ones(G, T, dtype=torch.bool),
        truncated=torch.ones(G, dtype=torch.bool),
        texts=[""] * G,
        group_size=G,
        prompt_index=torch.zeros(G, dtype=torch.long),
    )
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask"):
        setattr(batch, name, getattr(batch, name).to(device))
    return batch, rewards.to(device)


def make_update(algo: str, model, batch, rewards, args: argparse.Namespace):
    """Return (update function doing forward + backward, info dict)."""
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from reference import full_logits_logprobs, grpo_loss  # the naive baseline, kept with the tests

    from tokenrl.algorithms import completion_logprobs, get_algorithm, policy_loss
    from tokenrl.algorithms.advantages import group_advantages

    P = batch.prompt_ids.shape[1]
    if algo == "plain":
        advantages = group_advantages(rewards, batch.group_size)

        def update() -> None:
            logp = full_logits_logprobs(model, batch.input_ids, batch.attention_mask)[
                :, P:
            ]  # [B, T]
            loss, _ = grpo_loss(logp, None, advantages, batch.completion_mask)
            loss.backward()

        return update, {"tokens/update_frac": 1.0, "tokens/forward_frac": 1.0}

    spec = get_algorithm(algo)
    cfg = spec.config_cls()
    cfg.validate()
    t0 = time.perf_counter()
    inputs = spec.prepare(batch, rewards, cfg, torch.Generator().manual_seed(args.seed))
    prepare_s = time.perf_counter() - t0

    def update() -> None:
        logp = completion_logprobs(model, batch, inputs.logprob_mask, chunk_size=args.chunk_size)
        loss, _ = policy_loss(logp, None, inputs, clip_low=cfg.clip_low, clip_high=cfg.clip_high)
        loss.backward()

    info = {k: v for k, v in inputs.metrics.items() if k.startswith(("tokens/", "tspmo/"))}
    info["prepare_s"] = prepare_s
    return update, info


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    model = build_model(args.device)
    batch, rewards = build_rollouts(args, args.device)
    update, info = make_update(args.algo, model, batch, rewards, args)
    peaks, times = [], []
    for i in range(1 + args.repeats):
        model.zero_grad(set_to_none=True)
        release_free_heap()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            update()
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() - base
        else:
            sampler = RssSampler()
            base = sampler.start()
            t0 = time.perf_counter()
            update()
            elapsed = time.perf_counter() - t0
            peak = sampler.stop() - base
        if i > 0:  # the first run is a warm-up
            peaks.append(peak)
            times.append(elapsed)
    return {
        "algo": args.algo,
        "peak_mb": statistics.median(peaks) / 2**20,
        "time_s": statistics.median(times),
        "device": args.device,
        "threads": args.threads,
        "chunk_size": args.chunk_size,
        **info,
    }


# ---------------------------------------------------------------------------------------------
# driver: one subprocess per algorithm


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    algos = [a for a in args.algos.split(",") if a]
    unknown = set(algos) - set(ALGOS)
    if unknown:
        sys.exit(f"unknown algorithm(s) {sorted(unknown)}; choose from {', '.join(ALGOS)}")
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY="PASSIVE")
    results = []
    for algo in algos:
        cmd = [sys.executable, os.path.abspath(__file__), *passthrough, "--worker", "--algo", algo]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"worker for {algo} failed:\n{proc.stderr[-4000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"device={args.device} threads={args.threads} B={args.group} P={args.prompt_len} "
        f"T={args.completion_len} V={VOCAB} chunk={args.chunk_size} (median of {args.repeats})"
    )
    print(f"{'algo':<7} {'peak MB':>9} {'time s':>8} {'update frac':>12} {'forward frac':>13}")
    for r in results:
        print(
            f"{r['algo']:<7} {r['peak_mb']:>9.0f} {r['time_s']:>8.2f} "
            f"{r.get('tokens/update_frac', 1.0):>12.3f} {r.get('tokens/forward_frac', 1.0):>13.3f}"
        )


if __name__ == "__main__":
    main()

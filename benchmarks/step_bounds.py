"""One RL step of a real model against the machine's physical bounds (issue #23).

Measures, in the same process and run (each algorithm in a fresh process of its own, as a training
run has it, unless ``--one-process``):

* the machine: fp32 GEMM FLOP/s (a large square product, all threads; also bf16 where the CPU
  has native bf16) and memory bandwidth (a streaming read of a 1 GiB tensor);
* one training step (tokenrl.step.train_step, the trainer's own code) per algorithm, with the
  rows and tokens every forward pass runs counted by a hook on the token embedding;

and reports each phase against its roofline bound, the larger of (bytes that must be read /
bandwidth) and (FLOPs that must be done / GEMM FLOP/s):

* generation: the prompt pass (2 N_body FLOPs per prompt token) and every decode step (2 (N_body
  + H V) FLOPs per row run; the weights and each row's KV cache read once per step);
* the update: 4 N_body FLOPs per token the body runs (forward, and the backward to the
  activations; the frozen weights get no gradient) plus 6 H V per LM-head target (forward,
  recompute, backward of the fused head).

``..._of_bound`` = bound seconds / measured seconds (1.0 = at the bound). Completions are forced
to the full length (EOS ignored) so every run does the same work.

    python benchmarks/step_bounds.py --model qwen2.5-coder-0.5b-instruct --task svamp --json
    python benchmarks/step_bounds.py --model tiny --task mult:2x1 --algos sgrpo   # smoke run
    python benchmarks/step_bounds.py --model random:FOLDER --device cuda --dtype bf16 --json

On a GPU (``--device cuda``) the bounds come from the GPU's own measured bf16/fp32 GEMM rate and
read bandwidth, the clock waits for the GPU at the end of generation, and each algorithm's
update reports its peak GPU memory (``update_peak_cuda_mb``: the most allocated during the update,
weights included). ``random:FOLDER`` (tokenrl.models) gives a real architecture with random
weights where the weights are not at hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tokenrl.algorithms import logprobs
from tokenrl.config import load_config
from tokenrl.machine import cpu_features, cpu_model, versions
from tokenrl.mklpath import intel_path_status
from tokenrl.models import decoder_and_head
from tokenrl.step import train_step
from tokenrl.trainer import build_trainer

RANDOM_REWARD = "benchmarks.trl.rewards:bench_reward"

SHAPES = {
    # task: (prompts, completions per prompt, new tokens, prompt style)
    "svamp": (4, 8, 64, "chat"),
    "mult:3x1": (4, 8, 64, "chat"),
}


def best_seconds(fn, device: str, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls after one warm-up (synchronised on a GPU)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_flops(
    dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5, device: str = "cpu"
) -> float:
    """Best FLOP/s of an n x n x n product (all threads)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    return 2 * n**3 / best_seconds(lambda: a @ b, device, repeats)


def read_bandwidth(gib: float = 1.0, repeats: int = 5, device: str = "cpu") -> float:
    """Best bytes/s of a streaming read (a sum over a tensor much larger than the caches)."""
    x = torch.ones(int(gib * 2**30 / 4), dtype=torch.float32, device=device)
    return x.numel() * 4 / best_seconds(x.sum, device, repeats)


def measure_machine(device: str, dtype: str, threads: int) -> dict[str, Any]:
    """The bounds' inputs, measured now: GEMM FLOP/s of the run's dtype (and fp32) and read
    bandwidth; on a GPU with larger products and tensors (the caches are larger)."""
    if device.startswith("cuda"):
        return {
            "gpu": torch.cuda.get_device_name(),
            "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30,
            "cpu": cpu_model(),
            "gemm_fp32_flops": gemm_flops(torch.float32, 8192, 10, device),
            "gemm_bf16_flops": gemm_flops(torch.bfloat16, 8192, 10, device),
            "read_bytes_per_s": read_bandwidth(4.0, 10, device),
        }
    feats = cpu_features()
    machine = {
        "cpu": cpu_model(),
        "cpu_features": feats,
        "mkl_intel_path": intel_path_status(),
        "threads": threads,
        "gemm_fp32_flops": gemm_flops(torch.float32),
    }
    if dtype == "bf16" or feats.get("avx512_bf16") or feats.get("amx_bf16"):
        machine["gemm_bf16_flops"] = gemm_flops(torch.bfloat16)
    machine["read_bytes_per_s"] = read_bandwidth()
    return machine


def model_costs(model: torch.nn.Module) -> dict[str, Any]:
    """Parameter counts and shapes the bounds need (body = everything but the two embeddings)."""
    body, head = decoder_and_head(model)
    embed = body.get_input_embeddings()
    n_embed = embed.weight.numel()
    n_head = head.weight.numel() if head.weight.data_ptr() != embed.weight.data_ptr() else 0
    n_body = sum(p.numel() for p in body.parameters()) - n_embed
    cfg = body.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return {
        "n_body": n_body,
        "hidden": cfg.hidden_size,
        "vocab": head.weight.shape[0],
        "layers": cfg.num_hidden_layers,
        "kv_bytes_per_token": 2
        * cfg.num_hidden_layers
        * cfg.num_key_value_heads
        * head_dim
        * embed.weight.element_size(),
        "weight_bytes": (n_body + head.weight.shape[0] * cfg.hidden_size)
        * embed.weight.element_size(),
        "params": n_body + n_embed + n_head,
    }


class ForwardLog:
    """Rows x tokens of every forward pass, by phase, from a hook on the token embedding; and the
    rows whose LM-head log-prob the update computes (``head_rows``: only the loss's targets, e.g.
    none of a group whose rewards are all equal)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.phase = "other"
        self.calls: dict[str, list[tuple[int, int]]] = {"generate": [], "update": [], "other": []}
        self.head_rows = 0
        embed = decoder_and_head(model)[0].get_input_embeddings()
        self.handle = embed.register_forward_hook(
            lambda m, inp, out: self.calls[self.phase].append(tuple(inp[0].shape))
        )
        self._head_logprobs = logprobs.head_logprobs

        def counted(head, hidden, targets, **kw):
            if self.phase == "update":
                self.head_rows += hidden.shape[0]
            return self._head_logprobs(head, hidden, targets, **kw)

        logprobs.head_logprobs = counted

    def close(self) -> None:
        self.handle.remove()
        logprobs.head_logprobs = self._head_logprobs


def generation_bound(
    calls: list[tuple[int, int]], c: dict[str, Any], flops: float, bw: float
) -> float:
    """Seconds the machine needs at least for these generation forwards (see the module doc)."""
    total, context = 0.0, 0
    for i, (rows, length) in enumerate(calls):
        if i == 0 or length > 1:  # a prompt pass
            context = length
            need_flops = 2 * c["n_body"] * rows * length + 2 * c["hidden"] * c["vocab"] * rows
            need_bytes = c["weight_bytes"]
        else:  # one decode step of `rows` distinct prefixes
            context += 1
            need_flops = 2 * (c["n_body"] + c["hidden"] * c["vocab"]) * rows
            need_bytes = c["weight_bytes"] + rows * context * c["kv_bytes_per_token"]
        total += max(need_flops / flops, need_bytes / bw)
    return total


def update_bound(
    calls: list[tuple[int, int]], targets: float, c: dict[str, Any], flops: float, bw: float
) -> float:
    tokens = sum(r * t for r, t in calls)
    need_flops = 4 * c["n_body"] * tokens + 6 * c["hidden"] * c["vocab"] * targets
    return max(need_flops / flops, 2 * c["weight_bytes"] * max(len(calls), 1) / bw)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    machine = measure_machine(args.device, args.dtype, args.threads)
    # the bound of the run's dtype: its products run at that dtype's measured GEMM rate
    flops = machine["gemm_bf16_flops"] if args.dtype == "bf16" else machine["gemm_fp32_flops"]
    bw = machine["read_bytes_per_s"]
    prompts, group, new_tokens, style = SHAPES.get(args.task, (4, 8, 64, "auto"))
    rows, cuda = [], args.device.startswith("cuda")
    # random weights answer nothing right: every group would be skipped (no signal) and no
    # update measured; the benchmarks' tie-broken reward gives every group distinct rewards
    reward = {"task.reward": RANDOM_REWARD} if args.model.startswith("random:") else {}
    overrides = dict(kv.split("=", 1) for kv in args.set)  # --set KEY=VALUE
    for algo in args.algos.split(","):
        settings = {
            "model.name": args.model, "model.dtype": args.dtype, "model.device": args.device,
            "task.name": args.task,
            "task.style": args.style or style, "train.algo": algo, "train.steps": 2,
            "rollout.prompts_per_step": prompts, "rollout.group_size": group,
            "rollout.max_new_tokens": args.max_new_tokens or new_tokens, "task.eval_limit": 1,
            "log.progress": False, "log.samples_every": 0, **reward,
            **overrides,
        }  # fmt: skip
        cfg = load_config(None, list(settings.items()))
        tr = build_trainer(cfg, Path("/tmp/step_bounds"))
        tr.model.generation_config.eos_token_id = None  # every completion runs to the full length
        costs = model_costs(tr.model)
        log = ForwardLog(tr.model)
        generate = tr.engine.generate

        def logged_generate(*a, _log=log, _generate=generate, _cuda=cuda, **kw):
            _log.phase = "generate"
            try:
                return _generate(*a, **kw)
            finally:
                if _cuda:  # the step's clock reads the end of generation: let the GPU finish
                    torch.cuda.synchronize()
                _log.phase = "update"

        tr.engine.generate = logged_generate
        for _ in range(args.warmup + 1):  # the last step is the measured one
            log.calls = {"generate": [], "update": [], "other": []}
            log.head_rows = 0
            m = train_step(tr)
            log.phase = "other"
        log.close()
        # the shape that ran: --set may have changed SHAPES' prompts and group
        prompts, group = cfg.rollout.prompts_per_step, cfg.rollout.group_size
        n_comp = prompts * group * (args.max_new_tokens or new_tokens)
        targets = log.head_rows  # the LM head's rows in the update's forward (and backward)
        g_bound = generation_bound(log.calls["generate"], costs, flops, bw)
        u_bound = update_bound(log.calls["update"], targets, costs, flops, bw)
        # every row decodes every step (EOS ignored); the completion mask would stop counting
        # at the first end-of-turn token, which the sampler may draw and go past
        gen_tokens = n_comp
        gen_s, upd_s, step_s = m["time/generate"], m["time/update"], m["time/step"]
        rows.append({
            "algo": algo, "step_s": step_s, "generate_s": gen_s, "update_s": upd_s,
            "generate_tokens_per_s": gen_tokens / gen_s,
            "decode_rows_run": sum(r for r, t in log.calls["generate"][1:]),
            "update_tokens_run": sum(r * t for r, t in log.calls["update"]), "update_targets": targets,
            "generate_bound_s": g_bound, "update_bound_s": u_bound, "decode_of_bound": g_bound / gen_s,
            "update_of_bound": u_bound / upd_s if upd_s and log.calls["update"] else None,
            "step_of_bound": (g_bound + u_bound) / step_s, "peak_rss_mb": m["memory/peak_rss_mb"],
            "update_peak_cuda_mb": m.get("memory/peak_cuda_mb"), "pid": os.getpid(),
        })  # fmt: skip
        del tr, log, m
        if cuda:
            torch.cuda.empty_cache()
    shape = {"prompts": prompts, "group": group, "new_tokens": args.max_new_tokens or new_tokens}
    return {"model": args.model, "task": args.task, "dtype": args.dtype, "device": args.device,
            "reward": reward.get("task.reward", "task"), "shape": shape,
            "settings": overrides,
            "costs": costs, "machine": machine, "versions": versions(), "algorithms": rows}  # fmt: skip


def run_each(argv: list[str], algos: list[str]) -> dict[str, Any]:
    """:func:`run` for each algorithm in a process of its own; one report, each row with the
    machine rates its own process measured (its bounds use them)."""
    root = Path(__file__).resolve().parents[1]
    out: dict[str, Any] = {}
    for algo in algos:
        child = [sys.executable, "-m", "benchmarks.step_bounds", *argv, "--algos", algo, "--json"]
        done = subprocess.run(child, cwd=root, check=True, stdout=subprocess.PIPE, text=True)
        report = json.loads(done.stdout)
        (row,) = report["algorithms"]
        row["machine"] = report["machine"]
        out = out or {**report, "algorithms": []}
        out["algorithms"].append(row)
    out["processes"] = "each algorithm in its own"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--task", default="svamp")
    ap.add_argument(
        "--style", default=None, help="prompt style (default: chat for the shapes above)"
    )
    ap.add_argument("--algos", default="grpo,sgrpo,tspmo")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=1, help="steps run before the measured one")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a tokenrl train setting"
    )
    ap.add_argument(
        "--one-process",
        action="store_true",
        help="run the algorithms one after the other in this process (default: each in a fresh "
        "process, as a training run has it: what one leaves in the heap does not slow the next)",
    )
    ap.add_argument("--json", action="store_true")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    algos = args.algos.split(",")
    out = run(args) if len(algos) == 1 or args.one_process else run_each(argv, algos)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    mc = out["machine"]
    bf16 = f", bf16 {mc['gemm_bf16_flops'] / 1e9:.0f}" if "gemm_bf16_flops" in mc else ""
    where = mc.get("gpu") or f"{mc['cpu']}, {mc['threads']} threads"
    print(f"{where}: GEMM fp32 {mc['gemm_fp32_flops'] / 1e9:.0f}{bf16} "
          f"GFLOP/s, read {mc['read_bytes_per_s'] / 1e9:.1f} GB/s; {out['model']} "
          f"({out['costs']['params'] / 1e6:.0f}M) {out['dtype']}")  # fmt: skip
    print("| algo | step s | generate s (of bound) | update s (of bound) | gen tokens/s | decode rows "
          "| update tokens | peak MB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in out["algorithms"]:
        u = (
            f"{r['update_s']:.2f} ({r['update_of_bound']:.2f})"
            if r["update_of_bound"] is not None
            else "-"
        )
        print(f"| {r['algo']} | {r['step_s']:.2f} | {r['generate_s']:.2f} ({r['decode_of_bound']:.2f}) | {u} | "
              f"{r['generate_tokens_per_s']:.1f} | {r['decode_rows_run']} | {r['update_tokens_run']} | "
              f"{r['update_peak_cuda_mb'] or r['peak_rss_mb']:.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

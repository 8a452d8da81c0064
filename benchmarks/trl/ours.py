"""tokenrl's side of each workload: one update on fixed rollouts, or one whole training step.

Update (workloads A, B): exactly what ``tokenrl train`` does per update with one micro-batch and
one inner update (``trainer.update_policy``): ``prepare`` (credit assignment + token selection)
-> ``completion_logprobs`` at the selected tokens -> ``policy_loss`` -> backward -> gradient
clipping (1.0) -> AdamW step -> zero_grad.

Whole step (workloads C): ``trainer.build_trainer`` + ``trainer.train_step``, the real training
step (prompts -> rollouts -> rewards -> prepare -> update -> metrics), with every completion forced
to exactly ``completion_len`` new tokens (``min_new_tokens`` on the model's generation config, no
stop strings, a distinct pad token suppressed: :func:`~benchmarks.trl.inputs.extra_suppressed`), as
TRL is forced with ``generation_kwargs={"min_new_tokens": L, "suppress_tokens": ...}``; both score with
:func:`benchmarks.trl.rewards.bench_reward` (so no group is skipped for lack of signal).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.trl.inputs import (
    GRAD_CLIP,
    LR,
    build_policy,
    extra_suppressed,
    fixed_rollouts,
    lora_b_changed,
    lora_b_snapshot,
    model_spec,
    vocab_size,
)
from benchmarks.trl.measure import PhaseMeter
from benchmarks.trl.workloads import Workload


def run_update(
    w: Workload, algo: str, *, device: str, dtype: torch.dtype, measure: str, warmup: int, repeats: int,
    gradient_checkpointing: bool, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    from tokenrl.algorithms import completion_logprobs, get_algorithm, policy_loss

    model, tok = build_policy(w, device, dtype, gradient_checkpointing=gradient_checkpointing)
    batch, rewards = fixed_rollouts(w, tok, vocab_size(model), device, seed)
    spec = get_algorithm(algo)
    cfg = spec.config_cls()
    cfg.validate()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed + 1)
    info: dict[str, Any] = {}

    def step() -> None:
        inputs = spec.prepare(batch, rewards, cfg, generator)
        logp = completion_logprobs(model, batch, inputs.logprob_mask)  # [B, T]
        loss, _ = policy_loss(logp, None, inputs, clip_low=cfg.clip_low, clip_high=cfg.clip_high)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        info.update(
            {k: v for k, v in inputs.metrics.items() if k.startswith(("tokens/", "tspmo/"))}
        )

    meter = PhaseMeter(device, memory=measure == "memory")
    before = lora_b_snapshot(model)
    times, peaks = [], []
    for i in range(warmup + repeats):
        meter.begin()
        step()
        elapsed, peak = meter.end()
        if i >= warmup:
            times.append(elapsed)
            peaks.append(peak)
    info["lora_changed"] = lora_b_changed(model, before)
    return {"times_s": times, "peaks_bytes": peaks, "info": info}


class _NoStopTask:
    """The task with no stop strings, so every completion runs to exactly max_new_tokens."""

    stop: list[str] = []

    def __init__(self, task: Any) -> None:
        self._task = task

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)


def step_config(w: Workload, algo: str, *, device: str, dtype: str, steps: int, seed: int = 0):
    """The ``tokenrl train`` config of a whole-step workload."""
    from tokenrl.config import load_config

    overrides: list[tuple[str, Any]] = [
        ("model.name", model_spec(w.model)),
        ("model.dtype", dtype),
        ("model.device", device),
        ("model.gradient_checkpointing", w.ours_gradient_checkpointing),
        ("lora.r", 16),
        ("lora.alpha", 32),
        ("task.name", w.task),
        ("task.style", w.task_style),
        ("task.reward", "benchmarks.trl.rewards:bench_reward"),
        ("rollout.group_size", w.group),
        ("rollout.prompts_per_step", w.prompts),
        ("rollout.max_new_tokens", w.completion_len),
        ("rollout.temperature", 1.0),
        ("rollout.top_p", 1.0),
        ("optim.lr", LR),
        ("optim.grad_clip", GRAD_CLIP),
        ("optim.inner_updates", 1),
        ("optim.micro_batches", 1),
        ("train.algo", algo),
        ("train.steps", steps),
        ("train.seed", seed),
        ("log.samples_every", 0),
        ("log.progress", False),
    ]
    return load_config(None, overrides)


def run_step(
    w: Workload, algo: str, *, device: str, dtype: str, warmup: int, repeats: int, seed: int = 0
) -> dict[str, Any]:
    from tokenrl.step import train_step
    from tokenrl.trainer import build_trainer

    cfg = step_config(w, algo, device=device, dtype=dtype, steps=warmup + repeats, seed=seed)
    with tempfile.TemporaryDirectory(prefix="tokenrl-bench-") as out:
        tr = build_trainer(cfg, Path(out))
        tr.task = _NoStopTask(tr.task)
        base = tr.model.get_base_model() if hasattr(tr.model, "get_base_model") else tr.model
        base.generation_config.min_new_tokens = w.completion_len
        base.generation_config.suppress_tokens = extra_suppressed(tr.lm.tokenizer)
        meter = PhaseMeter(device, memory=False)
        before = lora_b_snapshot(tr.model)
        times, lengths, skipped = [], [], 0.0
        for i in range(warmup + repeats):
            meter.begin()
            metrics = train_step(tr)
            elapsed, _ = meter.end()
            if i >= warmup:
                times.append(elapsed)
                lengths.append(metrics["completion/mean_tokens"])
                skipped += metrics.get("update/skipped", 0.0)
    return {
        "times_s": times,
        "peaks_bytes": [None] * len(times),
        "info": {
            "completion/mean_tokens": sum(lengths) / len(lengths),
            "update/skipped": skipped,
            "lora_changed": lora_b_changed(tr.model, before),
            "rows": w.rows,
        },
    }

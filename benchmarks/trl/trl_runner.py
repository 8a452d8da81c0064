"""TRL's side of each workload, driven through ``GRPOTrainer.train()`` itself (trl 1.16).

Settings (every workload): ``loss_type="grpo"``, ``beta=0`` (no reference model), one update
per generated batch (``num_iterations=1``, ``steps_per_generation=1``), AdamW (``adamw_torch``),
lr 1e-5 constant, ``max_grad_norm=1.0``, ``num_generations=G``, the same LoRA-wrapped model as
ours (r 16, alpha 32, q/k/v/o/gate/up/down, same init), ``use_cpu`` on CPU, ``bf16`` only for
bf16 runs, ``gradient_checkpointing`` set explicitly per workload, ``report_to="none"``.

What is timed: one optimisation step of TRL's own training loop, from the ``on_step_begin``
callback to ``on_step_end`` (transformers ``Trainer._run_epoch``): ``training_step`` (TRL's
``_prepare_inputs`` -> ``compute_loss``: a forward pass through the body and TRL's fused,
chunked LM head over every completion token, with its entropies -> backward) -> gradient
clipping -> ``optimizer.step()`` -> scheduler step -> ``zero_grad()``. Memory is the peak added
over the same span.

* Update workloads (A, B): ``_generate_and_score_completions`` is replaced on the trainer
  instance by a function returning the fixed rollouts that ours use (prompt and completion ids,
  masks, and GRPO advantages of the same rewards), so the step holds no generation: exactly one
  TRL update on the same completions.
* Whole-step workloads (C): nothing is replaced; the step includes TRL's generation with
  ``generation_kwargs={"min_new_tokens": L, "suppress_tokens": [pad]}`` (pad only when it is not
  EOS) and ``max_completion_length=L``, the reward
  function (:func:`benchmarks.trl.rewards.bench_reward`, as ours), advantages and the update.
"""

from __future__ import annotations

import tempfile
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
    vocab_size,
)
from benchmarks.trl.measure import PhaseMeter
from benchmarks.trl.workloads import Workload


def _trl_config(w: Workload, *, out: str, device: str, dtype: torch.dtype, steps: int, seed: int,
                gradient_checkpointing: bool, suppressed: list[int]):  # fmt: skip
    from trl import GRPOConfig

    extra: dict[str, Any] = {}
    if w.kind == "step":
        extra["generation_kwargs"] = {
            "min_new_tokens": w.completion_len,
            "suppress_tokens": suppressed,
        }
    return GRPOConfig(
        output_dir=out,
        loss_type="grpo",
        beta=0.0,
        num_iterations=1,
        num_generations=w.group,
        per_device_train_batch_size=w.rows,
        gradient_accumulation_steps=1,
        max_completion_length=w.completion_len,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        learning_rate=LR,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=GRAD_CLIP,
        max_steps=steps,
        use_cpu=not device.startswith("cuda"),
        bf16=dtype == torch.bfloat16,
        fp16=False,
        gradient_checkpointing=gradient_checkpointing,
        report_to="none",
        logging_steps=10**6,
        save_strategy="no",
        disable_tqdm=True,
        shuffle_dataset=False,
        log_completions=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        seed=seed,
        **extra,
    )


def _step_meter(meter: PhaseMeter, warmup: int, times: list[float], peaks: list[int | None]):
    from transformers import TrainerCallback

    class StepMeter(TrainerCallback):
        """Time and peak memory from on_step_begin to on_step_end of each optimisation step."""

        def __init__(self) -> None:
            self.n = 0
            self.trainer = None  # set once the trainer exists
            self.lengths: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            meter.begin()

        def on_step_end(self, args, state, control, **kwargs):
            elapsed, peak = meter.end()
            if self.n >= warmup:
                times.append(elapsed)
                peaks.append(peak)
                seen = (
                    self.trainer._metrics["train"].get("completions/mean_length")
                    if self.trainer
                    else None
                )
                if seen:
                    self.lengths.append(seen[-1])
            self.n += 1

    return StepMeter()


def run_trl(
    w: Workload, *, device: str, dtype: torch.dtype, measure: str, warmup: int, repeats: int,
    gradient_checkpointing: bool, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    from datasets import Dataset
    from trl import GRPOTrainer

    # TRL enables checkpointing itself (Trainer.train); the policy is built without it.
    model, tok = build_policy(w, device, dtype, gradient_checkpointing=False)
    steps = warmup + repeats
    times: list[float] = []
    peaks: list[int | None] = []
    meter = PhaseMeter(device, memory=measure == "memory")
    info: dict[str, Any] = {}

    if w.kind == "update":
        batch, rewards = fixed_rollouts(w, tok, vocab_size(model), device, seed)
        from tokenrl.algorithms.advantages import group_advantages

        # TRL's own formula: (r - group mean) / (group std + 1e-4); here precomputed once
        advantages = group_advantages(rewards, w.group, scale_by_std=True, eps=1e-4)  # [B]
        fixed = {
            "prompt_ids": batch.prompt_ids,
            "prompt_mask": batch.prompt_mask.long(),
            "completion_ids": batch.completion_ids,
            "completion_mask": batch.completion_mask.int(),
            "advantages": advantages.float(),
            "num_items_in_batch": batch.completion_mask.sum(),
        }
        dataset = Dataset.from_dict({"prompt": ["unused"] * steps})

        def reward_fn(completions, **kwargs):  # never called: generation is replaced
            return [0.0] * len(completions)

    else:
        from tokenrl.tasks import get_task

        task = get_task(w.task, style=w.task_style).resolved(tok)
        examples = task.examples("train")[: w.prompts * steps]
        dataset = Dataset.from_dict(
            {
                "prompt": [task.render_prompt(e, tok) for e in examples],
                "example_index": list(range(len(examples))),
            }
        )

        from benchmarks.trl.rewards import bench_reward

        def reward_fn(completions, example_index, **kwargs):
            return [bench_reward(c, examples[i]) for c, i in zip(completions, example_index)]

    step_meter = _step_meter(meter, warmup, times, peaks)
    with tempfile.TemporaryDirectory(prefix="tokenrl-bench-trl-") as out:
        args = _trl_config(w, out=out, device=device, dtype=dtype, steps=steps, seed=seed,
                           gradient_checkpointing=gradient_checkpointing,
                           suppressed=extra_suppressed(tok))  # fmt: skip
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward_fn,
            args=args,
            train_dataset=dataset,
            processing_class=tok,
            callbacks=[step_meter],
        )
        step_meter.trainer = trainer
        if w.kind == "update":
            # the same completions every step, instead of generating and scoring
            trainer._generate_and_score_completions = lambda inputs: dict(fixed)
        before = lora_b_snapshot(model)
        trainer.train()
        info["lora_changed"] = lora_b_changed(model, before)
        if step_meter.lengths:
            info["completion/mean_tokens"] = sum(step_meter.lengths) / len(step_meter.lengths)
    info["rows"] = w.rows
    return {"times_s": times, "peaks_bytes": peaks, "info": info}

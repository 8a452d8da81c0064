"""Supervised warm-up: turn a random-weight tiny model into a weak base model for RL.

A freshly built tiny model answers nothing, and RL cannot start from zero reward. The quickstart
therefore first fits the tiny model, with full-parameter AdamW and next-token cross-entropy on
the answer tokens only, to the task's *train* split, and stops while it is still weak: once its
greedy accuracy on a slice of train problems held out of the warm-up reaches a target (40% by
default). RL then starts from that base, as the paper's runs start from a pretrained model. The
test split is never seen here.

The objective, for a batch of prompt/answer pairs (x_i, y_i):

    L = - (1 / sum_i |y_i|) * sum_i sum_t log pi(y_{i,t} | x_i, y_{i,<t})
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokenrl.tasks import Example, Task

IGNORE = -100  # label of positions that are not answer tokens


@dataclass(frozen=True)
class WarmupConfig:
    """How long and how fast the supervised warm-up trains."""

    max_steps: int = 1200
    """Most optimiser steps; the warm-up usually stops earlier, at ``target_accuracy``."""

    target_accuracy: float = 0.4
    """Stop at the first check where greedy accuracy on the validation slice reaches this."""

    check_every: int = 50
    """Optimiser steps between two checks of the validation slice."""

    validation: int = 200
    """Train problems held out of the warm-up to decide when to stop (never test problems)."""

    lr: float = 1e-3
    """AdamW learning rate (constant); 2e-3 diverged in our runs on the default tiny model."""

    batch_size: int = 64
    """Problems per step, drawn uniformly with replacement from the train split."""

    seed: int = 0
    """Seeds the batch draws (the model's initial weights are seeded where it is built)."""

    def __post_init__(self) -> None:
        if self.max_steps < 0:
            raise ValueError(f"warm-up max_steps must be >= 0, got {self.max_steps}")
        if not 0.0 <= self.target_accuracy <= 1.0:
            raise ValueError(
                f"warm-up target_accuracy must be in [0, 1], got {self.target_accuracy}"
            )
        if self.check_every < 1 or self.validation < 1:
            raise ValueError("warm-up check_every and validation must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"warm-up lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"warm-up batch_size must be >= 1, got {self.batch_size}")


def encode_pairs(
    task: Task, tokenizer, examples: list[Example]
) -> list[tuple[list[int], list[int]]]:
    """Token ids of (prompt, reference answer + stop string) for each example.

    The answer is written the way the task's reward reads it (its ``answer`` followed by the
    first stop string, e.g. a newline), so that sampling after the warm-up stops by itself.
    """
    stop = task.stop[0] if task.stop else (tokenizer.eos_token or "")
    pairs = []
    for e in examples:
        prompt = tokenizer(task.render_prompt(e, tokenizer), add_special_tokens=False)["input_ids"]
        target = tokenizer(e.answer + stop, add_special_tokens=False)["input_ids"]
        pairs.append((prompt, target))
    return pairs


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` [B, L] and ``labels`` [B, L] that are the
    answer tokens and ``IGNORE`` elsewhere (the model shifts labels itself)."""
    L = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), L), pad_id, dtype=torch.long)
    attention = torch.zeros((len(pairs), L), dtype=torch.long)
    labels = torch.full((len(pairs), L), IGNORE, dtype=torch.long)
    for row, (p, a) in enumerate(pairs):
        n = len(p) + len(a)
        ids[row, :n] = torch.tensor(p + a)
        attention[row, :n] = 1
        labels[row, len(p) : n] = torch.tensor(a)
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def supervised_warmup(
    model: torch.nn.Module,
    tokenizer,
    task: Task,
    cfg: WarmupConfig,
    *,
    on_step: Callable[[int, float, float | None], None] | None = None,
) -> dict[str, Any]:
    """Train every parameter of ``model`` on ``task``'s train split until it is a weak base.

    The first ``cfg.validation`` train problems are held out of the warm-up; every
    ``cfg.check_every`` steps the greedy accuracy on them is measured, and the warm-up stops once
    it reaches ``cfg.target_accuracy`` (or after ``cfg.max_steps``). ``on_step(step, loss,
    validation_accuracy_or_None)`` is called after each optimiser step (a progress bar).
    Returns a summary: steps run, the last check's accuracy, seconds.
    """
    from tokenrl.evaluation import evaluate

    task = task.resolved(tokenizer)
    train = task.examples("train")
    if len(train) <= cfg.validation:
        raise ValueError(
            f"the train split has {len(train)} problems: too few to hold out {cfg.validation} for the warm-up's checks"
        )
    held_out, fit = train[: cfg.validation], train[cfg.validation :]
    pairs = encode_pairs(task, tokenizer, fit)
    max_answer = max(len(a) for _, a in pairs) + 1
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    draws = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    loss_value, accuracy, step = float("nan"), None, 0
    checks: list[tuple[int, float]] = []
    while step < cfg.max_steps:
        model.train()
        idx = torch.randint(len(pairs), (cfg.batch_size,), generator=draws).tolist()
        loss = model(**collate([pairs[i] for i in idx], pad)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        loss_value = loss.item()
        checked = None
        if step % cfg.check_every == 0 or step == cfg.max_steps:
            model.eval()
            checked = evaluate(
                model,
                tokenizer,
                task,
                held_out,
                max_new_tokens=max_answer + 1,
                batch_size=len(held_out),
            ).accuracy
            accuracy = checked
            checks.append((step, checked))
        if on_step is not None:
            on_step(step, loss_value, checked)
        if checked is not None and checked >= cfg.target_accuracy:
            break
    model.eval()
    return {
        "steps": step,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "train_problems": len(pairs),
        "validation_problems": len(held_out),
        "validation_accuracy": accuracy,
        "reached_target": accuracy is not None and accuracy >= cfg.target_accuracy,
        "checks": checks,
        "final_loss": loss_value,
        "seconds": time.perf_counter() - t0,
    }


def save_base(model: torch.nn.Module, tokenizer, folder: Path) -> Path:
    """Save model and tokenizer as a Hugging Face folder that ``--model FOLDER`` loads."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

"""Held-out accuracy: greedy accuracy with a Wilson 95% interval, or pass@k when sampling.

Used by ``tokenrl eval`` and by the trainer's periodic evaluation, so both report the same
numbers. Generation goes through a rollout engine (:mod:`tokenrl.engines`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tokenrl.engines import Engine, make_engine
from tokenrl.rollout import SamplingConfig
from tokenrl.stats import mean_pass_at_k, wilson_interval
from tokenrl.tasks import Example, Task


@dataclass
class EvalResult:
    """What an evaluation measured; ``summary()`` is what eval.json holds."""

    task: str
    n: int
    samples: int
    correct: int  # problems whose first (greedy) completion is right
    accuracy: float
    ci95: tuple[float, float]
    pass_at: dict[int, float]  # k -> mean pass@k (sampling only)
    by_type: dict[str, dict[str, float]]
    mean_completion_tokens: float
    truncation_rate: float
    tokens_per_s: float
    seconds: float
    records: list[dict[str, Any]] = field(default_factory=list)  # one per completion

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "records"}
        out["ci95"] = list(self.ci95)
        out["pass_at"] = {str(k): v for k, v in self.pass_at.items()}
        return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokenizer,
    task: Task,
    examples: list[Example],
    *,
    max_new_tokens: int,
    samples: int = 1,
    temperature: float = 1.0,
    batch_size: int = 64,
    on_progress: Callable[[int], None] | None = None,
    engine: Engine | None = None,
) -> EvalResult:
    """Accuracy of ``model`` on ``examples``: greedy when ``samples == 1``, else pass@k sampling.

    ``engine`` samples the completions (default: the shared-prefix engine on ``model``)."""
    task = task.resolved(tokenizer)
    engine = engine or make_engine("shared", model, tokenizer)
    sampling = SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        greedy=samples == 1,
        stop=tuple(task.stop),
        batch_size=batch_size,
    )
    per_call = max(1, batch_size // samples)
    records: list[dict[str, Any]] = []
    lengths: list[int] = []
    truncated = 0
    t0 = time.perf_counter()
    for start in range(0, len(examples), per_call):
        chunk = examples[start : start + per_call]
        prompt_ids = [
            tokenizer(task.render_prompt(e, tokenizer), add_special_tokens=False)["input_ids"]
            for e in chunk
        ]
        batch = engine.generate(prompt_ids, sampling, group_size=samples)
        for row, text in enumerate(batch.texts):
            ex = chunk[row // samples]
            n_tok = int(batch.completion_mask[row].sum())
            lengths.append(n_tok)
            truncated += int(batch.truncated[row])
            records.append(
                {
                    "id": ex.id,
                    "sample": row % samples,
                    "completion": text,
                    "gold": ex.answer,
                    "reward": task.reward(text, ex),
                    "tokens": n_tok,
                    "truncated": bool(batch.truncated[row]),
                }
            )
        if on_progress is not None:
            on_progress(len(chunk))
    seconds = time.perf_counter() - t0
    n = len(examples)
    first = [r for r in records if r["sample"] == 0]
    correct = sum(int(r["reward"] > 0) for r in first)
    counts = [
        sum(int(r["reward"] > 0) for r in records[i * samples : (i + 1) * samples])
        for i in range(n)
    ]
    pass_at = {k: mean_pass_at_k(counts, samples, k) for k in _ks(samples)} if samples > 1 else {}
    by_type: dict[str, list[int]] = defaultdict(list)
    for ex, r in zip(examples, first):
        if "Type" in ex.metadata:
            by_type[str(ex.metadata["Type"])].append(int(r["reward"] > 0))
    return EvalResult(
        task=task.spec,
        n=n,
        samples=samples,
        correct=correct,
        accuracy=correct / n if n else 0.0,
        ci95=wilson_interval(correct, n),
        pass_at=pass_at,
        by_type={t: {"n": len(v), "accuracy": sum(v) / len(v)} for t, v in sorted(by_type.items())},
        mean_completion_tokens=sum(lengths) / max(len(lengths), 1),
        truncation_rate=truncated / max(len(records), 1),
        tokens_per_s=sum(lengths) / seconds if seconds > 0 else 0.0,
        seconds=seconds,
        records=records,
    )


def default_max_new_tokens(task: Task, tokenizer) -> int:
    """A completion budget that fits the task and prompt style (override with --max-new-tokens)."""
    style = task.resolve_style(tokenizer)
    if task.name == "multiplication" and getattr(task.config, "reasoning", "answer") == "answer":
        return 32 if style == "chat" else 16
    return 256 if task.name == "gsm8k" else 160


def _ks(samples: int) -> list[int]:
    ks = [1]
    while ks[-1] * 2 <= samples:
        ks.append(ks[-1] * 2)
    if ks[-1] != samples:
        ks.append(samples)
    return ks

"""Reward functions: tokenrl's ``fn(completion, example)`` and TRL's batched form, with weights.

Two signatures are accepted, told apart by the parameter names:

* **TRL style** (a parameter named ``completions``): called once per batch as
  ``fn(prompts=[...], completions=[...], **columns)``, where ``columns`` are the dataset's
  columns as lists (``question``, ``answer``, ``id`` and any extra field of the rows), as TRL's
  ``GRPOTrainer`` calls its ``reward_funcs``. It returns one ``float`` or ``None`` (not
  applicable) per completion.
* **tokenrl style** (anything else): ``fn(completion: str, example: Example) -> float``, once per
  completion; ``example.metadata`` holds the row's extra fields.

Several functions combine as the weighted sum ``r = sum_k w_k r_k`` (a ``None`` adds nothing,
as in TRL); each is logged as ``reward/<name>`` (its unweighted mean over the step's fresh
completions, ``None`` left out). A function that raises, returns the wrong number of values, or a
value that is not a finite number stops the run with a message naming it, or scores 0 and is
counted in ``reward/errors`` (``task.reward_errors: zero``).
"""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tokenrl.guards import RewardError, reward_value, score_completions

RESERVED = {"mean", "std", "replay_mean", "errors", "zero_std_frac"}  # reward/<key> the step logs


def is_trl_style(fn: Callable) -> bool:
    """Whether ``fn`` takes TRL's batched keyword arguments (a parameter named ``completions``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "completions" in params


def function_name(fn: Callable) -> str:
    """``module:qualname`` of ``fn`` (for messages and, when importable, the run's config)."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    module = getattr(fn, "__module__", None)
    return f"{module}:{name}" if module else name


@dataclass(frozen=True)
class Reward:
    """One reward function with its weight and the name it is logged under."""

    fn: Callable
    weight: float = 1.0
    name: str = ""

    @property
    def trl_style(self) -> bool:
        return is_trl_style(self.fn)


@dataclass
class Scores:
    """What :meth:`RewardSet.score` returns."""

    total: list[float]  # [B] the weighted sum
    by_name: dict[str, list[float | None]]  # each function's own values
    errors: int  # calls that failed and scored 0 (task.reward_errors: zero)


class RewardSet:
    """The step's reward functions (see the module docstring)."""

    def __init__(self, rewards: Sequence[Reward]) -> None:
        if not rewards:
            raise ValueError("a RewardSet needs at least one reward function")
        names: list[str] = []
        self.rewards: list[Reward] = []
        for r in rewards:
            base = r.name or getattr(r.fn, "__name__", "reward")
            name = f"{base}_fn" if base in RESERVED else base
            k = 2
            while name in names:  # two functions of the same name: number them
                name, k = f"{base}_{k}", k + 1
            names.append(name)
            self.rewards.append(Reward(r.fn, float(r.weight), name))

    @classmethod
    def of(cls, fns: Sequence[Callable], weights: Sequence[float] | None = None) -> RewardSet:
        weights = list(weights) if weights else [1.0] * len(fns)
        if len(weights) != len(fns):
            raise ValueError(
                f"{len(fns)} reward functions but {len(weights)} weights: give one weight each"
            )
        return cls([Reward(fn, w) for fn, w in zip(fns, weights, strict=True)])

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rewards]

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        examples: Sequence[Any],
        *,
        on_error: str = "raise",
    ) -> Scores:
        """Score ``completions`` (of ``prompts``, for ``examples``): the weighted sum per row."""
        total = [0.0] * len(completions)
        by_name: dict[str, list[float | None]] = {}
        errors = 0
        for r in self.rewards:
            if r.trl_style:
                values, failed = _call_trl(r, prompts, completions, examples, on_error)
            else:
                scored, failed = score_completions(r.fn, completions, examples, on_error=on_error)
                values = list(scored)
            errors += failed
            by_name[r.name] = values
            for i, v in enumerate(values):
                if v is not None:
                    total[i] += r.weight * v
        return Scores(total, by_name, errors)


def columns_of(examples: Sequence[Any]) -> dict[str, list[Any]]:
    """The dataset columns TRL-style rewards receive: question, answer, id, and each metadata key."""
    cols: dict[str, list[Any]] = {
        "question": [e.question for e in examples],
        "answer": [e.answer for e in examples],
        "id": [e.id for e in examples],
    }
    keys = sorted({k for e in examples for k in e.metadata})
    for k in keys:
        if k not in cols:
            cols[k] = [e.metadata.get(k) for e in examples]
    return cols


def _call_trl(
    r: Reward,
    prompts: Sequence[str],
    completions: Sequence[str],
    examples: Sequence[Any],
    on_error: str,
) -> tuple[list[float | None], int]:
    """One batched call of a TRL-style function, its result checked value by value."""
    n = len(completions)
    where = f"the reward function {function_name(r.fn)}"
    fix = "Fix: correct the function, or set task.reward_errors: zero to score such completions 0"
    try:
        result = r.fn(prompts=list(prompts), completions=list(completions), **columns_of(examples))
    except Exception as err:
        if on_error == "zero":
            return [0.0] * n, n
        trace = "".join(traceback.format_exception(err)).rstrip()
        raise RewardError(
            f"{where} raised {err.__class__.__name__} on a batch of {n} completions:\n{trace}\n{fix}"
        ) from err
    if isinstance(result, str | bytes) or not hasattr(result, "__len__") or len(result) != n:
        got = f"{len(result)} values" if hasattr(result, "__len__") else f"{result!r}"
        raise RewardError(
            f"{where} returned {got} for {n} completions; a TRL-style reward returns one float "
            "(or None) per completion. Fix: return a list as long as `completions`"
        )
    values: list[float | None] = []
    failed = 0
    for i, v in enumerate(result):
        if v is None:
            values.append(None)
            continue
        try:
            values.append(reward_value(v))
        except (TypeError, ValueError) as err:
            if on_error == "zero":
                values.append(0.0)
                failed += 1
                continue
            ex = examples[i]
            raise RewardError(
                f"{where} {err} for completion {i} (example {getattr(ex, 'id', ex)!r}, "
                f"completion {completions[i][:200]!r}). {fix}"
            ) from None
    return values, failed

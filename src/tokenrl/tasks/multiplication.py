"""``a x b`` multiplication with a chosen number of digits per operand, generated from a seed.

Problems are drawn without repetition from all pairs of a ``digits_a``-digit and a
``digits_b``-digit positive integer, with ``a x b`` and ``b x a`` counted as one problem. The
test split is the first ``n_test`` drawn, the train split the next ``n_train``, so the two never
share a problem and the test set does not change when ``n_train`` does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from tokenrl.tasks.base import Example, Task, TaskError, check_style

__all__ = ["MultiplicationConfig", "MultiplicationTask", "count_problems"]

MAX_DIGITS = 9
# below this many distinct problems, list them all and shuffle; above, sample and reject repeats
_ENUMERATE_LIMIT = 200_000
_STEP_STOP = ["\n\n", "\nQuestion:"]


@dataclass(frozen=True)
class MultiplicationConfig:
    digits_a: int = 2
    """Digits of the first operand, 1-9 (2 means 10..99)."""
    digits_b: int = 1
    """Digits of the second operand, 1-9."""
    n_train: int | None = None
    """Train problems; ``None``: min(1000, all problems left after the test split)."""
    n_test: int | None = None
    """Test problems; ``None``: min(100, a fifth of all distinct problems)."""
    seed: int = 0
    """Seed of the problem generator: same seed, same problems in the same order."""
    style: str = "auto"
    """Prompt style: auto, chat, plain, fewshot or compact (see docs/tasks.md)."""
    reasoning: str = "answer"
    """"answer": ask for the number only; "steps": reason, then "The answer is N."."""
    n_shots: int = 3
    """Worked examples in the fewshot prompt (taken from the train split)."""

    def __post_init__(self) -> None:
        for name in ("digits_a", "digits_b"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= MAX_DIGITS:
                raise TaskError(
                    f"multiplication: {name}={value!r} is out of range; each operand has 1 to "
                    f"{MAX_DIGITS} digits (e.g. {name}=2 for operands 10..99)"
                )
        check_style(self.style, MultiplicationTask.styles, "multiplication")
        if self.reasoning not in ("answer", "steps"):
            raise TaskError(
                f"multiplication: reasoning={self.reasoning!r}; choose 'answer' or 'steps'"
            )
        if self.reasoning == "steps" and self.style == "compact":
            raise TaskError(
                "multiplication: style 'compact' asks for the bare product; use reasoning='answer' "
                "with it, or another style for reasoning='steps'"
            )
        if not isinstance(self.n_shots, int) or self.n_shots < 0:
            raise TaskError(f"multiplication: n_shots={self.n_shots!r} must be an integer >= 0")
        for name in ("n_test", "n_train"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise TaskError(
                    f"multiplication: {name}={value!r} must be an integer >= 1 (or None: default)"
                )
        total = count_problems(self.digits_a, self.digits_b)
        n_test, n_train = self.split_sizes()
        if n_train < 1 or n_test + n_train > total:
            wanted = (
                f"n_test={n_test} plus n_train={self.n_train if self.n_train else 'at least 1'}"
            )
            raise TaskError(
                f"multiplication {self.digits_a}x{self.digits_b} has only {total} distinct problems "
                f"(a x b and b x a count once), too few for {wanted}; lower them, e.g. "
                f"n_test={max(1, total // 5)}, n_train={total - max(1, total // 5)}"
            )

    def split_sizes(self) -> tuple[int, int]:
        """``(n_test, n_train)`` with the ``None`` defaults filled in."""
        total = count_problems(self.digits_a, self.digits_b)
        n_test = self.n_test if self.n_test is not None else min(100, max(1, total // 5))
        n_train = self.n_train if self.n_train is not None else min(1000, total - n_test)
        return n_test, n_train


def count_problems(digits_a: int, digits_b: int) -> int:
    """Distinct problems, ``a x b`` and ``b x a`` counted once (1x1: 45, 2x1: 810, 2x2: 4095)."""
    size_a, size_b = 9 * 10 ** (digits_a - 1), 9 * 10 ** (digits_b - 1)
    return size_a * size_b if digits_a != digits_b else size_a * (size_a + 1) // 2


def _operand_range(digits: int) -> range:
    return range(10 ** (digits - 1), 10**digits)


def _draw_problems(cfg: MultiplicationConfig, count: int) -> list[tuple[int, int]]:
    """``count`` distinct problems in a seeded order; ``a`` has ``digits_a`` digits."""
    rng = random.Random(cfg.seed)
    range_a, range_b = _operand_range(cfg.digits_a), _operand_range(cfg.digits_b)
    same = cfg.digits_a == cfg.digits_b
    total = count_problems(cfg.digits_a, cfg.digits_b)
    if total <= _ENUMERATE_LIMIT or count > total // 2:
        pairs = [(a, b) for a in range_a for b in range_b if not same or a <= b]
        rng.shuffle(pairs)
        pairs = pairs[:count]
        # with equal digit counts show both orders: swap half of the pairs at random
        return [(b, a) if same and rng.random() < 0.5 else (a, b) for a, b in pairs]
    seen: set[tuple[int, int]] = set()
    pairs = []
    while len(pairs) < count:
        a, b = rng.choice(range_a), rng.choice(range_b)
        key = (min(a, b), max(a, b))
        if key not in seen:
            seen.add(key)
            pairs.append((a, b))
    return pairs


def worked_product(a: int, b: int) -> str:
    """A step-by-step product ending in "The answer is N.", splitting ``b`` by place value:
    ``12 x 34 = 12 x 30 + 12 x 4 = 360 + 48 = 408. The answer is 408.``"""
    digits = str(b)
    parts = [int(d) * 10 ** (len(digits) - 1 - i) for i, d in enumerate(digits) if d != "0"]
    steps = f"{a} x {b} = "
    if len(parts) > 1:
        steps += " + ".join(f"{a} x {p}" for p in parts) + " = "
        steps += " + ".join(str(a * p) for p in parts) + " = "
    return f"{steps}{a * b}. The answer is {a * b}."


class MultiplicationTask(Task):
    """Multiplication problems; see :class:`MultiplicationConfig` and docs/tasks.md."""

    name: ClassVar[str] = "multiplication"
    styles: ClassVar[tuple[str, ...]] = ("auto", "chat", "plain", "fewshot", "compact")
    config_class: ClassVar[type] = MultiplicationConfig
    config: MultiplicationConfig

    @property
    def spec(self) -> str:
        return f"multiplication:{self.config.digits_a}x{self.config.digits_b}"

    def _build_splits(self) -> dict[str, list[Example]]:
        n_test, n_train = self.config.split_sizes()
        examples = [
            Example(
                id=f"{a}x{b}",
                question=f"What is {a} times {b}?",
                answer=str(a * b),
                metadata={"a": a, "b": b},
            )
            for a, b in _draw_problems(self.config, n_test + n_train)
        ]
        return {"test": examples[:n_test], "train": examples[n_test:]}

    def messages(self, example: Example) -> list[dict[str, str]]:
        a, b = example.metadata["a"], example.metadata["b"]
        if self.config.reasoning == "answer":
            content = f"What is {a} times {b}? Answer with the number only."
        else:
            content = (
                f"What is {a} times {b}? Work it out step by step, then end with "
                '"The answer is N." where N is the product.'
            )
        return [{"role": "user", "content": content}]

    def text_prompt(self, example: Example, style: str) -> str:
        a, b = example.metadata["a"], example.metadata["b"]
        if style == "compact":
            return f"{a}*{b}="
        if self.config.reasoning == "answer":
            line = f"{a} x {b} ="
            if style == "plain":
                return line
            shots = [
                f"{s.metadata['a']} x {s.metadata['b']} = {s.answer}" for s in self._shots(example)
            ]
            return "\n".join([*shots, line])
        question = f"Question: What is {a} times {b}?\nAnswer:"
        if style == "plain":
            return f"{question} Let's think step by step."
        shots = [
            f"Question: What is {s.metadata['a']} times {s.metadata['b']}?\n"
            f"Answer: {worked_product(s.metadata['a'], s.metadata['b'])}\n\n"
            for s in self._shots(example)
        ]
        return "".join(shots) + question

    def stop_for(self, style: str) -> list[str]:
        if style == "chat":
            return []
        return (
            ["\n"] if self.config.reasoning == "answer" or style == "compact" else list(_STEP_STOP)
        )

    def _shots(self, example: Example) -> list[Example]:
        """The first ``n_shots`` train problems other than ``example`` (either order), skipping
        those with a factor 1 (they show nothing about multiplying)."""
        pair = {example.metadata["a"], example.metadata["b"]}
        shots = []
        for shot in self.examples("train"):
            operands = {shot.metadata["a"], shot.metadata["b"]}
            if len(shots) == self.config.n_shots:
                break
            if operands != pair and 1 not in operands:
                shots.append(shot)
        return shots

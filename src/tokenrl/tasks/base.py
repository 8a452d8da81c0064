"""The task interface: examples, prompts in several styles, stop strings and the 0/1 reward.

Prompt styles (``style`` in every task config):

* ``auto``: ``chat`` when the tokenizer has a chat template, else the task's default text style
  (``fewshot``).
* ``chat``: the task's :meth:`Task.messages` through ``tokenizer.apply_chat_template``; generation
  ends at EOS, so there are no stop strings.
* ``plain``: a zero-shot text prompt; ``fewshot``: worked examples from the train split first;
  ``compact``: the shortest prompt (multiplication only, e.g. ``12*34=``).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tokenrl.answers import is_correct

__all__ = ["SPLITS", "STYLES", "Example", "Task", "TaskError"]

SPLITS = ("train", "test")
STYLES = ("auto", "chat", "plain", "fewshot", "compact")


class TaskError(ValueError):
    """A task spec or config is invalid; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Example:
    """One problem.

    ``answer`` is the gold final answer in canonical form (``"408"``, ``"2.5"``, ``"1/3"``, see
    :func:`tokenrl.answers.canonical_number`); ``metadata`` holds task extras (SVAMP ``Type`` and
    ``Equation``, multiplication operands ``a`` and ``b``, a GSM8K ``solution``).
    """

    id: str
    question: str
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict)


def check_style(style: str, allowed: tuple[str, ...], task: str) -> None:
    """Raise a :class:`TaskError` unless ``style`` is one of ``allowed``."""
    if style not in allowed:
        raise TaskError(
            f"{task}: unknown prompt style {style!r}; choose one of {', '.join(allowed)}"
        )


class Task(ABC):
    """A set of problems with prompts and a reward. Subclasses set ``name``, ``styles``,
    ``config_class`` and implement :meth:`_build_splits`, :meth:`messages`,
    :meth:`text_prompt` and :meth:`stop_for`."""

    name: ClassVar[str]
    styles: ClassVar[tuple[str, ...]]  # accepted by the config, "auto" included
    config_class: ClassVar[type]
    default_text_style: ClassVar[str] = "fewshot"  # what "auto" means without a chat template

    def __init__(self, config: Any) -> None:
        if not isinstance(config, self.config_class):
            raise TaskError(
                f"{self.name}: expected a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config
        self._splits: dict[str, list[Example]] | None = None

    @property
    def style(self) -> str:
        return self.config.style

    @property
    def spec(self) -> str:
        """A ``get_task`` spec naming this task (options other than the spec's are not in it)."""
        return self.name

    # -- data -------------------------------------------------------------------------------

    def examples(self, split: str) -> list[Example]:
        """The problems of ``split`` ("train" or "test"), in a fixed order (a new list each call)."""
        if split not in SPLITS:
            raise TaskError(f"{self.name}: unknown split {split!r}; choose 'train' or 'test'")
        if self._splits is None:
            self._splits = self._build_splits()
        return list(self._splits[split])

    @abstractmethod
    def _build_splits(self) -> dict[str, list[Example]]:
        """Both splits, ``{"train": [...], "test": [...]}``; called once, then cached."""

    # -- prompts ----------------------------------------------------------------------------

    @abstractmethod
    def messages(self, example: Example) -> list[dict[str, str]]:
        """Chat messages (``[{"role": "user", "content": ...}]``) for instruct models."""

    @abstractmethod
    def text_prompt(self, example: Example, style: str) -> str:
        """The prompt text for a non-chat ``style`` ("plain", "fewshot", "compact")."""

    @abstractmethod
    def stop_for(self, style: str) -> list[str]:
        """Stop strings for a concrete style (``[]`` for "chat": EOS ends the reply)."""

    def plain_prompt(self, example: Example) -> str:
        """The text prompt for models without a chat template: the configured text style, or the
        default one (``fewshot``) when the style is "auto" or "chat"."""
        style = self.default_text_style if self.style in ("auto", "chat") else self.style
        return self.text_prompt(example, style)

    def resolve_style(self, tokenizer: Any) -> str:
        """The concrete style used with ``tokenizer`` ("auto" resolved)."""
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.style == "auto":
            return "chat" if has_template else self.default_text_style
        if self.style == "chat" and not has_template:
            raise TaskError(
                f"{self.name}: style 'chat' needs a tokenizer with a chat template and this one "
                "has none; use style 'auto', 'plain' or 'fewshot'"
            )
        return self.style

    def resolved(self, tokenizer: Any) -> Task:
        """This task with "auto" replaced by the concrete style for ``tokenizer`` (same data)."""
        style = self.resolve_style(tokenizer)
        if style == self.style:
            return self
        task = type(self)(dataclasses.replace(self.config, style=style))
        task._splits = self._splits
        return task

    def render_prompt(self, example: Example, tokenizer: Any) -> str:
        """The prompt string to feed ``tokenizer``: its chat template applied to
        :meth:`messages` for the chat style, else :meth:`text_prompt`."""
        style = self.resolve_style(tokenizer)
        if style == "chat":
            return tokenizer.apply_chat_template(
                self.messages(example), add_generation_prompt=True, tokenize=False
            )
        return self.text_prompt(example, style)

    @property
    def stop(self) -> list[str]:
        """Stop strings of the configured style. With style "auto" they depend on the tokenizer:
        use :meth:`stop_strings` or :meth:`resolved` first."""
        if self.style == "auto":
            raise TaskError(
                f"{self.name}: the stop strings of style 'auto' depend on the tokenizer; call "
                "task.stop_strings(tokenizer) or use task.resolved(tokenizer)"
            )
        return self.stop_for(self.style)

    def stop_strings(self, tokenizer: Any) -> list[str]:
        """Stop strings for the style used with ``tokenizer``."""
        return self.stop_for(self.resolve_style(tokenizer))

    # -- reward -----------------------------------------------------------------------------

    def reward(self, completion: str, example: Example) -> float:
        """1.0 if the final answer of ``completion`` equals ``example.answer``, else 0.0.

        The completion is read up to the first stop string of the configured style (what
        generation stops at; with style "auto" it is read whole). Never raises for a ``str``:
        a completion without a readable answer scores 0.
        """
        if self.style != "auto":
            for stop in self.stop_for(self.style):
                completion = completion.split(stop, 1)[0]
        return 1.0 if is_correct(completion, example.answer) else 0.0

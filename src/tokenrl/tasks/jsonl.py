"""A user's own word problems from a JSONL file (``--task jsonl:PATH``), with the prompts of the
built-in word-problem tasks (:class:`~tokenrl.tasks.wordproblems.WordProblemTask`)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tokenrl.tasks.base import Example, TaskError
from tokenrl.tasks.data import DataError, gold_answer, read_jsonl
from tokenrl.tasks.wordproblems import WordProblemTask, _check_common, _require_text

__all__ = ["JsonlConfig", "JsonlTask"]


@dataclass(frozen=True)
class JsonlConfig:
    path: str = ""
    """JSONL file, one problem per line, e.g. {"id": "p1", "question": "...", "answer": "42"}."""
    test_path: str | None = None
    """A separate test file (same fields); then ``path`` is all train and test_fraction unused."""
    question_field: str = "question"
    """Field holding the problem text."""
    answer_field: str = "answer"
    """Field holding the gold final answer: a number or a numeric string ("1,234", "2.5")."""
    id_field: str | None = None
    """Field holding a unique id; None: ids are "<file stem>:<line number>" (the test file's
    stem, or "test" when both files have the same stem)."""
    test_fraction: float = 0.2
    """Share of ``path`` held out for test when there is no test_path (a seeded shuffle)."""
    seed: int = 0
    """Seed of the train/test shuffle."""
    style: str = "auto"
    """Prompt style: auto, chat, plain or fewshot."""
    n_shots: int = 3
    """Worked examples ("The answer is N.") in the fewshot prompt."""

    def __post_init__(self) -> None:
        if not self.path:
            raise TaskError("jsonl: no file given; use the spec jsonl:PATH (or path=...)")
        if not isinstance(self.test_fraction, int | float) or not 0 < self.test_fraction < 1:
            raise TaskError(
                f"jsonl: test_fraction={self.test_fraction!r} must be between 0 and 1 (e.g. 0.2), "
                "or give a separate test_path"
            )
        _check_common("jsonl", self.style, self.n_shots)


class JsonlTask(WordProblemTask):
    """Problems from a user's JSONL file; see :class:`JsonlConfig`."""

    name: ClassVar[str] = "jsonl"
    config_class: ClassVar[type] = JsonlConfig
    config: JsonlConfig

    @property
    def spec(self) -> str:
        return f"jsonl:{self.config.path}"

    def _build_splits(self) -> dict[str, list[Example]]:
        cfg = self.config
        seen: dict[str, tuple[str, int]] = {}
        train = self._read(cfg.path, Path(cfg.path).stem, seen)
        if cfg.test_path is not None:
            label = Path(cfg.test_path).stem
            label = "test" if label == Path(cfg.path).stem else label
            return {"train": train, "test": self._read(cfg.test_path, label, seen)}
        n_test = round(len(train) * cfg.test_fraction)
        if not 0 < n_test < len(train):
            raise DataError(
                f"{len(train)} records with test_fraction={cfg.test_fraction} leave {n_test} for "
                "test; each split needs at least one: add records, change test_fraction or give "
                "a test_path",
                file=cfg.path,
            )
        order = list(range(len(train)))
        random.Random(cfg.seed).shuffle(order)
        is_test = set(order[:n_test])
        return {
            "train": [e for i, e in enumerate(train) if i not in is_test],
            "test": [e for i, e in enumerate(train) if i in is_test],
        }

    def _read(self, path: str, label: str, seen: dict[str, tuple[str, int]]) -> list[Example]:
        """Examples of one file in file order. Without an id field the id is "<label>:<line>";
        ``seen`` maps ids to the file and line where they first appeared."""
        cfg = self.config
        required = [cfg.question_field, cfg.answer_field] + ([cfg.id_field] if cfg.id_field else [])
        examples = []
        for line, row in read_jsonl(path, required):
            example_id = str(row[cfg.id_field]) if cfg.id_field else f"{label}:{line}"
            if example_id in seen:
                first_file, first_line = seen[example_id]
                raise DataError(
                    f"duplicate id {example_id!r}, first used in {first_file} line {first_line}; "
                    "ids must be unique across the train and test files",
                    file=path,
                    line=line,
                    field=cfg.id_field,
                )
            seen[example_id] = (path, line)
            examples.append(
                Example(
                    id=example_id,
                    question=_require_text(row, cfg.question_field, path, line),
                    answer=gold_answer(
                        row[cfg.answer_field], file=path, line=line, field=cfg.answer_field
                    ),
                )
            )
        return examples

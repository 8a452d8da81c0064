"""A user's own word problems from a JSONL file (``--task jsonl:PATH``), with the prompts of the
built-in word-problem tasks (:class:`~tokenrl.tasks.wordproblems.WordProblemTask`)."""

from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tokenrl.tasks.base import Example, TaskError
from tokenrl.tasks.data import DataError, gold_answer, read_jsonl
from tokenrl.tasks.wordproblems import WordProblemTask, _check_common, _require_text

__all__ = ["HubConfig", "HubTask", "JsonlConfig", "JsonlTask"]


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
        return self._held_out(train)

    def _held_out(self, train: list[Example]) -> dict[str, list[Example]]:
        """``test_fraction`` of ``train`` held out for test by a seeded shuffle."""
        cfg = self.config
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
            examples.append(self._example(row, example_id, path, line))
        return examples

    def _example(self, row: dict[str, Any], example_id: str, file: str, line: int) -> Example:
        """One row as an :class:`Example`; fields other than question, answer and id go to its
        ``metadata`` (TRL-style rewards receive them as columns)."""
        cfg = self.config
        own = {cfg.question_field, cfg.answer_field, cfg.id_field}
        return Example(
            id=example_id,
            question=_require_text(row, cfg.question_field, file, line),
            answer=gold_answer(row[cfg.answer_field], file=file, line=line, field=cfg.answer_field),
            metadata={k: v for k, v in row.items() if k not in own},
        )


# ---------------------------------------------------------------------------------------------
# a Hugging Face dataset by name (--task hf:REPO[:CONFIG]) or a local datasets folder


@dataclass(frozen=True)
class HubConfig(JsonlConfig):
    path: str = ""
    """Hub dataset id (``openai/gsm8k``), or a local folder: one written by ``save_to_disk``, or
    files ``load_dataset`` reads (json, csv, parquet)."""
    name: str | None = None
    """The dataset's configuration (``main`` for gsm8k); written hf:REPO:CONFIG in the spec."""
    train_split: str = "train"
    """Split trained on."""
    test_split: str | None = "test"
    """Split evaluated on; None or a split the dataset lacks: test_fraction of train is held out."""


class HubTask(JsonlTask):
    """Problems from a Hugging Face ``datasets`` dataset, with column mapping (see HubConfig)."""

    name: ClassVar[str] = "hf"
    config_class: ClassVar[type] = HubConfig
    config: HubConfig

    @property
    def spec(self) -> str:
        return f"hf:{self.config.path}" + (f":{self.config.name}" if self.config.name else "")

    def _build_splits(self) -> dict[str, list[Example]]:
        cfg = self.config
        data = load_hub_dataset(cfg.path, cfg.name)
        if cfg.train_split not in data:
            raise DataError(f"the dataset has no split {cfg.train_split!r} (it has {', '.join(data)}); "
                            "set train_split", file=cfg.path)  # fmt: skip
        seen: dict[str, tuple[str, int]] = {}
        train = self._rows(data[cfg.train_split], cfg.train_split, seen)
        if cfg.test_split is not None and cfg.test_split in data:
            return {"train": train, "test": self._rows(data[cfg.test_split], cfg.test_split, seen)}
        return self._held_out(train)

    def _rows(self, split: Any, label: str, seen: dict[str, tuple[str, int]]) -> list[Example]:
        cfg = self.config
        columns = list(split.column_names)
        for needed in [cfg.question_field, cfg.answer_field] + (
            [cfg.id_field] if cfg.id_field else []
        ):
            if needed not in columns:
                raise DataError(
                    f"split {label!r} has no column {needed!r}; its columns are {', '.join(columns)}. "
                    "Fix: name the columns with question_field=, answer_field= (and id_field=)",
                    file=cfg.path,
                )
        out = []
        for i, row in enumerate(split, start=1):
            example_id = str(row[cfg.id_field]) if cfg.id_field else f"{label}:{i}"
            if example_id in seen:
                raise DataError(
                    f"duplicate id {example_id!r}", file=cfg.path, line=i, field=cfg.id_field
                )
            seen[example_id] = (label, i)
            out.append(self._example(row, example_id, f"{cfg.path} [{label}]", i))
        return out


def load_hub_dataset(path: str, name: str | None = None) -> Any:
    """A ``datasets.DatasetDict``: a ``save_to_disk`` folder, or ``load_dataset(path, name)``
    (local files, or the Hub when online)."""
    if importlib.util.find_spec("datasets") is None:
        raise DataError("hf: tasks need the datasets package. Fix: pip install datasets", file=path)
    import datasets

    folder = Path(path)
    if folder.is_dir() and (
        (folder / "dataset_dict.json").exists() or (folder / "state.json").exists()
    ):
        data = datasets.load_from_disk(str(folder))
    else:
        try:
            data = datasets.load_dataset(path, name)
        except Exception as err:  # offline, no such repo, bad files: one message naming it
            raise DataError(
                f"cannot load the dataset ({err.__class__.__name__}: {err})", file=path
            ) from err
    if isinstance(data, datasets.Dataset):
        data = datasets.DatasetDict({"train": data})
    return data

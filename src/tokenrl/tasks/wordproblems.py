"""Word problems read from files: SVAMP, GSM8K and a user's JSONL file.

They share one set of prompts (:class:`WordProblemTask`): chat asks for step-by-step reasoning
ending in "The answer is N."; ``fewshot`` shows worked examples from the train split as
``Question: ...\\nAnswer: ...`` blocks separated by a blank line, so generation stops at the
next blank line.
"""

from __future__ import annotations

import json
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tokenrl.tasks.base import Example, Task, TaskError, check_style
from tokenrl.tasks.data import (
    DataError,
    data_dir_hint,
    find_data_dir,
    gold_answer,
    hub_dataset,
    read_json_array,
    read_jsonl,
)

__all__ = [
    "Gsm8kConfig",
    "Gsm8kTask",
    "SvampConfig",
    "SvampTask",
    "WordProblemTask",
]

CHAT_INSTRUCTION = (
    'Solve the problem step by step. End your reply with "The answer is N." where N is the '
    "final number."
)
WORD_STYLES = ("auto", "chat", "plain", "fewshot")
_TEXT_STOP = ["\n\n", "\nQuestion:"]


class WordProblemTask(Task):
    """Prompts shared by the word-problem tasks; subclasses provide the data and may override
    :meth:`worked_solution` (the answer text of a few-shot example)."""

    styles: ClassVar[tuple[str, ...]] = WORD_STYLES

    def messages(self, example: Example) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"{example.question}\n{CHAT_INSTRUCTION}"}]

    def text_prompt(self, example: Example, style: str) -> str:
        prompt = f"Question: {example.question}\nAnswer:"
        if style == "plain":
            return prompt
        shots = [
            f"Question: {s.question}\nAnswer: {self.worked_solution(s)}\n\n"
            for s in self._shots(example)
        ]
        return "".join(shots) + prompt

    def stop_for(self, style: str) -> list[str]:
        return [] if style == "chat" else list(_TEXT_STOP)

    def worked_solution(self, example: Example) -> str:
        """Answer text of a few-shot example; by default just "The answer is N."."""
        return f"The answer is {example.answer}."

    def _shots(self, example: Example) -> list[Example]:
        """The first ``n_shots`` train examples other than ``example``."""
        n_shots = self.config.n_shots
        shots = [s for s in self.examples("train")[: n_shots + 1] if s.id != example.id]
        return shots[:n_shots]


def _check_common(task: str, style: str, n_shots: int) -> None:
    check_style(style, WORD_STYLES, task)
    if not isinstance(n_shots, int) or n_shots < 0:
        raise TaskError(f"{task}: n_shots={n_shots!r} must be an integer >= 0")


# ---------------------------------------------------------------------------------------------
# SVAMP

SVAMP_FIELDS = ("ID", "Body", "Question", "Equation", "Answer")
SVAMP_SIZE = 1000
SVAMP_TRAIN_SIZE = 700
SVAMP_SPLIT_SEED = 42


@dataclass(frozen=True)
class SvampConfig:
    data_path: str | None = None
    """Data folder holding svamp/SVAMP.json (None: see tokenrl.tasks.data.find_data_dir)."""
    style: str = "auto"
    """Prompt style: auto, chat, plain or fewshot."""
    n_shots: int = 3
    """Worked examples in the fewshot prompt (the first train problems)."""

    def __post_init__(self) -> None:
        _check_common("svamp", self.style, self.n_shots)


def svamp_solution(equation: str, answer: str) -> str:
    """SVAMP's equation as a worked answer: ``"( 76.0 - 25.0 )"`` -> ``"76 - 25 = 51. The answer
    is 51."``."""
    expr = re.sub(r"(\d)\.0\b", r"\1", equation).strip()
    if expr.startswith("(") and _closing_paren(expr) == len(expr) - 1:
        expr = expr[1:-1].strip()
    expr = expr.replace("( ", "(").replace(" )", ")")
    return f"{expr} = {answer}. The answer is {answer}."


def _closing_paren(text: str) -> int:
    depth = 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return i
    return -1


class SvampTask(WordProblemTask):
    """SVAMP (Patel et al. 2021) with the ChilleD/SVAMP 700/300 split.

    train = the first 700 rows after ``random.seed(42); random.shuffle(rows)`` on the upstream
    order; test = the other 300 in ChilleD's order (from ``svamp/chilled_svamp_split_ids.json``).
    """

    name: ClassVar[str] = "svamp"
    config_class: ClassVar[type] = SvampConfig
    config: SvampConfig

    def worked_solution(self, example: Example) -> str:
        return svamp_solution(example.metadata["Equation"], example.answer)

    def _build_splits(self) -> dict[str, list[Example]]:
        root = find_data_dir(self.config.data_path)
        if root is None:
            return self._from_hub()
        path = root / "svamp" / "SVAMP.json"
        if not path.exists():
            raise DataError(f"SVAMP data not found; {data_dir_hint('svamp')}", file=path)
        rows = read_json_array(path, SVAMP_FIELDS)
        by_id: dict[str, Example] = {}
        for line, row in rows:
            example = _svamp_example(row, path, line)
            if example.id in by_id:
                raise DataError(f"duplicate ID {example.id!r}", file=path, line=line, field="ID")
            by_id[example.id] = example
        if len(by_id) != SVAMP_SIZE:
            raise DataError(
                f"holds {len(by_id)} problems; the ChilleD split needs all {SVAMP_SIZE} of the "
                "upstream file: restore it from the shared data",
                file=path,
            )
        order = list(by_id)
        random.Random(SVAMP_SPLIT_SEED).shuffle(order)  # = random.seed(42); random.shuffle(rows)
        train, test = order[:SVAMP_TRAIN_SIZE], order[SVAMP_TRAIN_SIZE:]
        split_file = root / "svamp" / "chilled_svamp_split_ids.json"
        if split_file.exists():
            test = _chilled_test_order(split_file, train, test)
        else:
            warnings.warn(
                f"{split_file} not found: SVAMP test problems keep the shuffled order, not "
                "ChilleD's (same problems, different order)",
                stacklevel=2,
            )
        return {"train": [by_id[i] for i in train], "test": [by_id[i] for i in test]}

    def _from_hub(self) -> dict[str, list[Example]]:
        dataset = hub_dataset("ChilleD/SVAMP")
        if dataset is None:
            raise DataError(
                f"SVAMP data not found; {data_dir_hint('svamp')}; or install the optional "
                "`datasets` package to download ChilleD/SVAMP from the Hugging Face Hub"
            )
        return {
            split: [
                _svamp_example(row, f"ChilleD/SVAMP[{split}]", i + 1)
                for i, row in enumerate(dataset[split])
            ]
            for split in ("train", "test")
        }


def _svamp_example(row: dict[str, Any], file: str | Path, line: int) -> Example:
    for name in ("ID", "Body", "Question", "Equation"):
        if not isinstance(row[name], str):
            raise DataError(
                f"expected a string, got {row[name]!r}", file=file, line=line, field=name
            )
    return Example(
        id=row["ID"],
        question=row["Body"] + " " + row["Question"],
        answer=gold_answer(row["Answer"], file=file, line=line, field="Answer"),
        metadata={"Type": row.get("Type"), "Equation": row["Equation"]},
    )


def _chilled_test_order(split_file: Path, train: list[str], test: list[str]) -> list[str]:
    """The test IDs in the split file's order, after checking the file agrees with the recipe."""
    try:
        ids = json.loads(split_file.read_text(encoding="utf-8"))
        file_train, file_test = list(ids["train"]), list(ids["test"])
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(
            f'expected {{"train": [IDs], "test": [IDs]}} ({err})', file=split_file
        ) from None
    if file_train != train or sorted(file_test) != sorted(test):
        raise DataError(
            "the split does not match SVAMP.json shuffled with seed 42; the two files come from "
            "different sources: restore both from the shared data",
            file=split_file,
        )
    return file_test


# ---------------------------------------------------------------------------------------------
# GSM8K

_CALCULATOR = re.compile(r"<<[^<>]*>>")


@dataclass(frozen=True)
class Gsm8kConfig:
    data_path: str | None = None
    """Data folder holding gsm8k/{train,test}.jsonl (None: see find_data_dir)."""
    style: str = "auto"
    """Prompt style: auto, chat, plain or fewshot."""
    n_shots: int = 3
    """Worked examples in the fewshot prompt (the first train problems)."""

    def __post_init__(self) -> None:
        _check_common("gsm8k", self.style, self.n_shots)


def gsm8k_gold(solution: str, *, file: str | Path, line: int) -> str:
    """The final answer after the last ``####`` of a GSM8K solution, commas removed."""
    if "####" not in solution:
        raise DataError("has no final '#### <number>' line", file=file, line=line, field="answer")
    final = solution.rsplit("####", 1)[1].strip().replace(",", "")
    return gold_answer(final, file=file, line=line, field="answer")


class Gsm8kTask(WordProblemTask):
    """GSM8K (Cobbe et al. 2021): 7,473 train and 1,319 test problems in file order."""

    name: ClassVar[str] = "gsm8k"
    config_class: ClassVar[type] = Gsm8kConfig
    config: Gsm8kConfig

    def worked_solution(self, example: Example) -> str:
        """The reference solution without ``<<calculator>>`` notes, its ``#### N`` line replaced
        by "The answer is N."."""
        steps = _CALCULATOR.sub("", example.metadata["solution"]).rsplit("####", 1)[0].strip()
        return f"{steps}\nThe answer is {example.answer}."

    def _build_splits(self) -> dict[str, list[Example]]:
        root = find_data_dir(self.config.data_path)
        if root is None:
            dataset = hub_dataset("openai/gsm8k", "main")
            if dataset is None:
                raise DataError(
                    f"GSM8K data not found; {data_dir_hint('gsm8k')}; or install the optional "
                    "`datasets` package to download openai/gsm8k from the Hugging Face Hub"
                )
            rows = {s: [(i + 1, r) for i, r in enumerate(dataset[s])] for s in ("train", "test")}
            files: dict[str, str | Path] = {s: f"openai/gsm8k[{s}]" for s in rows}
        else:
            files = {s: root / "gsm8k" / f"{s}.jsonl" for s in ("train", "test")}
            rows = {s: read_jsonl(files[s], ("question", "answer")) for s in ("train", "test")}
        splits = {}
        for split, records in rows.items():
            splits[split] = [
                Example(
                    id=f"{split}-{i:04d}",
                    question=_require_text(row, "question", files[split], line),
                    answer=gsm8k_gold(
                        _require_text(row, "answer", files[split], line),
                        file=files[split],
                        line=line,
                    ),
                    metadata={"solution": row["answer"]},
                )
                for i, (line, row) in enumerate(records)
            ]
        return splits


def _require_text(row: dict[str, Any], name: str, file: str | Path, line: int) -> str:
    value = row[name]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"expected non-empty text, got {value!r}", file=file, line=line, field=name)
    return value

"""Tasks: problems, prompts and the 0/1 reward. Build one with :func:`get_task`.

Specs understood by :func:`get_task` (options are the fields of the task's config class):

* ``multiplication`` (alias ``mult``), ``multiplication:3x3``, ``mult:2x1``: generated ``a x b``
  (:class:`MultiplicationConfig`: digits_a, digits_b, n_train, n_test, seed, reasoning, n_shots)
* ``svamp``: SVAMP with the ChilleD/SVAMP 700/300 split (:class:`SvampConfig`)
* ``gsm8k``: GSM8K train/test (:class:`Gsm8kConfig`)
* ``jsonl:PATH``: a user's file (:class:`JsonlConfig`: test_path, question_field, answer_field,
  id_field, test_fraction, seed, n_shots)
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

from tokenrl.tasks.base import SPLITS, STYLES, Example, Task, TaskError
from tokenrl.tasks.data import DataError, find_data_dir, read_json_array, read_jsonl
from tokenrl.tasks.jsonl import HubConfig, HubTask, JsonlConfig, JsonlTask
from tokenrl.tasks.multiplication import MultiplicationConfig, MultiplicationTask, count_problems
from tokenrl.tasks.wordproblems import Gsm8kConfig, Gsm8kTask, SvampConfig, SvampTask

__all__ = [
    "SPLITS",
    "STYLES",
    "TASKS",
    "DataError",
    "Example",
    "Gsm8kConfig",
    "Gsm8kTask",
    "HubConfig",
    "HubTask",
    "JsonlConfig",
    "JsonlTask",
    "MultiplicationConfig",
    "MultiplicationTask",
    "SvampConfig",
    "SvampTask",
    "Task",
    "TaskError",
    "count_problems",
    "find_data_dir",
    "get_task",
    "read_json_array",
    "read_jsonl",
]

TASKS: dict[str, type[Task]] = {
    "multiplication": MultiplicationTask,
    "svamp": SvampTask,
    "gsm8k": Gsm8kTask,
    "jsonl": JsonlTask,
    "hf": HubTask,
}
ALIASES = {"mult": "multiplication"}
_SHAPE = re.compile(r"(\d+)\s*x\s*(\d+)", re.IGNORECASE)


def get_task(
    spec: str, *, data_path: str | None = None, style: str = "auto", **options: Any
) -> Task:
    """The task named by ``spec`` (see the module docstring), configured by ``options``.

    ``data_path`` is used by the tasks that read a data folder and ignored by the others.
    Option values given as strings (from a command line) are converted to the field's type.
    """
    name, _, argument = spec.partition(":")
    name = ALIASES.get(name.strip().lower(), name.strip().lower())
    if name not in TASKS:
        raise TaskError(
            f"unknown task {spec!r}; known tasks: {', '.join(TASKS)} (also mult:AxB, e.g. "
            "mult:2x1, and jsonl:PATH)"
        )
    task_class = TASKS[name]
    config_class = task_class.config_class
    hints = typing.get_type_hints(config_class)
    fields = [f.name for f in dataclasses.fields(config_class)]
    values: dict[str, Any] = {"style": style, **_spec_argument(name, argument.strip())}
    if "data_path" in fields and data_path is not None:
        values["data_path"] = str(data_path)
    for key, value in options.items():
        if key not in fields:
            raise TaskError(f"{name}: unknown option {key!r}; options are {', '.join(fields)}")
        values[key] = _coerce(name, key, hints[key], value)
    return task_class(config_class(**values))


def _spec_argument(name: str, argument: str) -> dict[str, Any]:
    """Config values written in the spec after the colon."""
    if name == "multiplication" and argument:
        shape = _SHAPE.fullmatch(argument)
        if shape is None:
            raise TaskError(
                f"multiplication: cannot read {argument!r}; write digits as AxB, e.g. mult:2x1"
            )
        return {"digits_a": int(shape[1]), "digits_b": int(shape[2])}
    if name == "jsonl":
        if not argument:
            raise TaskError("jsonl: no file given; write the spec as jsonl:PATH")
        return {"path": argument}
    if name == "hf":
        repo, _, config = argument.partition(":")
        if not repo:
            raise TaskError("hf: no dataset given; write the spec as hf:REPO or hf:REPO:CONFIG")
        return {"path": repo, **({"name": config} if config else {})}
    if argument:
        raise TaskError(f"{name}: takes no ':{argument}' part in its spec; pass options instead")
    return {}


def _coerce(task: str, key: str, hint: Any, value: Any) -> Any:
    """``value`` converted to the type ``hint`` when it is a string (``"3"`` -> 3, ``"none"``)."""
    if not isinstance(value, str):
        return value
    types = typing.get_args(hint) or (hint,)
    if type(None) in types and value.strip().lower() in ("none", "null", ""):
        return None
    for kind in (int, float):
        if kind in types:
            try:
                return kind(value)
            except ValueError:
                raise TaskError(
                    f"{task}: option {key}={value!r} must be a number ({kind.__name__})"
                ) from None
    return value

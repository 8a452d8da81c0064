"""tokenrl from Python: build a config, train, evaluate, merge (docs/api.md).

    import tokenrl

    result = tokenrl.train(
        "qwen2.5-coder-0.5b-instruct",         # a built-in name, hub id, folder, or a loaded model
        dataset=[{"question": "What is 2 + 3?", "answer": "5"}, ...],
        reward_funcs=[my_reward],              # TRL-style or tokenrl-style (tokenrl.rewards)
        algo="sgrpo",
        config={"train.steps": 50, "rollout.group_size": 8},
        out="runs/mine",
    )
    print(result.accuracy_before, result.accuracy_after, result.adapter)

The run folder is the same as ``tokenrl train`` writes (``config.yaml``, ``metrics.jsonl``,
``eval.json``, ``adapter/`` with a model card). An in-memory dataset is written to
``RUN/data/*.jsonl`` and trained as ``jsonl:RUN/data/train.jsonl``, so the saved config
reproduces the run and ``tokenrl train --resume RUN`` continues it.
"""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenrl.config import Config, ConfigError, apply_mapping, load_config, set_value
from tokenrl.evaluation import EvalResult
from tokenrl.rewards import function_name


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    run_dir: Path
    adapter: Path
    metrics: dict[str, Any]  # the run's eval.json: accuracy before/after, tokens, memory, time
    config: Config

    @property
    def accuracy_before(self) -> float | None:
        return self.metrics.get("before", {}).get("accuracy")

    @property
    def accuracy_after(self) -> float:
        return self.metrics["after"]["accuracy"]


def make_config(
    config: str | Path | Config | Mapping[str, Any] | None = None, **settings: Any
) -> Config:
    """A validated :class:`Config`: defaults <- ``config`` (a YAML path, a Config, or a mapping of
    sections ``{"train": {"steps": 50}}`` or dotted keys ``{"train.steps": 50}``) <- ``settings``
    (sections ``rollout={"group_size": 8}``, or dotted keys written with ``__``:
    ``train__steps=50``). Bad values raise :class:`ConfigError`
    with the same messages as the command line."""
    if isinstance(config, str | Path):
        cfg = load_config(config)
    elif isinstance(config, Config):
        cfg = load_config(None, list(_flatten(config.to_dict()).items()))
    else:
        cfg = Config()
        mapping = dict(config or {})
        sections = {k: v for k, v in mapping.items() if isinstance(v, dict) and "." not in k}
        apply_mapping(cfg, sections, "config")
        for key, value in mapping.items():
            if key not in sections:
                set_value(cfg, key, value)
    for key, value in settings.items():
        if "__" not in key and isinstance(value, Mapping):
            apply_mapping(cfg, {key: dict(value)}, "make_config")  # a section: rollout={...}
        else:
            set_value(cfg, key.replace("__", "."), value)
    cfg.validate()
    return cfg


def train(
    model: Any = None,
    dataset: Any = None,
    *,
    reward_funcs: Sequence[Callable | str] | Callable | None = None,
    reward_weights: Sequence[float] | None = None,
    algo: str | None = None,
    config: str | Path | Config | Mapping[str, Any] | None = None,
    out: str | Path = "runs/api",
    tokenizer: Any = None,
    test_dataset: Any = None,
    question_column: str = "question",
    answer_column: str = "answer",
    id_column: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_event: Callable[[str], None] = print,
) -> TrainResult:
    """Train a LoRA adapter with GRPO, S-GRPO or T-SPMO; returns the run's :class:`TrainResult`.

    ``model``: a built-in name (``tokenrl models``), hub id or local folder, or a loaded
    ``transformers`` model (then pass ``tokenizer``). ``dataset``: a task spec (``"svamp"``,
    ``"mult:2x1"``, ``"jsonl:PATH"``, ``"hf:REPO"``), a ``.jsonl`` path, a list of dicts, or a
    ``datasets.Dataset`` / ``DatasetDict``, with the question, answer (and id) columns named by
    the ``*_column`` arguments; ``test_dataset`` gives the held-out problems (default: 20% of
    ``dataset``). ``reward_funcs``: functions (TRL's ``f(prompts, completions, **columns)`` or
    tokenrl's ``f(completion, example)``), ``"task"`` for the exact match, or ``"module:function"``
    names; summed with ``reward_weights`` (default: the task's exact match alone).
    ``resume=True`` continues ``out`` from its last checkpoint with its saved config.
    """
    from tokenrl.run import train as run_train

    out = Path(out)
    if resume:
        cfg = load_config(out / "config.yaml")
    else:
        cfg = make_config(config)
        if algo is not None:
            set_value(cfg, "train.algo", algo)
        if isinstance(model, str):
            set_value(cfg, "model.name", model)
        elif model is not None:
            if tokenizer is None:
                raise ConfigError("a loaded model needs its tokenizer: pass tokenizer=...")
            set_value(
                cfg,
                "model.name",
                getattr(getattr(model, "config", None), "_name_or_path", "") or "passed-in",
            )
        if out.exists() and any(out.iterdir()):
            if not overwrite:
                raise ConfigError(
                    f"{out} already holds a run; pass resume=True to continue it, overwrite=True to replace it, "
                    "or another out"
                )
            shutil.rmtree(out)  # before the dataset is written into it
        if dataset is not None:
            _set_dataset(cfg, dataset, test_dataset, out, question_column, answer_column, id_column)
    fns = _reward_list(reward_funcs)
    rewards = None
    if fns:
        names = [f if isinstance(f, str) else _importable_name(f) for f in fns]
        if all(names) and not resume:  # recorded, so the command line can resume the run
            set_value(cfg, "task.reward", ",".join(names))
            if reward_weights:
                set_value(cfg, "task.reward_weights", list(reward_weights))
        weights = list(reward_weights) if reward_weights else [1.0] * len(fns)
        if len(weights) != len(fns):
            raise ConfigError(
                f"{len(fns)} reward functions but {len(weights)} reward_weights: give one weight each"
            )
        rewards = list(zip(fns, weights, strict=True))
    cfg.validate()
    loaded = (model, tokenizer) if model is not None and not isinstance(model, str) else None
    summary = run_train(cfg, out, resume=resume, on_event=on_event, model=loaded, rewards=rewards)
    return TrainResult(out, out / "adapter", summary, cfg)


def evaluate(
    model: str | Path,
    task: str = "mult:2x1",
    *,
    adapter: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    samples: int = 1,
    max_new_tokens: int | None = None,
    style: str = "auto",
    dtype: str = "fp32",
    **task_options: Any,
) -> EvalResult:
    """Held-out accuracy (greedy, or pass@k with ``samples``) of a model (+ adapter) on a task."""
    from tokenrl.evaluation import default_max_new_tokens
    from tokenrl.evaluation import evaluate as run_eval
    from tokenrl.models import load_model
    from tokenrl.tasks import get_task

    t = get_task(task, style=style, **task_options)
    lm = load_model(str(model), dtype=dtype, adapter=adapter)
    examples = t.examples(split)[:limit] if limit else t.examples(split)
    n_new = max_new_tokens or default_max_new_tokens(t, lm.tokenizer)
    return run_eval(lm.model, lm.tokenizer, t, examples, max_new_tokens=n_new, samples=samples)


def merge(run: str | Path, out: str | Path) -> Path:
    """Save a finished run's base model with its adapter merged in, loadable with ``from_pretrained``."""
    from tokenrl.compare import merge_run

    merge_run(Path(run), Path(out))
    return Path(out)


# ---------------------------------------------------------------------------------------------


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and k != "options":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _rows(data: Any) -> list[dict[str, Any]]:
    if hasattr(data, "to_list"):  # datasets.Dataset
        return list(data.to_list())
    if isinstance(data, Iterable) and not isinstance(data, str | bytes | Mapping):
        rows = list(data)
        if all(isinstance(r, Mapping) for r in rows):
            return [dict(r) for r in rows]
    raise ConfigError(
        f"dataset must be a task spec, a path, a list of dicts or a datasets.Dataset, got {type(data).__name__}"
    )


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")


def _set_dataset(
    cfg: Config, dataset: Any, test: Any, out: Path, q: str, a: str, id_col: str | None
) -> None:
    """Point ``cfg.task`` at the dataset: a spec or path as given; rows written under out/data."""
    options = {"question_field": q, "answer_field": a, "id_field": id_col}
    if isinstance(dataset, str | Path) and not str(dataset).endswith(".jsonl") and test is None:
        set_value(cfg, "task.name", str(dataset))
        return
    if hasattr(dataset, "keys") and hasattr(dataset, "column_names"):  # a DatasetDict
        test = test if test is not None else dataset.get("test")
        dataset = dataset["train"]
    if isinstance(dataset, str | Path):
        train_path = Path(dataset)
    else:
        train_path = out.resolve() / "data" / "train.jsonl"
        _write_jsonl(_rows(dataset), train_path)
    if test is not None:
        test_path = (
            Path(test) if isinstance(test, str | Path) else out.resolve() / "data" / "test.jsonl"
        )
        if not isinstance(test, str | Path):
            _write_jsonl(_rows(test), test_path)
        options["test_path"] = str(test_path)
    set_value(cfg, "task.name", f"jsonl:{train_path}")
    set_value(cfg, "task.options", {**cfg.task.options, **options})


def _reward_list(reward_funcs: Any) -> list[Callable | str]:
    if reward_funcs is None:
        return []
    return (
        [reward_funcs]
        if callable(reward_funcs) or isinstance(reward_funcs, str)
        else list(reward_funcs)
    )


def _importable_name(fn: Callable) -> str | None:
    """``module:qualname`` when importing it gives ``fn`` back (so a config can name it)."""
    module, _, qualname = function_name(fn).partition(":")
    if module in ("", "__main__") or "<" in qualname:
        return None
    try:
        return (
            function_name(fn)
            if getattr(importlib.import_module(module), qualname, None) is fn
            else None
        )
    except ImportError:
        return None

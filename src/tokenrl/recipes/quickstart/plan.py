"""What a quickstart run does (:class:`QuickstartPlan`), from the command's flags and the
shipped settings files ``tiny.yaml`` / ``pretrained.yaml`` beside this module."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tokenrl.algorithms.registry import ALGORITHMS
from tokenrl.config import Config, load_config
from tokenrl.recipes.quickstart.warmup import WarmupConfig

if TYPE_CHECKING:
    from tokenrl.tasks import Task

HERE = Path(__file__).parent
DEFAULT_MODEL = "tiny:hidden=256,layers=4,heads=4,kv_heads=2,inter=1024"
DEFAULT_TASK = "multiplication:3x1"
ALGOS = tuple(ALGORITHMS)  # the registry's algorithms: grpo, sgrpo, tspmo

# settings the plan fills from its own fields, with the flag that chooses each
_PLAN_KEYS = {
    "model.name": "--model",
    "task.name": "--task",
    "task.options": "--seed (the problems follow it)",
    "train.algo": "--algos",
    "train.steps": "--steps",
    "train.seed": "--seed",
    "train.eval_every": "the default (5 evaluations a run)",
}


@dataclass(frozen=True)
class QuickstartPlan:
    """Everything a quickstart run does; the CLI fills it from its flags."""

    out: Path
    model: str = DEFAULT_MODEL
    task: str = DEFAULT_TASK
    seed: int = 0
    steps: int = 225
    """RL steps of each method."""
    algos: tuple[str, ...] = ALGOS
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    """Used for a ``tiny`` model only (a pretrained model is its own base)."""
    task_options: dict[str, Any] = field(default_factory=lambda: {"n_train": 4000, "n_test": 300})
    """Task options for the built-in multiplication task (300 held-out problems, 4,000 train)."""
    threads: int | None = None
    """torch threads of the warm-up and of each method's process (default: see ``child_threads``)."""
    jobs: int | None = None
    """Methods trained at once, each in its own process (default: all of them)."""
    eval_every: int | None = None
    """Held-out evaluations during training (default: 5 per run)."""
    rl_overrides: dict[str, Any] = field(default_factory=dict)
    """``tokenrl train`` settings that replace the quickstart's own (``{"rollout.temperature": 0.7}``)."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        unknown = [a for a in self.algos if a not in ALGOS]
        if unknown or not self.algos:
            raise ValueError(f"--algos {','.join(self.algos)}: choose from {', '.join(ALGOS)}")
        reserved = sorted(set(self.rl_overrides) & set(_PLAN_KEYS))
        if reserved:
            raise ValueError(
                f"--set {reserved[0]}: the quickstart sets this one itself; use "
                f"{_PLAN_KEYS[reserved[0]]}"
            )
        if self.jobs is not None and self.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {self.jobs}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.is_tiny and not self.task.startswith("multiplication"):
            raise ValueError(
                f"--task {self.task} with a tiny model: the warm-up builds a base for multiplication only; "
                "pass a pretrained --model (e.g. smollm2-135m-instruct) for other tasks"
            )

    @property
    def is_tiny(self) -> bool:
        return self.model == "tiny" or self.model.startswith("tiny:")

    @property
    def job_count(self) -> int:
        """Methods trained at once: ``jobs``, at most one per method (default: every method)."""
        return min(self.jobs or len(self.algos), len(self.algos))

    @property
    def child_threads(self) -> int | None:
        """torch threads of each method's process: ``threads`` if given; else the CPU cores
        shared out between the methods that run at once (at least 1); ``None`` (torch's own
        choice) when they run one after another."""
        if self.threads is not None:
            return self.threads
        if self.job_count == 1:
            return None
        return max(1, (os.cpu_count() or 1) // self.job_count)

    @property
    def settings_file(self) -> Path:
        """The shipped ``tokenrl train`` config of the RL runs: tiny.yaml or pretrained.yaml."""
        return HERE / ("tiny.yaml" if self.is_tiny else "pretrained.yaml")

    @property
    def split_options(self) -> dict[str, Any]:
        """Options that give the task this seed's train/test split: ``task_options`` and the seed
        for the built-in multiplication task, none for other tasks (their split is fixed)."""
        return (
            {**self.task_options, "seed": self.seed}
            if self.task.startswith("multiplication")
            else {}
        )

    def warmup_task(self) -> Task:
        """The task the supervised warm-up trains on: ``task`` in the compact style, on this
        seed's split (the RL configs use the same split)."""
        from tokenrl.tasks import get_task

        return get_task(self.task, style="compact", **self.split_options)

    @property
    def rl_settings(self) -> dict[str, Any]:
        """The settings file's values as dotted keys, with ``rl_overrides`` applied (the report)."""
        data = yaml.safe_load(self.settings_file.read_text(encoding="utf-8"))
        flat = {f"{section}.{k}": v for section, values in data.items() for k, v in values.items()}
        return {**flat, **self.rl_overrides}

    def rl_config(self, base_model: str, algo: str) -> Config:
        """The ``tokenrl train`` config of one method (validated like any config): the shipped
        settings file, the plan's own fields, then ``rl_overrides`` (those of another
        algorithm's section apply to that algorithm's run only)."""
        own = {
            "model.name": base_model,
            "task.name": self.task,
            "task.options": self.split_options,
            "train.algo": algo,
            "train.steps": self.steps,
            "train.seed": self.seed,
            "train.eval_every": self.eval_every or max(1, self.steps // 5),
        }
        extra = {
            k: v
            for k, v in self.rl_overrides.items()
            if k.partition(".")[0] not in ALGOS or k.partition(".")[0] == algo
        }
        return load_config(self.settings_file, [*own.items(), *extra.items()])

"""Typed run configuration: one dataclass per concern, YAML files, ``--section.field`` overrides.

Every field carries a docstring (the string literal under it); ``tokenrl train --help`` prints
them. :func:`load_config` merges, in order, the defaults, a YAML file and command-line
overrides, then validates everything before any model is loaded. The resolved config, saved as
``config.yaml`` in the run folder, is the single source of truth for a run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tokenrl.algorithms.registry import ALGORITHMS, GRPOConfig, SGRPOConfig, TSPMOConfig
from tokenrl.config_io import (  # noqa: F401
    _fail,
    _plain,
    apply_mapping,
    check_algorithm_overrides,
    coerce,
    field_docs,
    iter_options,
    parse_overrides,
    save_config,
    set_value,
)
from tokenrl.config_run import LogConfig, OptimConfig, RolloutConfig, TrainConfig
from tokenrl.errors import ConfigError
from tokenrl.models import DEFAULT_LORA_TARGETS, LoraSpec

AUTOCAST_DTYPES = {"none": None, "bf16": "bfloat16"}  # model.autocast -> torch dtype name


@dataclass
class ModelConfig:
    """Which model is trained."""

    name: str = "tiny"
    """Built-in name (tiny, smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct,
    qwen2.5-coder-1.5b-instruct; `tokenrl models`), local folder or hub id."""

    dtype: str = "fp32"
    """Weights dtype: fp32 (the paper's setting), bf16, or auto (bf16 on a GPU with bf16 and on a
    CPU with AMX or AVX-512 bf16, else fp32; the run records what it chose)."""

    device: str = "auto"
    """auto (cuda when present, else cpu), cpu, cuda, cuda:N."""

    gradient_checkpointing: bool = False
    """Recompute layer activations in the backward pass: less memory, about 30% more time."""

    autocast: str = "none"
    """Mixed precision for sampling and the update's forward: none, or bf16 (matrix products in
    bfloat16 via torch.autocast, weights and adapter kept in their dtype; fast on GPUs and on CPUs
    with AMX/AVX-512 bf16). Evaluation stays in the weights' dtype."""

    def validate(self) -> None:
        if self.dtype not in ("fp32", "bf16", "auto"):
            _fail(f"model.dtype={self.dtype!r} is unknown", "use fp32, bf16 or auto")
        if self.autocast not in AUTOCAST_DTYPES:
            _fail(
                f"model.autocast={self.autocast!r} is unknown",
                f"use one of {', '.join(AUTOCAST_DTYPES)}",
            )


@dataclass
class LoraConfig:
    """LoRA adapter (peft); only its weights are trained."""

    r: int = 16
    """Rank of the LoRA update."""

    alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""

    dropout: float = 0.0
    """Dropout on the LoRA input; 0 keeps log-probs of the update pass equal to the rollout's."""

    target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS
    """Module names that get an adapter (default: every attention and MLP projection)."""

    layers: tuple[int, ...] | None = None
    """Layer indices that get adapters; None = all (the paper adapted only part of the layers)."""

    def validate(self) -> None:
        if self.r < 1:
            _fail(f"lora.r={self.r} must be at least 1", "use a rank such as 8, 16 or 64")
        if self.alpha <= 0:
            _fail(f"lora.alpha={self.alpha} must be positive", "use e.g. 2 * r")
        if not 0 <= self.dropout < 1:
            _fail(f"lora.dropout={self.dropout} is outside [0, 1)", "use 0 (default) or e.g. 0.05")
        if not self.target_modules:
            _fail("lora.target_modules is empty", "name at least one module, e.g. q_proj,v_proj")

    def spec(self, seed: int) -> LoraSpec:
        return LoraSpec(
            self.r, self.alpha, self.dropout, tuple(self.target_modules), self.layers, seed
        )


@dataclass
class TaskConfig:
    """What the model is trained and evaluated on."""

    name: str = "multiplication:2x1"
    """Task spec: multiplication[:AxB], svamp, gsm8k or jsonl:PATH (see docs/tasks.md)."""

    data_path: str | None = None
    """Folder with svamp/ and gsm8k/ (default: $TOKENRL_DATA, else ../shared/data when present)."""

    style: str = "auto"
    """Prompt style: auto (chat template when the model has one, else fewshot), chat, plain, fewshot, compact."""

    eval_limit: int | None = 100
    """Held-out problems used for periodic and final evaluation (None = the whole test split)."""

    options: dict[str, Any] = field(default_factory=dict)
    """Task options, e.g. {n_train: 500, seed: 1} (the fields of the task's config, docs/tasks.md)."""

    reward: tuple[str, ...] = ()
    """Reward functions as module:function (comma-separated for several; "task" = the task's exact
    match), each fn(completion, example) -> float or TRL-style fn(prompts, completions, **columns)
    -> list (docs/api.md); empty = the task's exact match."""

    reward_weights: tuple[float, ...] = ()
    """One weight per reward function (the reward is their weighted sum); empty = all 1."""

    reward_errors: str = "raise"
    """When the reward function raises or returns a non-finite/non-number: raise (stop the run, naming the
    example) or zero (score 0 and count it in the reward/errors metric)."""

    def validate(self) -> None:
        from tokenrl.tasks import ALIASES, TASKS

        kind = self.name.partition(":")[0].strip().lower()
        if ALIASES.get(kind, kind) not in TASKS:
            _fail(f"task.name={self.name!r} is unknown",
                  f"use one of {', '.join(TASKS)} (also mult:AxB, e.g. mult:2x1, hf:REPO and jsonl:PATH)")  # fmt: skip
        if self.eval_limit is not None and self.eval_limit < 1:
            _fail(
                f"task.eval_limit={self.eval_limit} must be at least 1",
                "use a positive count or none",
            )
        if self.reward_errors not in ("raise", "zero"):
            _fail(
                f"task.reward_errors={self.reward_errors!r} is unknown",
                "use raise (default) or zero",
            )
        if self.reward_weights and len(self.reward_weights) != max(len(self.reward), 1):
            _fail(f"task.reward_weights has {len(self.reward_weights)} values for "
                  f"{max(len(self.reward), 1)} reward functions",
                  "give one weight per function of task.reward, in the same order")  # fmt: skip
        self.reward_fns()

    def reward_fns(self) -> list:
        """The reward functions named by ``reward`` (imported; "task" stays the name), or []."""
        import importlib

        fns: list = []
        for spec in self.reward:
            if spec == "task":
                fns.append("task")
                continue
            module, sep, name = spec.partition(":")
            if not sep:
                _fail(
                    f"task.reward={spec!r} is not module:function", "write e.g. mypkg.rewards:score"
                )
            try:
                fn = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError) as err:
                raise ConfigError(
                    f"task.reward={spec!r} cannot be imported ({err}). Fix: put the module on PYTHONPATH"
                ) from None
            if not callable(fn):
                _fail(
                    f"task.reward={spec!r} is not callable",
                    "name a function fn(completion, example) -> float",
                )
            fns.append(fn)
        return fns


@dataclass
class Config:
    """A whole run. Sections are set as ``--SECTION.FIELD VALUE`` on the command line."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    sgrpo: SGRPOConfig = field(default_factory=SGRPOConfig)
    tspmo: TSPMOConfig = field(default_factory=TSPMOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            try:
                section.validate()
            except ConfigError:
                raise
            except ValueError as err:  # the algorithm configs raise ValueError
                raise ConfigError(_qualified(f.name, section, str(err))) from None

    def algo_config(self):
        return getattr(self, self.train.algo)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _qualified(section_name: str, section: Any, message: str) -> str:
    """``"p=1.5 is ..."`` -> ``"sgrpo.p=1.5 is ..."`` when ``p`` is a field of the section, so the
    message names the full key; otherwise ``"sgrpo: <message>"``."""
    name = message.partition("=")[0]
    if name.isidentifier() and name in {f.name for f in dataclasses.fields(section)}:
        return f"{section_name}.{message}"
    return f"{section_name}: {message}"


def load_config(path: str | Path | None = None, overrides: list[tuple[str, Any]] = ()) -> Config:
    """Defaults <- YAML file <- overrides, validated."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            _fail(
                f"config file {str(p)!r} does not exist",
                "give the path of a YAML file, e.g. configs/quick.yaml",
            )
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p} is not valid YAML: {err}") from None
        apply_mapping(cfg, data, str(p))
    for key, value in overrides:
        value = yaml.safe_load(value) if isinstance(value, str) and value.strip() else value
        set_value(cfg, key, value)
    cfg.validate()
    check_algorithm_overrides(cfg.train.algo, [key for key, _ in overrides], list(ALGORITHMS))
    return cfg

"""Typed run configuration: one dataclass per concern, YAML files, ``--section.field`` overrides.

Every field carries a docstring (the string literal under it); ``tokenrl train --help`` prints
them. :func:`load_config` merges, in order, the defaults, a YAML file and command-line
overrides, then validates everything before any model is loaded. The resolved config, saved as
``config.yaml`` in the run folder, is the single source of truth for a run.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import os
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tokenrl.algorithms.registry import GRPOConfig, SGRPOConfig, TSPMOConfig
from tokenrl.models import DEFAULT_LORA_TARGETS, LoraSpec


class ConfigError(ValueError):
    """A configuration problem; the message says what is wrong and how to fix it."""


AUTOCAST_DTYPES = {"none": None, "bf16": "bfloat16"}  # model.autocast -> torch dtype name


def _fail(what: str, fix: str) -> None:
    raise ConfigError(f"{what}. Fix: {fix}")


@dataclass
class ModelConfig:
    """Which model is trained."""

    name: str = "tiny"
    """Built-in name (tiny, smollm2-135m-instruct; see `tokenrl models`), local folder or hub id."""

    dtype: str = "fp32"
    """Weights dtype: fp32 (the paper's setting) or bf16."""

    device: str = "auto"
    """auto (cuda when present, else cpu), cpu, cuda, cuda:N."""

    gradient_checkpointing: bool = False
    """Recompute layer activations in the backward pass: less memory, about 30% more time."""

    autocast: str = "none"
    """Mixed precision for sampling and the update's forward: none, or bf16 (matrix products in bfloat16 via torch.autocast, weights and adapter kept in their dtype; fast on GPUs and on CPUs with AMX/AVX-512 bf16). Evaluation stays in the weights' dtype."""

    def validate(self) -> None:
        if self.dtype not in ("fp32", "bf16"):
            _fail(f"model.dtype={self.dtype!r} is unknown", "use fp32 or bf16")
        if self.autocast not in AUTOCAST_DTYPES:
            _fail(f"model.autocast={self.autocast!r} is unknown", f"use one of {', '.join(AUTOCAST_DTYPES)}")


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
        return LoraSpec(self.r, self.alpha, self.dropout, tuple(self.target_modules), self.layers, seed)


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

    reward: str | None = None
    """Custom reward as module:function, called fn(completion, example) -> float; None = the task's exact match."""

    reward_errors: str = "raise"
    """When the reward function raises or returns a non-finite/non-number: raise (stop the run, naming the
    example) or zero (score 0 and count it in the reward/errors metric)."""

    def validate(self) -> None:
        from tokenrl.tasks import ALIASES, TASKS

        kind = self.name.partition(":")[0].strip().lower()
        if ALIASES.get(kind, kind) not in TASKS:
            _fail(f"task.name={self.name!r} is unknown",
                  f"use one of {', '.join(TASKS)} (also mult:AxB, e.g. mult:2x1, and jsonl:PATH)")  # fmt: skip
        if self.eval_limit is not None and self.eval_limit < 1:
            _fail(f"task.eval_limit={self.eval_limit} must be at least 1", "use a positive count or none")
        if self.reward_errors not in ("raise", "zero"):
            _fail(f"task.reward_errors={self.reward_errors!r} is unknown", "use raise (default) or zero")
        if self.reward is not None:
            self.reward_fn()

    def reward_fn(self):
        """The custom reward function named by ``reward`` (imported), or None."""
        if self.reward is None:
            return None
        import importlib

        module, sep, name = self.reward.partition(":")
        if not sep:
            _fail(f"task.reward={self.reward!r} is not module:function", "write e.g. mypkg.rewards:score")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"task.reward={self.reward!r} cannot be imported ({err}). Fix: put the module on PYTHONPATH") from None
        if not callable(fn):
            _fail(f"task.reward={self.reward!r} is not callable", "name a function fn(completion, example) -> float")
        return fn


@dataclass
class RolloutConfig:
    """How completions are sampled during training."""

    group_size: int = 8
    """G: completions sampled per prompt; group-relative advantages need G >= 2."""

    prompts_per_step: int = 4
    """Prompts per training step (so each step samples prompts_per_step * G completions)."""

    max_new_tokens: int = 64
    """Longest completion; longer ones are cut and flagged as truncated."""

    temperature: float = 1.0
    """Sampling temperature for training rollouts (evaluation is greedy)."""

    top_p: float = 1.0
    """Nucleus sampling threshold (1 = off)."""

    batch_size: int = 64
    """Most completions generated in one call (memory bound for generation)."""

    merge_lora: bool = False
    """Sample with each LoRA adapter folded into a copy of the weights it adapts (W + BA * alpha/r),
    one matmul per layer instead of three: faster rollouts on a CPU for one extra copy of the
    adapted weights (tokenrl.models.lora_merged). The update always runs the adapter itself."""

    shared_decode: bool = True
    """Run each distinct (prompt, completion so far) prefix through the model once per decode step
    and give every row its prefix's logits (the G rows of a prompt until they part, and rows that
    agree to the end): the same tokens as ``generate`` in fp32 (in bf16, up to rounding), fewer
    rows run (docs/rollout.md). Off: Hugging Face ``generate`` over all rows."""

    skip_settled: bool = False
    """Skip a training problem once, the next time the prompt sampler reaches it, if its last group
    of completions all scored the same (all right or all wrong: a group with no gradient), so
    that each step's prompts hold more groups that teach something."""

    def validate(self) -> None:
        if self.group_size < 2:
            _fail(f"rollout.group_size={self.group_size} is below 2",
                  "group-relative advantages compare completions of one prompt: use G >= 2 (e.g. 8)")  # fmt: skip
        if self.prompts_per_step < 1:
            _fail(f"rollout.prompts_per_step={self.prompts_per_step} must be at least 1", "use e.g. 4")
        if self.max_new_tokens < 1:
            _fail(f"rollout.max_new_tokens={self.max_new_tokens} must be at least 1", "use e.g. 64")
        if self.temperature <= 0:
            _fail(f"rollout.temperature={self.temperature} must be positive", "use e.g. 1.0 (evaluation is always greedy)")
        if not 0 < self.top_p <= 1:
            _fail(f"rollout.top_p={self.top_p} is outside (0, 1]", "use 1.0 to disable nucleus sampling")
        if self.batch_size < 1:
            _fail(f"rollout.batch_size={self.batch_size} must be at least 1", "use e.g. 64")


@dataclass
class OptimConfig:
    """AdamW on the LoRA parameters."""

    lr: float = 1e-4
    """Peak learning rate (LoRA usually wants ~10x the full fine-tuning rate)."""

    weight_decay: float = 0.0
    """AdamW weight decay."""

    beta1: float = 0.9
    """AdamW beta1."""

    beta2: float = 0.999
    """AdamW beta2."""

    lora_plus_ratio: float = 1.0
    """Learning rate of the LoRA B matrices over that of the A matrices (LoRA+, Hayou et al. 2024: B
    learns at ``lr * lora_plus_ratio``); 1 = one rate for every adapter weight."""

    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value (None = no clipping)."""

    warmup_steps: int = 0
    """Linear warm-up from 0 to lr over this many steps."""

    schedule: str = "constant"
    """After warm-up: constant, linear (to 0 at the last step) or cosine (to 0)."""

    micro_batches: int = 1
    """Gradient accumulation: split each step's groups into this many micro-batches (less memory, same update)."""

    inner_updates: int = 1
    """Optimiser updates per batch of rollouts; above 1 the PPO-clipped ratio is used."""

    share_prompt: bool = True
    """Run each group's prompt through the model once in the update (KV cache copied to its rows), not once per completion: the same log-probs, fewer tokens; off under gradient checkpointing."""

    max_nonfinite_steps: int = 5
    """Stop the run after this many optimiser updates in a row were skipped for a non-finite loss or gradient (0 = never stop)."""

    def validate(self) -> None:
        if self.lr <= 0:
            _fail(f"optim.lr={self.lr} must be positive", "use e.g. 1e-4 for LoRA")
        if self.lora_plus_ratio <= 0:
            _fail(f"optim.lora_plus_ratio={self.lora_plus_ratio} must be positive", "use 1 (one rate) or e.g. 4-16 (LoRA+)")
        if self.weight_decay < 0:
            _fail(f"optim.weight_decay={self.weight_decay} is negative", "use 0 or a small positive value")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            _fail(f"optim.beta1={self.beta1}, beta2={self.beta2} must lie in [0, 1)", "use 0.9 and 0.999")
        if self.grad_clip is not None and self.grad_clip <= 0:
            _fail(f"optim.grad_clip={self.grad_clip} must be positive", "use e.g. 1.0, or none to disable")
        if self.warmup_steps < 0:
            _fail(f"optim.warmup_steps={self.warmup_steps} is negative", "use 0 or more")
        if self.schedule not in ("constant", "linear", "cosine"):
            _fail(f"optim.schedule={self.schedule!r} is unknown", "use constant, linear or cosine")
        if self.micro_batches < 1 or self.inner_updates < 1:
            _fail("optim.micro_batches and optim.inner_updates must be at least 1", "use 1 (default) or more")
        if self.max_nonfinite_steps < 0:
            _fail(f"optim.max_nonfinite_steps={self.max_nonfinite_steps} is negative", "use e.g. 5, or 0 to never stop")


@dataclass
class TrainConfig:
    """The run."""

    algo: str = "sgrpo"
    """Algorithm: grpo (full-token baseline), sgrpo or tspmo."""

    steps: int = 100
    """Training steps (each: rollouts, one or more optimiser updates)."""

    seed: int = 0
    """Seed for the data order, rollouts, token selection and LoRA initialisation."""

    eval_every: int = 25
    """Greedy accuracy on held-out problems every N steps (0 = only before and after)."""

    checkpoint_every: int = 25
    """Write a resumable checkpoint every N steps (0 = only at the end)."""

    keep_checkpoints: int = 2
    """How many most recent checkpoints to keep."""

    eval_before: bool = True
    """Evaluate the base model (adapter at its initial zero update) before training."""

    def validate(self) -> None:
        from tokenrl.algorithms.registry import ALGORITHMS

        if self.algo not in ALGORITHMS:
            _fail(f"train.algo={self.algo!r} is unknown", f"use one of {', '.join(ALGORITHMS)}")
        if self.steps < 1:
            _fail(f"train.steps={self.steps} must be at least 1", "use e.g. 100")
        if self.eval_every < 0 or self.checkpoint_every < 0:
            _fail("train.eval_every and train.checkpoint_every must be >= 0", "use 0 to disable or a step count")
        if self.keep_checkpoints < 1:
            _fail(f"train.keep_checkpoints={self.keep_checkpoints} must be at least 1", "use e.g. 2")


@dataclass
class LogConfig:
    """What a run writes besides metrics.jsonl."""

    tensorboard: bool = False
    """Also write TensorBoard event files (run folder /tb)."""

    samples_every: int = 10
    """Write a few prompts with completions and rewards to samples.jsonl every N steps (0 = never)."""

    samples_count: int = 4
    """Completions written each time."""

    progress: bool = True
    """Show a live progress bar."""

    def validate(self) -> None:
        if self.samples_every < 0 or self.samples_count < 0:
            _fail("log.samples_every and log.samples_count must be >= 0", "use 0 to disable")


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


# ---------------------------------------------------------------------------------------------
# documentation of fields (attribute docstrings)


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass, its bases included: {field name: text}."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def iter_options(cfg: Any = None, prefix: str = ""):
    """Yield (dotted key, type text, default, doc) for every leaf field; nested dataclasses recurse."""
    cfg = cfg if cfg is not None else Config()
    docs = field_docs(type(cfg))
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from iter_options(value, key + ".")
        elif prefix:
            yield key, _type_text(hints[f.name]), value, docs.get(f.name, "")


def _type_text(tp: Any) -> str:
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    return text or str(tp).replace("typing.", "")


# ---------------------------------------------------------------------------------------------
# building a config from YAML and overrides


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/command-line value to the annotated type ``tp``, or explain why not."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            _fail(f"{key} expects a list, got {value!r}", f"write e.g. --{key} a,b")
        inner = args[0] if args else Any
        items = [coerce(v, inner, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            _fail(f"{key} expects a mapping, got {value!r}", f"write e.g. --{key} '{{name: value}}'")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        _fail(f"{key} expects true or false, got {value!r}", f"write --{key} true or --{key} false")
    if tp is int:
        if isinstance(value, bool):
            _fail(f"{key} expects an integer, got {value!r}", f"write e.g. --{key} 16")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        _fail(f"{key} expects an integer, got {value!r}", f"write e.g. --{key} 16")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        _fail(f"{key} expects a number, got {value!r}", f"write e.g. --{key} 0.5")
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        _fail(f"{key} expects text, got {value!r}", f"write e.g. --{key} name")
    return value


def set_value(cfg: Config, key: str, value: Any) -> None:
    """Set ``section.field`` (or ``section.sub.field``) from a raw YAML or command-line value."""
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        _fail(f"config key {key!r} is not SECTION.FIELD", "write e.g. --train.steps 50")
    node: Any = cfg
    for depth, name in enumerate(parts):
        names = [f.name for f in dataclasses.fields(node)]
        where = ".".join(parts[:depth]) or "the config"
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean {'.'.join([*parts[:depth], close[0]])!r}? " if close else ""
            _fail(f"unknown config key {key!r}",
                  f"{hint}{where} has: {', '.join(names)} (see tokenrl train --help)")  # fmt: skip
        child = getattr(node, name)
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(child):
                if not isinstance(value, dict):
                    _fail(f"{key} is a group of settings", f"set its fields, e.g. --{key}.{dataclasses.fields(child)[0].name} VALUE")
                for sub, v in value.items():
                    set_value(cfg, f"{key}.{sub}", v)
                return
            hints = typing.get_type_hints(type(node))
            setattr(node, name, coerce(value, hints[name], key))
            return
        if not dataclasses.is_dataclass(child):
            _fail(f"config key {key!r}: {'.'.join(parts[: depth + 1])} is a value, not a section", "drop the extra part")
        node = child


def apply_mapping(cfg: Config, data: dict[str, Any], source: str) -> None:
    if not isinstance(data, dict):
        _fail(f"{source} must hold a mapping of sections", "write e.g.\ntrain:\n  steps: 50")
    for section_name, values in data.items():
        if not isinstance(values, dict):
            _fail(f"{source}: section {section_name!r} must be a mapping, got {values!r}",
                  f"write\n{section_name}:\n  field: value")  # fmt: skip
        for field_name, value in values.items():
            set_value(cfg, f"{section_name}.{field_name}", value)


def parse_overrides(tokens: list[str]) -> list[tuple[str, str]]:
    """``["--train.steps", "50", "--lora.r=8"]`` -> ``[("train.steps", "50"), ("lora.r", "8")]``."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or "." not in tok.split("=")[0]:
            _fail(f"unexpected argument {tok!r}", "overrides are written --SECTION.FIELD VALUE, e.g. --train.steps 50")
        if "=" in tok:
            key, value = tok[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                _fail(f"{tok} needs a value", f"write e.g. {tok} VALUE")
            key, value = tok[2:], tokens[i + 1]
            i += 2
        out.append((key, value))
    return out


def load_config(path: str | Path | None = None, overrides: list[tuple[str, Any]] = ()) -> Config:
    """Defaults <- YAML file <- overrides, validated."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            _fail(f"config file {str(p)!r} does not exist", "give the path of a YAML file, e.g. configs/quick.yaml")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p} is not valid YAML: {err}") from None
        apply_mapping(cfg, data, str(p))
    for key, value in overrides:
        value = yaml.safe_load(value) if isinstance(value, str) and value.strip() else value
        set_value(cfg, key, value)
    cfg.validate()
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML atomically (a temporary file renamed into place), so a run killed
    while writing never leaves a truncated config that would resume with defaults."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

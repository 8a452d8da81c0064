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
from tokenrl.errors import ConfigError
from tokenrl.models import DEFAULT_LORA_TARGETS, LoraSpec

AUTOCAST_DTYPES = {"none": None, "bf16": "bfloat16"}  # model.autocast -> torch dtype name


@dataclass
class ModelConfig:
    """Which model is trained."""

    name: str = "tiny"
    """Built-in name (tiny, smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct, qwen2.5-coder-1.5b-instruct; `tokenrl models`), local folder or hub id."""

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
            _fail(f"task.eval_limit={self.eval_limit} must be at least 1", "use a positive count or none")
        if self.reward_errors not in ("raise", "zero"):
            _fail(f"task.reward_errors={self.reward_errors!r} is unknown", "use raise (default) or zero")
        if self.reward_weights and len(self.reward_weights) != max(len(self.reward), 1):
            _fail(f"task.reward_weights has {len(self.reward_weights)} values for {max(len(self.reward), 1)} reward functions",
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
                _fail(f"task.reward={spec!r} is not module:function", "write e.g. mypkg.rewards:score")
            try:
                fn = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError) as err:
                raise ConfigError(f"task.reward={spec!r} cannot be imported ({err}). Fix: put the module on PYTHONPATH") from None
            if not callable(fn):
                _fail(f"task.reward={spec!r} is not callable", "name a function fn(completion, example) -> float")
            fns.append(fn)
        return fns


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

    engine: str = "shared"
    """How completions are sampled (tokenrl.engines): shared (each distinct prompt + completion-so-far
    prefix runs once per decode step, every row gets its prefix's logits: the same tokens as hf in
    fp32, fewer rows run; docs/rollout.md) or hf (Hugging Face generate over every row)."""

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
        from tokenrl.engines import ENGINES

        if self.engine not in ENGINES:
            _fail(f"rollout.engine={self.engine!r} is unknown", f"use one of {', '.join(ENGINES)}")


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
    check_algorithm_overrides(cfg.train.algo, [key for key, _ in overrides], list(ALGORITHMS))
    return cfg

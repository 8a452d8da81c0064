"""What a training run holds: the policy, its optimiser, the task and data order, the engine.

:func:`build_trainer` loads everything a step needs from a :class:`~tokenrl.config.Config`
(seeded, before any file is written); :func:`tokenrl.step.train_step` runs one step on the
:class:`Trainer` it returns, and :func:`tokenrl.run.train` is the loop around it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tokenrl.algorithms.registry import Algorithm, get_algorithm
from tokenrl.algorithms.replay import Replay
from tokenrl.config import AUTOCAST_DTYPES, Config
from tokenrl.distributed import Distributed
from tokenrl.engines import Engine, make_engine
from tokenrl.models import LoadedModel, load_model, wrap_loaded
from tokenrl.rewards import Reward, RewardSet
from tokenrl.rollout import SamplingConfig
from tokenrl.tasks import Example, Task, get_task


class PromptSampler:
    """Shuffled passes over the training problems, reproducible from the seed and resumable."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffle()


@dataclass
class Trainer:
    cfg: Config
    out: Path
    lm: LoadedModel
    task: Task
    train_examples: list[Example]
    eval_examples: list[Example]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: PromptSampler
    algorithm: Algorithm
    engine: Engine
    replay: Replay | None  # the algorithm's extra prompts (T-SPMO replay), if it has any
    rewards: RewardSet
    step: int = 0
    nonfinite_streak: int = 0  # optimiser updates in a row skipped for a non-finite loss/gradient
    dist: Distributed = field(default_factory=Distributed)  # this rank of a data-parallel run

    @property
    def model(self) -> nn.Module:
        return self.lm.model

    @property
    def sampling(self) -> SamplingConfig:
        r = self.cfg.rollout
        return SamplingConfig(
            max_new_tokens=r.max_new_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            stop=tuple(self.task.stop),
            batch_size=r.batch_size,
        )


def lr_lambda(cfg: Config) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at optimiser step s (warm-up, then the schedule)."""
    warm, total, kind = cfg.optim.warmup_steps, cfg.train.steps, cfg.optim.schedule

    def f(s: int) -> float:
        if s < warm:
            return (s + 1) / (warm + 1)
        if kind == "constant":
            return 1.0
        frac = min((s - warm) / max(total - warm, 1), 1.0)
        return 1.0 - frac if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))

    return f


def build_trainer(
    cfg: Config,
    out: Path,
    *,
    device: str | None = None,
    dist: Distributed | None = None,
    model: tuple[nn.Module, Any] | None = None,
    rewards: list[tuple[Any, float]] | None = None,
) -> Trainer:
    """Load the model with a fresh adapter, the task and the optimiser, seeded from the config.

    ``device`` overrides ``cfg.model.device`` (a data-parallel rank's own GPU); ``dist`` is the
    rank's place in a data-parallel run (default: a single process). ``model`` is an already
    loaded ``(model, tokenizer)`` to train instead of loading ``cfg.model.name``; ``rewards``
    replaces the reward functions named in ``cfg.task``: ``(function, weight)`` pairs, where a
    function may be "task" (the exact match) or a "module:function" name (:func:`task_rewards`).
    """
    dist = dist or Distributed()
    seed_everything(cfg.train.seed)
    task = get_task(
        cfg.task.name, data_path=cfg.task.data_path, style=cfg.task.style, **cfg.task.options
    )
    train_examples = task.examples("train")
    test = task.examples("test")
    eval_examples = test[: cfg.task.eval_limit] if cfg.task.eval_limit else test
    if model is not None:
        lm = wrap_loaded(*model, name=cfg.model.name, lora=cfg.lora.spec(cfg.train.seed))
    else:
        lm = load_model(
            cfg.model.name,
            dtype=cfg.model.dtype,
            device=device or cfg.model.device,
            lora=cfg.lora.spec(cfg.train.seed),
        )
    lm.model.train()  # updates run in training mode (LoRA dropout, gradient checkpointing)
    if cfg.model.gradient_checkpointing:
        lm.model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        # transformers makes the embeddings' output require grad, which only reentrant
        # checkpoints need; it would run the backward through every layer below the adapter
        lm.model.disable_input_require_grads()
    task = task.resolved(lm.tokenizer)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    dist.broadcast_params(params)  # the seeded adapters already agree; this makes sure of it
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        params, lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay
    )
    algorithm = get_algorithm(cfg.train.algo)
    engine = make_engine(
        cfg.rollout.engine,
        lm.model,
        lm.tokenizer,
        autocast=AUTOCAST_DTYPES[cfg.model.autocast],
        merge_lora=cfg.rollout.merge_lora,
        prepack_weights=cfg.rollout.prepack_weights,
        grouped_attention=cfg.rollout.grouped_attention,
    )
    return Trainer(
        cfg=cfg,
        out=out,
        lm=lm,
        task=task,
        train_examples=train_examples,
        eval_examples=eval_examples,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg)),
        sampler=PromptSampler(len(train_examples), cfg.train.seed),
        algorithm=algorithm,
        engine=engine,
        replay=algorithm.replay(cfg.algo_config(), cfg.train.seed) if algorithm.replay else None,
        rewards=task_rewards(cfg, task, rewards),
        dist=dist,
    )


def task_rewards(
    cfg: Config, task: Task, given: list[tuple[Any, float]] | None = None
) -> RewardSet:
    """The step's reward functions: ``given`` ``(function, weight)`` pairs, else those of
    ``cfg.task.reward`` with ``cfg.task.reward_weights`` (none: the task's exact match alone).
    "task" is the task's exact match; a "module:function" name is imported."""
    if given is None:
        fns = cfg.task.reward_fns() or ["task"]
        given = list(zip(fns, cfg.task.reward_weights or [1.0] * len(fns), strict=True))
    out = []
    for f, w in given:
        if isinstance(f, str) and f != "task":
            f = type(cfg.task)(reward=(f,)).reward_fns()[0]
        out.append(Reward(task.reward, w, "task") if f == "task" else Reward(f, w))
    return RewardSet(out)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

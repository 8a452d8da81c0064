"""Rollout engines: what turns prompt token ids into a :class:`~tokenrl.rollout.RolloutBatch`.

The trainer's step and the evaluation call only :meth:`Engine.generate` and, after each
optimiser step, :meth:`Engine.sync`. Two engines run the policy itself through Hugging Face
(they share its weights, so ``sync`` has nothing to copy):

* ``"shared"`` (default): groups sampled with per-group seeds, or greedily, run each distinct
  (prompt, completion so far) prefix once per decode step (the same tokens as ``"hf"`` in fp32;
  docs/rollout.md);
* ``"hf"``: ``model.generate`` over every row.

An engine that keeps its own copy of the weights (a vLLM server, say) is one new class with the
same two methods, registered in :data:`ENGINES` and chosen with ``rollout.engine``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Protocol

from torch import nn

from tokenrl.attention import grouped_attention
from tokenrl.models import autocast
from tokenrl.packing import packed_linears
from tokenrl.rollout import RolloutBatch, SamplingConfig, generate_rollouts


class Engine(Protocol):
    """Samples completions for prompts given as token ids."""

    def generate(
        self,
        prompt_ids: list[list[int]],
        sampling: SamplingConfig,
        *,
        group_size: int = 1,
        seeds: list[int] | None = None,
    ) -> RolloutBatch:
        """``group_size`` completions per prompt; with ``seeds`` (one per prompt) each group's
        randomness comes from its own seed, so a group's tokens do not depend on the others."""
        ...

    def sync(self, model: nn.Module) -> None:
        """Make the engine sample from ``model``'s current weights (after an optimiser step)."""
        ...


@dataclasses.dataclass
class HFEngine:
    """The policy itself, sampled through :func:`tokenrl.rollout.generate_rollouts`.

    ``autocast`` ("bfloat16" or None) and ``merge_lora`` (sample with each adapter folded into
    its weight: :func:`tokenrl.packing.packed_linears`) apply to sampled rollouts; greedy decoding
    (evaluation) runs in the weights' dtype with the adapter as it is. ``prepack_weights`` (both:
    bf16 weights on a CPU packed for oneDNN while decoding, :mod:`tokenrl.packing`; the same
    tokens). ``grouped_attention`` (both: a bf16 decode step's attention on a CPU
    in the stacked grouped-query layout, :mod:`tokenrl.attention`).
    """

    model: nn.Module
    tokenizer: object
    shared_decode: bool = True
    autocast: str | None = None
    merge_lora: bool = False
    prepack_weights: bool = True
    grouped_attention: bool = True

    def generate(
        self,
        prompt_ids: list[list[int]],
        sampling: SamplingConfig,
        *,
        group_size: int = 1,
        seeds: list[int] | None = None,
    ) -> RolloutBatch:
        sampling = dataclasses.replace(sampling, shared_decode=self.shared_decode)
        with self._context(sampling.greedy):
            return generate_rollouts(
                self.model,
                self.tokenizer,
                [],
                sampling,
                group_size=group_size,
                prompt_ids=prompt_ids,
                group_seeds=seeds,
            )

    def sync(self, model: nn.Module) -> None:
        self.model = model  # the same module: nothing to copy

    def _context(self, greedy: bool) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        merge = self.merge_lora and not greedy  # merged outside autocast: its products in fp32
        stack.enter_context(packed_linears(self.model, self.prepack_weights, merge_lora=merge))
        if not greedy:
            device = next(self.model.parameters()).device
            stack.enter_context(autocast(device, self.autocast))
        stack.enter_context(grouped_attention(self.model, self.grouped_attention))
        return stack


def _shared(model: nn.Module, tokenizer, **options) -> Engine:
    return HFEngine(model, tokenizer, shared_decode=True, **options)


def _hf(model: nn.Module, tokenizer, **options) -> Engine:
    return HFEngine(model, tokenizer, shared_decode=False, **options)


ENGINES: dict[str, Callable[..., Engine]] = {"shared": _shared, "hf": _hf}
"""Engine name -> factory ``(model, tokenizer, *, autocast, merge_lora, prepack_weights,
grouped_attention) -> Engine``."""


def make_engine(name: str, model: nn.Module, tokenizer, **options) -> Engine:
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; choose one of {', '.join(ENGINES)}")
    return ENGINES[name](model, tokenizer, **options)

"""Attention in fp32 while a CPU decodes in bf16 (``rollout.fp32_attention``).

A decode step attends one new query per row to every cached key. torch's CPU kernel for
``scaled_dot_product_attention`` is far slower on bf16 inputs than on fp32 ones at these shapes:
on a 2-core AMD EPYC Zen 4 (torch 2.13), 32 rows x 14 query heads over 2 KV heads x 64 dims
against 141 cached positions took 5.0 ms a layer in bf16 and 0.89 ms in fp32, so in the 0.5B
Qwen's bf16 decode attention took about 45% of each step (docs/benchmarks.md). Within
:func:`fp32_attention` a bf16 query, key and value on the CPU are cast to fp32, attended by the
same function, and the output is rounded back to bf16. That also rounds less: the bf16 kernel
rounds on the way (61% of its outputs matched the correctly rounded result in the measurement
above), while fp32 attention rounded once to bf16 is the fp32 result's nearest bf16 value. So
sampled tokens can differ from a bf16 attention's; fp32 models, GPUs and any call outside the
block are untouched (the update's forward and backward keep the model's own attention).

It replaces the ``sdpa`` entry of transformers' attention table for the block's duration, with
a function that hands every other call (fp32, fp16, GPU tensors) to the entry it replaced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

IMPLEMENTATION = "sdpa"
"""The model attention implementation this applies to (transformers' default)."""


def why_not_fp32_attention(model: nn.Module) -> str | None:
    """Why ``model``'s decode attention is left as it is (a short reason), or None where
    :func:`fp32_attention` applies: a transformers model whose attention is ``sdpa``."""
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if impl != IMPLEMENTATION:
        return f"the model's attention is {impl!r}, not {IMPLEMENTATION!r}"
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: F401
    except ImportError:
        return "this transformers has no attention table"
    return None


def upcast(attend: Callable) -> Callable:
    """``attend`` (transformers' attention signature) run in fp32 for bf16 tensors on a CPU:
    ``out = bf16(attend(fp32(q), fp32(k), fp32(v)))``; any other call goes to ``attend`` as is."""

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        if query.dtype != torch.bfloat16 or query.device.type != "cpu":
            return attend(module, query, key, value, attention_mask, *args, **kwargs)
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()  # an additive mask: same values in fp32
        with torch.autocast("cpu", enabled=False):  # autocast would round fp32 back to bf16
            out, weights = attend(
                module, query.float(), key.float(), value.float(), attention_mask, *args, **kwargs
            )
        return out.to(query.dtype), weights

    attention.upcasts = attend  # type: ignore[attr-defined]  # marks the wrapper (and what it wraps)
    return attention


@contextlib.contextmanager
def fp32_attention(model: nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Within the block, ``model``'s bf16 attention on a CPU runs in fp32 (yields whether the
    table entry was replaced); afterwards the table is as before."""
    if not enabled or why_not_fp32_attention(model) is not None:
        yield False
        return
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as table

    local = getattr(table, "_local_mapping", {})  # this table's own entries (over the globals)
    had_own, before = IMPLEMENTATION in local, table[IMPLEMENTATION]
    if hasattr(before, "upcasts"):  # already inside such a block: nothing to add
        yield True
        return
    table[IMPLEMENTATION] = upcast(before)
    try:
        yield True
    finally:
        if had_own:
            table[IMPLEMENTATION] = before
        else:
            del table[IMPLEMENTATION]  # the global entry shows through again

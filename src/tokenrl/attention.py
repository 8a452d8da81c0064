"""A bf16 decode step's attention in the fast layout on a CPU (``rollout.grouped_attention``).

A decode step attends one new query per row to every cached key. With grouped-query attention
(the Qwen2 models: 14 query heads over 2 key/value heads in the 0.5B), transformers' ``sdpa``
function lays the step out in one of two ways: with an attention mask (a batch with padding) it
stacks each key/value head's query heads as a block of queries ([rows, 2, 7, 64]); without one
(prompts of equal length, one prompt) it hands torch all 14 heads with ``enable_gqa``. torch's
CPU kernel is about as fast on both in fp32 but not in bf16: on a 2-core AMD EPYC Zen 4 (torch
2.13), 32 rows against 141 cached positions took 3.6 ms a layer with ``enable_gqa`` and 0.34 ms
stacked, 10.0 and 0.75 ms against 400 (docs/benchmarks.md). Within :func:`grouped_attention` a
bf16 decode call on the CPU without a mask gets an all-true one, so transformers takes the
stacked layout, as it does for a padded batch: the same values to bf16 rounding (both kernels
round the same way, 62% of outputs the correctly rounded ones in that measurement), but the
tokens can differ from those of the ``enable_gqa`` layout. fp32 and fp16 tensors, GPUs, calls of
more than one query (prefill, the update) and calls outside the block are untouched.

It replaces the ``sdpa`` entry of transformers' attention table for the block's duration, with
a function that hands every call on to the entry it replaced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

IMPLEMENTATION = "sdpa"
"""The model attention implementation this applies to (transformers' default)."""


def why_not_grouped(model: nn.Module) -> str | None:
    """Why ``model``'s decode attention is left as it is (a short reason), or None where
    :func:`grouped_attention` applies: a transformers model whose attention is ``sdpa``."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl != IMPLEMENTATION:
        return f"the model's attention is {impl!r}, not {IMPLEMENTATION!r}"
    try:
        from transformers.integrations import sdpa_attention
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:
        return "this transformers has no attention table"
    if not hasattr(ALL_ATTENTION_FUNCTIONS, "_local_mapping"):
        return "this transformers' attention table has no entries of its own to set and remove"
    if not hasattr(sdpa_attention, "pack_gqa"):  # a mask would not give the stacked layout
        return "this transformers' sdpa does not stack a masked query's heads (no pack_gqa)"
    return None


def stacked(attend: Callable) -> Callable:
    """``attend`` (transformers' attention signature) given an all-true mask for a bf16 CPU
    decode call of grouped-query attention without one; every other call as it is."""

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        if (
            attention_mask is None
            and query.shape[2] == 1
            and query.dtype == torch.bfloat16
            and query.device.type == "cpu"
            and getattr(module, "num_key_value_groups", 1) > 1
        ):
            attention_mask = torch.ones(
                (query.shape[0], 1, 1, key.shape[2]), dtype=torch.bool, device=query.device
            )
        return attend(module, query, key, value, attention_mask, *args, **kwargs)

    attention.wraps = attend  # type: ignore[attr-defined]  # marks the wrapper (and what it wraps)
    return attention


@contextlib.contextmanager
def grouped_attention(model: nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Within the block, ``model``'s bf16 decode attention on a CPU takes the stacked
    grouped-query layout (yields whether the table entry was replaced); afterwards the table is
    as before."""
    if not enabled or why_not_grouped(model) is not None:
        yield False
        return
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as table

    # the table's own entries (set and deleted by item) lie over the global ones
    had_own, before = IMPLEMENTATION in table._local_mapping, table[IMPLEMENTATION]
    if hasattr(before, "wraps"):  # already inside such a block: nothing to add
        yield True
        return
    table[IMPLEMENTATION] = stacked(before)
    try:
        yield True
    finally:
        if had_own:
            table[IMPLEMENTATION] = before
        else:
            del table[IMPLEMENTATION]  # the global entry shows through again

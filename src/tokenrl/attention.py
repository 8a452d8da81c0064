"""transformers' ``sdpa`` attention, replaced on a CPU where torch's bf16 kernels are slow.

Two blocks, each replacing the ``sdpa`` entry of transformers' attention table for its duration
with a function that hands every call it does not change on to the entry it replaced:

* :func:`grouped_attention` (``rollout.grouped_attention``), while the engine decodes. A decode
  step attends one new query per row to every cached key. With grouped-query attention (the
  Qwen2 models: 14 query heads over 2 key/value heads in the 0.5B), transformers' ``sdpa``
  function lays the step out in one of two ways: with an attention mask (a batch with padding)
  it stacks each key/value head's query heads as a block of queries ([rows, 2, 7, 64]); without
  one (prompts of equal length, one prompt) it hands torch all 14 heads with ``enable_gqa``.
  torch's CPU kernel is about as fast on both in fp32 but not in bf16: on a 2-core AMD EPYC Zen 4
  (torch 2.13), 32 rows against 141 cached positions took 3.6 ms a layer with ``enable_gqa`` and
  0.34 ms stacked, 10.0 and 0.75 ms against 400 (docs/benchmarks.md). Within the block a bf16
  decode call on the CPU without a mask gets an all-true one, so transformers takes the stacked
  layout, as it does for a padded batch: the same values to bf16 rounding (both kernels round
  the same way, 62% of outputs the correctly rounded ones in that measurement), but the tokens
  can differ from those of the ``enable_gqa`` layout.
* :func:`score_attention` (``optim.score_attention``), around the update's forward and
  backward. torch's bf16 flash kernel on a CPU takes about 9 ms for a layer's attention with its
  backward however small the call (T-SPMO's 13 rows x 6 completion tokens, three 98-token
  prompts); for short sequences (:data:`SCORE_POSITIONS`) :class:`ScoreAttention` computes the
  same attention by explicit products, in fp32 where it matters, 1.25-2.2x faster with its backward
  on the same machine (``benchmarks/update_kernels.py``).

fp32 and fp16 tensors, GPUs and calls outside the blocks are untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

IMPLEMENTATION = "sdpa"
"""The model attention implementation this applies to (transformers' default)."""

SCORE_POSITIONS = 16384
"""Most query x key positions of a call :func:`score_attention` computes by explicit products.
On a 2-core AMD EPYC Zen 4 (torch 2.13, bf16, forward and backward; benchmarks/update_kernels.py,
two runs) they were 1.25-2.2x faster than the flash kernel at the trainer's SVAMP shapes (up to
57 x 170) and at 16 x 300, 1.0x and 0.8x at 64 x 300, and 1.4-1.9x slower at 200 x 300 and
300 x 300."""

SCORE_CHUNK = 1 << 20
"""Query-head x query x key scores computed at once (rows are split to stay below it): a fp32
score block of 4 MB a tensor, which measured faster than the whole batch at once."""


def why_not_grouped(model: nn.Module) -> str | None:
    """Why ``model``'s decode attention is left as it is (a short reason), or None where
    :func:`grouped_attention` applies: a transformers model whose attention is ``sdpa``."""
    reason = _why_not_replaced(model)
    if reason is None:
        from transformers.integrations import sdpa_attention

        if not hasattr(sdpa_attention, "pack_gqa"):  # a mask would not give the stacked layout
            return "this transformers' sdpa does not stack a masked query's heads (no pack_gqa)"
    return reason


def _why_not_replaced(model: nn.Module) -> str | None:
    """Why the attention table's ``sdpa`` entry does not serve ``model`` (or cannot be replaced)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl != IMPLEMENTATION:
        return f"the model's attention is {impl!r}, not {IMPLEMENTATION!r}"
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:
        return "this transformers has no attention table"
    if not hasattr(ALL_ATTENTION_FUNCTIONS, "_local_mapping"):
        return "this transformers' attention table has no entries of its own to set and remove"
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

    attention.wraps, attention.factory = attend, stacked  # type: ignore[attr-defined]
    return attention


def _scores(q: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor | None, scale: float):
    """fp32 scores [B, Hkv, g, Lq, Lk] of the stacked queries, -inf where not ``allowed``."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    s = torch.matmul(q.reshape(B, Hkv, Hq // Hkv * Lq, D).float(), k.float().transpose(-1, -2))
    s = s.mul_(scale).view(B, Hkv, Hq // Hkv, Lq, Lk)
    return s if allowed is None else s.masked_fill_(~allowed[:, :, None], float("-inf"))


class ScoreAttention(torch.autograd.Function):
    """Attention by explicit products, with flash attention's memory (scores recomputed in
    backward), for grouped queries:

        o = P V,   P = softmax(scale * Q K^T + M),   M = 0 where allowed, -inf elsewhere

    q [B, Hq, Lq, D], k and v [B, Hkv, Lk, D] (query head h reads key/value head h // (Hq/Hkv)),
    ``allowed`` a bool mask broadcastable to [B, 1, Lq, Lk] or None -> o [B, Hq, Lq, D] in q's
    dtype. The scores, the softmax and dP = dO V^T are fp32; P V, dV = P^T dO and dQ = dS K,
    dK = dS^T Q take P and dS = P (dP - rowsum(P dP)) scale rounded to the inputs' dtype (with
    fp32 accumulation), as a flash kernel's blocks do. A query with no allowed key gets o = 0
    and no gradient. Forward keeps only the inputs and the log-sum-exp per query.
    """

    @staticmethod
    def forward(ctx: Any, q, k, v, allowed, scale: float) -> torch.Tensor:
        B, Hq, Lq, D = q.shape
        Hkv, Lk = k.shape[1], k.shape[2]
        with torch.autocast(q.device.type, enabled=False):
            s = _scores(q, k, allowed, scale)
            top = s.amax(-1, keepdim=True)
            top = torch.where(torch.isfinite(top), top, 0.0)  # rows with no key: all -inf
            p = s.sub_(top).exp_()
            total = p.sum(-1, keepdim=True)
            p = p.div_(torch.where(total > 0, total, 1.0)).view(B, Hkv, -1, Lk)
            o = torch.matmul(p.to(v.dtype), v)  # [B, Hkv, g * Lq, D]
        # +inf where no key: backward's exp(s - lse) is then 0, not nan
        lse = torch.where(total > 0, top + total.log(), float("inf"))
        ctx.save_for_backward(q, k, v, allowed, lse)
        ctx.scale = scale
        return o.view(B, Hq, Lq, D).to(q.dtype)

    @staticmethod
    def backward(ctx: Any, grad_o: torch.Tensor):
        q, k, v, allowed, lse = ctx.saved_tensors
        B, Hq, Lq, D = q.shape
        Hkv, Lk = k.shape[1], k.shape[2]
        with torch.autocast(q.device.type, enabled=False):
            p = _scores(q, k, allowed, ctx.scale).sub_(lse).exp_().view(B, Hkv, -1, Lk)
            grad_o = grad_o.reshape(B, Hkv, -1, D)  # [B, Hkv, g * Lq, D]
            grad_v = torch.matmul(p.to(v.dtype).transpose(-1, -2), grad_o.to(v.dtype))
            dp = torch.matmul(grad_o.float(), v.float().transpose(-1, -2))
            ds = dp.sub_((p * dp).sum(-1, keepdim=True)).mul_(p).mul_(ctx.scale).to(q.dtype)
            grad_q = torch.matmul(ds, k).view(B, Hq, Lq, D)
            grad_k = torch.matmul(ds.transpose(-1, -2), q.reshape(B, Hkv, -1, D))
        return grad_q, grad_k.to(k.dtype), grad_v, None, None


def blocked_score_attention(q, k, v, allowed: torch.Tensor | None, scale: float) -> torch.Tensor:
    """:class:`ScoreAttention` (same shapes) over blocks of rows of at most :data:`SCORE_CHUNK`
    scores each."""
    rows = max(1, SCORE_CHUNK // (q.shape[1] * q.shape[2] * k.shape[2]))  # rows a block
    out = []
    for i in range(0, q.shape[0], rows):
        part = slice(i, i + rows)
        mask = allowed if allowed is None or allowed.shape[0] == 1 else allowed[part]
        out.append(ScoreAttention.apply(q[part], k[part], v[part], mask, scale))
    return torch.cat(out)


def _allowed(module, query, key, attention_mask, is_causal) -> tuple[bool, torch.Tensor | None]:
    """(whether :class:`ScoreAttention` computes this call as transformers' sdpa would, its mask)."""
    Lq, Lk = query.shape[2], key.shape[2]
    if attention_mask is not None:
        ok = (
            attention_mask.dtype == torch.bool
            and attention_mask.dim() == 4
            and attention_mask.shape[1] == 1
            and attention_mask.shape[0] in (1, query.shape[0])
            and tuple(attention_mask.shape[2:]) == (Lq, Lk)
        )
        return ok, attention_mask
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if not causal or Lq == 1:
        return True, None
    if Lq != Lk:  # transformers would align a causal mask of its own: leave it to sdpa
        return False, None
    return True, torch.ones(Lq, Lk, dtype=torch.bool, device=query.device).tril()[None, None]


def scored(attend: Callable) -> Callable:
    """``attend`` (transformers' attention signature), with a bf16 CPU call that needs gradients
    and spans at most :data:`SCORE_POSITIONS` query x key positions computed by
    :class:`ScoreAttention`; every other call as it is."""

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                  is_causal=None, **kwargs):  # fmt: skip
        Hq, Lq, Lk = query.shape[1], query.shape[2], key.shape[2]
        ours = (
            query.dtype == key.dtype == value.dtype == torch.bfloat16
            and query.device.type == "cpu"
            and torch.is_grad_enabled()
            and (query.requires_grad or key.requires_grad or value.requires_grad)
            and Lq * Lk <= SCORE_POSITIONS
            and Hq % key.shape[1] == 0
            and not dropout
            and all(kwargs.get(f) is None for f in ("position_bias", "softcap", "s_aux", "sinks"))
        )
        ok, allowed = (False, None)
        if ours:
            ok, allowed = _allowed(module, query, key, attention_mask, is_causal)
        if not ok:
            return attend(module, query, key, value, attention_mask, dropout=dropout,
                          scaling=scaling, is_causal=is_causal, **kwargs)  # fmt: skip
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        out = blocked_score_attention(query, key, value, allowed, scale)
        return out.transpose(1, 2).contiguous(), None  # [B, Lq, Hq, D], as sdpa's

    attention.wraps, attention.factory = attend, scored  # type: ignore[attr-defined]
    return attention


@contextlib.contextmanager
def _replaced(factory: Callable[[Callable], Callable]) -> Iterator[None]:
    """Within the block the table's ``sdpa`` entry is ``factory(entry)``, unless a wrapper made
    by ``factory`` is already in it (an enclosing block); afterwards the table is as before."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as table

    # the table's own entries (set and deleted by item) lie over the global ones
    had_own, before = IMPLEMENTATION in table._local_mapping, table[IMPLEMENTATION]
    entry = before
    while entry is not None:  # the chain of wrappers in the entry
        if getattr(entry, "factory", None) is factory:
            yield
            return
        entry = getattr(entry, "wraps", None)
    table[IMPLEMENTATION] = factory(before)
    try:
        yield
    finally:
        if had_own:
            table[IMPLEMENTATION] = before
        else:
            del table[IMPLEMENTATION]  # the global entry shows through again


@contextlib.contextmanager
def grouped_attention(model: nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Within the block, ``model``'s bf16 decode attention on a CPU takes the stacked
    grouped-query layout (yields whether the table entry was replaced); afterwards the table is
    as before."""
    if not enabled or why_not_grouped(model) is not None:
        yield False
        return
    with _replaced(stacked):
        yield True


@contextlib.contextmanager
def score_attention(model: nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Within the block, ``model``'s short bf16 attention calls on a CPU that need gradients run
    through :class:`ScoreAttention` (yields whether the table entry was replaced); afterwards the
    table is as before. The backward of what ran inside may run after the block."""
    if not enabled or _why_not_replaced(model) is not None:
        yield False
        return
    with _replaced(scored):
        yield True

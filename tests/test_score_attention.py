"""The update's short bf16 attention by explicit products (tokenrl.attention.ScoreAttention and
score_attention): hand-computed values, exact gradients to bf16 rounding, transformers' calls
and the update's log-prob gradients as with torch's kernel, the table restored."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_attention import _Heads
from test_logprobs import grouped_inputs, lora_model
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from tokenrl.algorithms import selective_logprobs
from tokenrl.attention import (
    IMPLEMENTATION,
    SCORE_POSITIONS,
    ScoreAttention,
    grouped_attention,
    score_attention,
    scored,
)


def test_hand_computed_values():
    # one key/value head read by two query heads; scores q*k with scale 1: head 0 sees [0, 1],
    # head 1 [0, 2]; values 1 and 3
    q = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    k = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1)
    v = torch.tensor([1.0, 3.0]).view(1, 1, 2, 1)
    e = math.e
    want = [(1 + 3 * e) / (1 + e), (1 + 3 * e**2) / (1 + e**2)]
    out = ScoreAttention.apply(q, k, v, None, 1.0).flatten()
    torch.testing.assert_close(out, torch.tensor(want), atol=1e-6, rtol=0)
    first_only = torch.tensor([True, False]).view(1, 1, 1, 2)
    assert ScoreAttention.apply(q, k, v, first_only, 1.0).flatten().tolist() == [1.0, 1.0]
    none = torch.zeros(1, 1, 1, 2, dtype=torch.bool)  # a query with no key: 0, as the kernel
    assert ScoreAttention.apply(q, k, v, none, 1.0).flatten().tolist() == [0.0, 0.0]


def _case(B=3, Lq=5, Lk=9, pads=(0, 2, 4), seed=0):
    """bf16 q [B, 4, Lq, 16], k and v [B, 2, Lk, 16], a left-padded causal mask [B, 1, Lq, Lk]
    (the queries are the last Lq positions), and an output gradient."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, 4, Lq, 16, generator=g).bfloat16()
    k, v = (torch.randn(B, 2, Lk, 16, generator=g).bfloat16() for _ in range(2))
    grad = torch.randn(B, 4, Lq, 16, generator=g).bfloat16()
    keys, queries = torch.arange(Lk), torch.arange(Lk - Lq, Lk)
    mask = (keys[None, :] <= queries[:, None])[None, None] & (keys >= torch.tensor(pads)[:, None])[
        :, None, None, :
    ]
    return q, k, v, mask, grad


def _run(fn, q, k, v, mask, grad, dtype):
    q, k, v = (x.to(dtype).requires_grad_() for x in (q, k, v))
    out = fn(q, k, v, mask)
    out.backward(grad.to(dtype))
    return [x.double() for x in (out, q.grad, k.grad, v.grad)]


def _exact(q, k, v, mask):
    s = q @ k.repeat_interleave(2, 1).transpose(-1, -2) * 0.25
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), -1).nan_to_num()
    return p @ v.repeat_interleave(2, 1)


def _flash(q, k, v, mask):
    k, v = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.25)


@pytest.mark.parametrize("shape", [dict(), dict(Lq=9, Lk=9), dict(B=2, Lq=1, pads=(0, 3))])
def test_values_and_gradients_to_bf16_rounding(shape):
    q, k, v, mask, grad = _case(**shape)
    exact = _run(_exact, q, k, v, mask, grad, torch.float64)
    ours = _run(lambda *a: ScoreAttention.apply(*a, 0.25), q, k, v, mask, grad, torch.bfloat16)
    kernel = _run(_flash, q, k, v, mask, grad, torch.bfloat16)
    for name, a, b, c in zip(("out", "dq", "dk", "dv"), ours, kernel, exact, strict=True):
        if name == "out":  # padded queries with no key: 0, as the exact value is taken here
            empty = (~mask.any(-1)).expand(-1, 4, -1)
            assert torch.equal(a[empty], c[empty]) and (a[empty] == 0).all()
        err, kernel_err = (a - c).norm() / c.norm(), (b - c).norm() / c.norm()
        assert err < 8e-3, name  # a few bf16 steps (2^-8 = 3.9e-3)
        assert err < 1.5 * kernel_err + 1e-3, name  # no worse than torch's bf16 kernel


def test_keeps_no_score_sized_tensor_for_backward():
    q, k, v, mask, _ = _case(B=2, Lq=16, Lk=40, pads=(0, 5))
    q.requires_grad_()
    out = ScoreAttention.apply(q, k, v, mask, 0.25)
    saved = out.grad_fn.saved_tensors
    assert sum(t.numel() for t in saved if t.dtype != torch.bool) == (
        q.numel() + k.numel() + v.numel() + 2 * 2 * 2 * 16  # + a log-sum-exp per query
    )


@pytest.fixture
def counted(monkeypatch):
    calls: list[int] = []
    apply = ScoreAttention.apply
    monkeypatch.setattr(ScoreAttention, "apply", lambda *a: calls.append(1) or apply(*a))
    return calls


def _sdpa_call(attend, q, k, v, mask, grad):
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    out, _ = attend(_Heads(), q, k, v, mask, dropout=0.0, scaling=0.25)
    out.backward(grad.transpose(1, 2))  # sdpa's output is [batch, queries, heads, dims]
    return [x.double() for x in (out, q.grad, k.grad, v.grad)]


@pytest.mark.parametrize(
    "case",
    ["padded prompt", "completion after a cache", "no mask (causal)", "rows split into blocks"],
)
def test_transformers_calls_as_with_the_kernel(case, counted, monkeypatch):
    kw = {
        "padded prompt": dict(Lq=9, Lk=9),
        "completion after a cache": dict(Lq=4, Lk=11),
        "no mask (causal)": dict(Lq=7, Lk=7, pads=(0, 0, 0)),
        "rows split into blocks": dict(B=5, Lq=4, Lk=11, pads=(0, 1, 2, 3, 4)),
    }[case]
    q, k, v, mask, grad = _case(**kw)
    if case == "no mask (causal)":
        mask = None
    if case == "rows split into blocks":
        monkeypatch.setattr("tokenrl.attention.SCORE_CHUNK", 4 * 4 * 11 * 2)  # 2 rows a block
    kernel = _sdpa_call(sdpa_attention_forward, q, k, v, mask, grad)
    ours = _sdpa_call(scored(sdpa_attention_forward), q, k, v, mask, grad)
    assert len(counted) == (3 if case == "rows split into blocks" else 1)
    for a, b in zip(ours, kernel, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=3e-2, rtol=3e-2)


def test_other_calls_pass_through(counted):
    seen = []

    def attend(module, q, k, v, mask, **kw):
        seen.append(q.shape)
        return q.transpose(1, 2), None

    wrapped = scored(attend)
    q, k, v, mask, _ = _case()
    wrapped(_Heads(), q.requires_grad_(), k, v, mask)  # ours
    with torch.no_grad():
        wrapped(_Heads(), q, k, v, mask)  # no gradients: the reference, evaluation
    wrapped(_Heads(), q.float(), k.float(), v.float(), mask)  # fp32
    wrapped(_Heads(), q, k, v, mask, dropout=0.1)
    wrapped(_Heads(), q, k, v, mask.float())  # an additive mask
    wrapped(_Heads(), q, k[:, :, :8], v[:, :, :8], mask)  # a mask wider than the keys
    big = _case(B=1, Lq=2, Lk=SCORE_POSITIONS // 2 + 1, pads=(0,))
    wrapped(_Heads(), big[0].requires_grad_(), *big[1:4])  # too many positions
    wrapped(_Heads(), q[:, :, :4], k[:, :, :7], v[:, :, :7], None)  # causal, Lq < Lk, no mask
    assert len(counted) == 1 and len(seen) == 7


def test_update_gradients_as_with_the_kernel(counted):
    model, _ = lora_model()
    model = model.to(torch.bfloat16)  # a bf16 model; the adapter's own weights too
    ids, attn, target = grouped_inputs()
    lora = [p for p in model.parameters() if p.requires_grad]
    before = ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION]
    results = []
    for on in (False, True):
        for prompt_len in (0, 4):  # whole rows, and each group's prompt once
            counted.clear()
            with score_attention(model, on) as replaced:
                assert replaced == on
                logp = selective_logprobs(model, ids, attn, target, prompt_len=prompt_len)
            assert bool(counted) == on  # the tiny model's attention calls took it
            assert ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION] is before
            logp.float().sum().backward()  # backward after the block
            results.append((logp.detach(), torch.cat([p.grad.flatten() for p in lora]).float()))
            model.zero_grad()
    for (lp_on, g_on), (lp_off, g_off) in zip(results[2:], results[:2], strict=True):
        torch.testing.assert_close(lp_on, lp_off, atol=3e-2, rtol=0)
        assert (g_on - g_off).norm() / g_off.norm() < 3e-2
        assert torch.nn.functional.cosine_similarity(g_on, g_off, dim=0) > 0.999


def test_blocks_nest_and_restore_the_table():
    model, _ = lora_model()
    before = ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION]
    with score_attention(model), grouped_attention(model):
        outer = ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION]
        assert outer.factory.__name__ == "stacked" and outer.wraps.wraps is before
        with score_attention(model):  # already in the chain: nothing added
            assert ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION] is outer
    assert ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION] is before
    model.config._attn_implementation = "eager"
    with score_attention(model) as replaced:
        assert not replaced and ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION] is before


def test_checkpointed_layers_recompute_the_same_way():
    """Under gradient checkpointing the backward recomputes each layer's forward: inside the
    block (as the update runs its backward) it takes the same path, so the gradients are those
    of the plain backward."""
    model, _ = lora_model()
    model = model.to(torch.bfloat16)
    ids, attn, target = grouped_inputs()
    lora = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
            model.train()
        with score_attention(model):
            selective_logprobs(model, ids, attn, target).float().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in lora]))
        model.zero_grad()
    assert torch.equal(grads[0], grads[1])

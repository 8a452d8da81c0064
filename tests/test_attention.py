"""A bf16 decode step's attention in the stacked grouped-query layout (tokenrl.attention): only
unmasked one-query bf16 CPU calls change, to the layout of a padded batch; fp32 tokens and
padded batches unchanged; the table restored."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from tokenrl.attention import IMPLEMENTATION, grouped_attention, stacked, why_not_grouped
from tokenrl.engines import make_engine
from tokenrl.models import build_tiny
from tokenrl.rollout import SamplingConfig


class _Heads(torch.nn.Module):
    """What transformers' sdpa function reads from an attention module (GQA: 4 over 2 heads)."""

    num_key_value_groups = 2
    is_causal = True


def _qkv(dtype: torch.dtype, queries: int = 1, keys: int = 37):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, queries, 16, generator=g)
    k, v = torch.randn(3, 2, keys, 16, generator=g), torch.randn(3, 2, keys, 16, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def test_only_unmasked_one_query_bf16_calls_get_a_mask():
    seen = []

    def attend(module, q, k, v, mask, **kw):
        seen.append(None if mask is None else (mask.dtype, tuple(mask.shape), bool(mask.all())))
        return q, None

    wrapped = stacked(attend)
    q, k, v = _qkv(torch.bfloat16)
    wrapped(_Heads(), q, k, v, None)
    assert seen[-1] == (torch.bool, (3, 1, 1, 37), True)  # all keys visible, as without one
    mask = torch.zeros(3, 1, 1, 37, dtype=torch.bool)
    wrapped(_Heads(), q, k, v, mask)  # a padded batch's mask is passed on as it is
    assert seen[-1] == (torch.bool, (3, 1, 1, 37), False)
    for args in (
        _qkv(torch.float32),  # fp32: as it was
        _qkv(torch.bfloat16, queries=5),  # a prefill or the update's forward
    ):
        wrapped(_Heads(), *args, None)
        assert seen[-1] is None
    no_gqa = _Heads()
    no_gqa.num_key_value_groups = 1
    wrapped(no_gqa, q, k, v, None)
    assert seen[-1] is None


def test_the_stacked_layout_gives_the_attention_to_bf16_rounding():
    q, k, v = _qkv(torch.bfloat16)
    exact = F.scaled_dot_product_attention(
        q.double(), k.double().repeat_interleave(2, 1), v.double().repeat_interleave(2, 1)
    ).transpose(1, 2)  # transformers' sdpa returns [batch, queries, heads, dims]
    plain, _ = sdpa_attention_forward(_Heads(), q, k, v, None)  # enable_gqa
    grouped, _ = stacked(sdpa_attention_forward)(_Heads(), q, k, v, None)
    assert grouped.dtype == plain.dtype == torch.bfloat16 and grouped.shape == plain.shape
    for out in (plain, grouped):  # within a few bf16 steps of the exact values
        torch.testing.assert_close(out.double(), exact, atol=2e-2, rtol=2e-2)
    # and exactly what a padded batch's call computes: the stacked [3, 2, 2, 16] layout
    by_hand = F.scaled_dot_product_attention(q.reshape(3, 2, 2, 16), k, v)
    assert torch.equal(grouped, by_hand.reshape(3, 4, 1, 16).transpose(1, 2))


def test_the_block_replaces_only_sdpa_and_restores_it():
    model, _ = build_tiny("tiny", dtype=torch.bfloat16)
    assert why_not_grouped(model) is None
    before = ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION]
    with grouped_attention(model) as on:
        assert on and ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION].wraps is before
        with grouped_attention(model) as inner:  # nested: no second wrapper
            assert inner and ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION].wraps is before
        assert ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION].wraps is before
    assert ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION] is before
    with pytest.raises(RuntimeError), grouped_attention(model):
        raise RuntimeError("a failed generation")
    assert ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION] is before
    with grouped_attention(model, enabled=False) as on:
        assert not on and ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION] is before


def test_another_attention_implementation_is_left_alone():
    model, _ = build_tiny("tiny", dtype=torch.bfloat16)
    model.config._attn_implementation = "eager"
    assert "'eager'" in why_not_grouped(model)
    before = ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION]
    with grouped_attention(model) as on:
        assert not on and ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION] is before


def test_a_transformers_without_the_stacked_layout_is_left_alone(monkeypatch):
    from transformers.integrations import sdpa_attention

    model, _ = build_tiny("tiny", dtype=torch.bfloat16)
    monkeypatch.delattr(sdpa_attention, "pack_gqa")
    assert "pack_gqa" in why_not_grouped(model)
    before = ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION]
    with grouped_attention(model) as on:
        assert not on and ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION] is before


def _tokens(model, tok, on: bool, greedy: bool, prompts: list[bytes]) -> torch.Tensor:
    engine = make_engine("shared", model, tok, grouped_attention=on)
    sampling = SamplingConfig(max_new_tokens=8, greedy=greedy)
    batch = engine.generate(
        [list(p) for p in prompts], sampling, group_size=1 if greedy else 4,
        seeds=list(range(len(prompts))),
    )  # fmt: skip
    return batch.completion_ids


EQUAL = [b"12*3=", b"7*80=", b"99*2="]  # the same length: no padding, no mask
PADDED = [b"12*3=", b"7*80=", b"100*2="]


@pytest.mark.parametrize("greedy", [False, True])
@pytest.mark.parametrize("prompts", [EQUAL, PADDED], ids=["equal", "padded"])
def test_fp32_models_and_padded_batches_give_bitwise_the_same_tokens(greedy, prompts):
    model, tok = build_tiny("tiny", dtype=torch.float32)
    on, off = (_tokens(model, tok, x, greedy, prompts) for x in (True, False))
    assert torch.equal(on, off)
    model, tok = build_tiny("tiny", dtype=torch.bfloat16)
    if prompts is PADDED:  # a mask already: the stacked layout either way
        on, off = (_tokens(model, tok, x, greedy, prompts) for x in (True, False))
        assert torch.equal(on, off)


@pytest.fixture
def attention_calls():
    """(queries, whether without a mask) of each sdpa call the model makes, recorded by an entry
    of the attention table's own under any the engine adds; the table as before afterwards."""
    calls: list[tuple[int, bool]] = []
    before = ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION]

    def spy(module, q, k, v, mask, *a, **kw):
        calls.append((q.shape[2], mask is None))
        return before(module, q, k, v, mask, *a, **kw)

    ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION] = spy
    yield calls
    del ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION]
    assert ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION] is before


def test_an_unpadded_bf16_decode_step_takes_the_stacked_layout(attention_calls):
    model, tok = build_tiny("tiny", dtype=torch.bfloat16)
    for on in (False, True):
        attention_calls.clear()
        _tokens(model, tok, on, True, EQUAL)
        decode = [no_mask for queries, no_mask in attention_calls if queries == 1]
        assert decode and (not any(decode) if on else all(decode))  # on: every step a mask


def test_the_generate_command_decodes_through_the_engine(capsys, attention_calls):
    from tokenrl.cli import main

    model, tok = build_tiny("tiny", dtype=torch.bfloat16)
    argv = ["--model", "tiny", "--dtype", "bf16", "--prompt", "12*3=", "--max-new-tokens", "6"]
    assert main(["generate", *argv]) == 0
    # one prompt, no padding: its decode steps got the engine's mask
    assert any(queries == 1 and not no_mask for queries, no_mask in attention_calls)
    printed = capsys.readouterr().out.split("\n", 1)[1].rstrip("\n")
    ids = [tok("12*3=", add_special_tokens=False)["input_ids"]]
    batch = make_engine("shared", model, tok).generate(
        ids, SamplingConfig(max_new_tokens=6, greedy=True)
    )
    assert printed == batch.texts[0]

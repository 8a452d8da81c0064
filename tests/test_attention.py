"""fp32 attention while decoding bf16 on a CPU (tokenrl.attention): applied to bf16 CPU calls
only, closer to exact than the bf16 kernel, fp32 tokens unchanged, the table restored."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from tokenrl.attention import IMPLEMENTATION, fp32_attention, upcast, why_not_fp32_attention
from tokenrl.engines import make_engine
from tokenrl.models import build_tiny
from tokenrl.rollout import SamplingConfig


class _Heads(torch.nn.Module):
    """What transformers' sdpa function reads from an attention module (GQA: 4 over 2 heads)."""

    num_key_value_groups = 2
    is_causal = True
    training = False


def _qkv(dtype: torch.dtype, queries: int = 1, keys: int = 37):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, queries, 16, generator=g)
    k, v = torch.randn(3, 2, keys, 16, generator=g), torch.randn(3, 2, keys, 16, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def test_upcast_hands_bf16_cpu_calls_fp32_and_others_through():
    seen = []

    def attend(module, q, k, v, mask, **kw):
        seen.append((q.dtype, k.dtype, v.dtype, None if mask is None else mask.dtype))
        return q * 2, None

    wrapped = upcast(attend)
    q, k, v = _qkv(torch.bfloat16)
    additive = torch.zeros(3, 1, 1, 37, dtype=torch.bfloat16)
    out, _ = wrapped(None, q, k, v, additive)
    assert seen[-1] == (torch.float32,) * 4  # an additive mask is cast with them
    assert out.dtype == torch.bfloat16 and torch.equal(out, q * 2)
    q32, k32, v32 = _qkv(torch.float32)
    out, _ = wrapped(None, q32, k32, v32, None)
    assert seen[-1] == (torch.float32,) * 3 + (None,) and torch.equal(out, q32 * 2)


def test_upcast_attention_is_closer_to_exact_than_the_bf16_kernel():
    q, k, v = _qkv(torch.bfloat16)
    exact = F.scaled_dot_product_attention(
        q.double(), k.double().repeat_interleave(2, 1), v.double().repeat_interleave(2, 1)
    )
    mask = torch.ones(3, 1, 1, 37, dtype=torch.bool)
    plain, _ = sdpa_attention_forward(_Heads(), q, k, v, mask)
    fp32, _ = upcast(sdpa_attention_forward)(_Heads(), q, k, v, mask)
    assert fp32.dtype == plain.dtype == torch.bfloat16
    # transformers' sdpa returns [batch, queries, heads, dims]: compare in the same layout
    exact = exact.transpose(1, 2)
    err_fp32 = (fp32.double() - exact).abs().mean()
    err_plain = (plain.double() - exact).abs().mean()
    assert err_fp32 <= err_plain
    # fp32 attention rounded once: each output is the bf16 value nearest the fp32 result
    ref, _ = sdpa_attention_forward(_Heads(), q.float(), k.float(), v.float(), mask)
    assert torch.equal(fp32, ref.bfloat16())


def test_the_block_replaces_only_sdpa_and_restores_it():
    model, _ = build_tiny("tiny", dtype=torch.bfloat16)
    assert why_not_fp32_attention(model) is None
    before = ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION]
    with fp32_attention(model) as on:
        assert on and ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION].upcasts is before
        with fp32_attention(model) as inner:  # nested: no second wrapper
            assert inner and ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION].upcasts is before
        assert ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION].upcasts is before
    assert ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION] is before
    with pytest.raises(RuntimeError), fp32_attention(model):
        raise RuntimeError("a failed generation")
    assert ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION] is before
    with fp32_attention(model, enabled=False) as on:
        assert not on and ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION] is before


def test_another_attention_implementation_is_left_alone():
    model, _ = build_tiny("tiny", dtype=torch.bfloat16)
    model.config._attn_implementation = "eager"
    assert "'eager'" in why_not_fp32_attention(model)
    before = ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION]
    with fp32_attention(model) as on:
        assert not on and ALL_ATTENTION_FUNCTIONS[IMPLEMENTATION] is before


def _tokens(model, tok, on: bool, greedy: bool) -> torch.Tensor:
    engine = make_engine("shared", model, tok, fp32_attention=on)
    prompts = [list(b"12*3="), list(b"7*80="), list(b"100*2=")]  # different lengths: padding
    sampling = SamplingConfig(max_new_tokens=8, greedy=greedy)
    batch = engine.generate(prompts, sampling, group_size=1 if greedy else 4, seeds=[1, 2, 3])
    return batch.completion_ids


@pytest.mark.parametrize("greedy", [False, True])
def test_fp32_models_sample_bitwise_the_same_tokens(greedy):
    model, tok = build_tiny("tiny", dtype=torch.float32)
    assert torch.equal(_tokens(model, tok, True, greedy), _tokens(model, tok, False, greedy))


def test_a_bf16_model_generates_with_it_and_its_logits_stay_close():
    model, tok = build_tiny("tiny", dtype=torch.bfloat16)
    ids = torch.tensor([list(b"123*45=")])
    with torch.no_grad():
        plain = model(input_ids=ids).logits.float()
        with fp32_attention(model):
            fp32 = model(input_ids=ids).logits.float()
    assert not torch.equal(plain, fp32)  # it did run another kernel
    torch.testing.assert_close(fp32, plain, atol=0.05, rtol=0.05)
    out = _tokens(model, tok, True, greedy=False)
    assert out.shape == (12, 8)

"""Pre-packed bf16 weights while decoding (tokenrl.packing): the same tokens, weights untouched,
nothing left patched, plain products wherever gradients are needed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tokenrl.engines import make_engine
from tokenrl.models import build_tiny
from tokenrl.packing import packed_linears, why_not_packed
from tokenrl.rollout import SamplingConfig


@pytest.fixture
def tiny_bf16():
    model, tok = build_tiny("tiny", dtype=torch.bfloat16)
    reason = why_not_packed(model)
    if reason is not None:
        pytest.skip(f"bf16 weights are not packed here: {reason}")
    return model, tok


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if type(m) is nn.Linear]


def test_sampled_and_greedy_tokens_are_bitwise_the_same(tiny_bf16):
    model, tok = tiny_bf16
    prompts = [list(b"12*3="), list(b"7*80="), list(b"100*2=")]  # different lengths: padding
    weights = [m.weight.clone() for m in _linears(model)]
    out = {}
    for packed in (False, True):
        engine = make_engine("shared", model, tok, prepack_weights=packed)
        for greedy in (False, True):
            sampling = SamplingConfig(max_new_tokens=8, greedy=greedy)
            batch = engine.generate(
                prompts, sampling, group_size=1 if greedy else 4, seeds=[1, 2, 3]
            )
            out[packed, greedy] = batch.completion_ids
    assert torch.equal(out[True, False], out[False, False])
    assert torch.equal(out[True, True], out[False, True])
    for m, w in zip(_linears(model), weights, strict=True):  # untouched, and nothing left patched
        assert torch.equal(m.weight, w) and "forward" not in vars(m)


def test_inside_the_block_products_match_and_gradients_flow(tiny_bf16):
    model, _ = tiny_bf16
    layer = _linears(model)[0]
    x = torch.randn(5, layer.in_features).bfloat16()
    plain = layer(x)
    with packed_linears(model) as packed:
        assert packed and "forward" in vars(layer)
        assert torch.equal(layer(x), plain)  # the packed product: bitwise the same
        x.requires_grad_(True)  # gradients (the packed op has no backward): F.linear runs
        layer(x).float().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert "forward" not in vars(layer)


def test_fp32_weights_or_turned_off_pack_nothing():
    model, _ = build_tiny("tiny")  # fp32
    assert why_not_packed(model) == "no bf16 weights on the CPU"
    with packed_linears(model) as packed:
        assert not packed and all("forward" not in vars(m) for m in _linears(model))
    bf16, _ = build_tiny("tiny", dtype=torch.bfloat16)
    with packed_linears(bf16, enabled=False) as packed:
        assert not packed


def test_with_a_lora_adapter_as_is_and_merged_the_tokens_are_the_same(tiny_bf16):
    """The trainer's model: peft LoRA around the bf16 base (fp32 A and B, left unpacked); greedy
    decoding runs the adapter as it is, sampling with ``merge_lora`` folds it in first."""
    from tokenrl.models import LoraSpec, apply_lora

    model, tok = tiny_bf16
    model = apply_lora(model, LoraSpec(r=4, alpha=8))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # a non-zero update, so the adapter changes the tokens
            torch.nn.init.normal_(p, std=0.05)
    prompts = [list(b"12*3="), list(b"7*80=")]
    out = {}
    for packed in (False, True):
        engine = make_engine("shared", model, tok, merge_lora=True, prepack_weights=packed)
        for greedy in (False, True):
            sampling = SamplingConfig(max_new_tokens=8, greedy=greedy)
            batch = engine.generate(prompts, sampling, group_size=1 if greedy else 4, seeds=[5, 6])
            out[packed, greedy] = batch.completion_ids
    assert torch.equal(out[True, False], out[False, False])
    assert torch.equal(out[True, True], out[False, True])
    assert all("forward" not in vars(m) for m in _linears(model))


def _lora_bf16(model: nn.Module) -> nn.Module:
    from tokenrl.models import LoraSpec, apply_lora

    model = apply_lora(model, LoraSpec(r=4, alpha=12))  # scaling 3: not a power of two
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model


def test_merged_and_packed_layers_match_lora_merged_and_hold_no_merged_copy(tiny_bf16):
    """With ``merge_lora`` each adapted layer runs its packed W + s B A: bitwise what
    ``lora_merged`` computes, while W stays the model's own tensor and is not packed itself;
    with gradients the adapter runs as it is (its gradients reach A and B)."""
    from peft.tuners.lora import Linear as LoraLinear

    from tokenrl.lorafold import lora_merged

    model = _lora_bf16(tiny_bf16[0])
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    xs = [torch.randn(3, 7, layer.in_features).bfloat16() for layer in layers]
    with torch.no_grad(), lora_merged(model):
        expected = [layer(x) for layer, x in zip(layers, xs, strict=True)]
    ptrs = [layer.get_base_layer().weight.data_ptr() for layer in layers]
    with torch.no_grad(), packed_linears(model, merge_lora=True) as packed:
        assert packed
        for layer, x, want, ptr in zip(layers, xs, expected, ptrs, strict=True):
            assert "forward" in vars(layer) and "forward" not in vars(layer.get_base_layer())
            assert layer.get_base_layer().weight.data_ptr() == ptr  # no merged copy swapped in
            assert torch.equal(layer(x), want)
    with packed_linears(model, merge_lora=True):
        adapted = layers[0](xs[0])  # gradients enabled: the adapter as it is
    plain = layers[0](xs[0])  # outside the block: peft's own forward
    assert torch.equal(adapted, plain)
    adapted.float().sum().backward()
    a = layers[0].lora_A["default"].weight
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert all("forward" not in vars(m) for m in model.modules())


def test_merge_lora_without_packing_is_lora_merged(tiny_bf16):
    from peft.tuners.lora import Linear as LoraLinear

    model = _lora_bf16(tiny_bf16[0])
    layer = next(m for m in model.modules() if isinstance(m, LoraLinear))
    w = layer.get_base_layer().weight
    ptr = w.data_ptr()
    with packed_linears(model, enabled=False, merge_lora=True) as packed:
        assert not packed and layer.disable_adapters  # lora_merged: adapter off, W swapped
        assert w.data_ptr() != ptr
    assert not layer.disable_adapters and w.data_ptr() == ptr


def test_merge_lora_with_an_adapted_fp32_weight_folds_all_by_lora_merged(tiny_bf16):
    """One adapted layer kept in fp32 (not packed): the one pass would leave it unfolded, so
    lora_merged folds every layer and the bf16 ones are packed as plain weights."""
    from peft.tuners.lora import Linear as LoraLinear

    model = _lora_bf16(tiny_bf16[0])
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    layers[0].get_base_layer().float()
    with packed_linears(model, merge_lora=True) as packed:
        assert packed and all(m.disable_adapters for m in layers)  # lora_merged's
        assert "forward" not in vars(layers[0]) and "forward" in vars(layers[1].get_base_layer())
    assert not any(m.disable_adapters for m in layers)

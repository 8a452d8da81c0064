"""LoRA layers with the adapter added inside one addmm (tokenrl.fusedlora): bitwise peft's
log-probs and gradients in bf16 and fp32, with dropout too; peft's forward wherever it differs."""

from __future__ import annotations

import pytest
import torch
from test_logprobs import grouped_inputs, lora_model

from tokenrl.algorithms import selective_logprobs
from tokenrl.fusedlora import fused_lora
from tokenrl.models import LoraSpec, apply_lora, build_tiny

LAYERS = 2 * 7  # the tiny model: 2 layers x q, k, v, o, gate, up, down


def _logp_and_grads(model, on: bool, seed: int = 0):
    ids, attn, target = grouped_inputs()
    weights = torch.randn(9, 8, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(seed)  # lora dropout's draws
    with fused_lora(model, on) as fused:
        assert fused == (LAYERS if on else 0)
        logp = selective_logprobs(model, ids, attn, target, prompt_len=4)
    (logp * weights).sum().backward()  # backward after the block
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    return logp.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitwise_the_same_as_peft(dtype):
    model, _ = lora_model()
    model = model.to(dtype) if dtype == torch.float32 else model
    if dtype == torch.bfloat16:  # bf16 base weights, the adapter in fp32 (as the trainer has it)
        for name, p in model.named_parameters():
            if "lora_" not in name:
                p.data = p.data.bfloat16()
    (lp_peft, g_peft), (lp_fused, g_fused) = (_logp_and_grads(model, on) for on in (False, True))
    assert torch.equal(lp_peft, lp_fused)
    assert all(torch.equal(a, b) for a, b in zip(g_peft, g_fused, strict=True))
    assert any(g.abs().sum() > 0 for g in g_fused)


def test_bitwise_with_dropout():
    model, _ = build_tiny("tiny:seed=0")
    model = apply_lora(model, LoraSpec(r=4, alpha=8, dropout=0.3))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    model.train()
    (lp_peft, g_peft), (lp_fused, g_fused) = (_logp_and_grads(model, on) for on in (False, True))
    assert torch.equal(lp_peft, lp_fused)
    assert all(torch.equal(a, b) for a, b in zip(g_peft, g_fused, strict=True))
    other_draws, _ = _logp_and_grads(model, True, seed=1)  # dropout is live: other draws differ
    assert not torch.equal(other_draws, lp_fused)


def test_peft_forward_where_it_differs(monkeypatch):
    from peft.tuners.lora import Linear as LoraLinear

    model, _ = lora_model()
    calls = []
    peft_forward = LoraLinear.forward
    monkeypatch.setattr(
        LoraLinear, "forward", lambda *a, **k: calls.append(1) or peft_forward(*a, **k)
    )
    ids, attn, target = grouped_inputs()
    with fused_lora(model):
        selective_logprobs(model, ids, attn, target)
        assert not calls  # every layer fused
        with model.disable_adapter():  # the KL reference: the base model
            selective_logprobs(model, ids, attn, target)
        assert len(calls) == LAYERS
        with torch.autocast("cpu", dtype=torch.bfloat16):  # peft rounds each step in bf16
            selective_logprobs(model, ids, attn, target)
        assert len(calls) == 2 * LAYERS
    assert not any("forward" in vars(m) for m in model.modules() if isinstance(m, LoraLinear))


def test_dora_layers_are_left_to_peft():
    model, _ = build_tiny("tiny:seed=0")
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    with fused_lora(model) as fused:
        assert fused == 0

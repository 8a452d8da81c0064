"""LoRA layers with the adapter's output scaled and added in place (tokenrl.inplacelora):
bitwise peft's log-probs and gradients in bf16 and fp32, for a scaling that is not a power of two,
with dropout and under autocast; peft's forward wherever it differs."""

from __future__ import annotations

import pytest
import torch
from test_logprobs import grouped_inputs, lora_model

from tokenrl.algorithms import selective_logprobs
from tokenrl.inplacelora import inplace_lora
from tokenrl.models import build_tiny

LAYERS = 2 * 7  # the tiny model: 2 layers x q, k, v, o, gate, up, down


def _model(dropout: float = 0.0):
    """Tiny Qwen2 + LoRA with random B, scaling 8 / 3: not a power of two."""
    return lora_model(seed=1, r=3, alpha=8, dropout=dropout)[0]


def _logp_and_grads(model, on: bool, seed: int = 0, autocast: bool = False):
    ids, attn, target = grouped_inputs()
    weights = torch.randn(9, 8, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(seed)  # lora dropout's draws
    with inplace_lora(model, on) as patched, torch.autocast("cpu", enabled=autocast):
        assert patched == (LAYERS if on else 0)
        logp = selective_logprobs(model, ids, attn, target, prompt_len=4)
    (logp * weights).sum().backward()  # backward after the block
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    return logp.detach(), grads


def _assert_bitwise(model, **kw):
    (lp_peft, g_peft), (lp_ours, g_ours) = (_logp_and_grads(model, on, **kw) for on in (0, 1))
    assert torch.equal(lp_peft, lp_ours)
    assert all(torch.equal(a, b) for a, b in zip(g_peft, g_ours, strict=True))
    assert any(g.abs().sum() > 0 for g in g_ours)
    return lp_ours


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitwise_the_same_as_peft(dtype):
    model = _model()
    if dtype == torch.bfloat16:  # bf16 base weights, the adapter in fp32 (as the trainer has it)
        for name, p in model.named_parameters():
            if "lora_" not in name:
                p.data = p.data.bfloat16()
    _assert_bitwise(model)


def test_bitwise_under_autocast():
    _assert_bitwise(_model(), autocast=True)


def test_bitwise_with_dropout():
    model = _model(dropout=0.3)
    model.train()
    ours = _assert_bitwise(model)
    other_draws, _ = _logp_and_grads(model, True, seed=1)  # dropout is live: other draws differ
    assert not torch.equal(other_draws, ours)


def test_peft_forward_where_it_differs(monkeypatch):
    from peft.tuners.lora import Linear as LoraLinear

    model = _model()
    calls = []
    peft_forward = LoraLinear.forward
    monkeypatch.setattr(
        LoraLinear, "forward", lambda *a, **k: calls.append(1) or peft_forward(*a, **k)
    )
    ids, attn, target = grouped_inputs()
    with inplace_lora(model):
        selective_logprobs(model, ids, attn, target)
        assert not calls  # every layer in place
        with model.disable_adapter():  # the KL reference: the base model
            selective_logprobs(model, ids, attn, target)
        assert len(calls) == LAYERS
    assert not any("forward" in vars(m) for m in model.modules() if isinstance(m, LoraLinear))


def test_dora_layers_are_left_to_peft():
    from peft import LoraConfig, get_peft_model

    model, _ = build_tiny("tiny:seed=0")
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    with inplace_lora(model) as patched:
        assert patched == 0

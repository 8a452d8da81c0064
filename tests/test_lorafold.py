"""The adapter folded into the weights (tokenrl.lorafold): by hand, against the adapted model,
and the scratch buffers' merge bitwise peft's ``get_delta_weight``."""

from __future__ import annotations

import pytest
import torch

from tokenrl.lorafold import Scratch, foldable_lora_layers, lora_merged, merged_weight
from tokenrl.models import LoraSpec, load_model


class _OneLinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(2, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def test_lora_merged_folds_the_adapter_into_the_weight_by_hand():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        _OneLinear(), LoraConfig(r=1, lora_alpha=2, target_modules=["proj"])
    )  # scale 2
    layer = model.base_model.model.proj
    with torch.no_grad():
        layer.base_layer.weight.copy_(torch.eye(2))
        layer.lora_A["default"].weight.copy_(torch.tensor([[1.0, 2.0]]))  # A [1, 2]
        layer.lora_B["default"].weight.copy_(torch.tensor([[3.0], [4.0]]))  # B [2, 1]
    original = layer.base_layer.weight.data_ptr()
    x = torch.tensor([[1.0, 1.0]])
    # W x + 2 B (A x) = [1, 1] + 2 * 3 * [3, 4] = [19, 25]
    assert model(x).tolist() == [[19.0, 25.0]]
    with lora_merged(model) as merged:
        assert merged
        # W' = I + 2 * B @ A = I + 2 * [[3, 6], [4, 8]]
        assert layer.base_layer.weight.tolist() == [[7.0, 12.0], [8.0, 17.0]]
        assert model(x).tolist() == [[19.0, 25.0]]
    assert layer.base_layer.weight.data_ptr() == original  # the same storage back, not W' - BA
    assert layer.base_layer.weight.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)


def test_lora_merged_runs_no_adapter_matmul_and_matches_the_adapted_model():
    torch.manual_seed(0)  # the adapter's A and B; unseeded, 1 draw in 8 differed by 2.8e-5
    lm = load_model("tiny", lora=LoraSpec(r=4))
    with torch.no_grad():
        for n, p in lm.model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    calls = []
    hooks = [
        m.register_forward_hook(lambda *a: calls.append(1))
        for n, m in lm.model.named_modules()
        if n.endswith("lora_A.default")
    ]
    ids = torch.tensor([[5, 17, 99, 3, 42, 7]])
    with torch.no_grad():
        adapted = lm.model(ids).logits
        n_adapted = len(calls)
        with lora_merged(lm.model):
            merged = lm.model(ids).logits
    assert n_adapted == 14 and len(calls) == n_adapted  # 2 layers x 7 adapted linears, none inside
    assert torch.allclose(merged, adapted, atol=1e-4)  # logits of about 0.8: fp32 rounding
    assert all(torch.equal(before[n], p) for n, p in lm.model.named_parameters())
    for h in hooks:
        h.remove()


def test_lora_merged_leaves_a_model_without_adapter_alone():
    model = load_model("tiny").model
    with lora_merged(model) as merged:
        assert merged is False


def _peft_merged(layer) -> torch.Tensor:
    """W + each active adapter's ``get_delta_weight`` rounded to W's dtype: peft's own fold."""
    merged = layer.get_base_layer().weight.data.clone()
    for adapter in layer.active_adapters:
        merged += layer.get_delta_weight(adapter).to(merged.dtype)
    return merged


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merged_weight_with_scratch_is_bitwise_peft_at_a_scaling_of_8_3(dtype):
    lm = load_model("tiny", lora=LoraSpec(r=3, alpha=8), dtype=dtype)  # s = 8/3
    with torch.no_grad():
        for n, p in lm.model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    layers = foldable_lora_layers(lm.model)
    assert len(layers) == 14 and layers[0].lora_A["default"].weight.dtype == torch.float32
    scratch = Scratch()
    for layer in layers:  # one scratch for all layers, of different shapes, in turn
        expected = _peft_merged(layer)
        assert not torch.equal(expected, layer.get_base_layer().weight)
        assert torch.equal(merged_weight(layer, scratch), expected)
        assert torch.equal(merged_weight(layer), expected)  # peft's get_delta_weight inside
        out = scratch.take(expected, dtype, "merged")
        assert merged_weight(layer, scratch, out).data_ptr() == out.data_ptr()
        assert torch.equal(out, expected)


def test_a_lora_variant_is_not_plain_and_not_folded():
    """peft's LoRA variants (DoRA among them) merge by their own rules, not W + s B A: such a
    layer is left to the adapter, by lora_merged and by the in-place update alike."""
    from tokenrl.inplacelora import inplace_lora
    from tokenrl.lorafold import plain_lora_linear

    lm = load_model("tiny", lora=LoraSpec(r=4))
    layer = foldable_lora_layers(lm.model)[0]
    assert plain_lora_linear(layer, ["default"])
    layer.lora_variant["default"] = object()  # any variant, as peft records one
    assert not plain_lora_linear(layer, ["default"])
    assert foldable_lora_layers(lm.model) == []
    with lora_merged(lm.model) as merged:
        assert merged is False
    with inplace_lora(lm.model) as patched:
        assert patched == 13 and "forward" not in vars(layer)  # 14 adapted layers, one variant

import unicodedata

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenrl.models import (
    LoraSpec,
    ModelError,
    TinySpec,
    apply_lora,
    build_byte_tokenizer,
    load_model,
)

TOK = build_byte_tokenizer()


@settings(max_examples=300, deadline=None)
@given(st.text().filter(lambda t: "<|" not in t))  # "<|pad|>" written in text is the special token
def test_byte_tokenizer_round_trips_any_text(text):
    # Qwen2Tokenizer applies NFC normalisation (transformers rebuilds it on load), so text comes
    # back in NFC form: U+F900 (a compatibility ideograph) returns as U+8C48.
    nfc = unicodedata.normalize("NFC", text)
    ids = TOK(text, add_special_tokens=False)["input_ids"]
    assert TOK.decode(ids) == nfc
    # every byte is one token: no merges
    assert len(ids) == len(nfc.encode("utf-8"))


def test_byte_tokenizer_known_cases():
    assert TOK.decode(TOK("\uf900", add_special_tokens=False)["input_ids"]) == "\u8c48"
    assert TOK("<|pad|>", add_special_tokens=False)["input_ids"] == [TOK.pad_token_id]


def test_tiny_is_deterministic_from_its_seed():
    a = load_model("tiny:seed=3").model
    b = load_model("tiny:seed=3").model
    c = load_model("tiny:seed=4").model
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(
        sa["model.layers.0.mlp.up_proj.weight"], sc["model.layers.0.mlp.up_proj.weight"]
    )


def test_tiny_options_parse_and_errors():
    s = TinySpec.parse("tiny:hidden=64,layers=3,heads=2,kv_heads=1")
    assert (s.hidden, s.layers, s.heads, s.kv_heads) == (64, 3, 2, 1)
    m = load_model("tiny:hidden=64,layers=3,heads=2,kv_heads=1").model
    assert m.config.num_hidden_layers == 3 and m.config.hidden_size == 64
    with pytest.raises(ModelError, match="allowed keys"):
        TinySpec.parse("tiny:width=3")
    with pytest.raises(ModelError, match="integer"):
        TinySpec.parse("tiny:hidden=big")


def test_tiny_saves_and_reloads_offline_with_identical_logits(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = load_model("tiny")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path))
    text = "12*34=408\n héllo"
    ids = lm.tokenizer(text, return_tensors="pt").input_ids
    assert again.tokenizer.decode(ids[0]) == text
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, again.model(ids).logits)
    assert again.tokenizer.pad_token_id == lm.tokenizer.pad_token_id
    assert again.tokenizer.eos_token_id == lm.tokenizer.eos_token_id


def _architecture_folder(tmp_path, hidden=48):
    """A config.json (a small Qwen2) and the byte tokenizer: what ``random:FOLDER`` reads."""
    from transformers import Qwen2Config

    config = Qwen2Config(vocab_size=len(TOK), hidden_size=hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                         tie_word_embeddings=True)  # fmt: skip
    config.save_pretrained(tmp_path)
    TOK.save_pretrained(tmp_path)
    return tmp_path


def test_random_spec_builds_the_architecture_with_seeded_random_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = _architecture_folder(tmp_path)
    a = load_model(f"random:{folder}", dtype="bf16")
    b = load_model(f"random:{folder}")
    body = a.model.get_decoder()
    assert body.config.hidden_size == 48 and len(body.layers) == 2
    assert a.model.dtype == torch.bfloat16 and a.info["source"].startswith("random weights")
    wa = a.model.get_input_embeddings().weight
    wb = b.model.get_input_embeddings().weight
    assert torch.equal(wa, wb.to(torch.bfloat16))  # seed 0, whatever the dtype asked
    assert wa.float().std() > 0.005  # initialised, not zeros
    assert not (folder / "model.safetensors").exists()  # no weights were read or written
    assert a.tokenizer.pad_token_id is not None and a.tokenizer.padding_side == "left"


def test_random_spec_without_a_config_says_what_it_needs(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="no config.json and tokenizer"):
        load_model(f"random:{tmp_path}")


def test_unknown_model_gives_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="not a built-in name"):
        load_model(str(tmp_path / "no-such-model"))


def _lora_names(model):
    return {n for n, p in model.named_parameters() if "lora_" in n}


def test_lora_step_changes_only_the_adapter():
    lm = load_model("tiny", lora=LoraSpec(r=4, alpha=8))
    model = lm.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and trainable == _lora_names(model)
    # default targets: all attention and MLP projections of every layer (2 layers x 7 x A,B)
    assert len(trainable) == 2 * 7 * 2
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = lm.tokenizer("12*3=36", return_tensors="pt").input_ids
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed, "the optimiser step changed nothing"
    assert changed <= trainable
    assert any("lora_B" in n for n in changed)


def test_lora_on_a_subset_of_layers():
    lm = load_model(
        "tiny:layers=4", lora=LoraSpec(r=2, layers=(2, 3), target_modules=("q_proj", "v_proj"))
    )
    names = _lora_names(lm.model)
    assert names and all(".layers.2." in n or ".layers.3." in n for n in names)
    assert len(names) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)


def backward_layers(model, ids: torch.Tensor) -> list[int]:
    """The decoder layers whose MLP a backward pass of ``model`` on ``ids`` ran through; checks
    that every adapter B matrix got a gradient."""
    ran: list[int] = []
    for name, module in model.named_modules():
        if name.endswith("mlp.down_proj.base_layer") or name.endswith("mlp.down_proj"):
            layer = int(name.split(".layers.")[1].split(".")[0])
            module.register_full_backward_hook(lambda m, gi, go, i=layer: ran.append(i))
    model(ids).logits.sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]  # B starts at 0
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    return sorted(set(ran))


def test_backward_stops_at_the_lowest_adapted_layer():
    """With the adapter on layers 2-3 of 4, the backward pass never runs layers 0-1 (issue #23:
    the saving of LoRA on a subset of layers is real, not only fewer adapter weights); with
    gradient checkpointing too: tests/test_train.py."""
    lm = load_model("tiny:layers=4", lora=LoraSpec(r=2, layers=(2, 3)))
    assert backward_layers(lm.model, torch.tensor([[5, 17, 99, 3]])) == [2, 3]


def test_disabled_adapter_is_the_base_model():
    base = load_model("tiny").model
    lm = load_model("tiny", lora=LoraSpec(r=4))
    with torch.no_grad():
        for n, p in lm.model.named_parameters():
            if "lora_B" in n:
                p.normal_()  # a non-trivial adapter (B starts at zero)
    ids = torch.tensor([[5, 17, 99, 3, 42, 7]])
    with torch.no_grad():
        ref = base(ids).logits
        adapted = lm.model(ids).logits
        with lm.model.disable_adapter():
            disabled = lm.model(ids).logits
    assert not torch.allclose(adapted, ref)
    assert torch.allclose(disabled, ref, atol=1e-6)


def test_adapter_saves_in_peft_format_and_reloads(tmp_path):
    lm = load_model("tiny", lora=LoraSpec(r=4))
    with torch.no_grad():
        for n, p in lm.model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    lm.model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").exists()
    assert (tmp_path / "adapter_model.safetensors").exists()
    again = load_model("tiny", adapter=tmp_path)
    ids = torch.tensor([[5, 17, 99, 3]])
    with torch.no_grad():
        assert torch.allclose(lm.model(ids).logits, again.model(ids).logits, atol=1e-6)
    with pytest.raises(ModelError, match="adapter_config.json"):
        load_model("tiny", adapter=tmp_path / "missing")


def test_apply_lora_is_seeded():
    a = apply_lora(load_model("tiny").model, LoraSpec(r=4, seed=1))
    b = apply_lora(load_model("tiny").model, LoraSpec(r=4, seed=1))
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bf16_dtype():
    lm = load_model("tiny", dtype="bf16")
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ModelError, match="unknown dtype"):
        load_model("tiny", dtype="fp8")


def test_the_lm_head_of_an_adapted_model_gets_a_contiguous_input():
    """generate slices the last position of [rows, P, H]; under peft that strided view made the
    head's matmul broadcast its weight over the rows (18.8 GB for 64 Qwen2.5-0.5B prompts)."""
    from tokenrl.models import (
        LoraSpec,
        apply_lora,
        build_tiny,
        contiguous_head_input,
        decoder_and_head,
    )
    from tokenrl.rollout import SamplingConfig, generate_rollouts

    model, tok = build_tiny("tiny")
    model = apply_lora(model, LoraSpec(r=4))
    head = decoder_and_head(model)[1]
    seen = []
    head.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    prompts = ["12*3=", "7*8=", "100*2="]  # different lengths: left padding, as in evaluation
    generate_rollouts(model, tok, prompts, SamplingConfig(greedy=True, max_new_tokens=3))
    assert seen and all(seen)
    assert contiguous_head_input(model) is model and len(head._forward_pre_hooks) == 2  # once


def test_auto_dtype_follows_the_devices_features(monkeypatch):
    import tokenrl.machine as machine
    from tokenrl.models import auto_dtype, dtype_name, resolve_dtype

    cpu = torch.device("cpu")
    feats = {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx_bf16": True}
    monkeypatch.setattr(machine, "cpu_features", lambda: dict(feats))
    assert auto_dtype(cpu) == torch.bfloat16 and resolve_dtype("auto", cpu) == torch.bfloat16
    feats["amx_bf16"] = False  # AVX-512 bf16 alone (AMD Zen 4): native bf16 products too
    assert auto_dtype(cpu) == torch.bfloat16
    feats["avx512_bf16"] = False  # AVX-512 without bf16 (Zen 3 has no AVX-512 at all): fp32
    assert auto_dtype(cpu) == torch.float32
    feats.update(avx512f=False, avx512_bf16=False)  # AVX2 only: bf16 is emulated and slow
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16  # an explicit choice is kept
    assert dtype_name(torch.bfloat16) == "bf16" and dtype_name(torch.float32) == "fp32"
    with pytest.raises(ModelError, match="or auto"):
        resolve_dtype("fp8")


def test_a_run_with_dtype_auto_records_what_it_chose(tmp_path, monkeypatch):
    import json

    import tokenrl.machine as machine
    from tokenrl.config import load_config, parse_overrides
    from tokenrl.run import train

    monkeypatch.setattr(machine, "cpu_features", lambda: {"amx_bf16": True})
    args = ["--model.name", "tiny", "--model.dtype", "auto", "--task.name", "mult:2x1",
            "--task.eval_limit", "2", "--rollout.max_new_tokens", "4", "--rollout.prompts_per_step", "1",
            "--rollout.group_size", "2", "--train.steps", "1", "--train.eval_every", "0",
            "--log.progress", "false"]  # fmt: skip
    train(load_config(None, parse_overrides(args)), tmp_path, on_event=lambda s: None)
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["dtype"] == "bf16"
    assert "auto" in (tmp_path / "config.yaml").read_text()  # the config keeps what was asked

"""What every implementation of a workload shares: the LoRA policy and the fixed rollouts.

Shape legend: G completions of the one prompt (B = G rows), P prompt tokens, T completion tokens,
V vocabulary size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from benchmarks.trl.workloads import ModelShape, Workload
from tokenrl.models import SMOLLM2_NAME, LoraSpec, apply_lora, build_byte_tokenizer, load_base
from tokenrl.rollout import RolloutBatch

LORA = LoraSpec(r=16, alpha=32)  # q, k, v, o, gate, up, down; the same init (seed 0) for everyone
LR = 1e-5
GRAD_CLIP = 1.0  # TRL's max_grad_norm default, and tokenrl's optim.grad_clip default


def model_spec(shape: ModelShape) -> str:
    """A ``tokenrl.models.load_model`` spec for the shapes it knows (tiny, smollm2)."""
    if shape.kind == "smollm2":
        return SMOLLM2_NAME
    if shape.kind == "tiny":
        return (
            f"tiny:hidden={shape.hidden},layers={shape.layers},heads={shape.heads},"
            f"kv_heads={shape.kv_heads},inter={shape.inter}"
        )
    raise ValueError(f"model kind {shape.kind!r} has no load_model spec; use build_base")


def build_base(shape: ModelShape, device: str, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    """The base model (no LoRA) and a tokenizer, deterministic from seed 0."""
    if shape.kind != "random":
        model, tok, _ = load_base(model_spec(shape), dtype=dtype, device=device)
        return model, tok
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = build_byte_tokenizer()  # only pads and ids matter: update workloads decode nothing
    config = Qwen2Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        intermediate_size=shape.inter,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)  # built on the device: 1.5B parameters init fast on CUDA
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model.to(dtype), tok


def build_policy(w: Workload, device: str, dtype: torch.dtype, *, gradient_checkpointing: bool):
    """Base model + a fresh LoRA adapter (r 16, alpha 32), in training mode."""
    base, tok = build_base(w.model, device, dtype)
    model = apply_lora(base, LORA).to(device)
    model.train()
    if gradient_checkpointing:
        # as tokenrl's trainer does it: non-reentrant, inputs require grad so LoRA grads flow
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model, tok


def prompt_ids_for(w: Workload, tok: Any, vocab: int, gen: torch.Generator) -> list[int]:
    """``w.prompt_len`` prompt ids: a chat-templated question cut to fit for a chat tokenizer
    (SmolLM2), random ids otherwise."""
    if not getattr(tok, "chat_template", None):
        return torch.randint(0, vocab, (w.prompt_len,), generator=gen).tolist()
    marker = "@@@"
    text = tok.apply_chat_template(
        [{"role": "user", "content": marker}], add_generation_prompt=True, tokenize=False
    )
    head, tail = (tok(s, add_special_tokens=False)["input_ids"] for s in text.split(marker))
    question = " ".join(
        f"What is {12 + 7 * i} times {3 + i}? Show each step, then give the number."
        for i in range(20)
    )
    room = w.prompt_len - len(head) - len(tail)
    if room < 1:
        raise ValueError(
            f"prompt_len={w.prompt_len} is shorter than the chat template ({len(head) + len(tail)} tokens)"
        )
    return head + tok(question, add_special_tokens=False)["input_ids"][:room] + tail


def fixed_rollouts(
    w: Workload, tok: Any, vocab: int, device: str, seed: int = 0
) -> tuple[RolloutBatch, torch.Tensor]:
    """One prompt and G completions of exactly T tokens that share prefixes, uniform rewards.

    Completion i is 4 segments: [0, 8) shared by all, [8, 32) one of 2 variants (i % 2),
    [32, 96) one of 4 (i % 4), [96, T) its own; siblings differ at their segment's first token,
    so T-SPMO's trie branches at 8, 32 and 96 (the layout of benchmarks/update_memory.py).
    Uniform rewards make sibling branches differ in mean reward, so every branch is a pair.
    """
    if w.prompts != 1:
        raise ValueError(f"update workloads have one prompt, {w.name} has {w.prompts}")
    gen = torch.Generator().manual_seed(seed)
    G, T = w.group, w.completion_len
    prompt = prompt_ids_for(w, tok, vocab, gen)
    P = len(prompt)
    cuts = [0] + [c for c in (8, 32, 96) if c < T] + [T]
    variants = [1, 2, 4, G][: len(cuts) - 1]
    completion = torch.empty(G, T, dtype=torch.long)  # [G, T]
    for (lo, hi), n in zip(zip(cuts[:-1], cuts[1:]), variants):
        n = min(n, G)
        segs = torch.randint(0, vocab, (n, hi - lo), generator=gen)  # [n, hi - lo]
        segs[:, 0] = torch.randperm(vocab, generator=gen)[:n]  # distinct first tokens
        completion[:, lo:hi] = segs[torch.arange(G) % n]
    rewards = torch.rand(G, generator=gen)  # [G]
    batch = RolloutBatch(
        prompt_ids=torch.tensor(prompt, dtype=torch.long).expand(G, P).clone().to(device),
        prompt_mask=torch.ones(G, P, dtype=torch.bool, device=device),
        completion_ids=completion.to(device),
        completion_mask=torch.ones(G, T, dtype=torch.bool, device=device),
        truncated=torch.ones(G, dtype=torch.bool),
        texts=[""] * G,
        group_size=w.group,
        prompt_index=torch.zeros(G, dtype=torch.long),
    )
    return batch, rewards.to(device)


def vocab_size(model: nn.Module) -> int:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_output_embeddings().weight.shape[0]


def randomise_lora_b(model: nn.Module, std: float = 0.02) -> None:
    """Fill the LoRA B matrices (zero at init) with N(0, std^2), so the adapter changes the
    outputs as a trained one does (torch's global RNG)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=std)


def lora_b_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the LoRA B matrices (zero at init): a check that an update really happened."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}


def lora_b_changed(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    params = dict(model.named_parameters())
    return any(not torch.equal(params[n].detach(), b) for n, b in before.items())


def extra_suppressed(tok: Any) -> list[int]:
    """Tokens never sampled in whole-step benchmarks: the pad token when it is not EOS.

    ``min_new_tokens`` only blocks EOS, and tokenrl ends a completion at a sampled pad token
    (the byte-level tiny model has one), so without this a row could stop early on our side
    only. Suppressed on both sides, every completion has exactly L tokens.
    """
    pad, eos = tok.pad_token_id, tok.eos_token_id
    return [pad] if pad is not None and pad != eos else []

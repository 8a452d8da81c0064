"""Selective log-probs equal full-logits log-probs (values and LoRA gradients): tiny model."""

from __future__ import annotations

import pytest
import torch
from reference import full_logits_logprobs

from tokenrl.algorithms import (
    completion_logprobs,
    head_logprobs,
    reference_logprobs,
    selective_logprobs,
)
from tokenrl.models import LoraSpec, apply_lora, build_tiny, decoder_and_head
from tokenrl.rollout import RolloutBatch

torch.set_num_threads(1)


def lora_model(seed: int = 0, **lora):
    """Tiny Qwen2 + LoRA (``lora``: LoraSpec fields, r=4 and alpha=8 by default) whose B matrices
    are random, so the adapter changes the outputs."""
    model, tok = build_tiny("tiny:seed=0")
    model = apply_lora(model, LoraSpec(**{"r": 4, "alpha": 8, **lora}))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model, tok


@pytest.fixture(scope="module")
def model():
    return lora_model()[0]


def padded_inputs():
    # 4 rows of 10 tokens, left padding of 3, 0, 5 and 1 (pad id 257, mask 0).
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (4, 10), generator=gen)
    attn = torch.ones(4, 10, dtype=torch.bool)
    for row, pad in enumerate([3, 0, 5, 1]):
        ids[row, :pad] = 257
        attn[row, :pad] = False
    target = torch.zeros(4, 10, dtype=torch.bool)
    target[0, [4, 5, 8]] = True
    target[2, [6, 7]] = True  # row 1: no targets at all
    target[3, [2, 9]] = True
    return ids, attn, target


@pytest.mark.parametrize("chunk_size", [1024, 2, 3])
def test_equals_full_logits_values_and_grads(model, chunk_size: int) -> None:
    ids, attn, target = padded_inputs()
    weights = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    lora = [p for n, p in model.named_parameters() if p.requires_grad]

    full = full_logits_logprobs(model, ids, attn)  # [4, 10]
    (full * weights * target).sum().backward()
    full_grads = [p.grad.clone() for p in lora]
    model.zero_grad()

    sel = selective_logprobs(model, ids, attn, target, chunk_size=chunk_size)
    assert sel.dtype == torch.float32 and sel.shape == (4, 10)
    assert torch.all(sel[~target] == 0)
    torch.testing.assert_close(sel[target], full[target], atol=1e-6, rtol=0)
    (sel * weights).sum().backward()
    for p, g in zip(lora, full_grads, strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)
    assert any(p.grad.abs().sum() > 0 for p in lora)
    model.zero_grad()


@pytest.mark.parametrize("fused", [True, False])
def test_head_logprobs_values_and_all_gradients(fused: bool) -> None:
    # 7 rows in chunks of 3 (3 + 3 + 1), a head with bias whose weight is trainable: values and
    # gradients for hidden, weight and bias equal autograd through log_softmax + gather.
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(8, 50)
    head = linear if fused else torch.nn.Sequential(linear)  # Sequential -> generic path
    hidden = torch.randn(7, 8, generator=gen, requires_grad=True)
    targets = torch.randint(0, 50, (7,), generator=gen)
    g = torch.randn(7, generator=gen)
    ref = torch.log_softmax(linear(hidden), -1).gather(1, targets[:, None]).squeeze(1)
    ref_grads = torch.autograd.grad((ref * g).sum(), [hidden, linear.weight, linear.bias])
    got = head_logprobs(head, hidden, targets, chunk_size=3)
    grads = torch.autograd.grad((got * g).sum(), [hidden, linear.weight, linear.bias])
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_fused_head_ignores_autocast() -> None:
    # Backward recomputes the head's logits outside autocast, so forward must not use bf16 ones:
    # under autocast the values and gradients are exactly those of float32.
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 40, bias=False)
    hidden = torch.randn(5, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 40, (5,), generator=gen)
    results = []
    for enabled in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            logp = head_logprobs(head, hidden, targets, chunk_size=2)
        results.append((logp, torch.autograd.grad(logp.sum(), [hidden, head.weight])))
    (plain, plain_grads), (cast, cast_grads) = results
    assert cast.dtype == torch.float32 and torch.equal(cast, plain)
    for a, b in zip(cast_grads, plain_grads, strict=True):
        assert torch.equal(a, b)


def test_default_forward_positions_agree(model) -> None:
    # transformers 5's forward without position_ids uses arange(L), ignoring left padding;
    # RoPE is shift-invariant, so log-probs agree up to rounding.
    ids, attn, target = padded_inputs()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits
        default = torch.log_softmax(logits[:, :-1], -1).gather(2, ids[:, 1:, None]).squeeze(2)
        sel = selective_logprobs(model, ids, attn, target)
    torch.testing.assert_close(sel[:, 1:][target[:, 1:]], default[target[:, 1:]], atol=1e-5, rtol=0)


def test_runs_only_what_is_needed(model, monkeypatch) -> None:
    """Rows without targets are dropped, rows are cut after the last target, and the LM head
    multiplies at most chunk_size gathered rows at a time (never [B, L, H]), also in backward."""
    ids, attn, target = padded_inputs()
    target[3, 9] = False  # last target now at column 8
    body, head = decoder_and_head(model)
    seen: dict[str, list[tuple[int, ...]]] = {"body": [], "head": []}
    linear = torch.nn.functional.linear

    def spy_linear(x, weight, bias=None):
        if weight is head.weight:
            seen["head"].append(tuple(x.shape))
        return linear(x, weight, bias)

    monkeypatch.setattr(torch.nn.functional, "linear", spy_linear)
    hook = body.register_forward_hook(
        lambda m, a, kw, out: seen["body"].append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        selective_logprobs(model, ids, attn, target, chunk_size=3).sum().backward()
    finally:
        hook.remove()
        model.zero_grad()
    # Rows 0, 2, 3 kept (row 1 has no target). Last target: column 8 -> cut at 9. Left pads of
    # the kept rows are 3, 5, 1 -> column 0 is padding everywhere and is dropped: columns 1..8.
    assert seen["body"] == [(3, 8)]
    # 3 + 2 + 1 = 6 targets -> 2 chunks of 3 rows of size H = 128, in forward and again in
    # backward (recomputed logits).
    assert seen["head"] == [(3, 128)] * 4


def test_no_targets_and_bad_targets(model) -> None:
    ids, attn, _ = padded_inputs()
    none = torch.zeros(4, 10, dtype=torch.bool)
    assert torch.equal(selective_logprobs(model, ids, attn, none), torch.zeros(4, 10))
    first = none.clone()
    first[1, 0] = True
    with pytest.raises(ValueError, match="first token"):
        selective_logprobs(model, ids, attn, first)


def make_batch(tok) -> RolloutBatch:
    prompts = [[10, 11, 12], [20, 21], [30]]
    completions = [[40, 41, 42, 43], [50, 51], [60, 61, 62]]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    P, T = 3, 5
    prompt_ids = torch.full((3, P), pad)
    prompt_mask = torch.zeros(3, P, dtype=torch.bool)
    completion_ids = torch.full((3, T), pad)
    completion_mask = torch.zeros(3, T, dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        c = c + [eos]
        prompt_ids[i, P - len(p) :] = torch.tensor(p)
        prompt_mask[i, P - len(p) :] = True
        completion_ids[i, : len(c)] = torch.tensor(c)
        completion_mask[i, : len(c)] = True
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        truncated=torch.zeros(3, dtype=torch.bool),
        texts=[""] * 3,
        group_size=3,
        prompt_index=torch.zeros(3, dtype=torch.long),
    )


def test_completion_and_reference_logprobs() -> None:
    model, tok = lora_model()
    plain, _ = build_tiny("tiny:seed=0")  # the same base weights, no adapter
    batch = make_batch(tok)
    mask = batch.completion_mask.clone()
    ref = reference_logprobs(model, batch, mask)
    assert ref.shape == mask.shape and not ref.requires_grad
    base = completion_logprobs(plain, batch, mask)
    torch.testing.assert_close(ref[mask], base[mask], atol=1e-6, rtol=0)
    adapted = completion_logprobs(model, batch, mask)
    assert adapted.requires_grad
    assert (adapted[mask] - ref[mask]).abs().max() > 1e-3  # the adapter does change the policy
    # The adapter is enabled again after the reference pass.
    torch.testing.assert_close(completion_logprobs(model, batch, mask), adapted)
    # Completion positions map to full-sequence positions P + t.
    full = full_logits_logprobs(plain, batch.input_ids, batch.attention_mask)[:, 3:]
    torch.testing.assert_close(base[mask], full[mask], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="no adapter"):
        reference_logprobs(plain, batch, mask)


def test_matches_generate_scores() -> None:
    """Recomputed log-probs of sampled tokens equal the sampler's (left-padded prompts)."""
    model, tok = lora_model()
    model.eval()
    enc = tok(["ab", "hello there", "x"], return_tensors="pt", padding=True, padding_side="left")
    torch.manual_seed(0)
    out = model.generate(
        **enc,
        max_new_tokens=6,
        do_sample=True,
        top_k=0,
        top_p=1.0,
        temperature=1.0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    P = enc["input_ids"].shape[1]
    completion = out.sequences[:, P:]  # [3, T]
    gen_logp = torch.stack([torch.log_softmax(lg.float(), -1) for lg in out.logits], 1)  # [3, T, V]
    gen_logp = gen_logp.gather(2, completion[:, :, None]).squeeze(2)
    is_eos = completion == tok.eos_token_id
    completion_mask = (torch.cumsum(is_eos.long(), 1) - is_eos.long()) == 0  # up to the first EOS
    batch = RolloutBatch(
        prompt_ids=enc["input_ids"],
        prompt_mask=enc["attention_mask"].bool(),
        completion_ids=completion,
        completion_mask=completion_mask,
        truncated=~is_eos.any(1),
        texts=[""] * 3,
        group_size=3,
        prompt_index=torch.zeros(3, dtype=torch.long),
    )
    with torch.no_grad():
        logp = completion_logprobs(model, batch, completion_mask)
    torch.testing.assert_close(logp[completion_mask], gen_logp[completion_mask], atol=1e-5, rtol=0)


def grouped_inputs():
    """3 prompts of 4, 2 and 3 tokens (left-padded to 4), each with 3 completions of up to 4
    tokens (right-padded): 9 rows of 8 columns, the way a GRPO batch lays out groups."""
    gen = torch.Generator().manual_seed(2)
    pad = 257
    ids = torch.full((9, 8), pad)
    attn = torch.zeros(9, 8, dtype=torch.bool)
    for g, plen in enumerate([4, 2, 3]):
        prompt = torch.randint(0, 256, (plen,), generator=gen)
        for j, clen in enumerate([4, 2, 3]):
            row = 3 * g + j
            ids[row, 4 - plen : 4] = prompt
            ids[row, 4 : 4 + clen] = torch.randint(0, 256, (clen,), generator=gen)
            attn[row, 4 - plen : 4 + clen] = True
    target = torch.zeros(9, 8, dtype=torch.bool)
    for row, cols in {
        0: [4, 5, 7],
        1: [4],
        2: [6],
        4: [5],
        5: [4, 6],
        6: [4, 5, 6, 7],
        8: [5],
    }.items():
        target[row, cols] = True  # rows 3 and 7: no targets
    return ids, attn, target


def test_shared_prompt_equals_whole_rows_values_and_grads(model) -> None:
    ids, attn, target = grouped_inputs()
    weights = torch.randn(9, 8, generator=torch.Generator().manual_seed(3))
    lora = [p for p in model.parameters() if p.requires_grad]
    results = []
    for prompt_len in (0, 4):
        logp = selective_logprobs(model, ids, attn, target, prompt_len=prompt_len)
        (logp * weights).sum().backward()
        results.append((logp.detach(), [p.grad.clone() for p in lora]))
        model.zero_grad()
    (whole, whole_grads), (shared, shared_grads) = results
    full = full_logits_logprobs(model, ids, attn).detach()
    torch.testing.assert_close(shared[target], full[target], atol=1e-5, rtol=0)
    torch.testing.assert_close(shared, whole, atol=1e-5, rtol=0)
    assert torch.all(shared[~target] == 0)
    for a, b in zip(shared_grads, whole_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in shared_grads)


def body_calls(model, fn) -> list[tuple[int, ...]]:
    """The input_ids shapes the transformer body was called with while ``fn`` ran."""
    body, _ = decoder_and_head(model)
    seen: list[tuple[int, ...]] = []
    hook = body.register_forward_hook(
        lambda m, a, kw, out: seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        fn()
    finally:
        hook.remove()
    return seen


def test_shared_prompt_runs_each_prompt_once(model) -> None:
    ids, attn, target = grouped_inputs()
    calls = body_calls(model, lambda: selective_logprobs(model, ids, attn, target, prompt_len=4))
    # 7 rows have targets, 3 distinct prompts; no column is padding in every row; the last
    # target is column 7: the prompts [3, 4] once, then the completion columns [7, 4].
    assert calls == [(3, 4), (7, 4)]
    # Nothing to share: one prompt per row -> whole rows.
    one_per_group = target.clone()
    one_per_group[[1, 2, 5, 8]] = False  # rows 0, 4, 6 left: three different prompts
    calls = body_calls(
        model, lambda: selective_logprobs(model, ids, attn, one_per_group, prompt_len=4)
    )
    assert calls == [(3, 8)]
    # A target inside the prompt -> whole rows.
    in_prompt = target.clone()
    in_prompt[0, 3] = True
    calls = body_calls(model, lambda: selective_logprobs(model, ids, attn, in_prompt, prompt_len=4))
    assert calls == [(7, 8)]


def test_shared_prompt_off_under_gradient_checkpointing() -> None:
    model, _ = lora_model()
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids, attn, target = grouped_inputs()
    logp = []

    def run() -> None:
        logp.append(selective_logprobs(model, ids, attn, target, prompt_len=4))

    assert body_calls(model, run) == [(7, 8)]  # a KV cache cannot be replayed in backward
    logp[0].sum().backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad
    )


def test_reference_logprobs_follow_share_prompt() -> None:
    model, tok = lora_model()
    batch = make_batch(tok)
    batch.prompt_ids[1:] = batch.prompt_ids[0]  # one prompt for the group of 3
    batch.prompt_mask[1:] = batch.prompt_mask[0]
    mask = batch.completion_mask.clone()
    shared = body_calls(model, lambda: reference_logprobs(model, batch, mask))
    whole = body_calls(model, lambda: reference_logprobs(model, batch, mask, share_prompt=False))
    assert shared == [(1, 3), (3, 5)] and whole == [(3, 8)]

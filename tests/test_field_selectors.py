"""The field's token selectors (issue #25): entropy top-q, NAT-URS, NAT-RPC, S-GRPO's unbiased
variant; hand-computed values, Horvitz-Thompson unbiasedness, zero gradient off the mask."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

import tokenrl.trainer as trainer
from tokenrl.algorithms import GRPOConfig, SGRPOConfig
from tokenrl.algorithms.entropy import entropy_of_logits, token_entropy
from tokenrl.algorithms.logprobs import completion_logprobs
from tokenrl.algorithms.losses import make_loss_inputs, policy_loss
from tokenrl.algorithms.registry import prepare_group
from tokenrl.algorithms.selectors import (
    entropy_select,
    ht_weights,
    nat_rpc_inclusion,
    nat_rpc_select,
    nat_urs_select,
    run_selector,
    sgrpo_inclusion,
    sgrpo_select,
)
from tokenrl.cli import main
from tokenrl.models import build_tiny
from tokenrl.rollout import RolloutBatch

TESTS = Path(__file__).parent


def lengths_mask(lengths: list[int], T: int) -> torch.Tensor:
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # [B, T]


# ---------------------------------------------------------------------------------------------
# entropy


def test_entropy_of_a_hand_built_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [1.0, 1.0, 1.0]]))
    # H = 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2; uniform over 3: ln 3
    assert entropy_of_logits(logits).tolist() == pytest.approx([1.5 * math.log(2), math.log(3)])
    # temperature 2 on log([.5, .25, .25]): z = (-ln2, -ln4, -ln4) / 2 -> probs prop. to
    # (2^-1/2, 2^-1, 2^-1) = (0.4142, 0.2929, 0.2929) after normalising
    p = torch.tensor([2**-0.5, 0.5, 0.5])
    p = p / p.sum()
    assert entropy_of_logits(logits[:1], 2.0).item() == pytest.approx(float(-(p * p.log()).sum()))


def test_entropy_top_q_mask_by_hand():
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    entropy = torch.tensor([[0.1, 0.9, 0.5, 0.9, 5.0], [0.3, 0.2, 9.0, 9.0, 9.0]])
    # 6 real tokens, q = 0.5 -> the 3 highest real ones: 0.9 (0, 1), 0.9 (0, 3), 0.5 (0, 2);
    # padding (5.0, 9.0) never counts
    got = entropy_select(mask, None, entropy=entropy, q=0.5)
    assert got.int().tolist() == [[0, 1, 1, 1, 0], [0, 0, 0, 0, 0]]
    # per sequence: ceil(0.5 * 4) = 2 of row 0, ceil(0.5 * 2) = 1 of row 1
    got = entropy_select(mask, None, entropy=entropy, q=0.5, per_sequence=True)
    assert got.int().tolist() == [[0, 1, 0, 1, 0], [1, 0, 0, 0, 0]]
    # q = 1 keeps every real token; ties go to the earlier position
    assert entropy_select(mask, None, entropy=entropy, q=1.0).equal(mask)
    ties = entropy_select(mask[:1], None, entropy=torch.ones(1, 5), q=0.25)
    assert ties.int().tolist() == [[1, 0, 0, 0, 0]]


def _tiny_batch(model, tok, lengths: list[int], P: int = 4) -> RolloutBatch:
    torch.manual_seed(0)
    B, T = len(lengths), max(lengths)
    comp_mask = lengths_mask(lengths, T)
    prompt_mask = torch.ones(B, P, dtype=torch.bool)
    prompt_mask[1, :2] = False  # a left-padded prompt
    vocab = model.config.vocab_size
    return RolloutBatch(
        prompt_ids=torch.randint(3, vocab, (B, P)).masked_fill(~prompt_mask, tok.pad_token_id),
        prompt_mask=prompt_mask,
        completion_ids=torch.randint(3, vocab, (B, T)).masked_fill(~comp_mask, tok.pad_token_id),
        completion_mask=comp_mask,
        truncated=torch.zeros(B, dtype=torch.bool),
        texts=[""] * B,
        group_size=B // 2,
        prompt_index=torch.arange(B) // (B // 2),
    )


@pytest.mark.parametrize("shared", [False, True], ids=["own-prompts", "group-prompts"])
def test_chunked_entropy_equals_the_full_logits_entropy(shared):
    model, tok = build_tiny("tiny")
    batch = _tiny_batch(model, tok, [6, 3, 5, 1])
    if shared:  # each group's two rows share their prompt: encoded once, its cache copied
        batch.prompt_ids[1], batch.prompt_mask[1] = batch.prompt_ids[0], batch.prompt_mask[0]
        batch.prompt_ids[3], batch.prompt_mask[3] = batch.prompt_ids[2], batch.prompt_mask[2]
        seen = []
        hook = model.get_decoder().embed_tokens.register_forward_hook(
            lambda m, inp, out: seen.append(tuple(inp[0].shape))
        )
        token_entropy(model, batch, temperature=0.7, chunk_size=3)
        hook.remove()
        assert seen == [(2, 4), (4, 6)]  # 2 distinct prompts of 4 tokens, then 4 rows x T = 6
    got = token_entropy(model, batch, temperature=0.7, chunk_size=3)
    with torch.no_grad():
        attn = batch.attention_mask.long()
        pos = (attn.cumsum(1) - 1).masked_fill(attn == 0, 0)
        logits = model(input_ids=batch.input_ids, attention_mask=attn, position_ids=pos).logits
    P = batch.prompt_ids.shape[1]
    full = entropy_of_logits(logits[:, P - 1 : -1], 0.7)  # [B, T]: position t-1 predicts t
    full = full * batch.completion_mask
    assert torch.allclose(got, full, atol=1e-6, rtol=0)
    assert (got[~batch.completion_mask] == 0).all()


def test_entropy_with_the_adapter_merged_equals_the_adapter_path():
    from tokenrl.models import LoraSpec, apply_lora

    base, tok = build_tiny("tiny")
    model = apply_lora(base, LoraSpec(r=4, alpha=8))
    with torch.no_grad():  # a trained-looking adapter: B is zero at initialisation
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    batch = _tiny_batch(model, tok, [6, 3, 5, 1])
    plain = token_entropy(model, batch, temperature=0.7)
    merged = token_entropy(model, batch, temperature=0.7, merge_lora=True)
    assert torch.allclose(plain, merged, atol=1e-5, rtol=0)
    with model.disable_adapter():  # the adapter does change the entropies
        assert not torch.allclose(plain, token_entropy(model, batch, temperature=0.7), atol=1e-3)
    assert torch.equal(plain, token_entropy(model, batch, temperature=0.7))  # weights restored


# ---------------------------------------------------------------------------------------------
# inclusion probabilities and Horvitz-Thompson weights


def test_sgrpo_inclusion_by_hand_and_by_frequency():
    mask = torch.ones(1, 7, dtype=torch.bool)
    # alpha 2, p 0.5, k 4: t = 2: 0.5 P(Bin(0) <= 1) = 0.5; t = 3: 0.5 P(Bin(1) <= 1) = 0.5;
    # t = 4: 0.5 P(Bin(2) <= 1) = 0.375; t = 5: 0.5 P(Bin(3) <= 1) = 0.25; t = 6: 0.5 * 5/16
    want = [1, 1, 0.5, 0.5, 0.375, 0.25, 0.15625]
    assert sgrpo_inclusion(mask, alpha=2, p=0.5, k=4)[0].tolist() == pytest.approx(want)
    assert sgrpo_inclusion(mask, alpha=3, p=0.5, k=3)[0].tolist() == [1, 1, 1, 0, 0, 0, 0]
    g = torch.Generator().manual_seed(1)
    many = torch.ones(4000, 7, dtype=torch.bool)
    freq = sgrpo_select(many, g, alpha=2, p=0.5, k=4).float().mean(0)
    assert freq.tolist() == pytest.approx(want, abs=0.03)


def test_nat_selectors_by_hand_and_by_frequency():
    mask = lengths_mask([4, 2, 0], 4)
    assert nat_rpc_inclusion(mask).tolist() == [[1, 0.75, 0.5, 0.25], [1, 0.5, 0, 0], [0, 0, 0, 0]]
    g = torch.Generator().manual_seed(2)
    many = lengths_mask([4] * 4000, 4)
    rpc = nat_rpc_select(many, g)
    assert rpc[:, 0].all()  # at least the first token
    assert (rpc.int().diff(dim=1) <= 0).all()  # a prefix: once off, off to the end
    assert rpc.float().mean(0).tolist() == pytest.approx([1, 0.75, 0.5, 0.25], abs=0.03)
    urs = nat_urs_select(many, g, p=0.3)
    assert urs.float().mean().item() == pytest.approx(0.3, abs=0.01)
    w = ht_weights("nat-rpc", mask, {})
    assert w.tolist() == [pytest.approx([1, 4 / 3, 2, 4]), [1, 2, 0, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize(
    "name, options",
    [("nat-urs", {"p": 0.4}), ("nat-rpc", {}), ("sgrpo", {"alpha": 1, "p": 0.5, "k": 4})],
)
def test_ht_weights_make_the_expected_masked_gradient_the_full_token_gradient(name, options):
    """A small 'model' (per-position logits W [T, V]); the masked, 1/pi-weighted seq_mean loss
    averaged over 3,000 draws matches the full-token loss's gradient to 5% of its norm."""
    torch.manual_seed(3)
    mask = lengths_mask([6, 4, 5, 2], 6)
    tokens = torch.randint(0, 5, mask.shape)
    adv = torch.tensor([1.0, -0.5, 0.7, -1.2])[:, None].expand(mask.shape)
    W = torch.randn(6, 5, requires_grad=True)

    def grad_of(update_mask, weights, population):
        inputs = make_loss_inputs(update_mask, adv, token_weights=weights, aggregation="seq_mean",
                                  population=population)  # fmt: skip
        logp = torch.log_softmax(W, -1)[torch.arange(6)[None, :].expand_as(tokens), tokens]
        loss, _ = policy_loss(logp * inputs.logprob_mask, None, inputs)
        return torch.autograd.grad(loss, W)[0]

    full = grad_of(mask, None, None)
    weights = ht_weights(name, mask, options)
    g = torch.Generator().manual_seed(4)
    total = torch.zeros_like(full)
    draws = 3000
    for _ in range(draws):
        total += grad_of(run_selector(name, mask, g, options), weights, mask)
    mean = total / draws
    assert (mean - full).norm() < 0.05 * full.norm(), ((mean - full).norm(), full.norm())
    # the paper's plain mean over the selected tokens is not unbiased (a check the test can fail)
    if name == "sgrpo":
        plain = sum(grad_of(run_selector(name, mask, g, options), None, None) for _ in range(300))
        assert (plain / 300 - full).norm() > 0.05 * full.norm()


@pytest.mark.parametrize("name", ["all", "sgrpo", "entropy", "nat-urs", "nat-rpc"])
def test_unselected_tokens_get_exactly_zero_gradient(name):
    mask = lengths_mask([7, 3, 5, 6], 7)
    options = {"sgrpo": {"alpha": 1, "p": 0.5, "k": 3}, "entropy": {"q": 0.3},
               "nat-urs": {"p": 0.4}}.get(name, {})  # fmt: skip
    per_token = {"entropy": torch.rand(mask.shape)}
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    batch = RolloutBatch(
        prompt_ids=torch.zeros(4, 1, dtype=torch.long), prompt_mask=torch.ones(4, 1, dtype=torch.bool),
        completion_ids=torch.zeros(4, 7, dtype=torch.long), completion_mask=mask,
        truncated=torch.zeros(4, dtype=torch.bool), texts=[""] * 4, group_size=2,
        prompt_index=torch.tensor([0, 0, 1, 1]), token_entropy=per_token["entropy"],
    )  # fmt: skip
    cfg = GRPOConfig(selector=name, selector_options=options)
    inputs = prepare_group(
        batch, rewards, cfg, [torch.Generator().manual_seed(5) for _ in range(2)]
    )
    logp = torch.full(mask.shape, -1.0, requires_grad=True)
    loss, _ = policy_loss(logp * inputs.logprob_mask, None, inputs)
    (grad,) = torch.autograd.grad(loss, logp)
    assert inputs.update_mask.any() and (grad[~inputs.update_mask] == 0).all()
    assert (grad[inputs.logprob_mask] != 0).all()


def test_sgrpo_unbiased_weights_its_tokens():
    mask = lengths_mask([8, 8], 8)
    batch = RolloutBatch(
        prompt_ids=torch.zeros(2, 1, dtype=torch.long), prompt_mask=torch.ones(2, 1, dtype=torch.bool),
        completion_ids=torch.zeros(2, 8, dtype=torch.long), completion_mask=mask,
        truncated=torch.zeros(2, dtype=torch.bool), texts=["", ""], group_size=2,
        prompt_index=torch.tensor([0, 0]),
    )  # fmt: skip
    gen = [torch.Generator().manual_seed(6)]
    cfg = SGRPOConfig(alpha=2, p=0.5, k=4, unbiased=True)
    inputs = prepare_group(batch, torch.tensor([1.0, 0.0]), cfg, gen)
    pi = sgrpo_inclusion(mask, alpha=2, p=0.5, k=4)
    # c = (1 / pi) / (B * n_b) on the selected tokens, n_b = 8 real tokens, B = 2
    want = torch.where(inputs.update_mask, 1 / pi / (2 * 8), torch.zeros(()))
    assert torch.allclose(inputs.loss_coef, want)


# ---------------------------------------------------------------------------------------------
# NAT-RPC's truncated forward, and the trainer end to end


def test_nat_rpc_truncated_forward_gives_the_full_forwards_logprobs():
    model, tok = build_tiny("tiny")
    batch = _tiny_batch(model, tok, [6, 3, 5, 6])
    cut = nat_rpc_select(batch.completion_mask, torch.Generator().manual_seed(7))
    assert not cut.equal(batch.completion_mask)  # some rows are cut short
    with torch.no_grad():
        short = completion_logprobs(model, batch, cut)  # the body runs each row up to its cut
        full = completion_logprobs(model, batch, batch.completion_mask)
    assert torch.allclose(short[cut], full[cut], atol=1e-5, rtol=0)
    assert (short[~cut] == 0).all()


def test_entropy_per_batch_is_trls_quantile_cut_by_hand():
    from tokenrl.algorithms.entropy import batch_entropy_threshold

    # two groups of one row each (as run_selector_by_group would pass them), 6 real tokens
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    entropy = torch.tensor([[0.1, 0.9, 0.5, 0.7, 5.0], [0.3, 0.2, 9.0, 9.0, 9.0]])
    # sorted real entropies 0.1 0.2 0.3 0.5 0.7 0.9; q = 0.5: the 0.5 quantile, linear between
    # order statistics 2 and 3 (0-based, position 0.5 * 5 = 2.5): (0.3 + 0.5) / 2 = 0.4
    tau = batch_entropy_threshold(entropy[mask], 0.5)
    assert tau == pytest.approx(0.4)
    got = torch.cat([entropy_select(mask[i : i + 1], None, entropy=entropy[i : i + 1], q=0.5,
                                    per_batch=True, threshold=tau) for i in (0, 1)])  # fmt: skip
    assert got.int().tolist() == [[0, 1, 1, 1, 0], [0, 0, 0, 0, 0]]  # 0.5, 0.7, 0.9 of row 0
    # per group instead: ceil(0.5 * 2) = 1 token of row 1 as well (0.3)
    alone = entropy_select(mask[1:], None, entropy=entropy[1:], q=0.5)
    assert alone.int().tolist() == [[1, 0, 0, 0, 0]]
    assert batch_entropy_threshold(torch.zeros(0), 0.2) == math.inf  # no real token: none kept
    with pytest.raises(ValueError, match="threshold was not computed"):
        entropy_select(mask, None, entropy=entropy, per_batch=True)


@pytest.mark.parametrize("options", ["{q: 0.25}", "{q: 0.25, per_batch: true}"])
def test_training_with_the_entropy_selector_updates_about_q_of_the_tokens(
    tmp_path, monkeypatch, options
):
    from tokenrl.config import load_config, parse_overrides
    from tokenrl.run import train

    monkeypatch.syspath_prepend(str(TESTS))
    args = ["--model.name", "tiny", "--task.name", "mult:2x1", "--task.eval_limit", "2",
            "--task.reward", "rewards_for_tests:half_bytes_low", "--rollout.max_new_tokens", "8",
            "--rollout.prompts_per_step", "2", "--rollout.group_size", "4", "--train.steps", "2",
            "--train.eval_every", "0", "--log.progress", "false", "--train.algo", "grpo",
            "--grpo.selector", "entropy", "--grpo.selector_options", options]  # fmt: skip
    train(load_config(None, parse_overrides(args)), tmp_path, on_event=lambda s: None)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    import json

    fracs = [json.loads(x)["tokens/update_frac"] for x in lines if '"tokens/update_frac"' in x]
    if "per_batch" in options:  # one cut over the batch's tokens: about q of them, ties aside
        assert len(fracs) == 2 and all(0.2 <= f <= 0.35 for f in fracs), fracs
    else:  # ceil(q n) of each group
        assert len(fracs) == 2 and all(0.25 <= f < 0.25 + 4 / 8 for f in fracs), fracs


@pytest.mark.parametrize(
    "selector, options, named",
    [
        ("entropy", "{q: 1.5}", "q=1.5 must be a number in (0, 1]"),
        ("entropy", "{q: 0}", "q=0 must be a number in (0, 1]"),
        ("nat-urs", "{p: -0.2}", "p=-0.2 must be a number in (0, 1]"),
        ("nat-rpc", "{p: 0.5}", "unknown option 'p'"),
        ("entropy", "{per_sequence: 3}", "per_sequence=3 must be true or false"),
        ("entropy", "{per_sequence: true, per_batch: true}", "choose one scope"),
    ],
)
def test_bad_selector_options_exit_2_before_any_model_loads(
    tmp_path, capsys, monkeypatch, selector, options, named
):
    loads: list[str] = []
    monkeypatch.setattr(trainer, "load_model", lambda name, **kw: loads.append(name))
    argv = ["train", "--model", "tiny", "--algo", "grpo", "--grpo.selector", selector,
            "--grpo.selector_options", options, "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err, err
    assert loads == [] and not (tmp_path / "run").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))

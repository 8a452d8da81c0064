"""The registry, config validation, and one optimisation step per algorithm on the tiny model."""

from __future__ import annotations

import pytest
import torch

from tokenrl.algorithms import (
    ALGORITHMS,
    GRPOConfig,
    ReplayConfig,
    SGRPOConfig,
    TSPMOConfig,
    completion_logprobs,
    get_algorithm,
    policy_loss,
    reference_logprobs,
)
from tokenrl.models import LoraSpec, apply_lora, build_tiny
from tokenrl.rollout import RolloutBatch

torch.set_num_threads(1)

G = 4


def hand_batch(eos: int, pad: int) -> tuple[RolloutBatch, torch.Tensor]:
    """2 prompts x 4 completions sharing prefixes (so T-SPMO has branching points)."""
    prompts = [[104, 105, 32], [50, 43, 50, 61]]  # "hi ", "2+2="
    completions = [
        [65, 66, 67, 68, eos], [65, 66, 70, eos], [65, 71, 72, 73, 74, 75, eos], [80, eos],
        [52, eos], [52, eos], [53, 54, eos], [52, 55, 56, 57, 58, 59, 60],  # last one truncated
    ]  # fmt: skip
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    B, P, T = len(completions), max(map(len, prompts)), max(map(len, completions))
    prompt_ids = torch.full((B, P), pad)
    prompt_mask = torch.zeros(B, P, dtype=torch.bool)
    completion_ids = torch.full((B, T), pad)
    completion_mask = torch.zeros(B, T, dtype=torch.bool)
    for row, c in enumerate(completions):
        p = prompts[row // G]
        prompt_ids[row, P - len(p) :] = torch.tensor(p)
        prompt_mask[row, P - len(p) :] = True
        completion_ids[row, : len(c)] = torch.tensor(c)
        completion_mask[row, : len(c)] = True
    batch = RolloutBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
        completion_mask=completion_mask,
        truncated=torch.tensor([c[-1] != eos for c in completions]),
        texts=[""] * B, group_size=G, prompt_index=torch.arange(B) // G,
    )  # fmt: skip
    return batch, rewards


@pytest.mark.parametrize(
    "name,cfg",
    [
        ("grpo", GRPOConfig()),
        ("grpo", GRPOConfig(beta=0.04, aggregation="constant", constant_normaliser=8)),
        ("sgrpo", SGRPOConfig(alpha=1, p=0.5, k=3)),
        ("tspmo", TSPMOConfig()),
        ("tspmo", TSPMOConfig(weighting="visit", beta=0.1)),
    ],
)
def test_one_step_changes_only_lora(name: str, cfg) -> None:
    cfg.validate()
    model, tok = build_tiny("tiny:seed=0")
    model = apply_lora(model, LoraSpec(r=4, alpha=8))
    batch, rewards = hand_batch(tok.eos_token_id, tok.pad_token_id)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    # The trainer's sequence: prepare -> (reference) -> log-probs -> loss -> step.
    algo = get_algorithm(name)
    inputs = algo.prepare(batch, rewards, cfg, torch.Generator().manual_seed(0))
    ref = reference_logprobs(model, batch, inputs.logprob_mask) if cfg.beta > 0 else None
    logp = completion_logprobs(model, batch, inputs.logprob_mask)
    loss, metrics = policy_loss(
        logp,
        None,
        inputs,
        clip_low=cfg.clip_low,
        clip_high=cfg.clip_high,
        beta=cfg.beta,
        ref_logp=ref,
    )
    loss.backward()
    opt.step()

    assert inputs.update_mask.any() and metrics["loss/clip_frac"] == 0.0
    changed_b = 0
    for n, p in model.named_parameters():
        if "lora_" in n:
            changed_b += "lora_B" in n and not torch.equal(p, before[n])
        else:
            assert torch.equal(p, before[n]), f"base weight {n} changed"
    assert changed_b > 0

    # A second inner update on the same batch uses the clipped ratio against the first policy.
    old = logp.detach()
    opt.zero_grad()
    logp2 = completion_logprobs(model, batch, inputs.logprob_mask)
    assert not torch.equal(logp2[inputs.logprob_mask], old[inputs.logprob_mask])  # policy moved
    loss2, _ = policy_loss(
        logp2,
        old,
        inputs,
        clip_low=cfg.clip_low,
        clip_high=cfg.clip_high,
        beta=cfg.beta,
        ref_logp=ref,
    )
    loss2.backward()
    assert torch.isfinite(loss2)


def test_prepare_metrics_per_algorithm() -> None:
    _, tok = build_tiny()
    batch, rewards = hand_batch(tok.eos_token_id, tok.pad_token_id)
    n_tokens = int(batch.completion_mask.sum())  # 5+4+7+2 + 2+2+3+7 = 32
    assert n_tokens == 32
    gen = torch.Generator().manual_seed(0)
    grpo = get_algorithm("grpo").prepare(batch, rewards, GRPOConfig(), gen)
    assert grpo.metrics["tokens/update_frac"] == 1.0
    # Both groups have mixed rewards, so every token has A != 0 and is run forward.
    assert grpo.metrics["tokens/forward_frac"] == 1.0
    assert (
        "reward/zero_std_frac" not in grpo.metrics
    )  # the step computes it, over fresh groups only
    # Equal rewards in group 1 -> its rows need no log-probs when beta == 0.
    flat = rewards.clone()
    flat[4:] = 1.0
    skip = get_algorithm("grpo").prepare(batch, flat, GRPOConfig(), gen)
    assert not skip.logprob_mask[4:].any() and skip.update_mask[4:].any()
    assert skip.metrics["tokens/forward_frac"] == pytest.approx(18 / 32)
    sg = get_algorithm("sgrpo").prepare(batch, rewards, SGRPOConfig(alpha=2, p=0.0, k=2), gen)
    # alpha = k = 2: the first two tokens of each row -> 8 rows * 2 = 16 of 32.
    assert sg.metrics["tokens/update_frac"] == 0.5
    assert sg.update_mask.sum(1).tolist() == [2] * 8 and sg.update_mask[:, :2].all()


def test_registry_and_config_defaults() -> None:
    assert set(ALGORITHMS) == {"grpo", "sgrpo", "tspmo"}
    for algo in ALGORITHMS.values():
        algo.config_cls().validate()
    assert GRPOConfig().aggregation == "seq_mean" and TSPMOConfig().aggregation == "token_mean"
    s = SGRPOConfig()
    assert (s.alpha, s.p, s.k) == (16, 0.3, 64)
    with pytest.raises(ValueError, match="unknown algorithm"):
        get_algorithm("ppo")


@pytest.mark.parametrize(
    "cfg,match",
    [
        (SGRPOConfig(p=1.5), "p=1.5 is not a probability"),
        (SGRPOConfig(p=-0.1), "not a probability"),
        (SGRPOConfig(alpha=-1), "alpha=-1 is negative"),
        (SGRPOConfig(alpha=0, k=0), "k=0 is below 1"),
        (SGRPOConfig(alpha=32, k=16), "k=16 < alpha=32"),
        (GRPOConfig(aggregation="mean"), "aggregation='mean' is unknown"),
        (GRPOConfig(aggregation="constant"), "constant_normaliser"),
        (GRPOConfig(beta=-1), "beta=-1 is negative"),
        (GRPOConfig(clip_low=1.0), "clip_low"),
        (GRPOConfig(selector="nope"), "not registered"),
        (TSPMOConfig(min_visits=0), "min_visits=0"),
        (TSPMOConfig(weighting="log"), "weighting='log'"),
        (TSPMOConfig(replay=ReplayConfig(cut="late")), "replay: cut='late'"),
    ],
)
def test_validation_messages(cfg, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        cfg.validate()
    assert "Fix:" in str(err.value)  # what / why / how to fix


def test_rewards_shape_is_checked() -> None:
    _, tok = build_tiny()
    batch, _ = hand_batch(tok.eos_token_id, tok.pad_token_id)
    with pytest.raises(ValueError, match="one reward per completion"):
        get_algorithm("grpo").prepare(batch, torch.zeros(3), GRPOConfig(), None)

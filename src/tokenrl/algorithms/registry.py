"""The algorithms by name: "grpo", "sgrpo", "tspmo", each a config class and a ``prepare``.

``prepare(batch, rewards, cfg, generator) -> LossInputs`` does credit assignment and token
selection (no model; ``generator`` is one ``torch.Generator`` for the batch, or a list with one
per group so that the draws do not depend on how groups are batched): which tokens enter the loss,
with what advantage and weight, and how the
terms are averaged. The trainer then computes log-probs at ``LossInputs.logprob_mask`` and calls
:func:`~tokenrl.algorithms.losses.policy_loss`. See docs/algorithms.md for the whole sequence.

Defaults are tagged **[paper]** (stated by Lee & Tong, arXiv 2504.20834, or the GRPO paper it
builds on) or **[ours]** (our choice where the paper gives no value; see docs/paper.md).

Shape legend: B = N * G rows (groups contiguous), T = padded completion length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tokenrl.algorithms.advantages import group_advantages
from tokenrl.algorithms.configs import (  # noqa: F401 (re-exported: tokenrl.config imports them here)
    GRPOConfig,
    PolicyLossConfig,
    SGRPOConfig,
    TSPMOConfig,
)
from tokenrl.algorithms.losses import LossInputs, make_loss_inputs
from tokenrl.algorithms.replay import Replay
from tokenrl.algorithms.selectors import SELECTORS, ht_weights, run_selector, run_selector_by_group
from tokenrl.algorithms.trie import group_pairs, pairs_to_token_tensors
from tokenrl.rollout import RolloutBatch

# ---------------------------------------------------------------------------------------------
# prepare: credit assignment + token selection


def _check_batch(batch: RolloutBatch, rewards: torch.Tensor) -> None:
    B = batch.completion_ids.shape[0]
    if rewards.shape != (B,):
        raise ValueError(
            f"rewards has shape {tuple(rewards.shape)}, expected ({B},): "
            "one reward per completion row"
        )


def _forward_frac(logprob_mask: torch.Tensor, completion_mask: torch.Tensor) -> float:
    """Completion tokens the body must run (rows cut after their last log-prob target) / all."""
    T = logprob_mask.shape[1]
    last = (logprob_mask * torch.arange(1, T + 1, device=logprob_mask.device)).amax(dim=1)  # [B]
    return last.sum().item() / max(int(completion_mask.sum()), 1)


def prepare_group(
    batch: RolloutBatch,
    rewards: torch.Tensor,
    cfg: GRPOConfig | SGRPOConfig,
    generator: torch.Generator | list[torch.Generator] | None,
) -> LossInputs:
    """GRPO / S-GRPO: group-normalised advantage A_i on the tokens chosen by the selector.

    ``generator``: one for the whole batch, or a list with one per group (each group's tokens
    are then drawn alone, see :func:`run_selector_by_group`).
    """
    _check_batch(batch, rewards)
    G = batch.group_size
    advantages = group_advantages(rewards, G, scale_by_std=cfg.scale_by_std, eps=cfg.std_eps)  # [B]
    name, options = cfg.selector_spec()
    per_token = {"entropy": batch.token_entropy} if batch.token_entropy is not None else {}
    if batch.entropy_threshold is not None:  # the entropy selector's per_batch cut (tokenrl.step)
        options = {**options, "threshold": batch.entropy_threshold}
    if isinstance(generator, list):
        update_mask = run_selector_by_group(
            name, batch.completion_mask, generator, G, options, per_token
        )  # [B, T]
    else:
        update_mask = run_selector(name, batch.completion_mask, generator, options, per_token)
    token_adv = advantages.to(update_mask.device)[:, None].expand(update_mask.shape)  # [B, T]
    # Horvitz-Thompson: weights 1 / pi, denominators over every real token (an unbiased loss)
    unbiased = getattr(SELECTORS[name], "weighted", False) or getattr(cfg, "unbiased", False)
    inputs = make_loss_inputs(
        update_mask,
        token_adv,
        token_weights=ht_weights(name, batch.completion_mask, options) if unbiased else None,
        aggregation=cfg.aggregation,
        constant=cfg.constant_normaliser,
        beta=cfg.beta,
        population=batch.completion_mask if unbiased else None,
    )
    n_tokens = max(int(batch.completion_mask.sum()), 1)
    inputs.metrics.update(
        {
            "tokens/update_frac": update_mask.sum().item() / n_tokens,
            "tokens/forward_frac": _forward_frac(inputs.logprob_mask, batch.completion_mask),
            "adv/abs_mean": advantages.abs().mean().item(),
        }
    )
    return inputs


def prepare_tspmo(
    batch: RolloutBatch,
    rewards: torch.Tensor,
    cfg: TSPMOConfig,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> LossInputs:
    """T-SPMO: one trie per prompt group; each unique (prefix, token) pair with A != 0 once."""
    _check_batch(batch, rewards)
    G = batch.group_size
    completions = batch.completion_token_lists()
    r = rewards.detach().float().cpu().tolist()
    pairs_by_group = [
        group_pairs(
            completions[i : i + G],
            r[i : i + G],
            normalise_std=cfg.normalise_std,
            eps=cfg.std_eps,
            min_visits=cfg.min_visits,
        )
        for i in range(0, len(completions), G)
    ]
    credit = pairs_to_token_tensors(
        pairs_by_group,
        group_size=G,
        num_positions=batch.completion_ids.shape[1],
        weighting=cfg.weighting,
        device=batch.completion_ids.device,
    )
    inputs = make_loss_inputs(
        credit.update_mask,
        credit.token_advantages,
        token_weights=credit.token_weights,
        aggregation=cfg.aggregation,
        constant=cfg.constant_normaliser,
        beta=cfg.beta,
    )
    n_tokens = max(int(batch.completion_mask.sum()), 1)
    inputs.metrics.update(
        {
            "tokens/update_frac": credit.num_pairs / n_tokens,
            "tokens/nonzero_adv_frac": credit.nonzero_adv_tokens / n_tokens,
            "tokens/forward_frac": _forward_frac(inputs.logprob_mask, batch.completion_mask),
            "tspmo/pairs": float(credit.num_pairs),
        }
    )
    return inputs


# ---------------------------------------------------------------------------------------------
# the registry


def tspmo_replay(cfg: TSPMOConfig, seed: int) -> Replay | None:
    """T-SPMO's replay groups (``tspmo.replay``), or None when ``replay.every`` is 0."""
    return Replay(cfg.replay, seed) if cfg.replay.every > 0 else None


@dataclass(frozen=True)
class Algorithm:
    """An algorithm by name: its config class, its credit-assignment step and, optionally, a
    source of extra prompts for each step (``replay(cfg, seed) -> Replay | None``)."""

    name: str
    config_cls: type[PolicyLossConfig]
    prepare: Callable[
        [RolloutBatch, torch.Tensor, Any, torch.Generator | list[torch.Generator] | None],
        LossInputs,
    ]
    description: str
    replay: Callable[[Any, int], Replay | None] | None = None


ALGORITHMS: dict[str, Algorithm] = {
    "grpo": Algorithm(
        "grpo", GRPOConfig, prepare_group, "full-token GRPO (every completion token)"
    ),
    "sgrpo": Algorithm(
        "sgrpo", SGRPOConfig, prepare_group, "S-GRPO: alpha early tokens + Bernoulli(p) up to k"
    ),
    "tspmo": Algorithm(
        "tspmo",
        TSPMOConfig,
        prepare_tspmo,
        "T-SPMO: (prefix, token) pairs of the group's trie",
        replay=tspmo_replay,
    ),
}


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]

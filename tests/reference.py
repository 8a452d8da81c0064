"""Reference implementations the tests compare the library against (not on the training path).

* :func:`full_logits_logprobs`: the naive full-vocabulary log-probs (builds [B, L, V]);
* :func:`grpo_loss`, :func:`sgrpo_loss`, :func:`tspmo_loss`: each method's loss written out from
  its equation, for hand-computed checks of :func:`tokenrl.algorithms.policy_loss`.

``benchmarks/update_memory.py`` uses the first two as the "plain" baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from tokenrl.algorithms.losses import (
    AGGREGATIONS,
    seq_mean_coef,
    token_mean_coef,
    weighted_policy_loss,
)
from tokenrl.rollout import mask_position_ids


def full_logits_logprobs(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Naive reference: ``model(...).logits`` -> log_softmax -> gather; builds [B, L, V].

    For tests and the memory benchmark only. Returns [B, L] float32, position 0 = 0.
    """
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=mask_position_ids(attention_mask),
        use_cache=False,
    ).logits  # [B, L, V]
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [B, L-1, V]
    picked = logp.gather(2, input_ids[:, 1:, None]).squeeze(2)  # [B, L-1]
    return torch.cat([torch.zeros_like(picked[:, :1]), picked], dim=1)  # [B, L]


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
    aggregation: str = "seq_mean",
    constant: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Full-token GRPO (DeepSeekMath, https://arxiv.org/abs/2402.03300 eq. 3):

        J = 1/G sum_i 1/|o_i| sum_t [min(rho A_i, clip(rho, 1-e_lo, 1+e_hi) A_i) - beta KL_it]

    with "seq_mean" aggregation (others: "token_mean", "constant"). ``logp``, ``old_logp``,
    ``ref_logp``, ``completion_mask`` [B, T]; ``advantages`` [B] (from group_advantages).
    """
    token_adv = advantages[:, None].float().expand_as(logp)  # [B, T]
    coef = AGGREGATIONS[aggregation](completion_mask, None, constant=constant)  # [B, T]
    return weighted_policy_loss(
        logp,
        old_logp,
        token_adv,
        coef,
        completion_mask,
        clip_low=clip_low,
        clip_high=clip_high,
        beta=beta,
        ref_logp=ref_logp,
    )


def sgrpo_loss(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    update_mask: torch.Tensor,
    *,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """S-GRPO (Lee & Tong, https://arxiv.org/abs/2504.20834), one on-policy step:

        J = 1/G sum_i 1/|T_i| sum_{t in T_i} [pi(y_it) / sg(pi(y_it))] A_i  -  beta KL (on T_i)

    ``logp``, ``ref_logp`` [B, T]; ``advantages`` [B]; ``update_mask`` [B, T] bool = T_i
    (from sgrpo_select).
    """
    token_adv = advantages[:, None].float().expand_as(logp)  # [B, T]
    coef = seq_mean_coef(update_mask, None)  # [B, T]
    return weighted_policy_loss(
        logp, None, token_adv, coef, update_mask, beta=beta, ref_logp=ref_logp
    )


def tspmo_loss(
    logp: torch.Tensor,
    token_advantages: torch.Tensor,
    update_mask: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    *,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """T-SPMO (Lee & Tong, https://arxiv.org/abs/2504.20834; pair advantage is ours, see trie.py):

        J = sum_{(p,v) in U} w(p,v) [pi(v|x,p) / sg(pi(v|x,p))] A(p,v) / sum_{(p,v) in U} w(p,v)

    Each pair sits at one (row, position) of ``update_mask`` [B, T] bool, with its A(p, v) in
    ``token_advantages`` [B, T] and w in ``token_weights`` [B, T] (None = uniform).
    """
    coef = token_mean_coef(update_mask, token_weights)  # [B, T]
    return weighted_policy_loss(
        logp, None, token_advantages, coef, update_mask, beta=beta, ref_logp=ref_logp
    )

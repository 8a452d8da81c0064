"""Policy losses as pure functions of tensors, built from three separate choices.

* **which tokens**: a boolean ``update_mask`` (from a selector or the T-SPMO trie);
* **per-token objective**: the plain on-policy policy gradient with ratio pi / sg(pi)
  (:func:`pg_objective`, the first update on a batch: ``old_logp=None``), or the PPO-clipped
  ratio pi / pi_old (:func:`clipped_objective`, later inner updates that reuse the batch);
* **aggregation** (:data:`AGGREGATIONS`): how token terms are averaged, written as one
  coefficient c[b, t] per token so that ``loss = -sum_{b,t} c[b,t] * (objective - beta * KL)``.
  Coefficients are computed once from the whole batch, so summing the losses of row slices
  (micro-batches, :meth:`LossInputs.select_rows`) gives exactly the loss of the whole batch.

Shape legend: B = completion rows, T = padded completion length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

# ---------------------------------------------------------------------------------------------
# per-token objectives (maximised)


def pg_objective(
    logp: torch.Tensor, advantages: torch.Tensor, active: torch.Tensor
) -> torch.Tensor:
    """On-policy policy-gradient term  rho * A  with  rho = pi / sg(pi)  (= 1 in value).

    Its gradient is A * grad log pi. ``logp``, ``advantages`` [B, T]; ``active`` [B, T] bool
    (positions whose log-prob was computed; elsewhere rho is set to 1).
    """
    # logp - logp.detach() is 0 in value; where() keeps a non-finite unused logp out of it.
    log_ratio = torch.where(active, logp - logp.detach(), torch.zeros_like(logp))  # [B, T]
    return torch.exp(log_ratio) * advantages


def clipped_objective(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    active: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clip  min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A),  rho = pi / pi_old.

    https://arxiv.org/abs/1707.06347 eq. 7, as used by GRPO (https://arxiv.org/abs/2402.03300
    eq. 3); separate low/high bounds as in DAPO (https://arxiv.org/abs/2503.14476).
    Returns the objective [B, T] and ``is_clipped`` [B, T] bool (the clipped branch won, so the
    token's gradient is zero).
    """
    # Inactive positions hold no log-prob: pin their ratio to 1 so exp() cannot overflow.
    log_ratio = torch.where(active, logp - old_logp, torch.zeros_like(logp))  # [B, T]
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    return torch.minimum(unclipped, clipped), (clipped < unclipped) & active


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate  exp(ref - logp) - (ref - logp) - 1  (>= 0).

    Schulman's k3 estimator (http://joschu.net/blog/kl-approx.html), GRPO eq. 4. [B, T].
    """
    diff = torch.where(active, ref_logp - logp, torch.zeros_like(logp))  # [B, T]
    return torch.exp(diff) - diff - 1.0


# ---------------------------------------------------------------------------------------------
# aggregations: token coefficients c[b, t]


def _weights(update_mask: torch.Tensor, token_weights: torch.Tensor | None) -> torch.Tensor:
    w = update_mask.to(torch.float32)  # [B, T]
    return w if token_weights is None else w * token_weights.to(torch.float32)


def seq_mean_coef(
    update_mask: torch.Tensor,
    token_weights: torch.Tensor | None,
    *,
    constant: float | None = None,
    population: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over each row's tokens, then mean over the B rows (original GRPO, S-GRPO).

    c[b, t] = w[b, t] / (B * sum_t' w[b, t']); a row with no token counts in B with 0. With
    ``population`` (the [B, T] mask of every real token) the row's denominator is its number of
    real tokens n_b instead: c = w / (B n_b), which with Horvitz-Thompson weights w = 1 / pi makes
    E[c] the full-token coefficient 1 / (B n_b), so the masked loss is unbiased.
    """
    w = _weights(update_mask, token_weights)  # [B, T]
    per_row = (w if population is None else population.to(torch.float32)).sum(dim=1, keepdim=True)
    # An empty row has w = 0 everywhere: divide by 1 instead of 0 (its coefficients stay 0).
    return w / torch.where(per_row > 0, per_row, torch.ones_like(per_row)) / w.shape[0]


def token_mean_coef(
    update_mask: torch.Tensor,
    token_weights: torch.Tensor | None,
    *,
    constant: float | None = None,
    population: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted mean over all selected tokens of the batch: c = w / sum(w).

    For T-SPMO this is the mean over unique pairs (each pair occupies exactly one position),
    weighted by ``token_weights`` (1 or the visit count N(p + v)). With ``population`` the
    denominator is the number of real tokens of the batch (unbiased with 1 / pi weights).
    """
    w = _weights(update_mask, token_weights)  # [B, T]
    total = w.sum() if population is None else population.to(torch.float32).sum()
    return w / total if total > 0 else w


def constant_coef(
    update_mask: torch.Tensor,
    token_weights: torch.Tensor | None,
    *,
    constant: float | None = None,
    population: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dr. GRPO (https://arxiv.org/abs/2503.20783): c = w / (B * constant), e.g. max_new_tokens."""
    if constant is None or constant <= 0:
        raise ValueError("the 'constant' aggregation needs constant > 0 (set it to max_new_tokens)")
    w = _weights(update_mask, token_weights)  # [B, T]
    return w / (w.shape[0] * constant)


AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "seq_mean": seq_mean_coef,
    "token_mean": token_mean_coef,
    "constant": constant_coef,
}


def aggregation_denominator(
    aggregation: str,
    update_mask: torch.Tensor,
    token_weights: torch.Tensor | None,
    population: torch.Tensor | None = None,
) -> float:
    """The batch-wide denominator D of an aggregation: B rows ("seq_mean", "constant") or the
    sum of token weights ("token_mean"). Each coefficient c[b, t] is a per-row quantity / D.

    D adds up over disjoint sets of rows, so a data-parallel run whose processes each hold part
    of the batch gets the whole-batch coefficients by summing D over processes and scaling each
    process's c by D_local / D_all (:func:`rescale_coefficients`).
    """
    if aggregation == "token_mean":
        if population is not None:
            return float(population.sum())
        return float(_weights(update_mask, token_weights).sum())
    return float(update_mask.shape[0])


# ---------------------------------------------------------------------------------------------
# what an algorithm hands to the loss


@dataclass
class LossInputs:
    """Everything the policy loss needs besides log-probs (from ``Algorithm.prepare``)."""

    update_mask: torch.Tensor  # [B, T] bool, True = this token's term is in the loss
    token_advantages: torch.Tensor  # [B, T] float32, advantage of each token, 0 off update_mask
    token_weights: torch.Tensor | None  # [B, T] float32 relative token weights; None = all 1
    aggregation: str  # name in AGGREGATIONS
    loss_coef: torch.Tensor  # [B, T] float32, c[b, t] of the aggregation over the whole batch
    logprob_mask: torch.Tensor  # [B, T] bool, True = the loss needs log pi here
    metrics: dict[str, float] = field(default_factory=dict)
    population: torch.Tensor | None = None  # [B, T] bool: the denominators count these (unbiased)

    def select_rows(self, rows: torch.Tensor) -> LossInputs:
        """The same inputs for a subset of rows (a micro-batch); c keeps the whole-batch scale."""
        return replace(
            self,
            update_mask=self.update_mask[rows],
            token_advantages=self.token_advantages[rows],
            token_weights=None if self.token_weights is None else self.token_weights[rows],
            loss_coef=self.loss_coef[rows],
            logprob_mask=self.logprob_mask[rows],
            population=None if self.population is None else self.population[rows],
        )


def rescale_coefficients(inputs: LossInputs, local: float, total: float) -> LossInputs:
    """``inputs`` with c computed as if the denominator were ``total`` instead of ``local``.

    For a shard of a batch: ``local`` = :func:`aggregation_denominator` of the shard, ``total``
    = the sum over all shards; the shards' losses then add up to the whole batch's loss. A
    shard with ``local == 0`` has c = 0 everywhere and is returned unchanged (also when total is 0).
    """
    if local == 0 or total == 0:
        return inputs
    return replace(inputs, loss_coef=inputs.loss_coef * (local / total))


def make_loss_inputs(
    update_mask: torch.Tensor,
    token_advantages: torch.Tensor,
    *,
    token_weights: torch.Tensor | None = None,
    aggregation: str,
    constant: float | None = None,
    beta: float = 0.0,
    metrics: dict[str, float] | None = None,
    population: torch.Tensor | None = None,
) -> LossInputs:
    """Build :class:`LossInputs`: zero advantages off the mask, compute c[b, t] and logprob_mask.

    With ``beta == 0`` a token whose advantage is exactly 0 contributes nothing (value and
    gradient), so ``logprob_mask`` leaves it out and rows of all-equal-reward groups are never
    run forward. With ``beta > 0`` its KL term still counts, so every update token is kept.
    ``population`` (every real token): the aggregation's denominators count it, not the selected
    tokens (with Horvitz-Thompson ``token_weights``, an unbiased estimate of the full-token loss).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(
            f"unknown aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}"
        )
    token_advantages = torch.where(
        update_mask, token_advantages.float(), torch.zeros((), device=update_mask.device)
    )
    loss_coef = AGGREGATIONS[aggregation](
        update_mask, token_weights, constant=constant, population=population
    )  # [B, T]
    logprob_mask = update_mask if beta > 0 else update_mask & (token_advantages != 0)  # [B, T]
    return LossInputs(
        update_mask=update_mask,
        token_advantages=token_advantages,
        token_weights=token_weights,
        aggregation=aggregation,
        loss_coef=loss_coef,
        logprob_mask=logprob_mask,
        metrics=dict(metrics or {}),
        population=population,
    )


# ---------------------------------------------------------------------------------------------
# losses


def weighted_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    token_advantages: torch.Tensor,
    loss_coef: torch.Tensor,
    active: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """loss = -sum_{b,t} c[b,t] * (objective[b,t] - beta * KL[b,t]).

    objective = rho * A with rho = pi / sg(pi) when ``old_logp`` is None (first update on a
    batch), else the PPO-clipped term with rho = pi / pi_old. All tensors [B, T]; ``active``
    marks where ``logp`` (and ``old_logp``, ``ref_logp``) hold real log-probs.
    """
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp: compute it with reference_logprobs(model, ...)")
    if old_logp is None:
        objective = pg_objective(logp, token_advantages, active)  # [B, T]
        is_clipped = torch.zeros_like(active)
    else:
        objective, is_clipped = clipped_objective(
            logp,
            old_logp.detach(),
            token_advantages,
            active,
            clip_low=clip_low,
            clip_high=clip_high,
        )
    policy = -(loss_coef * objective).sum()
    kl = (
        (loss_coef * k3_kl(logp, ref_logp.detach(), active)).sum()
        if beta > 0
        else torch.zeros((), device=logp.device)
    )
    loss = policy + beta * kl
    n_active = max(int(active.sum()), 1)
    metrics = {
        "loss/policy": policy.item(),
        "loss/kl": kl.item(),
        "loss/total": loss.item(),
        "loss/clip_frac": is_clipped.sum().item() / n_active,
    }
    return loss, metrics


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    inputs: LossInputs,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of any registered algorithm: :func:`weighted_policy_loss` on ``inputs``.

    ``logp``, ``old_logp``, ``ref_logp`` [B, T]: log-probs of the completion tokens at
    ``inputs.logprob_mask`` (0 elsewhere), e.g. from ``completion_logprobs``.
    """
    if beta > 0 and bool((inputs.update_mask & ~inputs.logprob_mask).any()):
        raise ValueError(
            "beta > 0 but the inputs were prepared with beta = 0, so zero-advantage tokens have no "
            "log-probs for their KL term; pass the same beta to the config used by prepare()"
        )
    return weighted_policy_loss(
        logp,
        old_logp,
        inputs.token_advantages,
        inputs.loss_coef,
        inputs.logprob_mask,
        clip_low=clip_low,
        clip_high=clip_high,
        beta=beta,
        ref_logp=ref_logp,
    )

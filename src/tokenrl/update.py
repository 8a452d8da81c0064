"""The policy update of a step: log-probs at the selected tokens, the loss, AdamW step(s)."""

from __future__ import annotations

import torch

from tokenrl.algorithms.logprobs import completion_logprobs, reference_logprobs
from tokenrl.algorithms.losses import LossInputs, policy_loss
from tokenrl.attention import score_attention
from tokenrl.config import AUTOCAST_DTYPES
from tokenrl.inplacelora import inplace_lora
from tokenrl.models import autocast
from tokenrl.rollout import RolloutBatch, select_rows
from tokenrl.trainer import Trainer


def update_policy(tr: Trainer, batch: RolloutBatch, inputs: LossInputs) -> dict[str, float]:
    """optim.inner_updates AdamW steps on one batch; groups split into optim.micro_batches.

    The loss coefficients were computed over the whole batch, so the micro-batch losses add up
    to the whole-batch loss and accumulation changes memory, not the update.
    """
    cfg, algo_cfg = tr.cfg, tr.cfg.algo_config()
    has_target = inputs.logprob_mask.any(dim=1)  # [B] rows that need a forward pass
    if not tr.dist.any(
        bool(has_target.any())
    ):  # on any rank: a rank without targets still joins the all-reduce
        # every group had equal rewards (or no pairs): no gradient signal, nothing to run
        return {
            "update/skipped": 1.0,
            "update/nonfinite": 0.0,
            "loss/policy": 0.0,
            "loss/kl": 0.0,
            "optim/grad_norm": 0.0,
        }
    G = batch.group_size
    groups = torch.arange(batch.prompt_ids.shape[0] // G)
    micro = [
        torch.cat([torch.arange(g * G, (g + 1) * G) for g in chunk.tolist()])
        for chunk in groups.tensor_split(min(cfg.optim.micro_batches, len(groups)))
        if len(chunk)
    ]
    micro = [rows[has_target[rows]] for rows in micro]
    micro = [rows for rows in micro if len(rows)]
    old_logp: dict[int, torch.Tensor] = {}
    ref_logp: dict[
        int, torch.Tensor
    ] = {}  # the reference never changes: computed once per micro-batch
    totals: dict[str, float] = {}
    grad_norm = torch.zeros(())
    skipped = 0.0
    for inner in range(cfg.optim.inner_updates):
        tr.optimizer.zero_grad(set_to_none=True)
        loss_finite = True
        for j, rows in enumerate(micro):
            sub, sub_inputs = select_rows(batch, rows), inputs.select_rows(rows)
            # forward and backward: a checkpointed layer recomputes its forward in backward
            with (
                score_attention(tr.model, cfg.optim.score_attention),
                inplace_lora(tr.model, cfg.optim.inplace_lora),
            ):
                with autocast(tr.lm.device, AUTOCAST_DTYPES[cfg.model.autocast]):  # forward only
                    logp = completion_logprobs(
                        tr.model, sub, sub_inputs.logprob_mask, share_prompt=cfg.optim.share_prompt
                    )  # [b, T]
                    if algo_cfg.beta > 0 and j not in ref_logp:
                        ref_logp[j] = reference_logprobs(
                            tr.model, sub, sub_inputs.logprob_mask,
                            share_prompt=cfg.optim.share_prompt,
                        )  # fmt: skip
                loss, m = policy_loss(
                    logp,
                    old_logp.get(j),  # None on the first inner update: ratio pi / sg(pi)
                    sub_inputs,
                    clip_low=algo_cfg.clip_low,
                    clip_high=algo_cfg.clip_high,
                    beta=algo_cfg.beta,
                    ref_logp=ref_logp.get(j),
                )
                loss_finite = loss_finite and bool(torch.isfinite(loss))
                loss.backward()
            if inner == 0 and cfg.optim.inner_updates > 1:
                old_logp[j] = logp.detach()  # the rollout policy, for the PPO ratio later
            if inner == cfg.optim.inner_updates - 1:
                for k, v in m.items():
                    totals[k] = totals.get(k, 0.0) + v
        params = [p for p in tr.model.parameters() if p.requires_grad]
        tr.dist.all_reduce_grads(
            params
        )  # data-parallel: sum the ranks' gradients (whole-batch loss)
        loss_finite = not tr.dist.any(not loss_finite)  # skip on every rank or on none
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if not (loss_finite and torch.isfinite(grad_norm)):
            skipped += 1.0  # a non-finite gradient would poison AdamW's moments: skip this update
            tr.nonfinite_streak += 1
            continue
        tr.optimizer.step()
        tr.nonfinite_streak = 0
    if "loss/clip_frac" in totals:  # a fraction per micro-batch: average, do not add up
        totals["loss/clip_frac"] /= len(micro)
    return {
        **totals,
        "optim/grad_norm": float(grad_norm),
        "update/skipped": skipped,
        "update/nonfinite": skipped,
    }

"""The policy's predictive entropy at each completion token, for selectors that choose tokens by it.

H_t = -sum_v pi(v | x, y_<t) log pi(v | x, y_<t) = logsumexp(z) - sum_v softmax(z)_v z_v, with
z = logits / temperature (the distribution the token was sampled from, before top-p; TRL's
``top_entropy_quantile`` uses the same). :func:`token_entropy` runs the body once under
``no_grad`` and applies the LM head to ``chunk_size`` positions at a time, so at most
[chunk_size, V] logits exist at once, never [B, T, V]; the gradient pass then runs the LM head
only at the selected positions.

Shape legend: B = rows, P = padded prompt length, T = padded completion length, V = vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from tokenrl.models import decoder_and_head
from tokenrl.rollout import RolloutBatch, mask_position_ids


def entropy_of_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy (nats) of softmax(logits / temperature) along the last dimension, in float32."""
    z = logits.float() / temperature
    return torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(dim=-1)


@torch.no_grad()
def token_entropy(
    model: nn.Module, batch: RolloutBatch, *, temperature: float = 1.0, chunk_size: int = 256
) -> torch.Tensor:
    """H_t at every real completion token of ``batch`` -> [B, T] float32 (0 on padding)."""
    body, head = decoder_and_head(model)
    was_training = model.training
    model.eval()  # the policy's distribution itself, without LoRA dropout
    try:
        return _entropy(body, head, batch, temperature, chunk_size)
    finally:
        model.train(was_training)


def _entropy(
    body: nn.Module, head: nn.Module, batch: RolloutBatch, temperature: float, chunk_size: int
) -> torch.Tensor:
    ids, attn = batch.input_ids, batch.attention_mask.to(torch.long)  # [B, P + T]
    states = body(
        input_ids=ids, attention_mask=attn, position_ids=mask_position_ids(attn), use_cache=False
    ).last_hidden_state  # [B, P + T, H]
    P = batch.prompt_ids.shape[1]
    r, t = batch.completion_mask.nonzero(as_tuple=True)  # [n], [n]
    hidden = states[r, P + t - 1]  # [n, H]: the state before token t predicts it
    del states
    out = torch.zeros(batch.completion_mask.shape, dtype=torch.float32, device=ids.device)
    for i in range(0, hidden.shape[0], chunk_size):
        part = slice(i, i + chunk_size)
        out[r[part], t[part]] = entropy_of_logits(head(hidden[part]), temperature)  # [chunk]
    return out

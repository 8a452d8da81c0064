"""Randomness keyed to a row, not to the batch around it: seeds derived from names and numbers
(:func:`derive_seed`) and the Gumbel-max sampler that draws each row from its own generator
(:class:`KeyedSampler`), so a completion is the same whichever prompts share its forward pass."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts``, the same in every process and Python run (no ``hash()``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class KeyedSampler:
    """Sample each row from its own generator: argmax(scores + Gumbel noise) (Gumbel-max trick).

    With i.i.d. Gumbel(0, 1) noise g_v, argmax_v (s_v + g_v) is distributed as softmax(s), so
    greedy decoding of the noisy scores samples from the (temperature / top-p warped) model. Row
    b's noise comes from a generator seeded with ``seeds[b]`` that draws V numbers per generated
    token, so its t-th token depends only on its own seed and logits, never on the batch around
    it. Scores [B, V] -> [B, V]. A ``generate`` logits processor (called once per new token).
    """

    def __init__(self, seeds: list[int], device: torch.device) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        V = scores.shape[-1]
        u = torch.stack(
            [torch.rand(V, generator=g, device=scores.device) for g in self.generators]
        )  # [B, V]
        # u = 0 would give -inf noise; clamp to the smallest positive float instead.
        gumbel = -torch.log(-torch.log(u.clamp(min=torch.finfo(u.dtype).tiny)))  # [B, V]
        return scores + gumbel.to(scores.dtype)

"""Randomness keyed to a row, not to the batch around it: seeds derived from names and numbers
(:func:`derive_seed`) and the sampler that draws each row from its own generator
(:class:`KeyedSampler`), so a completion is the same whichever prompts share its forward pass."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts``, the same in every process and Python run (no ``hash()``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


BLOCK = 1024  # tokens per block of KeyedSampler.sample's two-level search


class KeyedSampler:
    """Sample each row from its own generator by inverse transform: one uniform per row and token.

    Row b's t-th token is the first index v with ``cdf_v > u_b cdf_V``, where ``cdf`` is the
    running sum of softmax(scores) over the vocabulary and ``u_b`` in [0, 1) the t-th draw of a
    generator seeded with ``seeds[b]``: P(v) = cdf_v - cdf_{v-1} = softmax(scores)_v, and the token
    depends only on the row's own seed and logits, never on the batch around it.

    One number per row and step (the Gumbel-max trick this replaced drew V per row: on a 2-core
    CPU, 47 ms of noise per decode step of 32 rows x 151,936 tokens against 6 ms for this), and
    rows that share their logits share the cumulative sum (:meth:`sample`'s ``of_row``).
    """

    def __init__(self, seeds: list[int], device: torch.device) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.device = device

    def uniforms(self) -> torch.Tensor:
        """The next draw in [0, 1) of every row's generator, [B] float64."""
        return torch.cat(
            [torch.rand(1, generator=g, device=self.device, dtype=torch.float64)
             for g in self.generators]
        )  # fmt: skip

    def sample(self, scores: torch.Tensor, of_row: torch.Tensor | None = None) -> torch.Tensor:
        """One token per row [B] from softmax(scores) [R, V]; row b reads ``scores[of_row[b]]``
        (default: row b), so rows with the same logits pass them once.

        The search runs in two levels so no [B, V] tensor is made: the running sum over blocks of
        :data:`BLOCK` tokens (float64) finds the block, the running sum inside that block the
        token. Exact up to float rounding: a token with probability 0 (top-p) is never drawn.
        """
        u = self.uniforms().to(scores.device)  # [B]
        R, V = scores.shape
        if of_row is None:
            of_row = torch.arange(R, device=scores.device)
        probs = torch.softmax(scores.float(), dim=-1)  # [R, V]
        nb, rest = divmod(V, BLOCK)
        sums = probs.as_strided((R, nb, BLOCK), (V, BLOCK, 1)).sum(-1)  # [R, nb]
        if rest:
            sums = torch.cat([sums, probs[:, nb * BLOCK :].sum(-1, keepdim=True)], 1)
        block_cdf = sums.double().cumsum(-1)[of_row]  # [B, blocks]
        target = u * block_cdf[:, -1]  # [B]
        # the block where the running sum passes the target (u * total may round up to the
        # total: then the last block with mass)
        block = torch.searchsorted(block_cdf, target[:, None], right=True)[:, 0]
        last = torch.searchsorted(block_cdf, block_cdf[:, -1:].contiguous(), right=False)[:, 0]
        block = torch.minimum(block, last)  # [B]
        before = torch.where(
            block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)[:, None])[:, 0], 0.0
        )
        cols = block[:, None] * BLOCK + torch.arange(BLOCK, device=probs.device)  # [B, BLOCK]
        inside = probs[of_row[:, None], cols.clamp(max=V - 1)].double()  # [B, BLOCK]
        inside = inside.masked_fill_(cols >= V, 0.0).cumsum_(-1)
        pos = torch.searchsorted(inside, (target - before)[:, None], right=True)[:, 0]
        # rounding between the block's sum and its running sum: the block's last token with mass
        pos = torch.minimum(
            pos, torch.searchsorted(inside, inside[:, -1:].contiguous(), right=False)[:, 0]
        )
        return block * BLOCK + pos

    def __call__(self, input_ids: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
        """As a ``generate`` logits processor: scores [B, V] -> 0 at each row's sampled token and
        -inf elsewhere, so the greedy argmax ``generate`` runs picks the sample."""
        token = self.sample(scores)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, token[:, None], 0.0)

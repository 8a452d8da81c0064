"""Token selectors: the S-GRPO rule, the full-token selector, user-registered selectors."""

from __future__ import annotations

import pytest
import torch

from tokenrl.algorithms import SELECTORS, GRPOConfig, register_selector, select_all, sgrpo_select
from tokenrl.algorithms.selectors import run_selector


def lengths_mask(lengths: list[int], T: int) -> torch.Tensor:
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # [B, T]


def sequential_sgrpo(completion_mask: torch.Tensor, u: torch.Tensor, alpha: int, p: float, k: int):
    """The rule of docs/paper.md written literally as a scan (reference for the vectorised one)."""
    out = torch.zeros_like(completion_mask)
    for b in range(completion_mask.shape[0]):
        selected = 0
        for t in range(completion_mask.shape[1]):
            if not completion_mask[b, t]:
                continue  # padding is never eligible
            if t < alpha:
                out[b, t] = True
                selected += 1
            elif selected < k:
                if u[b, t] < p:
                    out[b, t] = True
                    selected += 1
            else:
                break  # cap reached: the scan stops
    return out


@pytest.mark.parametrize(
    "alpha,p,k", [(3, 0.5, 6), (0, 0.3, 4), (5, 0.7, 5), (2, 1.0, 7), (4, 0.0, 9)]
)
def test_sgrpo_equals_the_sequential_scan(alpha: int, p: float, k: int) -> None:
    mask = lengths_mask([12, 7, 0, 3, 12, 9] * 20, 12)
    gen = torch.Generator().manual_seed(1)
    got = sgrpo_select(mask, gen, alpha=alpha, p=p, k=k)
    # Same seed -> the same uniforms the selector drew.
    u = torch.rand(mask.shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, sequential_sgrpo(mask, u, alpha, p, k))


def test_sgrpo_mask_statistics() -> None:
    alpha, p, k, T = 4, 0.3, 12, 40
    lengths = torch.randint(1, T + 1, (4000,), generator=torch.Generator().manual_seed(0))
    mask = lengths_mask(lengths.tolist(), T)
    sel = sgrpo_select(mask, torch.Generator().manual_seed(2), alpha=alpha, p=p, k=k)
    early = mask & (torch.arange(T) < alpha)
    assert torch.equal(sel & early, early)  # first alpha real tokens: always in
    assert not (sel & ~mask).any()  # padding: never in
    assert sel.sum(1).max() <= k  # the cap counts the early tokens and is never exceeded
    # After alpha and while under the cap, each real token is in with probability p.
    count_before = torch.cumsum(sel.long(), 1) - sel.long()  # selected strictly before t
    eligible = mask & ~early & (count_before < k)
    n = int(eligible.sum())
    rate = sel[eligible].float().mean().item()
    sigma = (p * (1 - p) / n) ** 0.5
    assert n > 20_000 and abs(rate - p) < 4 * sigma
    # Once the cap is reached nothing more is selected.
    assert not (sel & (count_before >= k)).any()


def test_sgrpo_hand_cases() -> None:
    mask = lengths_mask([5, 2], 6)
    gen = torch.Generator().manual_seed(0)
    # p = 0: only the first alpha = 3 real tokens (row 1 has 2).
    expected = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(sgrpo_select(mask, gen, alpha=3, p=0.0, k=6), expected)
    # p = 1, k = 4: the first 4 real tokens.
    expected = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(sgrpo_select(mask, gen, alpha=1, p=1.0, k=4), expected)
    # alpha >= length: everything real, whatever p.
    assert torch.equal(sgrpo_select(mask, gen, alpha=6, p=0.0, k=6), mask)


def test_sgrpo_is_redrawn_each_call() -> None:
    mask = lengths_mask([50] * 4, 50)
    gen = torch.Generator().manual_seed(0)
    a = sgrpo_select(mask, gen, alpha=2, p=0.5, k=50)
    b = sgrpo_select(mask, gen, alpha=2, p=0.5, k=50)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("n,expected", [(100, 0.412), (150, 0.3733), (200, 0.319)])
def test_default_sgrpo_token_fraction(n: int, expected: float) -> None:
    # Defaults alpha=16, p=0.3, k=64. Expected |T_i| = E[min(64, 16 + X)], X ~ Bin(n - 16, 0.3):
    # n=100: 16 + 0.3*84 = 41.2 (cap never bites) -> 0.412; n=150: 16 + 0.3*134 = 56.2 (cap
    # bites in ~3% of draws, -0.2) -> ~0.373; n=200: mean 71.2 > 64 so |T_i| = 64 except when
    # X < 48 (P ~ 0.11) -> ~63.8 / 200 = 0.319. All inside the paper's 30-50%.
    mask = lengths_mask([n] * 2000, n)
    sel = sgrpo_select(mask, torch.Generator().manual_seed(3), alpha=16, p=0.3, k=64)
    frac = sel.sum().item() / mask.sum().item()
    assert abs(frac - expected) < 0.005
    assert 0.30 <= frac <= 0.50


def test_select_all_copies_the_mask() -> None:
    mask = lengths_mask([3, 1], 4)
    out = select_all(mask)
    assert torch.equal(out, mask) and out.data_ptr() != mask.data_ptr()


def test_register_selector_and_checks() -> None:
    def last_token(completion_mask: torch.Tensor, generator, *, also_first: bool = False):
        out = torch.zeros_like(completion_mask)
        last = completion_mask.sum(1) - 1  # [B]
        out[torch.arange(len(last)), last.clamp(min=0)] = completion_mask.any(1)
        if also_first:
            out[:, 0] |= completion_mask[:, 0]
        return out

    register_selector("test_last_token", last_token)
    try:
        assert GRPOConfig(selector="test_last_token").validate() is None
        mask = lengths_mask([3, 1], 4)
        out = run_selector("test_last_token", mask, None, {"also_first": True})
        assert out.tolist() == [[True, False, True, False], [True, False, False, False]]
        with pytest.raises(ValueError, match="already registered"):
            register_selector("test_last_token", last_token)
        register_selector("test_pad", lambda m, g: torch.ones_like(m), overwrite=True)
        with pytest.raises(ValueError, match="padding"):
            run_selector("test_pad", mask, None, {})
        with pytest.raises(ValueError, match="unknown token selector"):
            run_selector("nope", mask, None, {})
    finally:
        SELECTORS.pop("test_last_token", None)
        SELECTORS.pop("test_pad", None)

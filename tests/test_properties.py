"""Property-based tests (hypothesis): the S-GRPO selector, T-SPMO trie credit, group advantages
and answer extraction, on generated inputs. Each property is exact for our definitions (see the
docstrings of selectors.py, trie.py, advantages.py and answers.py)."""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenrl.algorithms import group_advantages
from tokenrl.algorithms.selectors import sgrpo_select
from tokenrl.algorithms.trie import group_pairs, pairs_to_token_tensors
from tokenrl.answers import (
    answers_match,
    canonical_number,
    extract_answer,
    is_correct,
    parse_number,
)
from tokenrl.tasks import get_task

FAST = settings(max_examples=60, deadline=None)

# ---------------------------------------------------------------------------------------------
# S-GRPO token selection


@st.composite
def selection_inputs(draw):
    """Completion lengths (right-padded masks), alpha, p, k and a generator seed."""
    T = draw(st.integers(1, 24))
    lengths = draw(st.lists(st.integers(0, T), min_size=1, max_size=6))
    alpha = draw(st.integers(0, 10))
    k = draw(st.integers(1, 16))
    p = draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**31 - 1))
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # [B, T]
    return mask, alpha, p, k, seed


@FAST
@given(selection_inputs())
def test_sgrpo_selection_properties(inputs):
    mask, alpha, p, k, seed = inputs
    sel = sgrpo_select(mask, torch.Generator().manual_seed(seed), alpha=alpha, p=p, k=k)
    assert sel.shape == mask.shape and sel.dtype == torch.bool
    assert not (sel & ~mask).any()  # only completion tokens
    lengths = mask.sum(1)
    early = torch.clamp(lengths, max=alpha)  # min(alpha, L): always selected
    positions = torch.arange(mask.shape[1])[None, :]
    assert torch.equal(sel & (positions < alpha), mask & (positions < alpha))
    counts = sel.sum(1)
    assert (counts >= early).all() and (counts <= torch.maximum(early, torch.tensor(k))).all()
    if p == 0.0:  # nothing beyond the forced prefix
        assert torch.equal(counts, early)
    if p == 1.0:  # every token until the cap: the first min(max(alpha, k), L)
        assert torch.equal(sel, positions < torch.clamp(lengths, max=max(alpha, k))[:, None])
    # the same generator state draws the same subset
    again = sgrpo_select(mask, torch.Generator().manual_seed(seed), alpha=alpha, p=p, k=k)
    assert torch.equal(sel, again)


@FAST
@given(selection_inputs())
def test_sgrpo_later_token_is_in_iff_its_draw_is_below_p_and_cap_not_reached(inputs):
    """The exact rule, per token, with the uniforms the selector drew (same seed)."""
    mask, alpha, p, k, seed = inputs
    sel = sgrpo_select(mask, torch.Generator().manual_seed(seed), alpha=alpha, p=p, k=k)
    u = torch.rand(mask.shape, generator=torch.Generator().manual_seed(seed))
    before = torch.cumsum(sel.long(), 1) - sel.long()  # selected strictly before t
    later = mask & (torch.arange(mask.shape[1])[None, :] >= alpha)
    expected = later & (u < p) & (before < k)
    assert torch.equal(sel & later, expected)


# ---------------------------------------------------------------------------------------------
# T-SPMO trie credit

groups = st.integers(2, 6).flatmap(
    lambda g: st.tuples(
        st.lists(st.lists(st.integers(0, 2), max_size=5), min_size=g, max_size=g),
        st.lists(st.sampled_from([0.0, 0.5, 1.0, -1.0, 2.0]), min_size=g, max_size=g),
    )
)


def _value(completions, rewards, prefix) -> tuple[int, float]:
    """(N(p), V(p)) computed straight from the definition."""
    through = [r for c, r in zip(completions, rewards) if tuple(c[: len(prefix)]) == prefix]
    return len(through), sum(through) / len(through)


@FAST
@given(groups)
def test_trie_pairs_match_their_definition(group):
    completions, rewards = group
    pairs = group_pairs(completions, rewards, normalise_std=False)
    keys = [(tuple(completions[q.row][: q.prefix_len]), q.token_id) for q in pairs]
    assert len(keys) == len(set(keys))  # each unique (prefix, token) once
    for q, (prefix, token) in zip(pairs, keys):
        assert completions[q.row][q.prefix_len] == token  # the pair sits on its row
        child = (*prefix, token)
        n_child, v_child = _value(completions, rewards, child)
        _, v_parent = _value(completions, rewards, prefix)
        assert q.visits == n_child and abs(q.advantage - (v_child - v_parent)) < 1e-12
        assert q.row == min(i for i, c in enumerate(completions) if tuple(c[: len(child)]) == child)
        assert q.advantage != 0
    if len(set(rewards)) == 1:
        assert pairs == []


@FAST
@given(groups)
def test_trie_children_weighted_by_visits_sum_to_the_ending_completions_share(group):
    """At every prefix p: sum_v N(p+v) A(p, v) = sum over completions ending at p of (V(p) - r).

    So the visit-weighted advantages of p's children sum to zero whenever no completion ends
    exactly at p (at every branching point strictly inside the completions)."""
    completions, rewards = group
    pairs = group_pairs(completions, rewards, normalise_std=False)
    prefixes = {tuple(c[:n]) for c in completions for n in range(len(c) + 1)}
    for prefix in prefixes:
        weighted = sum(
            q.visits * q.advantage
            for q in pairs
            if q.prefix_len == len(prefix) and tuple(completions[q.row][: q.prefix_len]) == prefix
        )
        _, v = _value(completions, rewards, prefix)
        ending = sum(v - r for c, r in zip(completions, rewards) if tuple(c) == prefix)
        assert abs(weighted - ending) < 1e-9, (prefix, weighted, ending)


@FAST
@given(groups, st.integers(1, 4), st.sampled_from(["uniform", "visit"]))
def test_trie_options_and_token_layout(group, min_visits, weighting):
    completions, rewards = group
    raw = group_pairs(completions, rewards, normalise_std=False)
    scaled = group_pairs(completions, rewards, normalise_std=True, eps=1e-4)
    if len(set(rewards)) > 1:
        std = torch.tensor(rewards, dtype=torch.float64).std().item()
        for a, b in zip(raw, scaled, strict=True):
            assert abs(b.advantage - a.advantage / (std + 1e-4)) < 1e-9
    kept = group_pairs(completions, rewards, normalise_std=False, min_visits=min_visits)
    assert kept == [q for q in raw if q.visits >= min_visits]
    T = max(1, max(len(c) for c in completions))
    credit = pairs_to_token_tensors(
        [raw], group_size=len(completions), num_positions=T, weighting=weighting
    )
    assert credit.num_pairs == len(raw) == int(credit.update_mask.sum())
    for q in raw:
        assert credit.update_mask[q.row, q.prefix_len]
        assert (
            credit.token_advantages[q.row, q.prefix_len].item() == torch.tensor(q.advantage).item()
        )
        want = float(q.visits) if weighting == "visit" else 1.0
        assert credit.token_weights[q.row, q.prefix_len].item() == want
    assert not (credit.token_weights[~credit.update_mask] != 0).any()


# ---------------------------------------------------------------------------------------------
# group advantages

reward_groups = st.integers(2, 8).flatmap(
    lambda g: st.lists(
        st.lists(
            st.floats(-1e6, 1e6, allow_nan=False) | st.sampled_from([0.0, 1.0]),
            min_size=g,
            max_size=g,
        ),
        min_size=1,
        max_size=4,
    ).map(lambda rows: (g, rows))
)


@FAST
@given(reward_groups, st.booleans())
def test_group_advantages_are_finite_centred_and_zero_without_signal(data, scale):
    G, rows = data
    rewards = torch.tensor([r for row in rows for r in row], dtype=torch.float32)
    adv = group_advantages(rewards, G, scale_by_std=scale).view(-1, G)
    assert torch.isfinite(adv).all()
    r = rewards.view(-1, G)
    for i in range(len(rows)):
        if (r[i] == r[i, 0]).all():
            assert torch.equal(adv[i], torch.zeros(G))  # all equal: exactly zero, no 0/0
        else:
            tol = 1e-3 * max(1.0, float(r[i].abs().max())) if not scale else 1e-3
            assert abs(float(adv[i].sum())) <= tol * G


# ---------------------------------------------------------------------------------------------
# answer extraction never raises, and reads back the numbers it is given

LATEX_AND_DIGITS = st.text(
    alphabet=st.sampled_from(list("0123456789-+.,/$%=eE x\\{}^_()#:\n")) | st.characters(),
    max_size=200,
)


@settings(max_examples=150, deadline=None)
@given(LATEX_AND_DIGITS, st.text(max_size=20))
def test_answer_functions_never_raise(text, gold):
    found = extract_answer(text)
    assert found is None or isinstance(found, str)
    assert isinstance(is_correct(text, gold), bool)
    assert isinstance(answers_match(found, gold), bool)
    value = parse_number(text)
    assert value is None or isinstance(value, Fraction)
    canonical = canonical_number(text)
    assert canonical is None or isinstance(canonical, str)


@lru_cache(maxsize=1)
def _mult_task():
    return get_task("mult:2x1", style="plain")


@FAST
@given(st.text(max_size=200))
def test_task_reward_is_zero_or_one_for_any_text(text):
    task = _mult_task()
    example = task.examples("test")[0]
    assert task.reward(text, example) in (0.0, 1.0)
    assert task.reward(f"{text}\nThe answer is {example.answer}.", example) in (0.0, 1.0)


@FAST
@given(
    st.integers(-(10**12), 10**12),
    st.sampled_from(["The answer is {}.", "#### {}", "\\boxed{{{}}}", "so x = {}"]),
)
def test_integers_read_back(n, template):
    assert extract_answer(template.format(n)) == str(n)
    assert extract_answer(template.format(f"{n:,}")) == str(n)  # thousands separators


@FAST
@given(st.fractions(max_denominator=1000).filter(lambda f: abs(f) < 10**6))
def test_canonical_numbers_match_themselves(value):
    text = canonical_number(f"{value.numerator}/{value.denominator}")
    assert text is not None and parse_number(text) == value
    assert answers_match(text, text) and extract_answer(f"The answer is {text}.") == text

"""The keyed inverse-transform sampler and the preallocated key/value cache (issue #23)."""

import torch
from transformers.cache_utils import DynamicLayer

from tokenrl.keyed import BLOCK, KeyedSampler
from tokenrl.kvcache import GrowingLayer, growing_cache


def _first_uniform(seed: int) -> float:
    return torch.rand(1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).item()


def test_sample_is_the_inverse_cdf_of_each_rows_own_draw():
    """Row b's token is the first index whose running probability passes its draw u_b."""
    probs = torch.tensor([0.1, 0.2, 0.0, 0.7])
    seeds = list(range(40))
    tokens = KeyedSampler(seeds, torch.device("cpu")).sample(
        probs.log()[None], torch.zeros(40, dtype=torch.long)
    )
    for seed, token in zip(seeds, tokens.tolist()):
        u = _first_uniform(seed)
        expected = 0 if u < 0.1 else 1 if u < 0.3 else 3  # the cdf 0.1, 0.3, 0.3, 1.0 by hand
        assert token == expected, (seed, u)
    assert 2 not in tokens.tolist()


def test_sample_crosses_blocks_and_reads_each_rows_prefix():
    """A vocabulary of two blocks and a tail: mass only at 5, BLOCK and the last token."""
    V = 2 * BLOCK + 7
    scores = torch.full((2, V), float("-inf"))
    scores[0, [5, BLOCK, V - 1]] = torch.tensor([0.25, 0.25, 0.5]).log()
    scores[1, 3] = 0.0  # prefix 1: a single token
    of_row = torch.tensor([0, 1, 0, 0, 1, 0])
    seeds = [7, 8, 9, 10, 11, 12]
    tokens = KeyedSampler(seeds, torch.device("cpu")).sample(scores, of_row).tolist()
    for seed, r, token in zip(seeds, of_row.tolist(), tokens):
        u = _first_uniform(seed)
        expected = 3 if r == 1 else 5 if u < 0.25 else BLOCK if u < 0.5 else V - 1
        assert token == expected


def test_as_a_logits_processor_generate_argmax_picks_the_sample():
    scores = torch.randn(3, 50)
    picked = KeyedSampler([1, 2, 3], torch.device("cpu"))(None, scores).argmax(1)
    assert torch.equal(picked, KeyedSampler([1, 2, 3], torch.device("cpu")).sample(scores))


def test_growing_layer_returns_what_the_dynamic_layer_returns():
    """Prefill, decode past the capacity hint (a regrow), select rows (with a repeat), crop."""
    torch.manual_seed(0)
    grow, dyn = GrowingLayer(capacity=5), DynamicLayer()
    for n in (4, 1, 1, 1):  # 7 positions: past the hint of 5
        k, v = torch.randn(3, 2, n, 4), torch.randn(3, 2, n, 4)
        for got, want in zip(grow.update(k, v), dyn.update(k, v)):
            assert torch.equal(got, want)
    assert grow.get_seq_length() == 7 and grow.capacity == 10
    pick = torch.tensor([2, 0, 2])
    grow.batch_select_indices(pick)
    dyn.batch_select_indices(pick)
    k, v = torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4)
    for got, want in zip(grow.update(k, v), dyn.update(k, v)):
        assert torch.equal(got, want)
    grow.crop(-3)
    assert grow.get_seq_length() == 5 and torch.equal(grow.keys, dyn.keys[:, :, :5])


def test_growing_cache_only_for_full_attention_models(tiny):
    model, _ = tiny
    cache = growing_cache(model, 12)
    assert cache is not None
    model.config.layer_types = ["sliding_attention"] * model.config.num_hidden_layers
    assert growing_cache(model, 12) is None

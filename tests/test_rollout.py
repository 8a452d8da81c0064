import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tokenrl.rollout import SamplingConfig, _finished_length, generate_rollouts

PROMPTS = ["12*3=", "7*8=", "100*2="]


def test_shapes_masks_and_grouping(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    b = generate_rollouts(model, tok, PROMPTS, SamplingConfig(max_new_tokens=7), group_size=4)
    assert b.prompt_ids.shape == (12, 6)  # longest prompt "100*2=" is 6 bytes
    assert b.completion_ids.shape == (12, 7)
    assert b.group_size == 4 and b.num_prompts == 3
    assert b.prompt_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # left padding: "12*3=" (5 bytes) has one pad on the left
    assert b.prompt_mask[0].tolist() == [False, True, True, True, True, True]
    assert tok.decode(b.prompt_ids[0][b.prompt_mask[0]]) == "12*3="
    assert tok.decode(b.prompt_ids[8][b.prompt_mask[8]]) == "100*2="
    assert b.input_ids.shape == b.attention_mask.shape == (12, 13)
    # a random tiny model never says EOS within 7 tokens: all rows run to the limit
    assert b.truncated.all() and b.completion_mask.all()
    assert b.completion_token_lists()[0] == b.completion_ids[0].tolist()


def test_seeding(tiny):
    model, tok = tiny
    cfg = SamplingConfig(max_new_tokens=6)
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runs.append(generate_rollouts(model, tok, PROMPTS, cfg, group_size=2).completion_ids)
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_shared_prefill_matches_per_row_encoding_greedy(tiny):
    model, tok = tiny
    shared = generate_rollouts(
        model, tok, PROMPTS, SamplingConfig(max_new_tokens=8, greedy=True), group_size=3
    )
    plain = generate_rollouts(
        model,
        tok,
        PROMPTS,
        SamplingConfig(max_new_tokens=8, greedy=True, shared_prefill=False),
        group_size=3,
    )
    assert torch.equal(shared.completion_ids, plain.completion_ids)
    # greedy: every completion of a group is the same
    assert torch.equal(shared.completion_ids[0], shared.completion_ids[2])


def test_eos_ends_a_completion_and_is_kept(tiny):
    model, tok = tiny
    # sampling with a fixed seed draws the same tokens until the stop (greedy repeats one token)
    greedy = SamplingConfig(max_new_tokens=8)
    torch.manual_seed(0)
    free = generate_rollouts(model, tok, ["12*3="], greedy).completion_ids[0].tolist()
    # declare the first greedy token not seen before (after the first) to be EOS:
    # generation must stop there, with EOS in the mask
    i = next(i for i in range(1, len(free)) if free[i] not in free[:i])
    model.generation_config.eos_token_id = free[i]
    torch.manual_seed(0)
    b = generate_rollouts(model, tok, ["12*3="], greedy)
    assert b.completion_mask[0].sum().item() == i + 1
    assert b.completion_ids[0, : i + 1].tolist() == free[: i + 1]
    assert not b.truncated[0]


def test_stop_string_cuts_the_completion(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    free = generate_rollouts(model, tok, ["7*8="], SamplingConfig(max_new_tokens=8))
    text = free.texts[0]
    i = next(i for i in range(1, len(text)) if text[i] not in text[:i])
    stop = text[i]
    torch.manual_seed(0)
    cut = generate_rollouts(model, tok, ["7*8="], SamplingConfig(max_new_tokens=8, stop=(stop,)))
    assert cut.texts[0] == text[:i]
    assert not cut.truncated[0]
    n = cut.completion_mask[0].sum().item()
    assert tok.decode(cut.completion_ids[0, :n]).endswith(stop)


@pytest.mark.parametrize(
    "ids, stop, expected",
    [
        ([5, 6, 0, 0], (), (3, False)),  # EOS (0) at index 2: kept, the rest is padding
        ([5, 6, 7, 8], (), (4, True)),  # no EOS: truncated at the limit
        ([5, 9, 0, 0], ("\n",), (2, False)),  # the stop string ends at token 9; 0s are padding
        ([9, 9, 9, 9], ("\n",), (4, False)),  # stop string exactly at the limit: not truncated
    ],
)
def test_finished_length(ids, stop, expected):
    text = {5: "a", 6: "b", 7: "c", 8: "d", 9: "\n", 0: ""}

    def text_of(xs):
        return "".join(text[x] for x in xs)

    assert _finished_length(ids, {0}, text_of, stop) == expected


def test_batching_splits_work_but_not_results(tiny):
    model, tok = tiny
    big = generate_rollouts(
        model,
        tok,
        PROMPTS,
        SamplingConfig(max_new_tokens=5, greedy=True, batch_size=64),
        group_size=2,
    )
    small = generate_rollouts(
        model,
        tok,
        PROMPTS,
        SamplingConfig(max_new_tokens=5, greedy=True, batch_size=2),
        group_size=2,
    )
    assert torch.equal(big.completion_ids, small.completion_ids)
    assert big.prompt_index.tolist() == small.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]


LONGER = ["12*3=", "7*8=", "100*2=", "9*9="]  # 5, 4, 6, 4 tokens: three rows left-padded


def _plain(cfg: SamplingConfig) -> SamplingConfig:
    return replace(cfg, shared_decode=False, shared_prefill=False)


@pytest.mark.parametrize(
    "temperature", [1.0, 0.05]
)  # rows part at once / mostly agree and share prefixes
def test_shared_decode_samples_what_generate_samples(tiny, temperature):
    model, tok = tiny
    seeds = [11, 12, 13, 14]
    cfg = SamplingConfig(max_new_tokens=6, temperature=temperature)
    free = generate_rollouts(model, tok, LONGER, _plain(cfg), group_size=4, group_seeds=seeds)
    # a stop string that cuts row 0 (at least) short: a printable character from its third on
    # (a byte the tiny tokenizer cannot decode alone prints as U+FFFD, which may come earlier)
    stop = next(ch for ch in free.texts[0][2:] if ch.isascii() and ch.isprintable())
    for c in (cfg, replace(cfg, stop=(stop,)), replace(cfg, top_p=0.5)):
        shared = generate_rollouts(model, tok, LONGER, c, group_size=4, group_seeds=seeds)
        plain = generate_rollouts(model, tok, LONGER, _plain(c), group_size=4, group_seeds=seeds)
        assert torch.equal(shared.completion_ids, plain.completion_ids)
        assert torch.equal(shared.completion_mask, plain.completion_mask)
        assert shared.texts == plain.texts and torch.equal(shared.truncated, plain.truncated)
        if c.stop:
            assert not shared.truncated[0] and shared.completion_mask[0].sum() < 6


def test_shared_decode_stops_at_eos_like_generate(tiny):
    model, tok = tiny
    cfg = SamplingConfig(max_new_tokens=8)
    free = generate_rollouts(
        model, tok, LONGER, _plain(cfg), group_size=3, group_seeds=[1, 2, 3, 4]
    )
    row = free.completion_ids[0].tolist()
    i = next(i for i in range(1, len(row)) if row[i] not in row[:i])
    model.generation_config.eos_token_id = row[i]  # row 0's first new token after its first ends it
    shared = generate_rollouts(model, tok, LONGER, cfg, group_size=3, group_seeds=[1, 2, 3, 4])
    plain = generate_rollouts(
        model, tok, LONGER, _plain(cfg), group_size=3, group_seeds=[1, 2, 3, 4]
    )
    assert torch.equal(shared.completion_ids, plain.completion_ids)
    assert torch.equal(shared.completion_mask, plain.completion_mask)
    assert shared.completion_mask[0].sum().item() == i + 1 and not shared.truncated[0]


def test_greedy_evaluation_rows_decode_like_generate_and_leave_the_batch_when_they_end(tiny):
    """Evaluation (G = 1, greedy) takes the shared decode too: the same tokens as ``generate``, and
    a row that has ended is no longer run."""
    model, tok = tiny
    cfg = SamplingConfig(max_new_tokens=12, greedy=True)
    rows = generate_rollouts(model, tok, LONGER, _plain(cfg)).completion_ids.tolist()
    first = {t: [r.index(t) if t in r else None for r in rows] for r in rows for t in r}
    # as EOS, a token that ends some rows (one before its last two steps) and not others
    eos = next(
        t for t, at in first.items() if None in at and min(a for a in at if a is not None) < 10
    )
    model.generation_config.eos_token_id = eos
    rows_run: list[int] = []
    hook = model.model.embed_tokens.register_forward_hook(
        lambda m, inp, out: rows_run.append(out.shape[0])
    )
    try:
        shared = generate_rollouts(model, tok, LONGER, cfg)
    finally:
        hook.remove()
    plain = generate_rollouts(model, tok, LONGER, _plain(cfg))
    assert torch.equal(shared.completion_ids, plain.completion_ids)
    assert torch.equal(shared.completion_mask, plain.completion_mask)
    assert shared.texts == plain.texts and torch.equal(shared.truncated, plain.truncated)
    length = shared.completion_mask.sum(1).tolist()
    assert [n < 12 for n in length] == [a is not None for a in first[eos]]
    # the prompts, then one row per row still running after t tokens
    assert rows_run == [4] + [sum(n > t for n in length) for t in range(1, len(rows_run))]
    assert min(rows_run) < 4


def test_shared_decode_runs_each_distinct_prefix_once(tiny):
    model, tok = tiny
    rows_run: list[int] = []
    hook = model.model.embed_tokens.register_forward_hook(
        lambda m, i, o: rows_run.append(o.shape[0])
    )
    try:
        # greedy: a group's 4 rows never part, so every forward runs one row per prompt
        greedy = generate_rollouts(
            model, tok, LONGER, SamplingConfig(max_new_tokens=5, greedy=True), group_size=4
        )
        assert (
            rows_run == [4] * 5
        )  # the prompts, then 4 decode steps (the 5th token needs no forward)
        rows_run.clear()
        b = generate_rollouts(
            model,
            tok,
            LONGER,
            SamplingConfig(max_new_tokens=5),
            group_size=4,
            group_seeds=[5, 6, 7, 8],
        )
    finally:
        hook.remove()
    assert torch.equal(greedy.completion_ids[::4], greedy.completion_ids[3::4])
    comp, length = b.completion_ids.tolist(), b.completion_mask.sum(1).tolist()
    # after t tokens, the rows still running (not ended within them) in distinct prefixes
    distinct = [
        len({(r // 4, tuple(comp[r][:t])) for r in range(16) if length[r] > t}) for t in range(1, 5)
    ]
    assert rows_run == [4] + distinct


@pytest.mark.parametrize(
    "G,mode", [(4, ["--temperature", "0.05"]), (1, ["--greedy", "--split", "test"])]
)  # the trainer's sampling; evaluation's decoding
def test_shared_decode_benchmark_times_both_paths_on_the_same_tokens(G, mode):
    script = Path(__file__).parent.parent / "benchmarks" / "shared_decode.py"
    args = ["--prompts", "3", "--group-size", str(G), "--max-new-tokens", "4", "--repeats", "1"]
    args += mode
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["same_tokens"] is True and out["prompts"] == 3 and out["G"] == G
    assert out["greedy"] is ("--greedy" in mode)
    assert out["speedup"] == pytest.approx(out["generate_median_s"] / out["shared_median_s"])
    assert 0 < out["decode_rows_shared"] <= out["decode_rows_generate"] == 3 * G * 3

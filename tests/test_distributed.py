"""Data-parallel training (docs/distributed.md): 2 gloo processes on the CPU under torchrun must
train the adapter one process trains on the same global batch, and write one set of files."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokenrl.algorithms.losses import aggregation_denominator, rescale_coefficients
from tokenrl.algorithms.registry import GRPOConfig, prepare_group
from tokenrl.algorithms.selectors import run_selector_by_group
from tokenrl.config import load_config, parse_overrides
from tokenrl.distributed import Distributed, check_divisible, combine_metrics
from tokenrl.errors import RunError
from tokenrl.rollout import RolloutBatch, SamplingConfig, generate_rollouts
from tokenrl.run import train

TESTS = Path(__file__).parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
# 4 prompts of 4 completions per step, 2 prompts per generate call: each of the 2 ranks takes 2
# prompts and generates them in one call, with its own padding. lr 1e-4 = the default LoRA rate.
ARGS = [
    "--model.name", "tiny", "--task.name", "mult:2x1", "--task.eval_limit", "4",
    "--task.reward", "rewards_for_tests:half_bytes_low", "--rollout.max_new_tokens", "8",
    "--rollout.prompts_per_step", "4", "--rollout.group_size", "4", "--rollout.batch_size", "8",
    "--train.eval_every", "2", "--train.checkpoint_every", "2", "--log.samples_every", "1",
    "--log.progress", "false", "--optim.lr", "1e-4", "--train.steps", "3",
]  # fmt: skip
# each algorithm's own settings (a setting of an algorithm that does not run is refused)
ALGO_ARGS = {
    "sgrpo": ["--sgrpo.alpha", "2", "--sgrpo.k", "5"],
    "tspmo": ["--tspmo.replay.every", "2"],
}


@pytest.fixture(autouse=True)
def _tests_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, nproc: int = 2) -> None:
    """``torchrun --nproc_per_node nproc -m tokenrl train ARGS`` with gloo on the CPU."""
    env = {
        **os.environ,
        "PYTHONPATH": str(TESTS),
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    cmd = [str(TORCHRUN), "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "tokenrl", "train", *args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _max_diff(a: Path, b: Path) -> float:
    x, y = (load_file(p / "adapter" / "adapter_model.safetensors") for p in (a, b))
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


@pytest.mark.parametrize("algo, resume", [("tspmo", False), ("sgrpo", True)])
def test_two_processes_train_what_one_does(tmp_path, algo, resume):
    """T-SPMO with replay in one go; S-GRPO stopped after step 2 and resumed to step 3."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = [*ARGS, *ALGO_ARGS[algo], "--train.algo", algo]
    train(
        load_config(None, parse_overrides(args)),
        one,
        on_event=lambda s: None,
    )
    if resume:
        torchrun(*args, "--train.steps", "2", "--out", str(two))
        torchrun("--resume", str(two), "--train.steps", "3")
    else:
        torchrun(*args, "--out", str(two))

    # the adapter moved, and the same way (float rounding of the gradient sums differs)
    moved = load_file(one / "adapter" / "adapter_model.safetensors")
    assert max(v.abs().max().item() for k, v in moved.items() if "lora_B" in k) > 1e-4
    assert _max_diff(one, two) < 1e-5

    # one set of files: each step logged once, by rank 0, with the whole batch's metrics
    a, b = _records(one), _records(two)
    assert [r["step"] for r in b] == [r["step"] for r in a] == [0, 1, 2, 2, 3, 3]
    for ra, rb in zip(a, b):
        for key in ("reward/mean", "reward/std", "reward/zero_std_frac", "completion/mean_tokens",
                    "tokens/update_frac", "eval/accuracy", "replay/groups", "reward/replay_mean"):  # fmt: skip
            assert rb.get(key) == pytest.approx(ra.get(key), abs=1e-6), (rb["step"], key)
    if algo == "tspmo":
        assert max(r.get("replay/groups", 0) for r in b) == 2, "each rank ran one replay group"
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    samples = (two / "samples.jsonl").read_text().splitlines()
    assert len(samples) == len((one / "samples.jsonl").read_text().splitlines())


def test_prompts_must_split_evenly():
    check_divisible(4, 2)
    with pytest.raises(RunError, match="prompts_per_step=3 cannot be split over 2 processes"):
        check_divisible(3, 2)


def test_shards_are_contiguous_and_cover_everything():
    shards = [Distributed(rank=r, world_size=3).shard(8) for r in range(3)]
    assert shards == [(0, 3), (3, 6), (6, 8)]
    assert Distributed().shard(5) == (0, 5)


def test_combine_metrics_gives_the_whole_batch():
    # rank 0: 8 rows, 30 tokens; rank 1: 8 rows, 10 tokens
    per_rank = [
        {"step": 3, "loss/policy": 0.25, "tokens/update_frac": 0.5, "adv/abs_mean": 1.0,
         "time/step": 2.0, "reward/mean": 0.4},
        {"step": 3, "loss/policy": -0.05, "tokens/update_frac": 0.1, "adv/abs_mean": 0.5,
         "time/step": 3.0, "reward/mean": 0.4},
    ]  # fmt: skip
    out = combine_metrics(per_rank, rows=[8, 8], tokens=[30, 10])
    assert out["step"] == 3 and out["reward/mean"] == 0.4  # equal on every rank
    assert out["loss/policy"] == pytest.approx(0.20)  # whole-batch coefficients: losses add up
    assert out["tokens/update_frac"] == pytest.approx((15 + 1) / 40)  # selected / all tokens
    assert out["adv/abs_mean"] == pytest.approx(0.75)  # mean over the 16 rows
    assert out["time/step"] == 3.0  # the slowest rank


def _batch(lengths: list[int], T: int, G: int) -> RolloutBatch:
    B = len(lengths)
    mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]  # [B, T]
    return RolloutBatch(
        prompt_ids=torch.zeros(B, 1, dtype=torch.long),
        prompt_mask=torch.ones(B, 1, dtype=torch.bool),
        completion_ids=torch.ones(B, T, dtype=torch.long),
        completion_mask=mask,
        truncated=torch.zeros(B, dtype=torch.bool),
        texts=[""] * B,
        group_size=G,
        prompt_index=torch.arange(B) // G,
    )


def test_split_batches_give_the_whole_batch_loss_coefficients():
    """Two halves of a batch, each rescaled by the summed denominator, hold the whole batch's
    coefficients and token selection (S-GRPO with one generator per group)."""
    G, lengths = 2, [5, 3, 7, 2, 4, 6, 1, 3]
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    for aggregation in ("seq_mean", "token_mean", "constant"):
        cfg = GRPOConfig(selector="sgrpo", selector_options={"alpha": 1, "p": 0.5, "k": 4},
                         aggregation=aggregation, constant_normaliser=8)  # fmt: skip

        def gens(groups):
            return [torch.Generator().manual_seed(100 + g) for g in groups]

        whole = prepare_group(_batch(lengths, 9, G), rewards, cfg, gens(range(4)))  # padded to 9
        halves = [
            prepare_group(_batch(lengths[:4], 7, G), rewards[:4], cfg, gens(range(2))),  # to 7
            prepare_group(_batch(lengths[4:], 6, G), rewards[4:], cfg, gens(range(2, 4))),  # to 6
        ]
        local = [
            aggregation_denominator(h.aggregation, h.update_mask, h.token_weights) for h in halves
        ]
        for h, d, rows in zip(halves, local, (slice(0, 4), slice(4, 8))):
            h = rescale_coefficients(h, d, sum(local))
            T = h.loss_coef.shape[1]
            assert torch.equal(h.update_mask, whole.update_mask[rows, :T])
            assert not whole.update_mask[rows, T:].any()
            assert torch.allclose(h.loss_coef, whole.loss_coef[rows, :T], atol=1e-7), aggregation


def test_selection_by_group_ignores_the_batch_around_it():
    mask = torch.arange(6)[None] < torch.tensor([4, 6, 2, 3])[:, None]  # [4, 6]
    both = run_selector_by_group("sgrpo", mask, [torch.Generator().manual_seed(s) for s in (1, 2)], 2,
                                 {"alpha": 1, "p": 0.5, "k": 3})  # fmt: skip
    alone = run_selector_by_group("sgrpo", mask[2:, :3], [torch.Generator().manual_seed(2)], 2,
                                  {"alpha": 1, "p": 0.5, "k": 3})  # fmt: skip
    assert torch.equal(both[2:, :3], alone) and not both[2:, 3:].any()
    assert not (both & ~mask).any()


def test_keyed_sampling_ignores_the_batch_around_it(tiny):
    """A prompt's completions depend on its seed, not on which prompts share its generate call."""
    model, tok = tiny
    prompts = ["12*3=", "4*56=", "7*8="]
    sampling = SamplingConfig(max_new_tokens=6, temperature=0.9, top_p=0.95, batch_size=64)
    together = generate_rollouts(model, tok, prompts, sampling, group_size=3, group_seeds=[5, 6, 7])
    sampling.batch_size = 3  # one prompt per call
    alone = generate_rollouts(model, tok, prompts[1:], sampling, group_size=3, group_seeds=[6, 7])
    T = alone.completion_ids.shape[1]
    assert torch.equal(together.completion_ids[3:, :T], alone.completion_ids)
    other = generate_rollouts(model, tok, prompts[1:], sampling, group_size=3, group_seeds=[8, 9])
    assert not torch.equal(other.completion_ids, alone.completion_ids)
    assert len(set(together.texts[:3])) > 1, "the rows of a group are different samples"


def test_keyed_sampling_follows_the_model_distribution():
    """Per-row generators sample softmax(scores): frequencies over many rows."""
    from tokenrl.rollout import KeyedSampler

    scores = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])).repeat(4000, 1)  # [4000, 4]
    picks = KeyedSampler(list(range(4000)), torch.device("cpu"))(None, scores).argmax(dim=1)
    freq = torch.bincount(picks, minlength=4).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03), freq


def test_a_worker_that_joined_a_group_exits_with_its_code_and_flushed_output():
    """exit_if_joined skips interpreter teardown (os._exit) only after init_from_env joined a group;
    what the process printed still comes out, and the status is the command's."""
    code = (
        "import sys, tokenrl.distributed as d\n"
        "d.exit_if_joined(5)\n"  # not joined: returns
        "print('summary line', end='')\n"
        "print('a warning', file=sys.stderr, end='')\n"
        "d._joined = True\n"
        "d.exit_if_joined(3)\n"
        "print(' not reached')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "summary line", "a warning")

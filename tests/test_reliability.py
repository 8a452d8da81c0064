"""Reliability (issue #8): bad input gets one clear error, faults lose nothing, numbers stay finite.

Every fault injected here is listed in docs/reliability.md with what happens. The training runs
use the tiny byte-level model with the test rewards of rewards_for_tests.py (a few seconds each).
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tokenrl.checkpoints as checkpoints
import tokenrl.trainer as trainer
import tokenrl.update as update
from tokenrl.algorithms import (
    GRPOConfig,
    SGRPOConfig,
    TSPMOConfig,
    completion_logprobs,
    get_algorithm,
    policy_loss,
)
from tokenrl.checkpoints import checkpoint_dirs
from tokenrl.cli import main
from tokenrl.config import load_config, parse_overrides
from tokenrl.errors import RunError
from tokenrl.guards import RewardError, score_completions
from tokenrl.models import LoraSpec, apply_lora, build_tiny
from tokenrl.rollout import RolloutBatch
from tokenrl.run import train
from tokenrl.tasks import DataError, get_task
from tokenrl.tasks.data import MAX_LINE_BYTES

TESTS = Path(__file__).parent
REWARD = "rewards_for_tests:half_bytes_low"
QUICK = [
    "--model.name", "tiny", "--task.name", "mult:2x1", "--task.eval_limit", "2", "--task.reward", REWARD,
    "--rollout.max_new_tokens", "8", "--rollout.prompts_per_step", "2", "--rollout.group_size", "4",
    "--train.eval_every", "0", "--train.checkpoint_every", "1", "--log.samples_every", "1",
    "--log.progress", "false", "--optim.lr", "1e-3", "--train.algo", "sgrpo",
    "--sgrpo.alpha", "2", "--sgrpo.k", "5",
]  # fmt: skip
STEPS = 6


@pytest.fixture(autouse=True)
def _tests_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


def quick_config(*extra: str):
    return load_config(None, parse_overrides([*QUICK, *extra]))


def metrics(run: Path) -> list[dict]:
    """Every line of metrics.jsonl, parsed strictly (NaN or a cut line fails)."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics")) for line in lines
    ]


def train_steps(run: Path) -> list[int]:
    return [r["step"] for r in metrics(run) if "reward/mean" in r]


@pytest.fixture
def no_model_load(monkeypatch):
    """Record model loads (the trainer's load_model) while delegating to the real one."""
    calls: list[str] = []
    real = trainer.load_model

    def spy(name, **kw):
        calls.append(name)
        return real(name, **kw)

    monkeypatch.setattr(trainer, "load_model", spy)
    return calls


# ---------------------------------------------------------------------------------------------
# 1. config and command-line input: exit 2, the field, the value and what is allowed; no writes

BAD_INPUT = [
    # (extra arguments, text naming the field and value, text saying what is allowed)
    (["--sgrpo.p", "1.5"], "sgrpo.p=1.5", "0 <= p <= 1"),
    (["--sgrpo.p", "-0.1"], "sgrpo.p=-0.1", "0 <= p <= 1"),
    (["--sgrpo.alpha", "-1"], "sgrpo.alpha=-1", "alpha >= 0"),
    (["--sgrpo.k", "0"], "sgrpo.k=0", "k >= 1"),
    (["--sgrpo.k", "1"], "sgrpo.k=1 < alpha=2", "k >= alpha"),
    (["--rollout.group_size", "1"], "rollout.group_size=1", "G >= 2"),
    (["--optim.lr", "0"], "optim.lr=0.0", "e.g. 1e-4"),
    (["--optim.lr=-1e-4"], "optim.lr=-0.0001", "e.g. 1e-4"),  # argparse: -1e-4 alone is a flag
    (["--rollout.max_new_tokens", "0"], "rollout.max_new_tokens=0", "e.g. 64"),
    (["--optim.max_nonfinite_steps", "-1"], "optim.max_nonfinite_steps=-1", "0 to never stop"),
    (["--lora.r", "many"], "lora.r expects an integer, got 'many'", "--lora.r 16"),
    (["--train.steps", "2.5"], "train.steps expects an integer, got 2.5", "--train.steps 16"),
    (["--optim.lr", "fast"], "optim.lr expects a number, got 'fast'", "--optim.lr 0.5"),
    (["--log.progress", "maybe"], "log.progress expects true or false", "--log.progress true"),
    (["--train.stepz", "3"], "unknown config key 'train.stepz'", "did you mean 'train.steps'"),
    (["--nosuch.field", "3"], "unknown config key 'nosuch.field'", "the config has: model"),
    (["--task.name", "nosuch"], "task.name='nosuch' is unknown", "multiplication, svamp"),
    (["--task.reward_errors", "skip"], "task.reward_errors='skip'", "raise (default) or zero"),
    (["--task.reward", "no_such_module:f"], "task.reward='no_such_module:f'", "PYTHONPATH"),
    (
        ["--task.reward", "score"],
        "task.reward='score' is not module:function",
        "mypkg.rewards:score",
    ),
]


@pytest.mark.parametrize(
    ("extra", "named", "allowed"),
    BAD_INPUT,
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_config_value_exits_2_naming_it(tmp_path, capsys, no_model_load, extra, named, allowed):
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokenrl train: error: ") and "Traceback" not in err, err
    assert named in err and allowed in err, err
    assert not out.exists() and no_model_load == []


@pytest.mark.parametrize(
    ("yaml_text", "named"),
    [
        ("sgrpo:\n  p: 2\n", "sgrpo.p=2.0"),
        ("rollout:\n  group_size: one\n", "rollout.group_size expects an integer, got 'one'"),
        ("train:\n  stepss: 3\n", "unknown config key 'train.stepss'"),
        ("train: 3\n", "section 'train' must be a mapping"),
        ("train: [unclosed\n", "is not valid YAML"),
    ],
)
def test_bad_yaml_config_exits_2(tmp_path, capsys, no_model_load, yaml_text, named):
    path, out = tmp_path / "bad.yaml", tmp_path / "run"
    path.write_text(yaml_text)
    assert main(["train", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err, err
    assert not out.exists() and no_model_load == []


def test_missing_config_file_exits_2(tmp_path, capsys, no_model_load):
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "nope.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "config file" in err and "nope.yaml" in err and "does not exist" in err, err
    assert not out.exists() and no_model_load == []


def test_unknown_model_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--model.name", "no-such-model-xyz", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "could not load model 'no-such-model-xyz'" in err and "built-in name (tiny" in err, err
    assert not out.exists()


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("train: {steps: 1}\n")
    args = ["train", *QUICK, "--model.name", "no-such-model-xyz", "--out", str(out), "--overwrite"]
    assert main(args) == 2
    assert (out / "config.yaml").read_text() == "train: {steps: 1}\n"


def test_out_that_is_a_file_exits_2(tmp_path, capsys):
    out = tmp_path / "run"
    out.write_text("not a folder")
    assert main(["train", *QUICK, "--out", str(out)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# 2. a user's JSONL data


def _write_jsonl(path: Path, rows: list[dict], *, extra: bytes = b"") -> Path:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + extra)
    return path


ROWS = [{"id": f"p{i}", "question": f"What is {i} + 1?", "answer": i + 1} for i in range(10)]


def test_jsonl_bom_and_blank_lines_are_read(tmp_path):
    text = b"".join(json.dumps(r).encode() + b"\n\n  \r\n" for r in ROWS)
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + text)
    task = get_task(f"jsonl:{path}", id_field="id")
    examples = task.examples("train") + task.examples("test")
    assert sorted(e.id for e in examples) == sorted(r["id"] for r in ROWS)
    assert {e.id: e.answer for e in examples}["p3"] == "4"


@pytest.mark.parametrize(
    ("content", "line", "problem"),
    [
        (b'{"id": "p0", "question": "caf\xe9?", "answer": 1}\n', 11, "is not valid UTF-8"),
        (
            b'{"id": "p3", "question": "again?", "answer": 1}\n',
            11,
            "duplicate id 'p3', first used in",
        ),
        (
            b'{"id": "big", "question": "' + b"x" * MAX_LINE_BYTES + b'", "answer": 1}\n',
            11,
            "-byte limit",
        ),
        (b"\x00\x01\x02binary\n", 11, "not valid JSON"),
        (b'{"id": "p10", "question": "a?", "answer": "twelve"}\n', 11, "is not a number"),
    ],
    ids=["non-utf8", "duplicate-id", "huge-line", "binary", "bad-answer"],
)
def test_bad_jsonl_names_file_and_line(tmp_path, capsys, no_model_load, content, line, problem):
    path = _write_jsonl(tmp_path / "data.jsonl", ROWS, extra=content)
    with pytest.raises(DataError) as info:
        get_task(f"jsonl:{path}", id_field="id").examples("train")
    assert info.value.file == str(path) and info.value.line == line and problem in str(info.value)
    # the same through the command line: exit 2, file and line named, nothing written or loaded
    out = tmp_path / "run"
    args = ["train", *QUICK, "--task.name", f"jsonl:{path}", "--task.options", "{id_field: id}"]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path}, line {line}" in err and problem in err, err
    assert not out.exists() and no_model_load == []


# ---------------------------------------------------------------------------------------------
# 3. custom rewards that raise or return something that is not a finite number


class _Ex:
    id = "ex-7"


def test_score_completions_modes():
    def fn(text, ex):
        return (
            {"ok": 1, "np": torch.tensor(0.5), "bool": True}.get(text, None)
            if text != "boom"
            else 1 / 0
        )

    assert score_completions(fn, ["ok", "np", "bool"], [_Ex()] * 3) == ([1.0, 0.5, 1.0], 0)
    assert score_completions(fn, ["ok", "boom", "none"], [_Ex()] * 3, on_error="zero") == (
        [1.0, 0.0, 0.0],
        2,
    )
    with pytest.raises(
        RewardError, match=r"raised ZeroDivisionError on example 'ex-7' \(completion 'boom'\)"
    ) as info:
        score_completions(fn, ["ok", "boom"], [_Ex()] * 2)
    assert "Traceback (most recent call last)" in str(info.value) and "1 / 0" in str(info.value)
    with pytest.raises(RewardError, match=r"returned None of type NoneType, not a number"):
        score_completions(fn, ["none"], [_Ex()])
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(RewardError, match="not a finite number"):
            score_completions(lambda t, e, b=bad: b, ["x"], [_Ex()])


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        ("always_raises", "raised RuntimeError on example '"),
        ("returns_nan", "returned nan, not a finite number"),
        ("returns_text", "returned '1.0' of type str, not a number"),
    ],
)
def test_bad_reward_stops_the_run_with_exit_2(tmp_path, capsys, reward, message):
    out = tmp_path / "run"
    args = [*QUICK, "--task.reward", f"rewards_for_tests:{reward}", "--train.steps", "2"]
    assert main(["train", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"the reward function rewards_for_tests:{reward} {message}" in err, err
    assert "task.reward_errors: zero" in err
    if reward == "always_raises":
        assert "Traceback (most recent call last)" in err and "boom from the test reward" in err
    assert train_steps(out) == []  # the failing step was not logged


def test_reward_errors_zero_scores_and_counts(tmp_path):
    cfg = quick_config("--task.reward", "rewards_for_tests:raises_on_odd_length", "--task.reward_errors", "zero",
                       "--train.steps", "3", "--rollout.max_new_tokens", "5")  # fmt: skip
    summary = train(cfg, tmp_path, on_event=lambda s: None)
    counts = [r["reward/errors"] for r in metrics(tmp_path) if "reward/mean" in r]
    assert len(counts) == 3 and sum(counts) > 0 and all(0 <= c <= 8 for c in counts)
    assert summary["reward_errors"] == sum(counts)


# ---------------------------------------------------------------------------------------------
# 4. numerics: non-finite losses skip the update and stop the run after N in a row


def _nan_loss_on(monkeypatch, poisoned) -> list[int]:
    """Make the policy loss NaN on the calls where ``poisoned(call_number)`` is true."""
    calls: list[int] = []

    def nan_loss(*args, **kw):
        loss, m = policy_loss(*args, **kw)
        calls.append(len(calls) + 1)
        return (loss * float("nan"), m) if poisoned(len(calls)) else (loss, m)

    monkeypatch.setattr(update, "policy_loss", nan_loss)
    return calls


def test_nonfinite_updates_are_skipped_then_the_run_stops(tmp_path, monkeypatch):
    _nan_loss_on(monkeypatch, lambda n: True)
    events: list[str] = []
    cfg = quick_config(
        "--train.steps", "8", "--optim.max_nonfinite_steps", "3", "--train.checkpoint_every", "2"
    )
    with pytest.raises(
        RunError, match=r"3 optimiser updates in a row had a non-finite loss or gradient"
    ) as info:
        train(cfg, tmp_path, on_event=events.append)
    assert "optim.max_nonfinite_steps=3" in str(info.value)
    assert f"the last checkpoint is {checkpoint_dirs(tmp_path)[-1]}" in str(info.value)
    records = [r for r in metrics(tmp_path) if "reward/mean" in r]  # strict JSON: NaN became null
    skipped = [r for r in records if r["update/nonfinite"]]
    assert len(skipped) == 3 and all(r["optim/grad_norm"] is None for r in skipped)
    assert sum("update skipped" in e for e in events) == 3
    # no update reached the weights: LoRA B is still its initial zero
    ckpt = checkpoint_dirs(tmp_path)[-1]
    weights = load_file(ckpt / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(v, torch.zeros_like(v)) for k, v in weights.items() if "lora_B" in k)


def test_isolated_nonfinite_updates_do_not_stop_the_run(tmp_path, monkeypatch):
    calls = _nan_loss_on(monkeypatch, lambda n: n % 2 == 1)  # every other update
    cfg = quick_config("--train.steps", "6", "--optim.max_nonfinite_steps", "2")
    train(cfg, tmp_path, on_event=lambda s: None)
    records = [r for r in metrics(tmp_path) if "reward/mean" in r]
    assert len(records) == 6 and len(calls) >= 2
    assert 0 < sum(r["update/nonfinite"] for r in records) < 6
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in weights.items() if "lora_B" in k)


def _edge_batch(eos: int, pad: int) -> tuple[RolloutBatch, torch.Tensor]:
    """2 groups of 4: an empty completion (no token at all), EOS-only, max-length (truncated)."""
    T = 6
    completions = [
        [],
        [eos],
        [65, 66, 67, 68, 69, 70],
        [65, eos],
        [],
        [],
        [71, 72, 73, 74, 75, 76],
        [71, eos],
    ]
    rewards = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])  # group 2: all equal
    B = len(completions)
    completion_ids = torch.full((B, T), pad)
    completion_mask = torch.zeros(B, T, dtype=torch.bool)
    for row, c in enumerate(completions):
        completion_ids[row, : len(c)] = torch.tensor(c, dtype=torch.long)
        completion_mask[row, : len(c)] = True
    batch = RolloutBatch(
        prompt_ids=torch.tensor([[104, 105, 32]] * B), prompt_mask=torch.ones(B, 3, dtype=torch.bool),
        completion_ids=completion_ids, completion_mask=completion_mask,
        truncated=torch.tensor([len(c) == T for c in completions]),
        texts=[""] * B, group_size=4, prompt_index=torch.arange(B) // 4,
    )  # fmt: skip
    return batch, rewards


@pytest.mark.parametrize(
    "cfg",
    [
        GRPOConfig(),
        GRPOConfig(beta=0.04),
        SGRPOConfig(alpha=1, p=0.5, k=3),
        TSPMOConfig(weighting="visit"),
    ],
    ids=["grpo", "grpo-kl", "sgrpo", "tspmo"],
)
def test_empty_and_max_length_completions_give_finite_updates(cfg):
    model, tok = build_tiny("tiny:seed=0")
    model = apply_lora(model, LoraSpec(r=4, alpha=8))
    batch, rewards = _edge_batch(tok.eos_token_id, tok.pad_token_id)
    name = {GRPOConfig: "grpo", SGRPOConfig: "sgrpo", TSPMOConfig: "tspmo"}[type(cfg)]
    inputs = get_algorithm(name).prepare(batch, rewards, cfg, torch.Generator().manual_seed(0))
    assert not (inputs.update_mask & ~batch.completion_mask).any()
    if cfg.beta == 0:  # the second group has equal rewards: no signal, nothing to run
        assert not inputs.logprob_mask[4:].any()
    assert all(math.isfinite(v) for v in inputs.metrics.values())
    logp = completion_logprobs(model, batch, inputs.logprob_mask)
    ref = logp.detach() + 0.1 if cfg.beta > 0 else None
    loss, m = policy_loss(
        logp, None, inputs, clip_low=0.2, clip_high=0.2, beta=cfg.beta, ref_logp=ref
    )
    loss.backward()
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in m.values())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------------------------------
# 5. kill -9 at random moments and Ctrl-C: resume gives the uninterrupted result


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(TESTS), "OMP_WAIT_POLICY": "PASSIVE",
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}  # fmt: skip


def _launch(args: list[str], log: Path, *, slow: bool = False) -> subprocess.Popen:
    """``tokenrl train ARGS`` in a new process (stderr to ``log``); ``slow``: pausing checkpoints."""
    entry = [str(TESTS / "slow_checkpoints.py")] if slow else ["-m", "tokenrl", "train"]
    with open(log, "ab") as err:
        return subprocess.Popen([sys.executable, *entry, *args, "--threads", "1"], env=_env(),
                                stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip


def _wait_for(proc: subprocess.Popen, cond, what: str, timeout: float = 120) -> bool:
    """Poll ``cond()`` every 5 ms; False if the process ended first."""
    deadline = time.time() + timeout
    while not cond():
        if proc.poll() is not None:
            return False
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)
    return True


def _last_step(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(x)["step"] for x in lines if '"reward/mean"' in x and x.endswith("}")]
    return max(steps, default=0)


def _assert_not_corrupt(run: Path) -> None:
    """Every visible checkpoint reads back; nothing else looks like one."""
    root = run / "checkpoints"
    for p in root.iterdir() if root.is_dir() else []:
        if p.name.startswith("step-"):
            assert (p / "COMPLETE").exists(), f"{p} is visible but incomplete"
            state = torch.load(p / "state.pt", weights_only=False)
            assert state["step"] == int(p.name.split("-")[1])
            load_file(p / "adapter" / "adapter_model.safetensors")
        else:
            assert p.name.startswith((".tmp-step-", ".prev-step-", ".old-step-")), p


def _assert_finished_like(run: Path, reference: dict[str, torch.Tensor]) -> None:
    got = load_file(run / "adapter" / "adapter_model.safetensors")
    assert got.keys() == reference.keys()
    for k in got:
        assert torch.allclose(got[k], reference[k], atol=1e-6, rtol=0), k
    assert train_steps(run) == list(range(1, STEPS + 1))  # each step logged exactly once
    evals = [r["step"] for r in metrics(run) if "eval/accuracy" in r]
    assert evals == [0, STEPS], evals
    _assert_not_corrupt(run)
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert [p.name for p in checkpoint_dirs(run)] == [f"step-{STEPS - 1:06d}", f"step-{STEPS:06d}"]
    assert json.loads((run / "eval.json").read_text())["steps"] == STEPS


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The final adapter of an uninterrupted run (in its own process, like the killed ones)."""
    out = tmp_path_factory.mktemp("whole") / "run"
    proc = _launch([*QUICK, "--train.steps", str(STEPS), "--out", str(out)], out.parent / "err.log")
    assert proc.wait(timeout=300) == 0, (out.parent / "err.log").read_text()
    return load_file(out / "adapter" / "adapter_model.safetensors")


def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path, reference):
    rng = random.Random(8)
    run, log = tmp_path / "run", tmp_path / "err.log"
    fresh = [*QUICK, "--train.steps", str(STEPS), "--out", str(run)]
    resume = ["--resume", str(run)]
    moments = []

    # 1. while a checkpoint is being written (its hidden .tmp-step folder exists)
    target = rng.randint(2, 3)
    proc = _launch(fresh, log, slow=True)
    tmp = run / "checkpoints" / f".tmp-step-{target:06d}"
    assert _wait_for(proc, tmp.exists, f"{tmp}"), log.read_text()
    time.sleep(rng.uniform(0, 0.3))
    proc.kill()
    proc.wait()
    moments.append(f"writing checkpoint {target}")
    _assert_not_corrupt(run)

    # 2. and 3. at random times after the run has gone past a random step
    for _ in range(2):
        before = _last_step(run)
        proc = _launch(resume, log)
        after = rng.randint(min(before + 1, STEPS), STEPS)
        if _wait_for(proc, lambda a=after: _last_step(run) >= a, f"step {after}"):
            time.sleep(rng.uniform(0, 0.6))
            proc.kill()
            moments.append(f"{_last_step(run)} steps logged")
        proc.wait()
        _assert_not_corrupt(run)

    # finish
    proc = _launch(resume, log)
    assert proc.wait(timeout=300) == 0, log.read_text()
    print("killed:", moments)
    _assert_finished_like(run, reference)


@pytest.mark.parametrize(
    "sig, status, by",
    [(signal.SIGINT, 130, ""), (signal.SIGTERM, 143, " (SIGTERM)")],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_or_sigterm_saves_the_last_step_and_resume_is_exact(
    tmp_path, reference, sig, status, by
):
    """SIGTERM (what timeout, Slurm and Kubernetes send first) is handled like Ctrl-C, exit 128 + 15."""
    run, log = tmp_path / "run", tmp_path / "err.log"
    proc = _launch([*QUICK, "--train.steps", str(STEPS), "--out", str(run)], log)
    assert _wait_for(proc, lambda: _last_step(run) >= 3, "step 3"), log.read_text()
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == status, log.read_text()
    err = log.read_text()
    assert "Traceback" not in err, err
    assert f"resume with: tokenrl train --resume {run}" in err, err
    step = int(err.split("interrupted after step ")[1].split(f"{by};")[0])
    assert 3 <= step < STEPS and train_steps(run) == list(range(1, step + 1))
    assert checkpoint_dirs(run)[-1].name == f"step-{step:06d}"
    assert not (run / "adapter").exists()
    proc = _launch(["--resume", str(run)], log)
    assert proc.wait(timeout=300) == 0, log.read_text()
    _assert_finished_like(run, reference)


def test_a_deletion_cut_short_never_leaves_a_visible_partial_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        (root / f"step-00000{step}" / "adapter").mkdir(parents=True)
        (root / f"step-00000{step}" / "state.pt").write_bytes(b"x")
        (root / f"step-00000{step}" / "COMPLETE").write_text(str(step))
    real_rmtree = checkpoints.shutil.rmtree

    def killed_while_deleting(path, *args, **kwargs):
        if Path(path).name == ".old-step-000001" and Path(path).exists():
            (Path(path) / "COMPLETE").unlink()  # part of the folder is gone when the kill lands
            raise KeyboardInterrupt
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(checkpoints.shutil, "rmtree", killed_while_deleting)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.remove_checkpoint(root / "step-000001")
    monkeypatch.setattr(checkpoints.shutil, "rmtree", real_rmtree)
    assert sorted(p.name for p in root.iterdir()) == [".old-step-000001", "step-000002"]
    assert checkpoint_dirs(tmp_path) == [root / "step-000002"]

    (root / "step-000003").mkdir()  # an incomplete visible folder, as older versions could leave
    (root / ".tmp-step-000004").mkdir()
    checkpoints.recover_checkpoints(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["step-000002"]


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    train(quick_config("--train.steps", "3"), tmp_path, on_event=lambda s: None)
    whole = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    newest = checkpoint_dirs(tmp_path)[-1]
    (newest / "state.pt").write_bytes(b"cut short")  # e.g. a disk error the OS did not report
    events: list[str] = []
    train(load_config(tmp_path / "config.yaml"), tmp_path, resume=True, on_event=events.append)
    assert any(f"checkpoint {newest} is unreadable" in e for e in events), events
    assert any("resuming from" in e and "step-000002" in e for e in events), events
    got = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert all(torch.allclose(got[k], whole[k], atol=1e-6, rtol=0) for k in whole)
    assert train_steps(tmp_path) == [1, 2, 3]
    _assert_not_corrupt(tmp_path)


# ---------------------------------------------------------------------------------------------
# 6. disk and paths


def test_full_disk_while_checkpointing_is_a_clear_error_and_resumable(
    tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kw):
        calls.append(f)
        if len(calls) == 2:  # the second checkpoint's state.pt
            Path(f).write_bytes(b"half")  # a partial file, as a full disk leaves it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kw)

    monkeypatch.setattr(torch, "save", save)
    assert main(["train", *QUICK, "--train.steps", "3", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert (
        "the disk is full" in err
        and "state.pt" in err
        and "--resume" in err
        and "Traceback" not in err
    ), err
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000001"]  # no .tmp left
    _assert_not_corrupt(run)
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", "--resume", str(run)]) == 0
    assert train_steps(run) == [1, 2, 3]


def test_unwritable_out_folder_is_a_clear_error(tmp_path, capsys):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        probe = parent / "probe"
        try:
            probe.mkdir()
        except PermissionError:
            pass
        else:
            pytest.skip(
                "running as root (or with CAP_DAC_OVERRIDE): chmod does not stop writes here"
            )
        assert main(["train", *QUICK, "--out", str(parent / "run")]) == 2
        err = capsys.readouterr().err
        assert "permission denied" in err and str(parent / "run") in err, err
    finally:
        parent.chmod(0o700)


def test_permission_denied_is_a_clear_error(tmp_path, capsys, monkeypatch):
    """The same fault without relying on chmod (tests may run as root)."""
    out = tmp_path / "run"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kw):
        if self == out:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert main(["train", *QUICK, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out}: permission denied" in err and "Traceback" not in err, err


def test_out_below_a_file_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", *QUICK, "--out", str(blocker / "run")]) == 2
    assert "a parent of the path is a file, not a folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# 7. a kill at every point of a save, two trainers on one folder, SIGTERM, a crafted state.pt


class Killed(BaseException):
    """The process died here (not an Exception, so no handler of the trainer's catches it)."""


class KillAt:
    """Replace the file operations of :mod:`tokenrl.checkpoints` (its ``os.replace``,
    ``shutil.rmtree`` and the checkpoint write) so that operation ``at`` (1-based) kills the
    process: the write stops after the adapter, before ``state.pt`` and ``COMPLETE``; a rename
    or deletion does not happen. Every later operation is skipped too, as in a dead process (the
    cleanup of ``except BaseException`` handlers must not run)."""

    def __init__(self, monkeypatch, at: int) -> None:
        self.at, self.count, self.dead, self.ops = at, 0, False, []
        self.wrote = False  # a checkpoint write finished (its COMPLETE marker is on disk)
        real_replace, real_rmtree, real_write = (
            os.replace,
            checkpoints.shutil.rmtree,
            checkpoints._write_checkpoint,
        )

        def op(name, real):
            def run(*args, **kwargs):
                if self.dead:
                    return None
                self.count += 1
                self.ops.append(f"{name} {Path(args[-1] if name == 'write' else args[0]).name}")
                if self.count == self.at:
                    self.dead = True
                    if name == "write":  # part of the folder is written when the kill lands
                        args[0].model.save_pretrained(args[1] / "adapter")
                    raise Killed(self.ops[-1])
                out = real(*args, **kwargs)
                self.wrote |= name == "write"
                return out

            return run

        class Os:  # checkpoints.os with a killable replace
            def __getattr__(self, name):
                return getattr(os, name)

        fake_os = Os()
        fake_os.replace = op("replace", real_replace)
        monkeypatch.setattr(checkpoints, "os", fake_os)
        monkeypatch.setattr(checkpoints.shutil, "rmtree", op("rmtree", real_rmtree))
        monkeypatch.setattr(checkpoints, "_write_checkpoint", op("write", real_write))


def _resumed_step(events: list[str]) -> int:
    lines = [e for e in events if e.startswith(("resuming from", "no complete checkpoint"))]
    assert len(lines) == 1, events
    return int(lines[0].split("step-")[1][:6]) if "step-" in lines[0] else 0


@pytest.mark.parametrize("keep", [1, 2])
@pytest.mark.parametrize("same_step", [True, False], ids=["same-step", "next-step"])
def test_a_kill_at_any_point_of_a_save_resumes_from_the_last_finished_save(
    tmp_path, keep, same_step
):
    """A resumed run saves a checkpoint of a step that already has one (``same_step``: resume at
    the last step, the final save) or of the next step (with the oldest rotated out). Killed
    before each file operation of that save in turn, ``--resume`` never starts earlier than the
    last save that finished; with the old save order (delete, then rename) keep 1 lost them all."""
    base = tmp_path / "base"
    steps = 2 if same_step else 1
    train(quick_config("--train.steps", str(steps), "--train.keep_checkpoints", str(keep)), base,
          on_event=lambda s: None)  # fmt: skip
    at, seen_all = 0, False
    while not seen_all:
        at += 1
        run = tmp_path / f"kill-{at}"
        shutil.copytree(base, run)
        cfg = load_config(run / "config.yaml", [("train.steps", "2")])
        with pytest.MonkeyPatch.context() as mp:
            kill = KillAt(mp, at)
            try:
                train(cfg, run, resume=True, on_event=lambda s: None)
                seen_all = True  # no operation number ``at``: the save ran to its end
            except Killed:
                pass
        last_finished = 2 if (same_step or kill.wrote) else 1
        events: list[str] = []
        train(
            load_config(run / "config.yaml", [("train.steps", "2")]),
            run,
            resume=True,
            on_event=events.append,
        )
        assert _resumed_step(events) >= last_finished, (at, kill.ops, events)
        assert train_steps(run) == [1, 2], (at, kill.ops)
        _assert_not_corrupt(run)
        assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")], kill.ops
        assert len(checkpoint_dirs(run)) <= keep
    assert at > 4, kill.ops  # the sequence was walked through (write, renames, deletions)


def test_a_second_trainer_on_the_same_folder_is_refused_naming_the_first(tmp_path, capsys):
    run, log = tmp_path / "run", tmp_path / "err.log"
    proc = _launch([*QUICK, "--train.steps", "200", "--out", str(run)], log)
    try:
        assert _wait_for(proc, lambda: _last_step(run) >= 1, "step 1"), log.read_text()
        for argv in (["--resume", str(run)], [*QUICK, "--out", str(run), "--overwrite"]):
            assert main(["train", *argv]) == 2
            err = capsys.readouterr().err
            assert f"in use by another tokenrl train (pid {proc.pid} " in err, err
        assert proc.poll() is None  # the first trainer runs on, its folder untouched
    finally:
        proc.kill()
        proc.wait()
    # the OS released the lock with the killed process: the folder is free again
    assert main(["train", "--resume", str(run), "--train.steps", str(_last_step(run) + 1)]) == 0


def test_the_lock_is_held_for_the_run_and_released_after(tmp_path):
    from tokenrl.runlock import RunFolderBusy, RunLock

    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(RunFolderBusy, match=f"pid {os.getpid()} "):
            RunLock(run).acquire()
        with pytest.raises(RunFolderBusy):
            train(quick_config("--train.steps", "1"), run, on_event=lambda s: None)
    train(quick_config("--train.steps", "1"), run, overwrite=True, on_event=lambda s: None)
    with RunLock(run):  # released when train returned
        pass


class _Planted:
    """Unpickling this calls ``open(path, "w")``: the file appears if the pickle is executed."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_crafted_state_file_is_refused_and_nothing_runs(tmp_path, capsys):
    train(quick_config("--train.steps", "2"), tmp_path / "run", on_event=lambda s: None)
    newest = checkpoint_dirs(tmp_path / "run")[-1]
    state = torch.load(newest / "state.pt", weights_only=True)  # what tokenrl writes loads safely
    assert state["step"] == 2
    planted = tmp_path / "planted"
    state["sampler"] = _Planted(planted)
    torch.save(state, newest / "state.pt")
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "holds Python objects that a safe load refuses" in err and str(newest) in err, err
    assert not planted.exists(), "the crafted pickle ran"

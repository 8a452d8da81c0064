"""The trainer end to end on the tiny model: run folder contents, metrics, exact resume, compare, merge."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tokenrl.cli import main
from tokenrl.config import load_config, parse_overrides
from tokenrl.run import train

TESTS = Path(__file__).parent
# A reward that a random byte-level model earns about half the time, so every group has signal.
REWARD = "rewards_for_tests:half_bytes_low"
QUICK = [
    "--model.name", "tiny", "--task.name", "mult:2x1", "--task.eval_limit", "8", "--task.reward", REWARD,
    "--rollout.max_new_tokens", "8", "--rollout.prompts_per_step", "2", "--rollout.group_size", "4",
    "--train.eval_every", "2", "--train.checkpoint_every", "2", "--log.samples_every", "1",
    "--log.progress", "false", "--optim.lr", "1e-3",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _tests_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


def quick_config(*extra: str):
    return load_config(None, parse_overrides([*QUICK, *extra]))


@pytest.mark.parametrize("algo", ["grpo", "sgrpo", "tspmo"])
def test_a_short_run_writes_every_file(tmp_path, algo):
    extra = {
        "tspmo": ["--tspmo.replay.every", "2"],
        "sgrpo": ["--sgrpo.alpha", "2", "--sgrpo.k", "5"],
    }.get(algo, [])
    cfg = quick_config("--train.algo", algo, "--train.steps", "4", *extra)
    summary = train(cfg, tmp_path, on_event=lambda s: None)
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "samples.jsonl",
        "eval.json",
        "report.png",
        "adapter/adapter_model.safetensors",
    ):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert summary["machine"]["cpu"] and "threads" in summary["machine"]  # the numbers' machine
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["train"]["algo"] == algo and saved["rollout"]["group_size"] == 4
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward/mean" in r]
    evals = [r for r in records if "eval/accuracy" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [r["step"] for r in evals] == [0, 2, 4]  # before, every 2 steps, final
    keys = {"reward/mean", "reward/std", "reward/zero_std_frac", "tokens/update_frac", "loss/policy",
            "loss/kl", "optim/grad_norm", "optim/lr", "time/generate", "time/score", "time/update",
            "memory/peak_rss_mb", "completion/mean_tokens", "completion/truncated_frac",
            "cpu/step_seconds"}  # fmt: skip
    for r in steps:
        assert keys <= r.keys(), keys - r.keys()
        assert all(math.isfinite(v) for k, v in r.items() if isinstance(v, float))
    assert any(r["optim/grad_norm"] > 0 for r in steps), "no step had a gradient"
    fracs = [r["tokens/update_frac"] for r in steps]
    if algo == "grpo":
        assert all(f == 1.0 for f in fracs)
    else:
        assert all(0 < f < 1 for f in fracs)
    if algo == "tspmo":
        assert any(r["replay/groups"] > 0 for r in steps)
    assert summary["after"]["n"] == 8 and summary["algo"] == algo
    assert summary["train_cpu_seconds"] == pytest.approx(sum(r["cpu/step_seconds"] for r in steps))
    assert summary["train_cpu_seconds"] > 0
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert {"step", "prompt", "completion", "reward", "gold"} <= samples[0].keys()
    # checkpoints keep the last 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-000002",
        "step-000004",
    ]


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def test_sampling_with_the_adapter_merged_trains_the_same_run(tmp_path):
    """rollout.merge_lora changes how the rollouts are computed (one matmul per layer), not what
    they are: the same completions, rewards and (to float rounding) the same adapter."""
    runs = {}
    for merge in ("false", "true"):
        cfg = quick_config(
            "--train.algo",
            "sgrpo",
            "--train.steps",
            "3",
            "--sgrpo.alpha",
            "2",
            "--rollout.merge_lora",
            merge,
        )
        train(cfg, tmp_path / merge, on_event=lambda s: None)
        runs[merge] = tmp_path / merge
    samples = {m: [(r["completion"], r["reward"])
                   for r in map(json.loads, (run / "samples.jsonl").read_text().splitlines())]
               for m, run in runs.items()}  # fmt: skip
    assert (
        samples["true"] == samples["false"] and len(samples["true"]) == 3 * 4
    )  # log.samples_count a step
    plain, merged = _adapter(runs["false"]), _adapter(runs["true"])
    assert plain.keys() == merged.keys()
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in merged.items() if "lora_B" in k)
    assert all(torch.allclose(plain[k], merged[k], atol=1e-5) for k in plain)


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-m", "tokenrl", "train", *args, "--threads", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)  # fmt: skip


def test_killed_run_resumes_exactly(tmp_path):
    args = [*QUICK, "--train.algo", "sgrpo", "--sgrpo.alpha", "2", "--sgrpo.k", "5", "--train.steps", "24",
            "--train.eval_every", "0", "--rollout.max_new_tokens", "16"]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = _cli(*args, "--out", str(whole))
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()

    proc = _cli(*args, "--out", str(killed))
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-000004" / "COMPLETE").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "adapter").exists(), (
        "the run finished before the kill: nothing was resumed"
    )

    proc = _cli("--resume", str(killed))
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    a, b = _adapter(whole), _adapter(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    # the resumed log has each step exactly once
    records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "reward/mean" in r]
    assert train_steps == list(range(1, 25))


def test_cli_rejects_bad_config_before_loading_anything(tmp_path, capsys):
    out = tmp_path / "run"
    cases = [
        (["--sgrpo.p", "1.5"], "p=1.5 is not a probability"),
        (["--rollout.group_size", "1"], "group_size=1 is below 2"),
        (["--optim.lr", "-0.1"], "optim.lr=-0.1 must be positive"),
        (["--train.stepz", "3"], "did you mean 'train.steps'"),
        (["--lora.r", "many"], "lora.r expects an integer"),
        (["--model.autocast", "fp8"], "model.autocast='fp8' is unknown"),
    ]
    for extra, message in cases:
        assert main(["train", "--model", "tiny", "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert not out.exists()
    assert main(["train", str(tmp_path / "missing.yaml"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_existing_run_folder_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("train: {steps: 1}\n")
    assert main(["train", "--model", "tiny", "--out", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for key in ("--train.steps", "--train.seed", "--rollout.group_size", "--rollout.max_new_tokens",
                "--rollout.temperature", "--optim.lr", "--lora.r", "--sgrpo.alpha", "--sgrpo.p", "--sgrpo.k",
                "--tspmo.min_visits", "--tspmo.replay.every", "--tspmo.replay.cut"):  # fmt: skip
        assert key in text, key
    assert "Probability of selecting each later token" in text


def test_yaml_config_and_overrides(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(
        "train:\n  algo: tspmo\n  steps: 7\ntspmo:\n  replay:\n    every: 3\n"
        "lora:\n  target_modules: [q_proj, v_proj]\n"
    )
    cfg = load_config(path, parse_overrides(["--train.steps", "9", "--tspmo.replay.cut=growing"]))
    assert (cfg.train.algo, cfg.train.steps) == ("tspmo", 9)
    assert cfg.tspmo.replay.every == 3 and cfg.tspmo.replay.cut == "growing"
    assert cfg.lora.target_modules == ("q_proj", "v_proj")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepss: 3\n")
    with pytest.raises(ValueError, match="did you mean 'train.steps'"):
        load_config(bad)


def test_compare_and_merge(tmp_path, capsys):
    runs = []
    for algo in ("grpo", "tspmo"):
        cfg = quick_config("--train.algo", algo, "--train.steps", "2")
        train(cfg, tmp_path / algo, on_event=lambda s: None)
        runs.append(str(tmp_path / algo))
    assert main(["compare", *runs, "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| grpo | grpo |" in table and "| tspmo | tspmo |" in table
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 10_000
    assert main(["merge", runs[1], str(tmp_path / "merged")]) == 0
    from transformers import AutoModelForCausalLM

    from tokenrl.models import load_model

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    adapted = load_model("tiny", adapter=Path(runs[1]) / "adapter").model
    ids = torch.tensor([[5, 17, 99, 3, 42]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-5)


@pytest.mark.parametrize(
    "path", sorted((TESTS.parent / "configs").rglob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_configs_load_and_validate(path):
    cfg = load_config(path)
    assert cfg.train.algo in path.stem or path.stem == "quick"


def _two_step_adapters(tmp_path, algo: str, key: str, values: tuple[str, str], *extra: str):
    """Train 2 steps twice, differing only in config ``key``; return both final adapters."""
    adapters = []
    for value in values:
        cfg = quick_config("--train.algo", algo, "--train.steps", "2", f"--{key}", value,
                           "--train.eval_every", "0", "--task.eval_limit", "2", *extra)  # fmt: skip
        train(cfg, tmp_path / value, on_event=lambda s: None)
        adapters.append(_adapter(tmp_path / value))
    return adapters


def test_micro_batches_change_memory_not_the_update(tmp_path):
    a, b = _two_step_adapters(tmp_path, "grpo", "optim.micro_batches", ("1", "2"))
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a if "lora_B" in k)
    for k in a:  # the same up to float rounding: a shared prompt's gradient adds up its rows
        assert torch.allclose(a[k], b[k], atol=1e-5), k  # in another order (entries up to ~0.09)


def test_tensorboard_and_inner_updates(tmp_path):
    cfg = quick_config("--train.algo", "sgrpo", "--train.steps", "2", "--log.tensorboard", "true",
                       "--optim.inner_updates", "2", "--train.eval_every", "0", "--task.eval_limit", "2")  # fmt: skip
    train(cfg, tmp_path, on_event=lambda s: None)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_gradient_checkpointing_gives_the_same_update(tmp_path):
    # whole rows both times (checkpointing turns prompt sharing off)
    a, b = _two_step_adapters(tmp_path, "tspmo", "model.gradient_checkpointing", ("false", "true"),
                              "--optim.share_prompt", "false")  # fmt: skip
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_gradient_checkpointing_keeps_the_backward_above_the_adapter(tmp_path):
    """transformers' checkpointing makes the embeddings require grad; the trainer undoes it (its
    non-reentrant checkpoints do not need it), so layers below the adapter get no backward."""
    from test_models import backward_layers

    from tokenrl.trainer import build_trainer

    cfg = quick_config("--model.name", "tiny:layers=4", "--lora.layers", "[2, 3]",
                       "--model.gradient_checkpointing", "true")  # fmt: skip
    tr = build_trainer(cfg, tmp_path)
    assert backward_layers(tr.model, torch.tensor([[5, 17, 99, 3]])) == [2, 3]


def test_autocast_runs_sampling_and_the_update_in_bf16(tmp_path, monkeypatch):
    import torch.nn.functional as F

    linear = F.linear
    dtypes: list[tuple[torch.dtype, bool]] = []  # (output dtype, gradients on: the update)

    def spy(x, weight, bias=None):
        out = linear(x, weight, bias)
        dtypes.append((out.dtype, torch.is_grad_enabled()))
        return out

    monkeypatch.setattr(F, "linear", spy)
    runs = {}
    for mode in ("none", "bf16"):
        dtypes.clear()
        cfg = quick_config("--train.steps", "2", "--model.autocast", mode, "--train.eval_every", "0",
                           "--train.eval_before", "false", "--task.eval_limit", "2")  # fmt: skip
        train(cfg, tmp_path / mode, on_event=lambda s: None)
        runs[mode] = (set(dtypes), _adapter(tmp_path / mode))
    assert runs["none"][0] == {(torch.float32, False), (torch.float32, True)}
    # sampling (no gradients) and the update in bf16; the final evaluation stays in float32
    assert runs["bf16"][0] == {
        (torch.bfloat16, False),
        (torch.bfloat16, True),
        (torch.float32, False),
    }
    a, b = runs["none"][1], runs["bf16"][1]
    assert all(torch.isfinite(b[k]).all() for k in b)
    assert any(
        not torch.equal(a[k], b[k]) for k in a if "lora_B" in k
    )  # bf16 products round differently


def test_shared_prompt_gives_the_same_update(tmp_path):
    a, b = _two_step_adapters(tmp_path, "grpo", "optim.share_prompt", ("false", "true"))
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a if "lora_B" in k)
    # the same up to float rounding, which depends on the CPU's kernels: differences up to 1.9e-5
    # on an AMD EPYC, under 1e-5 on an Intel Xeon (entries up to ~0.09; one AdamW step moves them 1e-3)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=5e-5), k


def test_compare_lists_accuracy_by_problem_type(tmp_path):
    """Per-type accuracies (SVAMP's Type) from each run's eval.json, before -> after."""
    from tokenrl.compare import by_type_table

    def ev(acc_sub, acc_mul, n=(4, 2)):
        return {"accuracy": 0.5, "ci95": [0.2, 0.8], "n": sum(n), "by_type": {
            "Subtraction": {"n": n[0], "accuracy": acc_sub},
            "Multiplication": {"n": n[1], "accuracy": acc_mul}}}  # fmt: skip

    run = tmp_path / "sgrpo"
    run.mkdir()
    (run / "eval.json").write_text(
        json.dumps({"algo": "sgrpo", "before": ev(0.25, 0.5), "after": ev(0.75, 1.0)})
    )
    table = by_type_table([run])
    assert table.splitlines()[0] == "| run | Multiplication | Subtraction |"
    assert table.splitlines()[2] == "| sgrpo | 50.0 -> 100.0 (n 2) | 25.0 -> 75.0 (n 4) |"
    plain = tmp_path / "mult"
    plain.mkdir()
    (plain / "eval.json").write_text(json.dumps({"algo": "grpo", "after": {"accuracy": 0.5}}))
    assert by_type_table([plain]) == ""


def test_compare_averages_the_seeds_of_one_experiment(tmp_path):
    """Runs whose configs differ only in train.seed form one row: mean and each seed's value."""
    from tokenrl.compare import seed_groups, seed_mean_table

    def run(name, seed, lr, after, frac, rss):
        folder = tmp_path / name
        folder.mkdir()
        cfg = {"optim": {"lr": lr}, "train": {"algo": "grpo", "seed": seed, "steps": 3}}
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
        ev = {"algo": "grpo", "seed": seed, "tokens_update_frac": frac, "peak_rss_mb": rss,
              "gain_points": 100 * (after - 0.4),
              "before": {"accuracy": 0.4, "ci95": [0.3, 0.5], "n": 20},
              "after": {"accuracy": after, "ci95": [0.3, 0.7], "n": 20}}  # fmt: skip
        (folder / "eval.json").write_text(json.dumps(ev))
        return folder

    a = run("x-grpo-s0", 0, 1e-4, 0.50, 0.25, 300.0)
    other = run("x-grpo-lr-s0", 0, 1e-5, 0.45, 1.0, 100.0)
    b = run("x-grpo-s1", 1, 1e-4, 0.60, 0.75, 200.0)
    assert seed_groups([a, other, b]) == [[a, b], [other]]
    lines = seed_mean_table([a, other, b]).splitlines()
    assert len(lines) == 3  # header, rule, one experiment with two seeds
    assert lines[2] == (
        "| x-grpo | grpo | 0, 1 | 40.0 | 55.0 (50.0, 60.0) | +15.0 (+10.0, +20.0) | 50.0 | 300 |"
    )
    assert seed_mean_table([a, other]) == ""


def test_runs_of_one_experiment_share_the_base_evaluation(tmp_path, monkeypatch):
    """The second run (another algorithm and seed, same model, problems and settings) takes the
    first one's base evaluation instead of evaluating again; other settings evaluate anew."""
    import tokenrl.run as run_module

    calls: list[str] = []
    evaluate = run_module._evaluate
    monkeypatch.setattr(
        run_module, "_evaluate", lambda tr: calls.append(tr.out.name) or evaluate(tr)
    )
    common = ("--train.steps", "1", "--train.eval_every", "0", "--task.eval_limit", "4")
    first = train(quick_config(*common), tmp_path / "a", on_event=lambda s: None)
    events: list[str] = []
    second = train(
        quick_config(*common, "--train.algo", "grpo", "--train.seed", "3"),
        tmp_path / "b",
        on_event=events.append,
    )
    assert calls == ["a", "a", "b"]  # a: before and after; b: after only
    assert second["before"]["accuracy"] == first["before"]["accuracy"]
    assert second["before"]["shared_from"]["run"] == str(tmp_path / "a")
    assert "shared_from" not in first["before"]
    assert any("base evaluation taken from" in e for e in events)
    # other evaluation settings (the completion cap), or sharing off: evaluated again
    third = train(quick_config(*common, "--rollout.max_new_tokens", "3"), tmp_path / "c",
                  on_event=lambda s: None)  # fmt: skip
    fourth = train(quick_config(*common, "--train.share_base_eval", "false"), tmp_path / "d",
                   on_event=lambda s: None)  # fmt: skip
    assert calls[3:] == ["c", "c", "d", "d"]
    assert "shared_from" not in third["before"] and "shared_from" not in fourth["before"]


def test_a_base_evaluation_is_shared_only_while_the_adapter_is_at_zero(tmp_path):
    from tokenrl.basecache import base_eval_key
    from tokenrl.trainer import build_trainer

    tr = build_trainer(quick_config("--task.eval_limit", "2"), tmp_path / "run")
    key = base_eval_key(tr)
    assert key is not None and base_eval_key(tr) == key
    b = next(p for n, p in tr.model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        b[0, 0] = 1e-3
    assert base_eval_key(tr) is None
    with torch.no_grad():
        b.zero_()
        next(p for n, p in tr.model.named_parameters() if "lora_" not in n)[0, 0] += 1.0
    changed = base_eval_key(tr)
    assert changed is not None and changed["weights"] != key["weights"]


def test_a_base_evaluation_is_not_shared_across_mkl_code_paths(tmp_path, monkeypatch):
    """MKL's Intel path (tokenrl.mklpath) rounds fp32 products differently: its own key."""
    import tokenrl.basecache as basecache
    from tokenrl.trainer import build_trainer

    tr = build_trainer(quick_config("--task.eval_limit", "2"), tmp_path / "run")
    monkeypatch.setattr(basecache, "is_active", lambda: False)
    own = basecache.base_eval_key(tr)
    monkeypatch.setattr(basecache, "is_active", lambda: True)
    intel = basecache.base_eval_key(tr)
    assert own["mkl_intel_path"] is False and intel["mkl_intel_path"] is True
    assert basecache.key_name(own) != basecache.key_name(intel)

"""tokenrl quickstart end to end with a reduced budget (the full run is recorded in the README,
not timed here), and the warm-up's pieces with hand-checked values."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tokenrl.cli import main
from tokenrl.config import load_config, save_config
from tokenrl.errors import RunError
from tokenrl.machine import apply_thread_policy
from tokenrl.models import build_tiny
from tokenrl.recipes.quickstart.plan import ALGOS, QuickstartPlan
from tokenrl.recipes.quickstart.run import MethodRun, child_env, last_step, train_methods
from tokenrl.recipes.quickstart.warmup import (
    IGNORE,
    WarmupConfig,
    collate,
    encode_pairs,
    save_base,
    supervised_warmup,
)
from tokenrl.tasks import get_task

METHOD_KEYS = {
    "accuracy",
    "ci95",
    "gain_points",
    "tokens_update_frac",
    "peak_rss_mb",
    "train_seconds",
    "cpu_seconds",
    "wall_seconds",
    "run_dir",
}


def test_quickstart_reduced_budget_writes_the_three_reports(tmp_path, capsys):
    out = tmp_path / "qs"
    rc = main(["quickstart", "--out", str(out), "--steps", "2", "--warmup-steps", "3", "--threads", "2",
               "--no-progress", "--set", "rollout.temperature=0.7"])  # fmt: skip
    assert rc == 0
    for name in ("report.md", "report.json", "report.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    assert {"settings", "machine", "base", "methods", "total_seconds"} <= report.keys()
    assert report["base"]["n"] == 300 and report["base"]["warmup"]["steps"] == 3
    assert set(report["methods"]) == set(ALGOS)
    assert report["settings"]["rl"]["rollout.temperature"] == 0.7
    assert report["settings"]["jobs"] == 3 and report["settings"]["threads_per_method"] == 2
    assert set(report["machine"]["openmp"]) == {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"}
    assert all(load_config(out / "configs" / f"{a}.yaml").rollout.temperature == 0.7 for a in ALGOS)
    for algo, m in report["methods"].items():
        assert METHOD_KEYS <= m.keys(), algo
        assert m["gain_points"] == pytest.approx(100 * (m["accuracy"] - report["base"]["accuracy"]))
        assert (
            0.0 <= m["tokens_update_frac"] <= 1.0 and m["peak_rss_mb"] > 0 and m["cpu_seconds"] > 0
        )
        assert last_step(out / algo / "metrics.jsonl") == 2
    # sgrpo's lowered alpha makes it select fewer tokens than full-token grpo
    assert report["methods"]["grpo"]["tokens_update_frac"] == pytest.approx(1.0)
    assert report["methods"]["sgrpo"]["tokens_update_frac"] < 1.0
    md = (out / "report.md").read_text()
    assert all(f"| {a} |" in md for a in ALGOS) and "| base |" in md
    assert "held-out accuracy" in capsys.readouterr().out


def test_quickstart_refuses_a_non_empty_out_and_bad_flags(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert main(["quickstart", "--out", str(tmp_path), "--steps", "2"]) == 2
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "keep.txt").exists()
    assert main(["quickstart", "--out", str(tmp_path / "a"), "--algos", "ppo"]) == 2
    assert "choose from grpo, sgrpo, tspmo" in capsys.readouterr().err
    assert main(["quickstart", "--out", str(tmp_path / "b"), "--task", "svamp"]) == 2
    assert "multiplication only" in capsys.readouterr().err
    assert (
        main(["quickstart", "--out", str(tmp_path / "c"), "--set", "rollout.temprature=0.7"]) == 2
    )
    assert "rollout.temprature" in capsys.readouterr().err
    assert main(["quickstart", "--out", str(tmp_path / "d"), "--set", "train.steps=5"]) == 2
    assert "use --steps" in capsys.readouterr().err
    assert main(["quickstart", "--out", str(tmp_path / "e"), "--set", "rollout.temperature"]) == 2
    assert "write KEY=VALUE, e.g. --set rollout.temperature=0.7" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abcde")


def test_the_thread_policy_acts_only_before_torch_loads_and_never_over_the_users_value(monkeypatch):
    env: dict[str, str] = {}
    monkeypatch.setattr("os.environ", env)
    apply_thread_policy(spin=True)
    assert env == {}  # torch is loaded in this process: too late
    monkeypatch.delitem(sys.modules, "torch")
    policy = apply_thread_policy(spin=False)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"} and policy["OMP_WAIT_POLICY"] == "PASSIVE"
    apply_thread_policy(spin=True)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}
    env.clear()
    env.update({"GOMP_SPINCOUNT": "0", "OMP_WAIT_POLICY": "ACTIVE"})  # the user's own values stay
    apply_thread_policy(spin=True)
    assert env == {"GOMP_SPINCOUNT": "0", "OMP_WAIT_POLICY": "ACTIVE"}


def test_methods_at_once_do_not_inherit_the_warm_ups_spinning(tmp_path, monkeypatch):
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    at_once, one_by_one = (
        child_env(QuickstartPlan(out=tmp_path)),
        child_env(QuickstartPlan(out=tmp_path, jobs=1)),
    )
    assert (
        "GOMP_SPINCOUNT" not in at_once
        and at_once["OMP_WAIT_POLICY"] == "PASSIVE"
        and at_once["TQDM_DISABLE"] == "1"
    )
    assert one_by_one["GOMP_SPINCOUNT"] == "10000"  # alone on the cores, like the warm-up


def test_set_replaces_one_rl_setting_and_keeps_the_others(tmp_path):
    plan = QuickstartPlan(out=tmp_path, rl_overrides={"rollout.group_size": 8, "optim.lr": 5e-4})
    cfg = plan.rl_config("base", "sgrpo")
    assert (cfg.rollout.group_size, cfg.optim.lr) == (8, 5e-4)
    default = QuickstartPlan(out=tmp_path).rl_config("base", "sgrpo")
    assert cfg.rollout.prompts_per_step == default.rollout.prompts_per_step and cfg.sgrpo.alpha == 2


def test_rl_config_is_the_same_for_every_method_but_the_algorithm(tmp_path):
    plan = QuickstartPlan(out=tmp_path, seed=3, steps=10)
    a, b = plan.rl_config("base", "grpo").to_dict(), plan.rl_config("base", "tspmo").to_dict()
    assert a["train"].pop("algo") == "grpo" and b["train"].pop("algo") == "tspmo"
    assert a == b
    assert (
        a["task"]["options"] == {"n_train": 4000, "n_test": 300, "seed": 3}
        and a["train"]["seed"] == 3
    )


def test_methods_run_at_once_with_the_cores_shared_out(tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    plan = QuickstartPlan(out=tmp_path)
    assert (plan.job_count, plan.child_threads) == (3, 2)  # 8 cores // 3 methods
    assert QuickstartPlan(out=tmp_path, jobs=2).child_threads == 4
    assert (
        QuickstartPlan(out=tmp_path, jobs=1).child_threads is None
    )  # one after another: torch's choice
    assert QuickstartPlan(out=tmp_path, jobs=5, algos=("sgrpo",)).job_count == 1
    assert QuickstartPlan(out=tmp_path, threads=3).child_threads == 3
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert QuickstartPlan(out=tmp_path).child_threads == 1  # 2 cores, 3 methods: one thread each
    with pytest.raises(ValueError, match="--jobs must be >= 1"):
        QuickstartPlan(out=tmp_path, jobs=0)


def _fake_start(plan, commands: dict[str, str], started: list[str], children: list | None = None):
    """A start_method that runs a small Python program per method instead of tokenrl train;
    ``started`` gets (method, how many of the earlier ones were still running)."""
    children = [] if children is None else children

    def start(plan_, base_model, algo):
        started.append((algo, sum(c.poll() is None for c in children)))
        run_dir = plan.out / algo
        run_dir.mkdir(parents=True, exist_ok=True)
        log_path = plan.out / f"{algo}.log"
        with open(log_path, "w") as log:
            child = subprocess.Popen(
                [sys.executable, "-c", commands[algo]], stdout=log, stderr=subprocess.STDOUT
            )
        children.append(child)
        return MethodRun(algo, child, run_dir, log_path, time.perf_counter())

    return start


def test_train_methods_keeps_at_most_jobs_running_and_returns_them_in_order(tmp_path, monkeypatch):
    started: list[str] = []
    write = "import json, pathlib; pathlib.Path('{d}/eval.json').write_text(json.dumps({{'algo': '{a}'}}))"
    pause = {"grpo": 0.1, "sgrpo": 3.0, "tspmo": 0.1}  # sgrpo still runs when grpo's end is seen
    commands = {
        a: f"import time; time.sleep({pause[a]}); " + write.format(d=tmp_path / a, a=a)
        for a in ALGOS
    }
    plan = QuickstartPlan(out=tmp_path, jobs=2)
    monkeypatch.setattr(
        "tokenrl.recipes.quickstart.run.start_method", _fake_start(plan, commands, started)
    )
    seen: list[dict[str, int]] = []
    results = train_methods(plan, "base", seen.append)
    assert list(results) == list(ALGOS) and all(results[a]["algo"] == a for a in ALGOS)
    # two start at once; the third only once one of them has ended
    assert started == [("grpo", 0), ("sgrpo", 1), ("tspmo", 1)]
    assert all(r["wall_seconds"] > 0 for r in results.values())
    assert seen[-1] == {a: plan.steps for a in ALGOS}


def test_a_failed_method_stops_the_others_and_raises_with_its_log(tmp_path, monkeypatch):
    started: list[str] = []
    commands = {
        "grpo": "import sys; print('bad config, say'); sys.exit(3)",
        "sgrpo": "import time; time.sleep(60)",
        "tspmo": "import time; time.sleep(60)",
    }
    plan = QuickstartPlan(out=tmp_path)  # all three at once
    monkeypatch.setattr(
        "tokenrl.recipes.quickstart.run.start_method", _fake_start(plan, commands, started)
    )
    t0 = time.perf_counter()
    with pytest.raises(
        RunError, match=r"grpo training failed \(exit status 3\)[\s\S]*bad config, say"
    ):
        train_methods(plan, "base", lambda steps: None)
    assert time.perf_counter() - t0 < 30  # the sleepers were stopped, not waited for
    assert [algo for algo, _ in started] == list(ALGOS)


def test_collate_labels_only_the_answer_tokens():
    batch = collate([([1, 2], [3]), ([4], [5, 6])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 3], [IGNORE, 5, 6]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 1]]
    batch = collate([([1], [2]), ([3, 4], [5, 6])], pad_id=9)
    assert batch["input_ids"].tolist() == [[1, 2, 9, 9], [3, 4, 5, 6]]
    assert batch["labels"].tolist() == [[IGNORE, 2, IGNORE, IGNORE], [IGNORE, IGNORE, 5, 6]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_warmup_never_sees_test_problems_and_stops_at_the_target():
    torch.manual_seed(0)
    model, tok = build_tiny("tiny")
    task = get_task("multiplication:2x1", style="compact", n_train=300, n_test=50).resolved(tok)
    pairs = encode_pairs(task, tok, task.examples("train"))
    assert (
        tok.decode(pairs[0][1]) == task.examples("train")[0].answer + "\n"
    )  # answer, then the stop string
    test_prompts = {tok.decode(p) for p, _ in encode_pairs(task, tok, task.examples("test"))}
    assert not test_prompts & {tok.decode(p) for p, _ in pairs}
    # a target of 0 is reached at the first check: the warm-up stops there
    info = supervised_warmup(
        model,
        tok,
        task,
        WarmupConfig(max_steps=20, check_every=4, target_accuracy=0.0, validation=50),
    )
    assert info["steps"] == 4 and info["reached_target"] and info["train_problems"] == 250
    # an unreachable target runs every step; the loss goes down on this easy task
    info = supervised_warmup(
        model,
        tok,
        task,
        WarmupConfig(max_steps=30, check_every=10, target_accuracy=1.0, validation=50, lr=3e-3),
    )
    assert info["steps"] == 30 and [s for s, _ in info["checks"]] == [10, 20, 30]
    assert info["final_loss"] < 2.0


def test_warmup_config_rejects_bad_values():
    with pytest.raises(ValueError, match="target_accuracy"):
        WarmupConfig(target_accuracy=1.5)
    with pytest.raises(ValueError, match="lr"):
        WarmupConfig(lr=0)


def test_wait_policy_benchmark_times_each_variant_against_passive():
    script = Path(__file__).parent.parent / "benchmarks" / "wait_policy.py"
    args = [
        "--variants",
        "spin_10k",
        "--loads",
        "idle",
        "--threads",
        "2",
        "--steps",
        "1",
        "--rounds",
        "1",
        "--json",
    ]
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    rows = {(r["variant"], r["threads"]): r for r in json.loads(done.stdout)["rows"]}
    assert set(rows) == {("passive", 1), ("spin_10k", 2), ("passive", 2)}  # the baselines added
    assert all(r["load"] == "idle" and r["step_median_s"] > 0 for r in rows.values())
    assert rows[("passive", 2)]["vs_passive_same_threads"] == 1.0
    spin = rows[("spin_10k", 2)]
    assert spin["vs_passive_same_threads"] == pytest.approx(
        rows[("passive", 2)]["step_median_s"] / spin["step_median_s"]
    )
    bad = subprocess.run(
        [sys.executable, str(script), "--variants", "bogus"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "unknown variant" in bad.stderr


def test_rl_malloc_benchmark_runs_the_methods_both_ways(tmp_path):
    model, tok = build_tiny("tiny")
    save_base(model, tok, tmp_path / "base")
    plan = QuickstartPlan(
        out=tmp_path, steps=4, rl_overrides={"rollout.prompts_per_step": 2, "rollout.batch_size": 8}
    )
    (tmp_path / "configs").mkdir()
    for algo in ALGOS:
        save_config(
            plan.rl_config(str(tmp_path / "base"), algo), tmp_path / "configs" / f"{algo}.yaml"
        )
    script = Path(__file__).parent.parent / "benchmarks" / "rl_malloc.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path), "--steps", "4", "--rounds", "1", "--json"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    assert [r["algo"] for r in rows] == list(ALGOS)
    for r in rows:
        assert r["step_s_plain"] > 0 and r["step_s_malloc_env"] > 0 and r["peak_rss_mb_plain"] > 0
        assert r["speed_up"] == pytest.approx(r["step_s_plain"] / r["step_s_malloc_env"])
    bad = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "pass a quickstart output folder" in bad.stderr

"""benchmarks/compare_selectors.py runs each selector and seed and writes one table (smoke test
on the tiny model: a harness check, not a measurement)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_harness_runs_every_selector_and_seed_and_writes_the_table(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: {name: tiny}\n"
        "task: {name: 'mult:2x1', eval_limit: 2, reward: [rewards_for_tests:half_bytes_low]}\n"
        "rollout: {group_size: 4, prompts_per_step: 2, max_new_tokens: 6}\n"
        "train: {steps: 1, eval_every: 0, checkpoint_every: 0}\n"
    )
    out = tmp_path / "sel"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "compare_selectors.py"), str(config),
           "--out", str(out), "--seeds", "0,1", "--selectors", "all;entropy={q: 0.5};nat-rpc"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1"}
    # two runs at once, one thread each: each run's output goes to its own log
    parallel = [*cmd, "--jobs", "2", "--threads", "1"]
    done = subprocess.run(parallel, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--threads 1" in done.stdout and (out / "nat-rpc-s1.log").stat().st_size > 0
    table = (out / "selectors.md").read_text()
    for label in ("all", "entropy", "nat-rpc"):
        for seed in (0, 1):
            assert f"| {label}-s{seed} |" in table, table
            assert (out / f"{label}-s{seed}" / "eval.json").exists()
        assert f"| {label} |" in table  # the mean over seeds
    assert (out / "compare.png").exists() and (out / "machine.json").exists()
    # a second call skips the finished runs and resumes one that was cut short (no eval.json)
    (out / "all-s0" / "eval.json").unlink()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done already") == 5, again.stderr[-2000:]
    assert "--resume" in again.stdout and (out / "all-s0" / "eval.json").exists()
    # finished runs made elsewhere join the table under their own label, and are not run again
    include = ["--selectors", "nat-rpc", "--include", f"earlier={out / 'all-s0'},{out / 'all-s1'}"]
    third = subprocess.run(
        [*cmd[:-2], *include], capture_output=True, text=True, env=env, timeout=600
    )
    assert third.returncode == 0 and third.stdout.count("done already") == 2, third.stderr[-2000:]
    assert "| earlier |" in (out / "selectors.md").read_text()
    bad = subprocess.run(
        [*cmd, "--include", f"x={tmp_path}"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and "finished runs" in bad.stderr

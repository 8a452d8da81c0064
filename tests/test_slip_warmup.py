"""benchmarks/slip_warmup.py: its slip accounting by hand, and a tiny end-to-end run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "slip_warmup.py"


def test_slip_stats_counts_right_slipped_and_other_answers(load_benchmark) -> None:
    records = [
        {"completion": " 12", "gold": "12"},  # right (spaces ignored)
        {"completion": "120", "gold": "12"},  # the slip: product times ten
        {"completion": "13", "gold": "12"},  # wrong
        {"completion": "1200", "gold": "12"},  # wrong: two zeros is not the slip
    ]
    stats = load_benchmark("slip_warmup").slip_stats(records)
    assert stats == {"accuracy": 0.25, "slip_rate": 0.25, "slip_forgiven_accuracy": 0.5}


def test_slip_warmup_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "slip"
    cmd = [sys.executable, str(SCRIPT), "--warmup-steps", "2", "--steps", "1", "--algos", "tspmo"]
    cmd += ["--threads", "1", "--out", str(out)]
    done = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"tspmo"}
    for stats in (summary["base"], summary["methods"]["tspmo"]):
        assert 0.0 <= stats["accuracy"] <= stats["slip_forgiven_accuracy"] <= 1.0
    assert summary["methods"]["tspmo"]["curve"][0][0] == 0  # evaluated before training
    assert "| tspmo |" in done.stdout

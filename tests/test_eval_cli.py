"""`tokenrl eval` end to end on the tiny model, and its handling of bad data."""

import json

from tokenrl.cli import main


def test_eval_writes_summary_and_completions(tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", "--model", "tiny", "--task", "mult:2x1", "--limit", "6", "--out", str(out),
                 "--max-new-tokens", "5"]) == 0  # fmt: skip
    summary = json.loads((out / "eval.json").read_text())
    assert summary["n"] == 6 and summary["samples"] == 1 and summary["style"] == "fewshot"
    assert summary["machine"]["cpu"] and "avx2" in summary["machine"]["cpu_features"]  # recorded
    lo, hi = summary["ci95"]
    assert lo <= summary["accuracy"] <= hi
    # a random byte model: every completion runs to the 5-token limit (it never writes "\n")
    records = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(r["tokens"] <= 5 for r in records)
    assert summary["truncation_rate"] == sum(r["truncated"] for r in records) / 6
    assert summary["accuracy"] == sum(r["reward"] for r in records) / 6
    assert "accuracy" in capsys.readouterr().out


def test_eval_pass_at_k(tmp_path):
    out = tmp_path / "ev"
    assert main(["eval", "--model", "tiny", "--task", "mult:2x1", "--limit", "3", "--samples", "4",
                 "--max-new-tokens", "4", "--out", str(out)]) == 0  # fmt: skip
    summary = json.loads((out / "eval.json").read_text())
    assert set(summary["pass_at"]) == {"1", "2", "4"}
    records = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert len(records) == 12 and sorted({r["sample"] for r in records}) == [0, 1, 2, 3]


def test_task_options_choose_the_problems(tmp_path, capsys):
    """--task-option seed=3 n_test=5 evaluates that split's test problems (a quickstart seed's)."""
    from tokenrl.tasks import get_task

    out = tmp_path / "ev"
    assert main(["eval", "--model", "tiny", "--task", "mult:2x1", "--task-option", "seed=3",
                 "--task-option", "n_test=5", "--max-new-tokens", "2", "--out", str(out)]) == 0  # fmt: skip
    ids = [json.loads(line)["id"] for line in (out / "completions.jsonl").read_text().splitlines()]
    assert ids == [e.id for e in get_task("mult:2x1", seed=3, n_test=5).examples("test")]
    assert ids != [e.id for e in get_task("mult:2x1").examples("test")][:5]
    assert json.loads((out / "eval.json").read_text())["task_options"] == {"seed": 3, "n_test": 5}
    assert main(["eval", "--model", "tiny", "--task", "mult:2x1", "--task-option", "seed"]) == 2
    assert "write KEY=VALUE" in capsys.readouterr().err
    assert main(["eval", "--model", "tiny", "--task", "mult:2x1", "--task-option", "sede=3"]) == 2
    assert "unknown option 'sede'" in capsys.readouterr().err


def test_eval_svamp_reports_per_type(tmp_path):
    import pytest

    from tokenrl.tasks import find_data_dir

    if find_data_dir(None) is None:
        pytest.skip("../shared/data is absent: SVAMP cannot be read")
    out = tmp_path / "ev"
    assert main(["eval", "--model", "tiny", "--task", "svamp", "--limit", "8", "--max-new-tokens", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    by_type = json.loads((out / "eval.json").read_text())["by_type"]
    assert sum(v["n"] for v in by_type.values()) == 8


def test_bad_data_exits_2_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer": \n')
    out = tmp_path / "ev"
    assert main(["eval", "--model", "tiny", "--task", f"jsonl:{bad}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "line 2" in err
    assert not out.exists()
    assert main(["eval", "--model", "tiny", "--task", "nosuchtask", "--out", str(out)]) == 2
    assert "known tasks" in capsys.readouterr().err
    assert not out.exists()

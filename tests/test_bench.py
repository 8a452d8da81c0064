"""`tokenrl bench`: the commands run on the tiny smoke workloads and print well-formed reports.

These check structure and the bookkeeping (ratios, goals, equal completion lengths), never a
timing. TRL parts are skipped when trl is not installed (rows then say how to install it).
"""

from __future__ import annotations

import json

import pytest

from benchmarks.trl.measure import trl_available
from benchmarks.trl.run import TRL_MISSING, add_ratios, format_report
from benchmarks.trl.workloads import WORKLOADS, get_workloads
from tokenrl.cli import main

HAVE_TRL = trl_available()


def _run_json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _row(report: dict, impl: str, measure: str) -> dict:
    return next(r for r in report["rows"] if r["impl"] == impl and r["measure"] == measure)


def test_bench_memory_quick_json(capsys):
    report = _run_json(capsys, ["bench", "memory", "--quick", "--impls", "trl,tspmo", "--json"])
    assert {"machine", "versions", "settings", "rows", "workloads"} <= report.keys()
    assert {"cpu", "cores", "ram_gib"} <= report["machine"].keys()
    assert {"python", "torch", "transformers", "peft", "trl", "tokenrl"} <= report[
        "versions"
    ].keys()
    ours = _row(report, "tspmo", "memory")
    assert ours["status"] == "ok" and ours["workload"] == "tiny" and ours["unit"] == "MB"
    assert ours["min"] <= ours["median"] <= ours["max"] and len(ours["samples"]) == 1
    assert ours["threads_used"] == 2
    assert ours["info"]["lora_changed"] is True  # the measured step really updated the adapter
    trl = _row(report, "trl", "memory")
    if HAVE_TRL:
        assert trl["status"] == "ok" and trl["info"]["lora_changed"] is True
        assert ours["ratio_to_trl"] == pytest.approx(ours["median"] / trl["median"])
    else:
        assert trl["status"] == TRL_MISSING and ours["ratio_to_trl"] is None


def test_bench_speed_whole_step_equal_lengths(capsys):
    report = _run_json(
        capsys,
        ["bench", "speed", "--workloads", "tiny-step", "--quick", "--impls", "trl,sgrpo", "--json"],
    )
    L = WORKLOADS["tiny-step"].completion_len
    ours = _row(report, "sgrpo", "speed")
    assert ours["metric"] == "completions_per_s" and ours["median"] > 0
    assert ours["info"]["completion/mean_tokens"] == L  # forced to exactly L new tokens
    assert ours["info"]["update/skipped"] == 0  # the benchmark reward always gives a signal
    if HAVE_TRL:
        trl = _row(report, "trl", "speed")
        assert trl["info"]["completion/mean_tokens"] == L
        assert ours["speedup_vs_trl"] == pytest.approx(ours["median"] / trl["median"])


def test_bench_scaling_quick_writes_json_and_plot(tmp_path, capsys):
    out = tmp_path / "scaling.json"
    argv = ["bench", "scaling", "--quick", "--impls", "tspmo", "--lengths", "16", "--groups", "4"]
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert (row["impl"], row["completion_len"], row["group"], row["status"]) == (
        "tspmo",
        16,
        4,
        "ok",
    )
    assert {"peak_added_mb", "update_s"} <= row.keys()
    assert out.with_suffix(".png").stat().st_size > 0
    assert "| tspmo | 16 | 4 |" in capsys.readouterr().out


def test_ratios_goals_and_table():
    rows = [
        {
            "workload": "A",
            "measure": "memory",
            "impl": "trl",
            "status": "ok",
            "metric": "peak_added_mb",
            "median": 1000.0,
        },
        {
            "workload": "A",
            "measure": "memory",
            "impl": "grpo",
            "status": "ok",
            "metric": "peak_added_mb",
            "median": 400.0,
        },
        {
            "workload": "A",
            "measure": "memory",
            "impl": "tspmo",
            "status": "ok",
            "metric": "peak_added_mb",
            "median": 150.0,
        },
        {
            "workload": "A",
            "measure": "speed",
            "impl": "trl",
            "status": "ok",
            "metric": "update_s",
            "median": 3.0,
        },
        {
            "workload": "A",
            "measure": "speed",
            "impl": "sgrpo",
            "status": "ok",
            "metric": "update_s",
            "median": 1.0,
        },
        {
            "workload": "C-i",
            "measure": "speed",
            "impl": "trl",
            "status": "ok",
            "metric": "completions_per_s",
            "median": 10.0,
        },
        {
            "workload": "C-i",
            "measure": "speed",
            "impl": "grpo",
            "status": "ok",
            "metric": "completions_per_s",
            "median": 14.0,
        },
    ]
    add_ratios(rows, WORKLOADS)
    by = {(r["workload"], r["measure"], r["impl"]): r for r in rows}
    grpo_mem, tspmo_mem = by["A", "memory", "grpo"], by["A", "memory", "tspmo"]
    assert grpo_mem["ratio_to_trl"] == pytest.approx(0.4) and grpo_mem["met"] is True  # goal <= 0.5
    assert (
        tspmo_mem["ratio_to_trl"] == pytest.approx(0.15) and tspmo_mem["met"] is False
    )  # goal <= 0.1
    assert by["A", "speed", "sgrpo"]["speedup_vs_trl"] == pytest.approx(3.0)  # 3 s / 1 s
    assert by["A", "speed", "sgrpo"]["met"] is True  # goal >= 2x
    assert by["C-i", "speed", "grpo"]["speedup_vs_trl"] == pytest.approx(
        1.4
    )  # 14 / 10 completions/s
    assert by["C-i", "speed", "grpo"]["met"] is False  # goal >= 1.5x
    assert by["A", "memory", "trl"]["ratio_to_trl"] is None


def test_rows_without_trl_have_no_ratio():
    rows = [
        {"workload": "A", "measure": "memory", "impl": "trl", "status": TRL_MISSING},
        {
            "workload": "A",
            "measure": "memory",
            "impl": "grpo",
            "status": "ok",
            "metric": "peak_added_mb",
            "median": 400.0,
        },
    ]
    add_ratios(rows, WORKLOADS)
    assert rows[1]["ratio_to_trl"] is None and rows[1]["met"] is None and rows[1]["goal"] == 0.5
    report = {
        "machine": {"cpu": "x", "cores": 2, "ram_gib": 1.0},
        "versions": {"torch": "2", "trl": None},
        "settings": {
            "device": "cpu",
            "dtype": "fp32",
            "threads": 2,
            "warmup": 1,
            "repeats_memory": 3,
            "repeats_speed": 5,
        },
        "workloads": {"A": {"description": "d", "notes": ""}},
        "rows": [{**r, "min": 1.0, "max": 1.0} for r in rows],
    }
    table = format_report(report)
    assert TRL_MISSING in table and "trl not installed" in table
    assert "| A | peak added memory (MB) | grpo | 400 | 1-1 | - | <= 0.50x | n/a |" in table


def test_step_workloads_have_no_memory_measure():
    with pytest.raises(ValueError, match="no memory measure"):
        get_workloads("A,C-i", "memory")
    with pytest.raises(ValueError, match="unknown workload"):
        get_workloads("Z", "speed")


def test_fixed_rollouts_branch_so_tspmo_has_pairs():
    from benchmarks.trl.inputs import fixed_rollouts
    from tokenrl.algorithms import get_algorithm
    from tokenrl.models import build_byte_tokenizer

    w = WORKLOADS["tiny"]  # G = 4 completions of 16 tokens: branches at 8 (2 variants), then own
    batch, rewards = fixed_rollouts(w, build_byte_tokenizer(), 512, "cpu")
    assert batch.completion_ids.shape == (4, 16) and bool(batch.completion_mask.all())
    assert batch.prompt_ids.shape == (4, w.prompt_len)
    ids = batch.completion_ids
    assert bool((ids[:, :8] == ids[0, :8]).all())  # shared first segment
    assert bool((ids[0, 8:] == ids[2, 8:]).all()) and not bool((ids[0, 8:] == ids[1, 8:]).all())
    spec = get_algorithm("tspmo")
    inputs = spec.prepare(batch, rewards, spec.config_cls(), None)
    # rows 0, 2 and rows 1, 3 are identical (T = 16 leaves only the cut at 8), so the trie
    # branches once, at position 8, into 2 children with different mean rewards: 2 pairs
    assert inputs.metrics["tspmo/pairs"] == 2.0


def test_without_trl_the_trl_rows_say_how_to_install(monkeypatch, capsys):
    import benchmarks.trl.run as run

    monkeypatch.setattr(run, "trl_available", lambda: False)  # no subprocess is started
    report = _run_json(capsys, ["bench", "speed", "--quick", "--impls", "trl", "--json"])
    assert [r["status"] for r in report["rows"]] == [TRL_MISSING, TRL_MISSING]  # tiny, tiny-step


def test_without_the_checkout_bench_says_where_it_runs(monkeypatch, capsys):
    import tokenrl.cli as cli

    monkeypatch.setattr(
        cli, "_bench_cli", lambda: None
    )  # an installed wheel: no benchmarks/ folder
    assert main(["bench", "memory", "--quick"]) == 2
    assert (
        "runs from a source checkout of tokenrl (the benchmarks/ folder is not installed)"
        in capsys.readouterr().err
    )
    assert cli.build_parser().parse_args(["compare", "a", "b"]).runs == [
        "a",
        "b",
    ]  # the rest as before


def test_a_worker_runs_from_any_folder(tmp_path, monkeypatch):
    """The worker (``python -P -m benchmarks.trl.worker``) finds the checkout's package through
    PYTHONPATH, never the working folder, and the whole step's reward
    ``benchmarks.trl.rewards:bench_reward`` resolves in it."""
    from benchmarks.trl.run import Settings, run_worker, worker_spec

    shadow = tmp_path / "benchmarks"
    shadow.mkdir()
    (shadow / "__init__.py").write_text(
        "raise ImportError('the working folder shadowed the checkout')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    w = WORKLOADS["tiny-step"]
    raw = run_worker(
        worker_spec(w, "grpo", "speed", Settings(warmup=0, repeats_speed=1)),
        threads=1,
        timeout_s=300,
    )
    assert "error" not in raw, raw["error"]
    assert raw["info"]["rows"] == w.rows and len(raw["times_s"]) == 1


def test_bench_step_reports_each_phase_against_the_machines_bounds(capsys):
    """``tokenrl bench step`` on the tiny model (a smoke run: the JSON's fields, not its speed)."""
    argv = ["bench", "step", "--model", "tiny", "--task", "mult:2x1", "--algos", "grpo",
            "--threads", "1", "--warmup", "0", "--max-new-tokens", "6", "--json"]  # fmt: skip
    report = _run_json(capsys, argv)
    assert report["machine"]["cpu"] and "avx2" in report["machine"]["cpu_features"]
    assert report["machine"]["gemm_fp32_flops"] > 0 and report["machine"]["read_bytes_per_s"] > 0
    (row,) = report["algorithms"]
    assert row["algo"] == "grpo" and row["step_s"] > 0 and 0 < row["decode_of_bound"]
    assert {"decode_of_bound", "update_of_bound", "step_of_bound"} <= set(row)
    shape = report["shape"]  # every row decodes every step: rows x new tokens generated
    decoded = row["generate_tokens_per_s"] * row["generate_s"]
    assert decoded == pytest.approx(shape["prompts"] * shape["group"] * shape["new_tokens"])


def test_bench_step_runs_each_algorithm_in_a_process_of_its_own(capsys):
    """Several algorithms: each runs in a fresh process (as training has it), one report."""
    import os

    argv = ["bench", "step", "--model", "tiny", "--task", "mult:2x1", "--algos", "grpo,tspmo",
            "--threads", "1", "--warmup", "0", "--max-new-tokens", "4", "--json"]  # fmt: skip
    report = _run_json(capsys, argv)
    assert report["processes"] == "each algorithm in its own"
    rows = report["algorithms"]
    assert [r["algo"] for r in rows] == ["grpo", "tspmo"]
    assert len({r["pid"] for r in rows} | {os.getpid()}) == 3
    assert all(r["machine"]["gemm_fp32_flops"] > 0 and r["step_s"] > 0 for r in rows)
    together = _run_json(capsys, [*argv, "--one-process"])  # the old way: all in this process
    assert "processes" not in together and {r["pid"] for r in together["algorithms"]} == {
        os.getpid()
    }


def test_bench_step_on_a_random_weight_architecture_measures_an_update(capsys, tmp_path):
    """``random:FOLDER`` answers nothing right, so the bench gives it the tie-broken reward:
    every group has signal and the update is measured (with the task's reward it is skipped)."""
    from test_models import _architecture_folder

    folder = _architecture_folder(tmp_path)
    argv = ["bench", "step", "--model", f"random:{folder}", "--task", "mult:2x1", "--algos",
            "sgrpo", "--threads", "1", "--warmup", "0", "--max-new-tokens", "6", "--json",
            "--set", "rollout.prepack_weights=false"]  # fmt: skip
    report = _run_json(capsys, argv)
    assert report["settings"] == {"rollout.prepack_weights": "false"}  # what the run was told
    assert report["reward"] == "benchmarks.trl.rewards:bench_reward" and report["device"] == "cpu"
    assert report["costs"]["hidden"] == 48
    (row,) = report["algorithms"]
    assert row["update_tokens_run"] > 0 and row["update_of_bound"] > 0
    shape = report["shape"]  # the update's LM-head rows: some, at most every completion token
    assert 0 < row["update_targets"] <= shape["prompts"] * shape["group"] * shape["new_tokens"]


def test_bench_step_counts_the_head_rows_the_update_computes(load_benchmark, tiny):
    """The update bound's LM-head term counts the rows ``head_logprobs`` gets in the update phase
    (the loss's targets), not every completion token: groups without signal run no head."""
    import torch

    from tokenrl.algorithms import logprobs

    step_bounds = load_benchmark("step_bounds")
    model, _ = tiny
    original = logprobs.head_logprobs
    log = step_bounds.ForwardLog(model)
    head = model.get_output_embeddings()
    hidden, targets = torch.randn(5, head.in_features), torch.tensor([1, 2, 3, 4, 5])
    log.phase = "generate"
    logprobs.head_logprobs(head, hidden, targets)
    log.phase = "update"
    out = logprobs.head_logprobs(head, hidden[:3], targets[:3], chunk_size=2)
    assert log.head_rows == 3 and out.shape == (3,)
    log.close()
    assert logprobs.head_logprobs is original

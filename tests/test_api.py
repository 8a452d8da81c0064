"""The Python API (tokenrl.train / make_config), reward functions in both forms, datasets by
name, model cards; docs/api.md's example runs as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tokenrl
from tokenrl.errors import ConfigError
from tokenrl.guards import RewardError
from tokenrl.rewards import Reward, RewardSet, is_trl_style
from tokenrl.tasks import Example, get_task

TESTS = Path(__file__).parent
DOC = TESTS.parent / "docs" / "api.md"
SMALL = {"train.steps": 2, "rollout.group_size": 4, "rollout.prompts_per_step": 2, "rollout.max_new_tokens": 8,
         "task.eval_limit": 4, "train.eval_every": 0, "log.progress": False, "log.samples_every": 0,
         "optim.lr": 1e-3}  # fmt: skip
ROWS = [
    {"question": f"What is {a} times {b}?", "answer": str(a * b), "level": a % 3}
    for a in range(2, 9)
    for b in range(2, 7)
]


@pytest.fixture(autouse=True)
def _tests_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def test_the_docs_example_runs_as_written(tmp_path, monkeypatch):
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[0]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, str(DOC), "exec"), scope)
    result = scope["result"]
    assert (
        result.adapter == Path("runs/api-example/adapter")
        and (result.adapter / "adapter_model.safetensors").exists()
    )
    assert result.accuracy_after == result.metrics["after"]["accuracy"]
    steps = [
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [m for m in steps if "reward/mean" in m]
    assert len(steps) == 2 and all("reward/has_digit" in m and "reward/task" in m for m in steps)
    for m in steps:  # the logged total is the weighted sum of the two functions' means
        assert m["reward/mean"] == pytest.approx(0.2 * m["reward/has_digit"] + m["reward/task"])
    card = (result.adapter / "README.md").read_text()
    assert card.startswith("---\nbase_model: tiny\nlibrary_name: peft\n") and "sgrpo" in card
    # the in-memory rows were written into the run, and the saved config points at them
    saved = tokenrl.make_config(result.run_dir / "config.yaml")
    assert saved.task.name == f"jsonl:{(tmp_path / 'runs/api-example/data/train.jsonl').resolve()}"


def test_trl_and_tokenrl_style_rewards_give_the_same_rewards():
    import rewards_for_tests as r

    assert is_trl_style(r.half_bytes_low_trl) and not is_trl_style(r.half_bytes_low)
    completions = ["12", "\xff\xfe a", "", "abc\xff"]
    examples = [Example(str(i), "q", "1") for i in range(4)]
    a = RewardSet.of([r.half_bytes_low]).score(["p"] * 4, completions, examples)
    b = RewardSet.of([r.half_bytes_low_trl]).score(["p"] * 4, completions, examples)
    assert a.total == b.total == [1.0, 0.0, 0.0, 1.0]


def test_weighted_rewards_add_up_and_none_adds_nothing():
    def trl(prompts, completions, answer, level, **kw):  # dataset columns arrive as lists
        assert level == [0, 1, 2]
        return [1.0, None, 3.0]

    def mine(completion, example):
        return 10.0 if example.metadata["level"] == 1 else 0.0

    examples = [Example(str(i), "q", "5", {"level": i}) for i in range(3)]
    scores = RewardSet([Reward(trl, 0.5), Reward(mine, 2.0)]).score(
        ["p"] * 3, ["a", "b", "c"], examples
    )
    assert scores.total == [0.5, 20.0, 1.5]  # 0.5*1 + 2*0, none + 2*10, 0.5*3 + 2*0
    assert scores.by_name == {"trl": [1.0, None, 3.0], "mine": [0.0, 10.0, 0.0]}


@pytest.mark.parametrize(
    "fn,message",
    [
        (lambda prompts, completions, **kw: [1.0], "returned 1 values for 2 completions"),
        (lambda prompts, completions, **kw: [1.0, "x"], "not a number"),
        (lambda prompts, completions, **kw: 1 / 0, "raised ZeroDivisionError on a batch of 2"),
        (lambda completion, example: float("inf"), "not a finite number"),
    ],
)
def test_bad_rewards_get_their_errors(fn, message):
    examples = [Example("a", "q", "1"), Example("b", "q", "2")]
    with pytest.raises(RewardError, match=message):
        RewardSet.of([fn]).score(["p", "p"], ["1", "2"], examples)


def test_failed_reward_calls_score_zero_and_are_counted_when_asked():
    examples = [Example("a", "q", "1"), Example("b", "q", "2")]
    scores = RewardSet.of([lambda prompts, completions, **kw: [1.0, float("nan")]]).score(
        ["p", "p"], ["1", "2"], examples, on_error="zero"
    )
    assert scores.total == [1.0, 0.0] and scores.errors == 1


def test_a_list_of_dicts_and_a_jsonl_file_train_the_same_adapter(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    kw = {
        "reward_funcs": ["rewards_for_tests:half_bytes_low"],
        "algo": "grpo",
        "config": SMALL,
        "on_event": lambda s: None,
    }
    a = tokenrl.train("tiny", dataset=ROWS, out=tmp_path / "rows", **kw)
    b = tokenrl.train("tiny", dataset=str(path), out=tmp_path / "file", **kw)
    wa, wb = _adapter(a.run_dir), _adapter(b.run_dir)
    assert any(v.abs().sum() > 0 for k, v in wa.items() if "lora_B" in k)  # it trained
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # an importable reward is recorded in config.yaml, so the command line can resume the run
    assert a.config.task.reward == ("rewards_for_tests:half_bytes_low",)


def test_a_loaded_model_and_tokenizer_train_like_the_built_in_name(tmp_path):
    from tokenrl.models import build_tiny

    kw = {
        "dataset": ROWS,
        "reward_funcs": ["rewards_for_tests:half_bytes_low"],
        "config": SMALL,
        "on_event": lambda s: None,
    }
    by_name = tokenrl.train("tiny", out=tmp_path / "name", **kw)
    model, tok = build_tiny("tiny")
    loaded = tokenrl.train(model, tokenizer=tok, out=tmp_path / "loaded", **kw)
    wa, wb = _adapter(by_name.run_dir), _adapter(loaded.run_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_hub_datasets_load_from_a_local_folder_with_column_mapping(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"q": r["question"], "sol": r["answer"], "src": "x"} for r in ROWS]
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(rows[:30]),
            "test": datasets.Dataset.from_list(rows[30:]),
        }
    ).save_to_disk(str(tmp_path / "ds"))
    task = get_task(f"hf:{tmp_path / 'ds'}", question_field="q", answer_field="sol")
    assert len(task.examples("train")) == 30 and len(task.examples("test")) == len(rows) - 30
    assert task.examples("test")[0].metadata == {"src": "x"}
    with pytest.raises(Exception, match="no column 'question'; its columns are q, sol, src"):
        get_task(f"hf:{tmp_path / 'ds'}").examples("train")
    result = tokenrl.train("tiny", dataset=datasets.Dataset.from_list(rows), question_column="q", answer_column="sol",
                           reward_funcs=["rewards_for_tests:half_bytes_low"], config={**SMALL, "train.steps": 1},
                           out=tmp_path / "run", on_event=lambda s: None)  # fmt: skip
    assert result.metrics["steps"] == 1


def test_make_config_validates_like_the_command_line():
    cfg = tokenrl.make_config(
        {"train": {"algo": "tspmo"}}, rollout={"group_size": 4}, train__steps=7
    )
    assert (cfg.train.algo, cfg.rollout.group_size, cfg.train.steps) == ("tspmo", 4, 7)
    with pytest.raises(ConfigError, match="did you mean 'rollout.group_size'"):
        tokenrl.make_config(rollout={"group_sise": 4})
    with pytest.raises(ConfigError, match="reward_weights has 1 values for 2 reward functions"):
        tokenrl.make_config(
            {"task.reward": "task,rewards_for_tests:half_bytes_low", "task.reward_weights": [1.0]}
        )
    two = tokenrl.make_config(
        {"task.reward": "task,rewards_for_tests:half_bytes_low", "task.reward_weights": "1,0.5"}
    )
    assert two.task.reward == (
        "task",
        "rewards_for_tests:half_bytes_low",
    ) and two.task.reward_weights == (1.0, 0.5)


def test_a_trl_style_reward_works_from_the_command_line_beside_the_exact_match(tmp_path):
    from tokenrl.cli import main

    argv = ["train", "--model", "tiny", "--task", "mult:2x1", "--algo", "grpo",
            "--task.reward", "rewards_for_tests:half_bytes_low_trl,task", "--task.reward_weights", "1,0.5",
            "--task.eval_limit", "2", "--rollout.group_size", "4", "--rollout.prompts_per_step", "2",
            "--rollout.max_new_tokens", "6", "--train.steps", "1", "--train.eval_every", "0",
            "--log.progress", "false", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    (step,) = [json.loads(x) for x in lines if '"reward/mean"' in x]
    mean = step["reward/half_bytes_low_trl"] + 0.5 * step["reward/task"]
    assert step["reward/mean"] == pytest.approx(mean)

"""Tasks: splits, prompts, rewards, the registry and data errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenrl.tasks import (
    DataError,
    Example,
    JsonlConfig,
    JsonlTask,
    MultiplicationConfig,
    MultiplicationTask,
    TaskError,
    count_problems,
    find_data_dir,
    get_task,
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def shared_data() -> Path:
    """The shared data folder, found as the tasks find it; skip the test when it is absent."""
    root = find_data_dir()
    if root is None or not (root / "svamp").is_dir():
        pytest.skip(
            "shared data (../shared/data with svamp/ and gsm8k/) not found; set TOKENRL_DATA"
        )
    return root


@pytest.fixture
def chat_tokenizer():
    from tokenrl.models import build_byte_tokenizer

    tok = build_byte_tokenizer()
    tok.chat_template = CHATML
    return tok


class PlainTokenizer:
    chat_template = None


# ---------------------------------------------------------------------------------------------
# multiplication


def pairs(examples: list[Example]) -> set[frozenset[int]]:
    return {frozenset((e.metadata["a"], e.metadata["b"])) for e in examples}


@pytest.mark.parametrize("shape", ["1x1", "2x1", "2x2", "3x3", "3x1"])
def test_multiplication_splits_are_disjoint_and_correct(shape: str) -> None:
    task = get_task(f"mult:{shape}")
    train, test = task.examples("train"), task.examples("test")
    digits_a, digits_b = (int(d) for d in shape.split("x"))
    assert pairs(train).isdisjoint(pairs(test))  # a x b and b x a count as one problem
    assert len(pairs(train)) == len(train) and len(pairs(test)) == len(test)  # no repeats
    for e in train + test:
        a, b = e.metadata["a"], e.metadata["b"]
        assert sorted((len(str(a)), len(str(b)))) == sorted((digits_a, digits_b))
        assert e.answer == str(a * b)
        assert e.id == f"{a}x{b}"


def test_multiplication_default_sizes() -> None:
    assert (
        count_problems(1, 1) == 45 and count_problems(2, 1) == 810 and count_problems(2, 2) == 4095
    )
    one = get_task("mult:1x1")  # 45 problems: test = 45 // 5 = 9, train = the other 36
    assert (len(one.examples("test")), len(one.examples("train"))) == (9, 36)
    assert pairs(one.examples("test")) | pairs(one.examples("train")) == {
        frozenset((a, b)) for a in range(1, 10) for b in range(1, 10)
    }
    two = get_task("mult:2x2")
    assert (len(two.examples("test")), len(two.examples("train"))) == (100, 1000)


def test_multiplication_is_seeded() -> None:
    first = MultiplicationTask(MultiplicationConfig(digits_a=2, digits_b=2, seed=7))
    again = MultiplicationTask(MultiplicationConfig(digits_a=2, digits_b=2, seed=7))
    other = MultiplicationTask(MultiplicationConfig(digits_a=2, digits_b=2, seed=8))
    assert first.examples("test") == again.examples("test")
    assert first.examples("train") == again.examples("train")
    assert first.examples("test") != other.examples("test")
    # the test split does not move when the train size changes
    small = MultiplicationTask(MultiplicationConfig(digits_a=2, digits_b=2, seed=7, n_train=10))
    assert small.examples("test") == first.examples("test")
    # sampled (not enumerated) spaces are seeded too
    big = [get_task("mult:4x4", seed=s, n_test=5, n_train=5).examples("test") for s in (1, 1, 2)]
    assert big[0] == big[1] != big[2]


def test_multiplication_prompts(chat_tokenizer) -> None:
    task = get_task("mult:2x1", style="fewshot")
    example = Example("47x5", "What is 47 times 5?", "235", {"a": 47, "b": 5})
    prompt = task.plain_prompt(example)
    lines = prompt.split("\n")
    assert len(lines) == 4 and lines[-1] == "47 x 5 ="
    for line in lines[:3]:  # shots: "a x b = a*b" from the train split, no factor 1
        left, product = line.split(" = ")
        a, b = (int(x) for x in left.split(" x "))
        assert int(product) == a * b and 1 not in (a, b)
    assert task.stop == ["\n"]
    assert get_task("mult:2x1", style="compact").plain_prompt(example) == "47*5="
    assert get_task("mult:2x1", style="plain").plain_prompt(example) == "47 x 5 ="
    chat = get_task("mult:2x1").render_prompt(example, chat_tokenizer)
    assert chat == (
        "<|im_start|>user\nWhat is 47 times 5? Answer with the number only.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    steps = get_task("mult:2x2", reasoning="steps", style="chat")
    assert '"The answer is N."' in steps.messages(example)[0]["content"]
    assert steps.stop == []


def test_worked_product() -> None:
    from tokenrl.tasks.multiplication import worked_product

    assert (
        worked_product(12, 34) == "12 x 34 = 12 x 30 + 12 x 4 = 360 + 48 = 408. The answer is 408."
    )
    assert worked_product(47, 5) == "47 x 5 = 235. The answer is 235."
    assert (
        worked_product(12, 307)
        == "12 x 307 = 12 x 300 + 12 x 7 = 3600 + 84 = 3684. The answer is 3684."
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"digits_a": 0}, "digits_a=0 is out of range"),
        ({"digits_b": 10}, "digits_b=10 is out of range"),
        ({"digits_a": 1, "digits_b": 1, "n_test": 40, "n_train": 10}, "only 45 distinct problems"),
        ({"n_test": 0}, "n_test=0 must be an integer >= 1"),
        (
            {"digits_a": 1, "digits_b": 1, "n_test": 50},
            "too few for n_test=50 plus n_train=at least 1",
        ),
        ({"style": "fancy"}, "unknown prompt style 'fancy'; choose one of auto, chat"),
        ({"reasoning": "steps", "style": "compact"}, "style 'compact' asks for the bare product"),
        ({"reasoning": "why"}, "choose 'answer' or 'steps'"),
    ],
)
def test_multiplication_config_errors(options: dict, message: str) -> None:
    with pytest.raises(TaskError, match=message.replace("(", r"\(")):
        MultiplicationConfig(**options)


# ---------------------------------------------------------------------------------------------
# registry and styles


def test_get_task_specs() -> None:
    assert get_task("multiplication:3x3").config.digits_a == 3
    task = get_task("mult:2x1", n_test="20", n_train="50", seed="3")  # strings, as from a CLI
    assert (task.config.n_test, task.config.n_train, task.config.seed) == (20, 50, 3)
    assert task.spec == "multiplication:2x1"
    with pytest.raises(TaskError, match="known tasks: multiplication, svamp, gsm8k, jsonl"):
        get_task("sudoku")
    with pytest.raises(TaskError, match="unknown option 'digits'; options are digits_a, digits_b"):
        get_task("mult", digits=2)
    with pytest.raises(TaskError, match="write digits as AxB"):
        get_task("mult:two")
    with pytest.raises(TaskError, match="n_test='many' must be a number"):
        get_task("mult", n_test="many")
    with pytest.raises(TaskError, match="jsonl:PATH"):
        get_task("jsonl")
    with pytest.raises(TaskError, match="takes no ':x' part"):
        get_task("svamp:x")


def test_auto_style_follows_the_tokenizer(chat_tokenizer) -> None:
    task = get_task("mult:2x1")
    example = task.examples("test")[0]
    assert task.resolve_style(chat_tokenizer) == "chat"
    assert task.resolve_style(PlainTokenizer()) == "fewshot"
    assert task.render_prompt(example, PlainTokenizer()) == task.plain_prompt(example)
    assert task.stop_strings(chat_tokenizer) == [] and task.stop_strings(PlainTokenizer()) == ["\n"]
    with pytest.raises(TaskError, match="depend on the tokenizer"):
        _ = task.stop
    resolved = task.resolved(PlainTokenizer())
    assert resolved.style == "fewshot" and resolved.stop == ["\n"]
    assert resolved.examples("test") == task.examples("test")
    with pytest.raises(TaskError, match="needs a tokenizer with a chat template"):
        get_task("mult:2x1", style="chat").render_prompt(example, PlainTokenizer())


def test_reward() -> None:
    task = get_task("mult:2x1", style="fewshot")
    example = Example("47x5", "What is 47 times 5?", "235", {"a": 47, "b": 5})
    assert task.reward(" 235", example) == 1.0
    assert task.reward(" 234", example) == 0.0
    assert task.reward("", example) == 0.0
    # read up to the stop string: the made-up next problem does not count
    assert task.reward(" 235\n12 x 3 = 36", example) == 1.0
    assert get_task("mult:2x1", style="chat").reward("47 x 5 = 235", example) == 1.0


# ---------------------------------------------------------------------------------------------
# SVAMP and GSM8K on the real files


def test_svamp_split_matches_chilled() -> None:
    root = shared_data()
    ids = json.loads((root / "svamp" / "chilled_svamp_split_ids.json").read_text())
    task = get_task("svamp", data_path=str(root))
    assert [e.id for e in task.examples("train")] == ids["train"]
    assert [e.id for e in task.examples("test")] == ids["test"]
    assert len(ids["train"]) == 700 and len(ids["test"]) == 300


def test_svamp_examples_and_prompts(chat_tokenizer) -> None:
    root = shared_data()
    rows = {r["ID"]: r for r in json.loads((root / "svamp" / "SVAMP.json").read_text())}
    task = get_task("svamp", data_path=str(root), style="fewshot")
    train = task.examples("train")
    first = train[0]  # the first ChilleD train row, chal-777
    assert first.id == "chal-777" and first.answer == "145"
    assert first.question == rows["chal-777"]["Body"] + " " + rows["chal-777"]["Question"]
    assert first.metadata == {"Type": "Common-Division", "Equation": "( 290.0 / 2.0 )"}
    test_example = task.examples("test")[0]
    assert test_example.id == "chal-736"
    prompt = task.plain_prompt(test_example)
    blocks = prompt.split("\n\n")
    assert len(blocks) == 4
    assert blocks[0] == f"Question: {first.question}\nAnswer: 290 / 2 = 145. The answer is 145."
    assert blocks[-1] == f"Question: {test_example.question}\nAnswer:"
    assert task.stop == ["\n\n", "\nQuestion:"]
    # a train problem never appears among its own shots
    assert first.question not in task.plain_prompt(first).split("\n\n")[0]
    chat = get_task("svamp", data_path=str(root)).render_prompt(test_example, chat_tokenizer)
    assert chat.startswith(
        f"<|im_start|>user\n{test_example.question}\nSolve the problem step by step."
    )
    assert chat.endswith(
        '"The answer is N." where N is the final number.<|im_end|>\n<|im_start|>assistant\n'
    )
    assert all(e.answer.lstrip("-").isdigit() for e in train)


def test_svamp_solution_text() -> None:
    from tokenrl.tasks.wordproblems import svamp_solution

    assert svamp_solution("( 76.0 - 25.0 )", "51") == "76 - 25 = 51. The answer is 51."
    assert svamp_solution("( ( 10.0 + 5.0 ) / 3.0 )", "5") == "(10 + 5) / 3 = 5. The answer is 5."
    assert svamp_solution("( 2.5 * 4.0 )", "10") == "2.5 * 4 = 10. The answer is 10."


def test_gsm8k_golds() -> None:
    root = shared_data()
    task = get_task("gsm8k", data_path=str(root))
    train, test = task.examples("train"), task.examples("test")
    assert (len(train), len(test)) == (7473, 1319)
    assert train[0].answer == "72" and test[0].answer == "18" and test[-1].answer == "14"
    assert train[345].answer == "1080"  # "#### 1,080"
    assert train[367].answer == "850000"  # "#### 850,000"
    assert test[201].answer == "114200"  # "#### 114,200"
    assert train[5715].answer == "-7"
    assert test[0].id == "test-0000" and len({e.id for e in train + test}) == 7473 + 1319
    shot = task.worked_solution(train[0])
    assert shot == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April "
        "and May.\nThe answer is 72."
    )


def test_missing_data_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data_path points to .*not a folder"):
        get_task("svamp", data_path=str(tmp_path / "nope")).examples("test")
    with pytest.raises(
        DataError, match=r"SVAMP\.json: SVAMP data not found; put the files in <DATA>/svamp/"
    ):
        get_task("svamp", data_path=str(tmp_path)).examples("test")
    with pytest.raises(DataError, match=r"train\.jsonl: file not found"):
        get_task("gsm8k", data_path=str(tmp_path)).examples("test")


# ---------------------------------------------------------------------------------------------
# user JSONL and bad data


def write(path: Path, content: str | bytes) -> str:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_jsonl_split_by_fraction(tmp_path: Path) -> None:
    rows = [{"q": f"What is {i} plus 1?", "a": i + 1, "key": f"p{i}"} for i in range(20)]
    path = write(tmp_path / "mine.jsonl", jsonl(rows))
    options = {"question_field": "q", "answer_field": "a", "id_field": "key", "test_fraction": 0.25}
    task = get_task(f"jsonl:{path}", **options)
    train, test = task.examples("train"), task.examples("test")
    assert (len(train), len(test)) == (15, 5)
    assert {e.id for e in train}.isdisjoint(e.id for e in test)
    assert {e.id for e in train + test} == {f"p{i}" for i in range(20)}
    assert [int(e.id[1:]) for e in test] == sorted(int(e.id[1:]) for e in test)  # file order
    assert test == get_task(f"jsonl:{path}", **options).examples("test")  # same seed, same split
    assert test != get_task(f"jsonl:{path}", **options, seed=1).examples("test")
    assert next(e for e in train + test if e.id == "p4").answer == "5"


def test_jsonl_separate_test_file_bom_and_blank_lines(tmp_path: Path) -> None:
    train = write(
        tmp_path / "train.jsonl",
        b"\xef\xbb\xbf" + jsonl([{"question": "1+1?", "answer": "2"}]).encode(),
    )
    test = write(
        tmp_path / "test.jsonl",
        '\n{"question": "2+2?", "answer": "4"}\n\n  \n{"question": "3+3?", "answer": "6"}\n',
    )
    task = JsonlTask(JsonlConfig(path=train, test_path=test))
    assert [(e.id, e.answer) for e in task.examples("train")] == [("train:1", "2")]
    assert [(e.id, e.answer) for e in task.examples("test")] == [("test:2", "4"), ("test:5", "6")]


@pytest.mark.parametrize(
    ("content", "options", "message"),
    [
        ("", {}, r"bad\.jsonl: the file is empty"),
        ("\n\n", {}, r"bad\.jsonl: the file is empty"),
        (
            '{"question": "a?", "answer": 1}\n{"question": "b?", "answer": 2\n',
            {},
            r"bad\.jsonl, line 2: not valid JSON",
        ),
        (
            '{"question": "a?", "answer": 1}\n[1, 2]\n',
            {},
            r"bad\.jsonl, line 2: expected a JSON object, got a JSON list",
        ),
        (
            '{"question": "a?"}\n',
            {},
            r"bad\.jsonl, line 1, field 'answer': missing; the record has fields \['question'\]",
        ),
        (
            '{"question": "a?", "answer": 1}\n{"question": "b?", "answer": "many"}\n',
            {},
            r"bad\.jsonl, line 2, field 'answer': gold answer 'many' is not a number",
        ),
        (
            '{"question": "a?", "answer": true}\n',
            {},
            r"line 1, field 'answer': gold answer True is not a number",
        ),
        (
            '{"question": "", "answer": 1}\n',
            {},
            r"line 1, field 'question': expected non-empty text",
        ),
        (
            '{"id": 7, "question": "a?", "answer": 1}\n{"id": 7, "question": "b?", "answer": 2}\n',
            {"id_field": "id"},
            r"bad\.jsonl, line 2, field 'id': duplicate id '7', first used in .*bad\.jsonl line 1",
        ),
        (
            '{"question": "a?", "answer": 1}\n{"question": "b?", "answer": 2}\n',
            {"test_fraction": 0.1},
            r"2 records with test_fraction=0\.1 leave 0 for test",
        ),
    ],
)
def test_bad_jsonl_errors(tmp_path: Path, content: str, options: dict, message: str) -> None:
    path = write(tmp_path / "bad.jsonl", content)
    with pytest.raises(DataError, match=message):
        get_task(f"jsonl:{path}", **options).examples("train")


def test_non_utf8_bytes_name_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "latin1.jsonl",
        b'{"question": "a?", "answer": 1}\n{"question": "caf\xe9?", "answer": 2}\n',
    )
    with pytest.raises(
        DataError, match=r"latin1\.jsonl, line 2: byte 18 of the line \(0xe9\) is not valid UTF-8"
    ) as info:
        get_task(f"jsonl:{path}").examples("train")
    assert (info.value.file, info.value.line, info.value.field) == (path, 2, None)


def test_missing_file_error_fields(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found") as info:
        get_task(f"jsonl:{tmp_path / 'nope.jsonl'}").examples("test")
    assert info.value.file == str(tmp_path / "nope.jsonl") and info.value.line is None
    assert isinstance(info.value, ValueError)


def test_bad_svamp_and_gsm8k_files(tmp_path: Path) -> None:
    (tmp_path / "svamp").mkdir()
    record = {
        "ID": "chal-1",
        "Body": "b",
        "Question": "q?",
        "Equation": "( 1.0 + 1.0 )",
        "Answer": 2.0,
    }
    bad = dict(record, ID="chal-2", Answer="two")
    write(tmp_path / "svamp" / "SVAMP.json", json.dumps([record, bad], indent=4))
    with pytest.raises(
        DataError, match=r"SVAMP\.json, line 9, field 'Answer': gold answer 'two' is not a number"
    ):
        get_task("svamp", data_path=str(tmp_path)).examples("test")
    write(tmp_path / "svamp" / "SVAMP.json", json.dumps([record, {"ID": "chal-2"}]))
    with pytest.raises(DataError, match=r"SVAMP\.json, line 1, field 'Body': missing"):
        get_task("svamp", data_path=str(tmp_path)).examples("test")
    write(tmp_path / "svamp" / "SVAMP.json", "[" + json.dumps(record) + ",\n{oops}]")
    with pytest.raises(DataError, match=r"SVAMP\.json, line 2: not valid JSON"):
        get_task("svamp", data_path=str(tmp_path)).examples("test")
    (tmp_path / "gsm8k").mkdir()
    write(
        tmp_path / "gsm8k" / "train.jsonl",
        jsonl([{"question": "q?", "answer": "2 + 2 = 4\n#### 4"}]),
    )
    write(tmp_path / "gsm8k" / "test.jsonl", jsonl([{"question": "q?", "answer": "so 4"}]))
    with pytest.raises(
        DataError, match=r"test\.jsonl, line 1, field 'answer': has no final '#### <number>' line"
    ):
        get_task("gsm8k", data_path=str(tmp_path)).examples("train")


def test_svamp_from_the_hub_when_no_local_data(monkeypatch: pytest.MonkeyPatch) -> None:
    import tokenrl.tasks.wordproblems as wordproblems

    def hub_row(i: int) -> dict:  # the Hub stores Answer as a string
        return {
            "ID": f"chal-{i}",
            "Body": "b",
            "Question": "q?",
            "Equation": "( 1.0 + 1.0 )",
            "Answer": "2",
        }

    monkeypatch.setattr(wordproblems, "find_data_dir", lambda data_path=None: None)
    monkeypatch.setattr(wordproblems, "hub_dataset", lambda repo, config=None: None)
    with pytest.raises(DataError, match="install the optional `datasets` package"):
        get_task("svamp").examples("test")
    fake = {"train": [hub_row(3), hub_row(1)], "test": [hub_row(2)]}
    monkeypatch.setattr(
        wordproblems,
        "hub_dataset",
        lambda repo, config=None: fake if repo == "ChilleD/SVAMP" else None,
    )
    task = get_task("svamp")
    assert [(e.id, e.answer) for e in task.examples("train")] == [("chal-3", "2"), ("chal-1", "2")]
    assert [e.id for e in task.examples("test")] == ["chal-2"]


def test_svamp_needs_the_whole_file(tmp_path: Path) -> None:
    (tmp_path / "svamp").mkdir()
    record = {
        "ID": "chal-1",
        "Body": "b",
        "Question": "q?",
        "Equation": "( 1.0 + 1.0 )",
        "Answer": 2.0,
    }
    write(tmp_path / "svamp" / "SVAMP.json", json.dumps([record]))
    with pytest.raises(
        DataError, match=r"SVAMP\.json: holds 1 problems; the ChilleD split needs all 1000"
    ):
        get_task("svamp", data_path=str(tmp_path)).examples("test")


def test_svamp_without_split_file_keeps_recipe_order(tmp_path: Path) -> None:
    root = shared_data()
    (tmp_path / "svamp").mkdir()
    (tmp_path / "svamp" / "SVAMP.json").write_bytes((root / "svamp" / "SVAMP.json").read_bytes())
    with pytest.warns(UserWarning, match="chilled_svamp_split_ids.json not found"):
        test = get_task("svamp", data_path=str(tmp_path)).examples("test")
    ids = json.loads((root / "svamp" / "chilled_svamp_split_ids.json").read_text())
    assert sorted(e.id for e in test) == sorted(ids["test"])
    assert [e.id for e in test] != ids["test"]  # the recipe does not reproduce ChilleD's test order

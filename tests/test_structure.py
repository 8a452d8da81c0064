"""The library's shape: the core imports no recipe and no benchmark, no import cycles, modules
under 400 lines; the rollout-engine seam; the config checks that came with the restructure."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tokenrl.algorithms.registry import ALGORITHMS
from tokenrl.cli import main
from tokenrl.config import ConfigError, load_config, parse_overrides
from tokenrl.engines import ENGINES, HFEngine, make_engine
from tokenrl.rollout import SamplingConfig, generate_rollouts

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tokenrl"
SHELL = {"tokenrl.cli", "tokenrl.__main__"}  # the command line: may import recipes, lazily


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Modules imported by ``path`` (at module level only, or anywhere in it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:  # `if TYPE_CHECKING:` imports run never
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_core(name: str) -> bool:
    return name not in SHELL and not name.startswith("tokenrl.recipes")


def _lab(name: str) -> bool:
    """A recipe or a benchmark (benchmarks/, outside the package): what the core must not import."""
    return name.split(".")[0] == "benchmarks" or name.startswith(
        ("tokenrl.recipes", "tokenrl.bench")
    )


def test_the_core_imports_neither_recipes_nor_benchmarks():
    offenders = {
        name: sorted(i for i in _imports(path, top_level_only=False) if _lab(i))
        for name, path in MODULES.items()
        if _is_core(name)
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    # the command line reaches recipes and benchmarks only inside functions (when the command runs)
    top = _imports(MODULES["tokenrl.cli"], top_level_only=True)
    assert not [i for i in top if _lab(i)]


def test_the_check_sees_every_way_of_importing_the_benchmarks(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import benchmarks\nfrom benchmarks.trl import cli\ndef f():\n    import benchmarks.trl.run as r\n"
    )
    found = _imports(probe, top_level_only=False)
    assert {"benchmarks", "benchmarks.trl", "benchmarks.trl.run"} <= found and all(map(_lab, found))
    assert not _lab("benchmarking") and _lab("tokenrl.bench.run")


def test_the_trl_benchmarks_live_in_the_checkout_not_the_package():
    assert not [name for name in MODULES if name.startswith("tokenrl.bench")]
    assert (ROOT / "benchmarks" / "__init__.py").is_file() and (
        ROOT / "benchmarks" / "trl" / "cli.py"
    ).is_file()


def test_module_level_imports_have_no_cycle():
    graph = {
        name: {m for m in _imports(path, top_level_only=True) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail[trail.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_every_module_is_under_400_lines():
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text().splitlines())) >= 400
    }
    assert long == {}


def test_importing_the_training_code_loads_no_recipe_and_sets_no_environment():
    code = (
        "import os, sys; before = dict(os.environ); import tokenrl.run, tokenrl.cli; "
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items()); "
        "assert not [m for m in sys.modules if m.startswith(('tokenrl.recipes', 'benchmarks'))]"
    )
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------------------
# the rollout-engine seam


PROMPTS = ["12*3=", "7*8=", "100*2=", "9*9="]


@pytest.mark.parametrize("name,shared", [("shared", True), ("hf", False)])
@pytest.mark.parametrize("greedy", [False, True])
def test_each_engine_samples_what_the_sampler_gave_before(tiny, name, shared, greedy):
    model, tok = tiny
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    seeds = None if greedy else [3, 1, 4, 1]
    cfg = SamplingConfig(max_new_tokens=6, greedy=greedy)
    engine = make_engine(name, model, tok)
    got = engine.generate(ids, cfg, group_size=4, seeds=seeds)
    want = generate_rollouts(
        model, tok, [], SamplingConfig(max_new_tokens=6, greedy=greedy, shared_decode=shared),
        group_size=4, prompt_ids=ids, group_seeds=seeds,
    )  # fmt: skip
    assert torch.equal(got.completion_ids, want.completion_ids)
    assert torch.equal(got.completion_mask, want.completion_mask) and got.texts == want.texts


def test_the_two_engines_sample_the_same_tokens_in_fp32(tiny):
    model, tok = tiny
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    cfg = SamplingConfig(max_new_tokens=6, temperature=0.7)
    a = make_engine("shared", model, tok).generate(ids, cfg, group_size=4, seeds=[5, 6, 7, 8])
    b = make_engine("hf", model, tok).generate(ids, cfg, group_size=4, seeds=[5, 6, 7, 8])
    assert torch.equal(a.completion_ids, b.completion_ids)


def test_an_engine_merges_lora_only_for_sampled_rollouts(tiny, monkeypatch):
    import tokenrl.packing as packing

    model, tok = tiny  # fp32: nothing packed, the merging is lora_merged's
    merged: list[bool] = []
    real = packing.lora_merged

    def spy(m):
        merged.append(True)
        return real(m)

    monkeypatch.setattr(packing, "lora_merged", spy)
    engine = HFEngine(model, tok, merge_lora=True)
    ids = [tok("7*8=", add_special_tokens=False)["input_ids"]]
    engine.generate(ids, SamplingConfig(max_new_tokens=2, greedy=True))  # evaluation: as it is
    assert merged == []
    engine.generate(ids, SamplingConfig(max_new_tokens=2), group_size=2, seeds=[1])
    assert merged == [True]


def test_an_unknown_engine_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="choose one of shared, hf"):
        make_engine("vllm", None, None)
    with pytest.raises(
        ConfigError, match=r"rollout.engine='vllm' is unknown.*use one of shared, hf"
    ):
        load_config(None, [("rollout.engine", "vllm")])
    assert set(ENGINES) == {"shared", "hf"}


# ---------------------------------------------------------------------------------------------
# config checks


def test_sgrpo_std_eps_must_not_be_negative():
    with pytest.raises(
        ConfigError, match=r"sgrpo.std_eps=-1.0 is negative.*Fix: use a small positive value"
    ):
        load_config(None, parse_overrides(["--train.algo", "sgrpo", "--sgrpo.std_eps", "-1"]))


def test_a_setting_for_an_algorithm_that_does_not_run_is_refused(capsys):
    with pytest.raises(
        ConfigError,
        match=r"grpo.beta set for a run of train.algo='sgrpo'.*--sgrpo.beta.*--train.algo grpo",
    ):
        load_config(None, parse_overrides(["--train.algo", "sgrpo", "--grpo.beta", "0.04"]))
    # the selected algorithm's own section is fine, and so is a config file holding every section
    assert (
        load_config(
            None, parse_overrides(["--train.algo", "sgrpo", "--sgrpo.beta", "0.04"])
        ).sgrpo.beta
        == 0.04
    )
    assert main(["train", "--algo", "sgrpo", "--grpo.beta", "0.04", "--out", "/nonexistent/x"]) == 2
    assert "the grpo section is not used" in capsys.readouterr().err


def test_removed_settings_are_unknown_keys():
    for key in ("rollout.skip_settled", "optim.lora_plus_ratio", "rollout.shared_decode"):
        with pytest.raises(ConfigError, match="unknown config key"):
            load_config(None, [(key, "1")])


def test_the_cli_offers_the_registrys_algorithms(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--algo", "ppo"])
    err = capsys.readouterr().err
    assert all(name in err for name in ALGORITHMS)

import os
import tempfile

# Before torch loads: spin-waiting OpenMP threads make small models 50x slower on shared cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `tokenrl` commands restart themselves with MKL's Intel code path when TOKENRL_MKL_INTEL_PATH=1
# (tokenrl.mklpath), which rounds fp32 products differently from this process: tests that compare
# a command's run with one made here keep MKL's own path even where the user's shell chose it
# (tests/test_mklpath.py sets the variable itself).
os.environ["TOKENRL_MKL_INTEL_PATH"] = "0"
# Shared base evaluations (tokenrl.basecache) never go to the user's cache: a folder for the
# session (module-scoped fixtures), and one per test below.
os.environ["TOKENRL_BASE_EVALS"] = tempfile.mkdtemp(prefix="tokenrl-base-evals-")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def own_base_eval_cache(tmp_path_factory, monkeypatch):
    """Each test its own store of shared base evaluations (tokenrl.basecache): none from another
    test or from the user's cache."""
    monkeypatch.setenv("TOKENRL_BASE_EVALS", str(tmp_path_factory.mktemp("base-evals")))


@pytest.fixture
def tiny():
    """A fresh tiny byte-level Qwen2 (fp32) and its tokenizer."""
    from tokenrl.models import build_tiny

    return build_tiny("tiny")


@pytest.fixture(scope="session")
def load_benchmark():
    """Import a script of ``benchmarks/`` by its name (the folder is not a package)."""
    import importlib.util
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load

import os

# Before torch loads: spin-waiting OpenMP threads make small models 50x slower on shared cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture
def tiny():
    """A fresh tiny byte-level Qwen2 (fp32) and its tokenizer."""
    from tokenrl.models import build_tiny

    return build_tiny("tiny")

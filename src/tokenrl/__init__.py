"""tokenrl: token-efficient RL (S-GRPO, T-SPMO, GRPO) with LoRA for LLM reasoning.

The Python API (docs/api.md)::

    import tokenrl
    result = tokenrl.train("tiny", dataset=rows, reward_funcs=[fn], algo="sgrpo", out="runs/x")

Names are imported when first used, so ``import tokenrl`` stays light (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "train": "tokenrl.api",
    "evaluate": "tokenrl.api",
    "merge": "tokenrl.api",
    "make_config": "tokenrl.api",
    "TrainResult": "tokenrl.api",
    "Config": "tokenrl.config",
    "ConfigError": "tokenrl.errors",
    "Reward": "tokenrl.rewards",
    "RewardSet": "tokenrl.rewards",
    "EvalResult": "tokenrl.evaluation",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tokenrl' has no attribute {name!r}")

"""The benchmark workloads (issue #7) and the goals each is reported against.

Two kinds:

* ``update``: one policy update on fixed, synthetic rollouts (1 prompt, G completions of exactly
  ``completion_len`` tokens), identical for TRL and for ours. Memory and update time.
* ``step``: one whole RL step (generate + score + update) on the multiplication task, every
  completion forced to exactly ``completion_len`` new tokens. Completions per second.

Goals are ratios to TRL measured in the same run: for memory ``ours / TRL <= goal``; for speed
``speedup = TRL time / our time >= goal`` (whole steps: our completions/s / TRL's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

IMPLS = ("trl", "grpo", "sgrpo", "tspmo")
"""Implementations compared: TRL's GRPOTrainer and tokenrl's three algorithms."""

QWEN2_VOCAB = 151_936


@dataclass(frozen=True)
class ModelShape:
    """A Qwen2 body with random weights (``random``), the byte-level tiny model or SmolLM2."""

    kind: str  # "random" (Qwen2, random weights, real-size vocab), "tiny" (byte level), "smollm2"
    hidden: int = 256
    layers: int = 2
    inter: int = 1024
    heads: int = 4
    kv_heads: int = 2
    vocab: int = QWEN2_VOCAB

    def describe(self) -> str:
        if self.kind == "smollm2":
            return "SmolLM2-135M-Instruct (pretrained, vocab 49,152)"
        body = f"hidden {self.hidden}, {self.layers} layers, inter {self.inter}, {self.heads}/{self.kv_heads} heads"
        if self.kind == "tiny":
            return f"byte-level Qwen2 ({body}, vocab 258), random weights"
        return f"Qwen2 body ({body}, tied), vocab {self.vocab:,}, random weights"


@dataclass(frozen=True)
class Workload:
    """One benchmark setting; every implementation runs exactly this work."""

    name: str
    kind: str  # "update" or "step"
    model: ModelShape
    prompts: int  # N
    group: int  # G
    completion_len: int  # L: every completion has exactly L tokens
    prompt_len: int = 64  # update workloads: prompt tokens (step workloads: the task's prompts)
    task: str = "multiplication:2x1"  # step workloads
    task_style: str = "auto"  # step workloads
    trl_gradient_checkpointing: bool = False
    ours_gradient_checkpointing: bool = False
    memory_goals: dict[str, float] = field(default_factory=dict)  # impl -> max ratio to TRL
    speed_goals: dict[str, float] = field(default_factory=dict)  # impl -> min speedup over TRL
    notes: str = ""

    @property
    def rows(self) -> int:
        return self.prompts * self.group

    def describe(self) -> str:
        what = (
            f"update on {self.prompts} prompt of {self.prompt_len} tokens x {self.group} completions "
            f"of {self.completion_len} tokens"
            if self.kind == "update"
            else f"whole step on {self.task} ({self.task_style} prompts), {self.prompts} prompts x "
            f"{self.group} completions of {self.completion_len} new tokens"
        )
        gc = (
            f"gradient checkpointing: TRL {_on(self.trl_gradient_checkpointing)}, "
            f"ours {_on(self.ours_gradient_checkpointing)}"
        )
        return f"{self.model.describe()}; {what}; {gc}"


def _on(flag: bool) -> str:
    return "on" if flag else "off"


A_MODEL = ModelShape("random", hidden=256, layers=2, inter=1024, heads=4, kv_heads=2)
ALL_2X = {"grpo": 2.0, "sgrpo": 2.0, "tspmo": 2.0}
STEP_GOALS = {"grpo": 1.5, "sgrpo": 2.0, "tspmo": 2.0}

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload(
            "A",
            "update",
            A_MODEL,
            prompts=1,
            group=8,
            completion_len=256,
            prompt_len=64,
            memory_goals={"grpo": 0.5, "sgrpo": 0.25, "tspmo": 0.1},
            speed_goals=ALL_2X,
        ),
        Workload(
            "B",
            "update",
            ModelShape("smollm2"),
            prompts=1,
            group=8,
            completion_len=128,
            prompt_len=60,
            trl_gradient_checkpointing=True,
            ours_gradient_checkpointing=True,
            memory_goals={"grpo": 1.0, "sgrpo": 0.5, "tspmo": 0.25},
            speed_goals=ALL_2X,
        ),
        Workload(
            "C-i",
            "step",
            ModelShape("tiny", hidden=128, layers=2, inter=512, heads=4, kv_heads=2, vocab=258),
            prompts=4,
            group=8,
            completion_len=16,
            task_style="compact",
            speed_goals=STEP_GOALS,
        ),
        Workload(
            "C-ii",
            "step",
            ModelShape("smollm2"),
            prompts=2,
            group=8,
            completion_len=32,
            task_style="auto",
            speed_goals=STEP_GOALS,
        ),
        # smoke configurations for tests: seconds, not measurements
        Workload(
            "tiny",
            "update",
            ModelShape("random", hidden=32, layers=1, inter=64, heads=2, kv_heads=1, vocab=512),
            prompts=1,
            group=4,
            completion_len=16,
            prompt_len=8,
            notes="smoke test only",
        ),
        Workload(
            "tiny-step",
            "step",
            ModelShape("tiny", hidden=32, layers=1, inter=64, heads=2, kv_heads=1, vocab=258),
            prompts=1,
            group=4,
            completion_len=4,
            task_style="compact",
            notes="smoke test only",
        ),
        # benchmarks/gpu.sh: Qwen2-1.5B's real architecture with random weights, bf16
        Workload(
            "gpu-1.5b",
            "update",
            ModelShape("random", hidden=1536, layers=28, inter=8960, heads=12, kv_heads=2),
            prompts=1,
            group=8,
            completion_len=1024,
            prompt_len=256,
            trl_gradient_checkpointing=True,
            ours_gradient_checkpointing=True,
            notes="CUDA, bf16 (benchmarks/gpu.sh)",
        ),
    ]
}

DEFAULT_WORKLOADS = {"memory": ("A", "B"), "speed": ("A", "B", "C-i", "C-ii")}
QUICK_WORKLOADS = {"memory": ("tiny",), "speed": ("tiny", "tiny-step")}


def get_workloads(names: str | list[str] | tuple[str, ...], measure: str) -> list[Workload]:
    """Workloads by comma-separated names; step workloads only have a speed measure."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(
            f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}"
        )
    out = [WORKLOADS[n] for n in names]
    if measure == "memory":
        steps = [w.name for w in out if w.kind == "step"]
        if steps:
            raise ValueError(
                f"workload(s) {', '.join(steps)} time a whole RL step and have no memory measure; "
                "use `tokenrl bench speed` for them"
            )
    return out

"""Config sections of how a run samples, optimises, trains and logs (rollout, optim, train, log);
:mod:`tokenrl.config` assembles them with the model, LoRA and task sections into ``Config``."""

from __future__ import annotations

from dataclasses import dataclass

from tokenrl.config_io import _fail


@dataclass
class RolloutConfig:
    """How completions are sampled during training."""

    group_size: int = 8
    """G: completions sampled per prompt; group-relative advantages need G >= 2."""

    prompts_per_step: int = 4
    """Prompts per training step (so each step samples prompts_per_step * G completions)."""

    max_new_tokens: int = 64
    """Longest completion; longer ones are cut and flagged as truncated."""

    temperature: float = 1.0
    """Sampling temperature for training rollouts (evaluation is greedy)."""

    top_p: float = 1.0
    """Nucleus sampling threshold (1 = off)."""

    batch_size: int = 64
    """Most completions generated in one call (memory bound for generation)."""

    merge_lora: bool = False
    """Sample with each LoRA adapter folded into a copy of the weights it adapts (W + BA * alpha/r),
    one matmul per layer instead of three: faster rollouts on a CPU for one extra copy of the
    adapted weights (tokenrl.lorafold.lora_merged), none where the weights are packed
    (prepack_weights: each merged weight is packed at once). The update always runs the adapter
    itself."""

    prepack_weights: bool = True
    """On a CPU, decode with the bf16 linear weights packed once per generation for oneDNN's
    kernels (tokenrl.packing): bitwise the same tokens, the decode's products 1.2-1.4x faster at
    32 rows on an AMD EPYC Zen 4, for a second copy of the bf16 weights while generating. No
    effect on GPUs or fp32 weights. Evaluation's greedy decoding uses it too."""

    grouped_attention: bool = True
    """On a CPU, a bf16 decode step of a grouped-query model (Qwen2) attends with each key/value
    head's query heads stacked as one block, the layout transformers takes for padded batches,
    also where no row is padded (equal-length prompts, one prompt; tokenrl.attention): torch's
    bf16 kernel took 10x as long in the other layout (enable_gqa) on an AMD EPYC Zen 4. Rounded
    alike, but the tokens can differ from that layout's. No effect on GPUs, padded batches, the
    update, or fp32 models (unless sampled under model.autocast: bf16). Evaluation's greedy
    decoding uses it too."""

    engine: str = "shared"
    """How completions are sampled (tokenrl.engines): shared (each distinct prompt + completion-so-far
    prefix runs once per decode step, every row gets its prefix's logits: the same tokens as hf in
    fp32, fewer rows run; docs/rollout.md) or hf (Hugging Face generate over every row)."""

    def validate(self) -> None:
        if self.group_size < 2:
            _fail(f"rollout.group_size={self.group_size} is below 2",
                  "group-relative advantages compare completions of one prompt: use G >= 2 (e.g. 8)")  # fmt: skip
        if self.prompts_per_step < 1:
            _fail(
                f"rollout.prompts_per_step={self.prompts_per_step} must be at least 1", "use e.g. 4"
            )
        if self.max_new_tokens < 1:
            _fail(f"rollout.max_new_tokens={self.max_new_tokens} must be at least 1", "use e.g. 64")
        if self.temperature <= 0:
            _fail(
                f"rollout.temperature={self.temperature} must be positive",
                "use e.g. 1.0 (evaluation is always greedy)",
            )
        if not 0 < self.top_p <= 1:
            _fail(
                f"rollout.top_p={self.top_p} is outside (0, 1]",
                "use 1.0 to disable nucleus sampling",
            )
        if self.batch_size < 1:
            _fail(f"rollout.batch_size={self.batch_size} must be at least 1", "use e.g. 64")
        from tokenrl.engines import ENGINES

        if self.engine not in ENGINES:
            _fail(f"rollout.engine={self.engine!r} is unknown", f"use one of {', '.join(ENGINES)}")


@dataclass
class OptimConfig:
    """AdamW on the LoRA parameters."""

    lr: float = 1e-4
    """Peak learning rate (LoRA usually wants ~10x the full fine-tuning rate)."""

    weight_decay: float = 0.0
    """AdamW weight decay."""

    beta1: float = 0.9
    """AdamW beta1."""

    beta2: float = 0.999
    """AdamW beta2."""

    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value (None = no clipping)."""

    warmup_steps: int = 0
    """Linear warm-up from 0 to lr over this many steps."""

    schedule: str = "constant"
    """After warm-up: constant, linear (to 0 at the last step) or cosine (to 0)."""

    micro_batches: int = 1
    """Gradient accumulation: split each step's groups into this many micro-batches (less memory, same update)."""

    inner_updates: int = 1
    """Optimiser updates per batch of rollouts; above 1 the PPO-clipped ratio is used."""

    share_prompt: bool = True
    """Run each group's prompt through the model once in the update (KV cache copied to its rows),
    not once per completion: the same log-probs, fewer tokens; off under gradient checkpointing."""

    score_attention: bool = True
    """On a CPU, the update's bf16 attention over short sequences (query x key positions up to
    16,384, e.g. a 100-token prompt, or 64 completion tokens after it) is computed by explicit
    products with fp32 scores (tokenrl.attention) instead of torch's flash kernel, which took
    1.25-2.2x as long with its backward at the trainer's SVAMP shapes on an AMD EPYC Zen 4. The
    same memory (scores recomputed in backward); the gradients agree to bf16 rounding (closer to
    exact than the kernel's), not bitwise. No effect on GPUs, fp32 models or sampling."""

    inplace_lora: bool = True
    """In the update, each plain LoRA linear layer scales and adds its adapter's output in place
    (lora_B(lora_A(x)).mul_(s).add_(W x)) instead of in two fresh tensors as peft does
    (tokenrl.inplacelora): the same arithmetic, so bitwise the same log-probs and gradients
    (tested), with less memory (GRPO's SVAMP step peaked about 1 GB lower on an AMD EPYC Zen 4).
    Layers peft computes otherwise (DoRA, adapter biases) keep peft's forward."""

    max_nonfinite_steps: int = 5
    """Stop the run after this many optimiser updates in a row were skipped for a non-finite loss or
    gradient (0 = never stop)."""

    def validate(self) -> None:
        if self.lr <= 0:
            _fail(f"optim.lr={self.lr} must be positive", "use e.g. 1e-4 for LoRA")
        if self.weight_decay < 0:
            _fail(
                f"optim.weight_decay={self.weight_decay} is negative",
                "use 0 or a small positive value",
            )
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            _fail(
                f"optim.beta1={self.beta1}, beta2={self.beta2} must lie in [0, 1)",
                "use 0.9 and 0.999",
            )
        if self.grad_clip is not None and self.grad_clip <= 0:
            _fail(
                f"optim.grad_clip={self.grad_clip} must be positive",
                "use e.g. 1.0, or none to disable",
            )
        if self.warmup_steps < 0:
            _fail(f"optim.warmup_steps={self.warmup_steps} is negative", "use 0 or more")
        if self.schedule not in ("constant", "linear", "cosine"):
            _fail(f"optim.schedule={self.schedule!r} is unknown", "use constant, linear or cosine")
        if self.micro_batches < 1 or self.inner_updates < 1:
            _fail(
                "optim.micro_batches and optim.inner_updates must be at least 1",
                "use 1 (default) or more",
            )
        if self.max_nonfinite_steps < 0:
            _fail(
                f"optim.max_nonfinite_steps={self.max_nonfinite_steps} is negative",
                "use e.g. 5, or 0 to never stop",
            )


@dataclass
class TrainConfig:
    """The run."""

    algo: str = "sgrpo"
    """Algorithm: grpo (full-token baseline), sgrpo or tspmo."""

    steps: int = 100
    """Training steps (each: rollouts, one or more optimiser updates)."""

    seed: int = 0
    """Seed for the data order, rollouts, token selection and LoRA initialisation."""

    eval_every: int = 25
    """Greedy accuracy on held-out problems every N steps (0 = only before and after)."""

    checkpoint_every: int = 25
    """Write a resumable checkpoint every N steps (0 = only at the end)."""

    keep_checkpoints: int = 2
    """How many most recent checkpoints to keep."""

    eval_before: bool = True
    """Evaluate the base model (adapter at its initial zero update) before training."""

    share_base_eval: bool = True
    """Take the base evaluation from an earlier run that measured the same thing (same base
    weights, problems, settings, code, libraries and machine; tokenrl.basecache), and store
    this run's for the next; runs started together wait for the first one's."""

    def validate(self) -> None:
        from tokenrl.algorithms.registry import ALGORITHMS

        if self.algo not in ALGORITHMS:
            _fail(f"train.algo={self.algo!r} is unknown", f"use one of {', '.join(ALGORITHMS)}")
        if self.steps < 1:
            _fail(f"train.steps={self.steps} must be at least 1", "use e.g. 100")
        if self.eval_every < 0 or self.checkpoint_every < 0:
            _fail(
                "train.eval_every and train.checkpoint_every must be >= 0",
                "use 0 to disable or a step count",
            )
        if self.keep_checkpoints < 1:
            _fail(
                f"train.keep_checkpoints={self.keep_checkpoints} must be at least 1", "use e.g. 2"
            )


@dataclass
class LogConfig:
    """What a run writes besides metrics.jsonl."""

    tensorboard: bool = False
    """Also write TensorBoard event files (run folder /tb)."""

    samples_every: int = 10
    """Write a few prompts with completions and rewards to samples.jsonl every N steps (0 = never)."""

    samples_count: int = 4
    """Completions written each time."""

    progress: bool = True
    """Show a live progress bar."""

    def validate(self) -> None:
        if self.samples_every < 0 or self.samples_count < 0:
            _fail("log.samples_every and log.samples_count must be >= 0", "use 0 to disable")

"""``tokenrl train``: the RL loop, its run folder, checkpoints and exact resume.

One training step reads top to bottom (:func:`train_step`): sample prompts -> rollouts (G per
prompt, plus T-SPMO replay groups) -> rewards -> token selection and advantages (by algorithm)
-> log-probs at the selected tokens only -> loss -> AdamW step on the LoRA weights -> metrics.

Run folder (see docs/metrics.md): ``config.yaml``, ``metrics.jsonl``, ``samples.jsonl``,
``checkpoints/step-NNNNNN/`` (adapter + ``state.pt``), ``adapter/`` (final), ``eval.json``,
``report.png``, ``tb/`` (TensorBoard, optional).
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tokenrl.algorithms.advantages import zero_std_fraction
from tokenrl.algorithms.logprobs import completion_logprobs, reference_logprobs
from tokenrl.algorithms.losses import LossInputs, policy_loss
from tokenrl.algorithms.registry import get_algorithm
from tokenrl.algorithms.replay import ReplayBuffer, sample_replay_prefixes
from tokenrl.config import Config, save_config
from tokenrl.errors import RunError  # noqa: F401  (re-exported)
from tokenrl.evaluation import EvalResult, evaluate
from tokenrl.models import LoadedModel, load_model
from tokenrl.rollout import RolloutBatch, SamplingConfig, generate_rollouts, select_rows
from tokenrl.tasks import Example, Task, get_task

CHECKPOINT_DONE = "COMPLETE"


# ---------------------------------------------------------------------------------------------
# data order


class PromptSampler:
    """Shuffled passes over the training problems, reproducible from the seed and resumable."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffle()


# ---------------------------------------------------------------------------------------------
# everything a step needs


@dataclass
class Trainer:
    cfg: Config
    out: Path
    lm: LoadedModel
    task: Task
    train_examples: list[Example]
    eval_examples: list[Example]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: PromptSampler
    generator: torch.Generator  # token selection (S-GRPO) and replay draws
    replay: ReplayBuffer | None
    reward_fn: Callable[[str, Example], float]
    step: int = 0
    log: Callable[[dict[str, Any]], None] = print
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def model(self) -> nn.Module:
        return self.lm.model

    @property
    def sampling(self) -> SamplingConfig:
        r = self.cfg.rollout
        return SamplingConfig(
            max_new_tokens=r.max_new_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            stop=tuple(self.task.stop),
            batch_size=r.batch_size,
        )


def lr_lambda(cfg: Config) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at optimiser step s (warm-up, then the schedule)."""
    warm, total, kind = cfg.optim.warmup_steps, cfg.train.steps, cfg.optim.schedule

    def f(s: int) -> float:
        if s < warm:
            return (s + 1) / (warm + 1)
        if kind == "constant":
            return 1.0
        frac = min((s - warm) / max(total - warm, 1), 1.0)
        return 1.0 - frac if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))

    return f


def build_trainer(cfg: Config, out: Path) -> Trainer:
    """Load the model with a fresh adapter, the task and the optimiser, seeded from the config."""
    seed_everything(cfg.train.seed)
    task = get_task(cfg.task.name, data_path=cfg.task.data_path, style=cfg.task.style, **cfg.task.options)
    train_examples = task.examples("train")
    test = task.examples("test")
    eval_examples = test[: cfg.task.eval_limit] if cfg.task.eval_limit else test
    lm = load_model(
        cfg.model.name, dtype=cfg.model.dtype, device=cfg.model.device, lora=cfg.lora.spec(cfg.train.seed)
    )
    lm.model.train()  # updates run in training mode (LoRA dropout, gradient checkpointing)
    if cfg.model.gradient_checkpointing:
        lm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.model.enable_input_require_grads()
    task = task.resolved(lm.tokenizer)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    replay_cfg = cfg.tspmo.replay
    use_replay = cfg.train.algo == "tspmo" and replay_cfg.every > 0
    return Trainer(
        cfg=cfg,
        out=out,
        lm=lm,
        task=task,
        train_examples=train_examples,
        eval_examples=eval_examples,
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=PromptSampler(len(train_examples), cfg.train.seed),
        generator=torch.Generator().manual_seed(cfg.train.seed + 1),
        replay=ReplayBuffer.from_config(replay_cfg) if use_replay else None,
        reward_fn=cfg.task.reward_fn() or task.reward,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# one step


def train_step(tr: Trainer) -> dict[str, Any]:
    cfg, tok = tr.cfg, tr.lm.tokenizer
    G = cfg.rollout.group_size
    t0 = time.perf_counter()

    # 1. prompts: fresh problems, plus (T-SPMO) replay groups continuing a stored success
    examples = [tr.train_examples[i] for i in tr.sampler.take(cfg.rollout.prompts_per_step)]
    prompt_ids = [tok(tr.task.render_prompt(e, tok), add_special_tokens=False)["input_ids"] for e in examples]
    prefixes_text = [""] * len(examples)
    n_fresh = len(examples)
    if tr.replay is not None and (tr.step + 1) % cfg.tspmo.replay.every == 0 and len(tr.replay):
        by_id = {e.id: e for e in tr.train_examples}
        progress = tr.step / max(cfg.train.steps - 1, 1)
        for rp in sample_replay_prefixes(
            tr.replay, cfg.tspmo.replay.groups_per_step, cfg.tspmo.replay, progress=progress, generator=tr.generator
        ):
            examples.append(by_id[rp.prompt_key])
            prompt_ids.append(rp.input_ids)
            prefixes_text.append(tok.decode(rp.source.completion_ids[: rp.cut], skip_special_tokens=True))

    # 2. rollouts: G completions per prompt
    batch = generate_rollouts(tr.model, tok, [], tr.sampling, group_size=G, prompt_ids=prompt_ids)
    t_gen = time.perf_counter()

    # 3. rewards: a replayed completion is scored with its prefix in front
    rewards = torch.tensor(
        [
            tr.reward_fn(prefixes_text[int(i)] + text, examples[int(i)])
            for i, text in zip(batch.prompt_index, batch.texts)
        ],
        dtype=torch.float32,
    )  # [B]
    t_score = time.perf_counter()

    # 4. credit assignment and token selection (which tokens enter the loss, with what advantage)
    algo_cfg = cfg.algo_config()
    inputs = get_algorithm(cfg.train.algo).prepare(batch, rewards, algo_cfg, tr.generator)

    # 5-7. log-probs at the selected tokens, loss, optimiser step(s)
    if tr.lm.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    update = update_policy(tr, batch, inputs)
    with warnings.catch_warnings():  # a skipped update (no signal) still advances the schedule
        warnings.simplefilter("ignore", UserWarning)
        tr.scheduler.step()
    t_update = time.perf_counter()

    # 8. bookkeeping: replay buffer (fresh groups only), metrics
    if tr.replay is not None:
        fresh = batch.prompt_index < n_fresh
        tr.replay.add_rollouts(select_rows(batch, fresh.nonzero().squeeze(1)), rewards[fresh], [e.id for e in examples])
    tr.step += 1
    lengths = batch.completion_lengths.float()
    fresh_rewards = rewards[batch.prompt_index < n_fresh]
    metrics: dict[str, Any] = {
        "step": tr.step,
        "reward/mean": fresh_rewards.mean().item(),
        "reward/std": fresh_rewards.std().item() if fresh_rewards.numel() > 1 else 0.0,
        "reward/replay_mean": rewards[batch.prompt_index >= n_fresh].mean().item() if len(examples) > n_fresh else None,
        "completion/mean_tokens": lengths.mean().item(),
        "completion/max_tokens": lengths.max().item(),
        "completion/truncated_frac": batch.truncated.float().mean().item(),
        "replay/groups": len(examples) - n_fresh,
        **inputs.metrics,
        # replay groups have their own reward scale: count fresh groups only, like reward/mean
        "reward/zero_std_frac": zero_std_fraction(fresh_rewards, G),
        **update,
        "optim/lr": tr.scheduler.get_last_lr()[0],
        "time/generate": t_gen - t0,
        "time/score": t_score - t_gen,
        "time/update": t_update - t_score,
        "time/step": t_update - t0,
        "memory/peak_rss_mb": peak_rss_mb(),
    }
    if tr.lm.device.type == "cuda":
        metrics["memory/peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if cfg.log.samples_every and tr.step % cfg.log.samples_every == 0:
        write_samples(tr, batch, rewards, examples, prefixes_text)
    return metrics


def update_policy(tr: Trainer, batch: RolloutBatch, inputs: LossInputs) -> dict[str, float]:
    """optim.inner_updates AdamW steps on one batch; groups split into optim.micro_batches.

    The loss coefficients were computed over the whole batch, so the micro-batch losses add up
    to the whole-batch loss and accumulation changes memory, not the update.
    """
    cfg, algo_cfg = tr.cfg, tr.cfg.algo_config()
    has_target = inputs.logprob_mask.any(dim=1)  # [B] rows that need a forward pass
    if not bool(has_target.any()):
        # every group had equal rewards (or no pairs): no gradient signal, nothing to run
        return {"update/skipped": 1.0, "loss/policy": 0.0, "loss/kl": 0.0, "optim/grad_norm": 0.0}
    G = batch.group_size
    groups = torch.arange(batch.prompt_ids.shape[0] // G)
    micro = [
        torch.cat([torch.arange(g * G, (g + 1) * G) for g in chunk.tolist()])
        for chunk in groups.tensor_split(min(cfg.optim.micro_batches, len(groups)))
        if len(chunk)
    ]
    micro = [rows[has_target[rows]] for rows in micro]
    micro = [rows for rows in micro if len(rows)]
    old_logp: dict[int, torch.Tensor] = {}
    ref_logp: dict[int, torch.Tensor] = {}  # the reference never changes: computed once per micro-batch
    totals: dict[str, float] = {}
    grad_norm = torch.zeros(())
    skipped = 0.0
    for inner in range(cfg.optim.inner_updates):
        tr.optimizer.zero_grad(set_to_none=True)
        for j, rows in enumerate(micro):
            sub, sub_inputs = select_rows(batch, rows), inputs.select_rows(rows)
            logp = completion_logprobs(tr.model, sub, sub_inputs.logprob_mask)  # [b, T]
            if algo_cfg.beta > 0 and j not in ref_logp:
                ref_logp[j] = reference_logprobs(tr.model, sub, sub_inputs.logprob_mask)
            loss, m = policy_loss(
                logp,
                old_logp.get(j),  # None on the first inner update: ratio pi / sg(pi)
                sub_inputs,
                clip_low=algo_cfg.clip_low,
                clip_high=algo_cfg.clip_high,
                beta=algo_cfg.beta,
                ref_logp=ref_logp.get(j),
            )
            loss.backward()
            if inner == 0 and cfg.optim.inner_updates > 1:
                old_logp[j] = logp.detach()  # the rollout policy, for the PPO ratio later
            if inner == cfg.optim.inner_updates - 1:
                for k, v in m.items():
                    totals[k] = totals.get(k, 0.0) + v
        params = [p for p in tr.model.parameters() if p.requires_grad]
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if not torch.isfinite(grad_norm):
            skipped += 1.0  # a non-finite gradient would poison AdamW's moments: skip this update
            continue
        tr.optimizer.step()
    if "loss/clip_frac" in totals:  # a fraction per micro-batch: average, do not add up
        totals["loss/clip_frac"] /= len(micro)
    return {**totals, "optim/grad_norm": float(grad_norm), "update/skipped": skipped}


# ---------------------------------------------------------------------------------------------
# evaluation, samples, memory


def run_eval(tr: Trainer) -> EvalResult:
    return evaluate(
        tr.model,
        tr.lm.tokenizer,
        tr.task,
        tr.eval_examples,
        max_new_tokens=tr.cfg.rollout.max_new_tokens,
        batch_size=tr.cfg.rollout.batch_size,
    )


def eval_metrics(result: EvalResult, step: int) -> dict[str, Any]:
    return {
        "step": step,
        "eval/accuracy": result.accuracy,
        "eval/ci_low": result.ci95[0],
        "eval/ci_high": result.ci95[1],
        "eval/n": result.n,
        "eval/mean_tokens": result.mean_completion_tokens,
        "eval/truncated_frac": result.truncation_rate,
        "time/eval": result.seconds,
    }


def write_samples(tr: Trainer, batch: RolloutBatch, rewards: torch.Tensor, examples, prefixes) -> None:
    with open(tr.out / "samples.jsonl", "a", encoding="utf-8") as f:
        for row in range(min(tr.cfg.log.samples_count, len(batch.texts))):
            i = int(batch.prompt_index[row])
            rec = {
                "step": tr.step,
                "id": examples[i].id,
                "prompt": examples[i].question,
                "replay_prefix": prefixes[i] or None,
                "completion": batch.texts[row],
                "gold": examples[i].answer,
                "reward": float(rewards[row]),
            }
            f.write(json.dumps(rec) + "\n")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith("step-") and (p / CHECKPOINT_DONE).exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(tr: Trainer) -> Path:
    """Adapter + optimiser + scheduler + RNG states + data position, written atomically."""
    root = tr.out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{tr.step:06d}"
    tmp = root / f".tmp-step-{tr.step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tr.model.save_pretrained(tmp / "adapter")
    state = {
        "step": tr.step,
        "optimizer": tr.optimizer.state_dict(),
        "scheduler": tr.scheduler.state_dict(),
        "sampler": tr.sampler.state_dict(),
        "generator": tr.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state(),
        "replay": list(tr.replay.items) if tr.replay is not None else None,
    }
    torch.save(state, tmp / "state.pt")
    (tmp / CHECKPOINT_DONE).write_text(str(tr.step))
    _fsync_dir(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoint_dirs(tr.out)[: -tr.cfg.train.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def load_checkpoint(tr: Trainer, ckpt: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = torch.load(ckpt / "state.pt", weights_only=False)
    weights = load_file(ckpt / "adapter" / "adapter_model.safetensors")
    set_peft_model_state_dict(tr.model, weights)
    tr.optimizer.load_state_dict(state["optimizer"])
    tr.scheduler.load_state_dict(state["scheduler"])
    tr.sampler.load_state_dict(state["sampler"])
    tr.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate(state["python_rng"])
    np.random.set_state(state["numpy_rng"])
    if tr.replay is not None and state["replay"] is not None:
        for item in state["replay"]:
            tr.replay.add(item.prompt_key, item.prompt_ids, item.completion_ids, item.reward)
    tr.step = state["step"]


def latest_loadable_checkpoint(tr: Trainer, report: Callable[[str], None]) -> Path | None:
    """Load the newest checkpoint that reads back; fall back to older ones when one is corrupt."""
    for ckpt in reversed(checkpoint_dirs(tr.out)):
        try:
            load_checkpoint(tr, ckpt)
            return ckpt
        except Exception as err:  # a truncated or corrupt file: say so, try the previous one
            report(f"checkpoint {ckpt} is unreadable ({err.__class__.__name__}: {err}); trying an older one")
    return None


# ---------------------------------------------------------------------------------------------
# the run


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: everything after it is lost anyway
    return out


def truncate_logs(out: Path, step: int) -> None:
    """On resume, forget log lines written after the checkpoint (they will be written again)."""
    for name in ("metrics.jsonl", "samples.jsonl"):
        recs = [r for r in read_jsonl(out / name) if r.get("step", 0) <= step]
        with open(out / name, "w", encoding="utf-8") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")


def train(cfg: Config, out: Path, *, resume: bool = False, on_event: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) training; returns the summary written to eval.json."""
    from tokenrl.report import plot_run

    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        save_config(cfg, out / "config.yaml")
    tr = build_trainer(cfg, out)
    if resume:
        ckpt = latest_loadable_checkpoint(tr, on_event)
        if ckpt is None:
            on_event(f"no complete checkpoint in {out}/checkpoints: starting from step 0")
        else:
            on_event(f"resuming from {ckpt} (step {tr.step})")
        truncate_logs(out, tr.step)
    logger = MetricsLogger(out, tensorboard=cfg.log.tensorboard)
    summary_path = out / "eval.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if resume and summary_path.exists() else {}
    try:
        with progress_bar(cfg) as bar:
            if tr.step == 0 and cfg.train.eval_before and "before" not in summary:
                before = run_eval(tr)
                logger.write(eval_metrics(before, 0))
                summary["before"] = before.summary()
                summary_path.write_text(json.dumps(summary, indent=1) + "\n")
            bar.update(tr.step, None, summary.get("before", {}).get("accuracy"))
            last_acc = None
            while tr.step < cfg.train.steps:
                m = train_step(tr)
                logger.write(m)
                if cfg.train.eval_every and tr.step % cfg.train.eval_every == 0 and tr.step < cfg.train.steps:
                    result = run_eval(tr)
                    logger.write(eval_metrics(result, tr.step))
                    last_acc = result.accuracy
                if cfg.train.checkpoint_every and tr.step % cfg.train.checkpoint_every == 0:
                    save_checkpoint(tr)
                bar.update(tr.step, m["reward/mean"], last_acc)
            after = run_eval(tr)
            logger.write(eval_metrics(after, tr.step))
            bar.update(tr.step, None, after.accuracy)
    finally:
        logger.close()
    save_checkpoint(tr)
    tr.model.save_pretrained(out / "adapter")
    with open(out / "eval_completions.jsonl", "w", encoding="utf-8") as f:
        for rec in after.records:
            f.write(json.dumps(rec) + "\n")
    records = read_jsonl(out / "metrics.jsonl")
    steps = [r for r in records if "reward/mean" in r]
    summary.update(
        {
            "after": after.summary(),
            "algo": cfg.train.algo,
            "model": cfg.model.name,
            "task": cfg.task.name,
            "steps": tr.step,
            "seed": cfg.train.seed,
            "tokens_update_frac": _mean([r.get("tokens/update_frac") for r in steps]),
            "peak_rss_mb": max([r.get("memory/peak_rss_mb", 0.0) for r in steps] or [0.0]),
            "train_seconds": sum(r.get("time/step", 0.0) for r in steps),
        }
    )
    if "before" in summary:
        summary["gain_points"] = 100 * (after.accuracy - summary["before"]["accuracy"])
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    plot_run(records, out / "report.png", title=f"{cfg.train.algo} on {cfg.task.name} ({cfg.model.name})")
    return summary


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


class MetricsLogger:
    """metrics.jsonl always (one JSON object per line, flushed), TensorBoard when asked."""

    def __init__(self, out: Path, *, tensorboard: bool) -> None:
        self.file = open(out / "metrics.jsonl", "a", encoding="utf-8")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"))

    def write(self, metrics: dict[str, Any]) -> None:
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if k != "step" and isinstance(v, int | float):
                    self.tb.add_scalar(k, v, metrics["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


class progress_bar:
    """A live bar: step, reward of the last step, latest held-out accuracy."""

    def __init__(self, cfg: Config) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.total = cfg.train.steps
        self.progress = Progress(
            TextColumn(f"[bold]{cfg.train.algo}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            disable=not cfg.log.progress,
            transient=False,
        )
        self.reward: float | None = None
        self.acc: float | None = None

    def __enter__(self) -> progress_bar:
        self.progress.__enter__()
        self.job = self.progress.add_task("train", total=self.total, info="")
        return self

    def update(self, step: int, reward: float | None, acc: float | None) -> None:
        self.reward = reward if reward is not None else self.reward
        self.acc = acc if acc is not None else self.acc
        info = []
        if self.reward is not None:
            info.append(f"reward {self.reward:.2f}")
        if self.acc is not None:
            info.append(f"held-out acc {100 * self.acc:.1f}%")
        self.progress.update(self.job, completed=step, info="  ".join(info))

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

"""``tokenrl train``: the RL loop, its run folder, checkpoints and exact resume.

One training step reads top to bottom (:func:`train_step`): sample prompts -> rollouts (G per
prompt, plus T-SPMO replay groups) -> rewards -> token selection and advantages (by algorithm)
-> log-probs at the selected tokens only -> loss -> AdamW step on the LoRA weights -> metrics.

Run folder (see docs/metrics.md): ``config.yaml``, ``metrics.jsonl``, ``samples.jsonl``,
``checkpoints/step-NNNNNN/`` (adapter + ``state.pt``), ``adapter/`` (final), ``eval.json``,
``report.png``, ``tb/`` (TensorBoard, optional).
"""

from __future__ import annotations

import contextlib
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

from tokenrl.algorithms.advantages import settled_groups
from tokenrl.algorithms.logprobs import completion_logprobs, reference_logprobs
from tokenrl.algorithms.losses import (
    LossInputs,
    aggregation_denominator,
    policy_loss,
    rescale_coefficients,
)
from tokenrl.algorithms.registry import get_algorithm
from tokenrl.algorithms.replay import ReplayBuffer, rollout_items, sample_replay_prefixes
from tokenrl.config import AUTOCAST_DTYPES, Config, OptimConfig, save_config
from tokenrl.distributed import Distributed, check_divisible, init_from_env, shutdown
from tokenrl.errors import Interrupted, RunError
from tokenrl.evaluation import EvalResult, evaluate
from tokenrl.guards import StopRequest, nonfinite_stop_message, score_completions
from tokenrl.heap import trim_heap
from tokenrl.models import LoadedModel, autocast, load_model, lora_merged
from tokenrl.rollout import (
    RolloutBatch,
    SamplingConfig,
    derive_seed,
    generate_rollouts,
    select_rows,
)
from tokenrl.tasks import Example, Task, get_task

CHECKPOINT_DONE = "COMPLETE"


# ---------------------------------------------------------------------------------------------
# data order


class PromptSampler:
    """Shuffled passes over the training problems, reproducible from the seed and resumable.

    With ``skip_settled``, a problem marked settled (:meth:`record`: its last group all scored the
    same) is passed over once, the next time a pass reaches it, then drawn again as usual.
    """

    def __init__(self, n: int, seed: int, *, skip_settled: bool = False) -> None:
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self.skip_settled = skip_settled
        self.settled: set[int] = set()
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            i = self._order[self.pos]
            self.pos += 1
            if i in self.settled and len(self.settled) < self.n:  # (all settled: draw anyway)
                self.settled.discard(i)
                continue
            out.append(i)
        return out

    def record(self, ids: list[int], settled: list[bool]) -> None:
        """Mark each problem of ``ids`` settled or not, from its group just scored."""
        if not self.skip_settled:
            return
        for i, s in zip(ids, settled, strict=True):
            if s:
                self.settled.add(i)
            else:
                self.settled.discard(i)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "settled": sorted(self.settled)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self.settled = set(state.get("settled", []))
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
    generator: torch.Generator  # replay draws (the same on every rank of a data-parallel run)
    replay: ReplayBuffer | None
    reward_fn: Callable[[str, Example], float]
    step: int = 0
    nonfinite_streak: int = 0  # optimiser updates in a row skipped for a non-finite loss/gradient
    log: Callable[[dict[str, Any]], None] = print
    history: list[dict[str, Any]] = field(default_factory=list)
    dist: Distributed = field(default_factory=Distributed)  # this rank of a data-parallel run

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
            shared_decode=r.shared_decode,
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


def build_trainer(cfg: Config, out: Path, *, device: str | None = None, dist: Distributed | None = None) -> Trainer:
    """Load the model with a fresh adapter, the task and the optimiser, seeded from the config.

    ``device`` overrides ``cfg.model.device`` (a data-parallel rank's own GPU); ``dist`` is the
    rank's place in a data-parallel run (default: a single process).
    """
    dist = dist or Distributed()
    seed_everything(cfg.train.seed)
    task = get_task(cfg.task.name, data_path=cfg.task.data_path, style=cfg.task.style, **cfg.task.options)
    train_examples = task.examples("train")
    test = task.examples("test")
    eval_examples = test[: cfg.task.eval_limit] if cfg.task.eval_limit else test
    lm = load_model(
        cfg.model.name, dtype=cfg.model.dtype, device=device or cfg.model.device, lora=cfg.lora.spec(cfg.train.seed)
    )
    lm.model.train()  # updates run in training mode (LoRA dropout, gradient checkpointing)
    if cfg.model.gradient_checkpointing:
        lm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.model.enable_input_require_grads()
    task = task.resolved(lm.tokenizer)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    dist.broadcast_params(params)  # the seeded adapters already agree; this makes sure of it
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        param_groups(lm.model, o), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay
    )
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
        sampler=PromptSampler(len(train_examples), cfg.train.seed, skip_settled=cfg.rollout.skip_settled),
        generator=torch.Generator().manual_seed(cfg.train.seed + 1),
        replay=ReplayBuffer.from_config(replay_cfg) if use_replay else None,
        reward_fn=cfg.task.reward_fn() or task.reward,
        dist=dist,
    )


def param_groups(model: torch.nn.Module, o: OptimConfig) -> list[dict[str, Any]]:
    """The trainable parameters as AdamW parameter groups: one group at ``o.lr``; with LoRA+
    (``o.lora_plus_ratio != 1``) the LoRA B matrices in a second group at ``o.lr * ratio``.
    The first group always runs at ``o.lr`` (the rate the metrics log)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if o.lora_plus_ratio == 1.0:
        return [{"params": [p for _, p in named]}]
    b = [p for n, p in named if ".lora_B." in n]
    rest = [p for n, p in named if ".lora_B." not in n]
    return [{"params": rest}, {"params": b, "lr": o.lr * o.lora_plus_ratio}]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# one step


def train_step(tr: Trainer) -> dict[str, Any]:
    cfg, tok = tr.cfg, tr.lm.tokenizer
    G = cfg.rollout.group_size
    t0, cpu0 = time.perf_counter(), time.process_time()

    # 1. prompts: fresh problems, plus (T-SPMO) replay groups continuing a stored success. Every
    # rank draws the same global list and keeps its slice; a group's global index keys its
    # randomness, so a data-parallel run samples what one process would (docs/distributed.md)
    ids = tr.sampler.take(cfg.rollout.prompts_per_step)
    lo, hi = tr.dist.shard(len(ids))
    examples = [tr.train_examples[i] for i in ids[lo:hi]]
    global_index = list(range(lo, hi))
    prompt_ids = [tok(tr.task.render_prompt(e, tok), add_special_tokens=False)["input_ids"] for e in examples]
    prefixes_text = [""] * len(examples)
    n_fresh = len(examples)
    if tr.replay is not None and (tr.step + 1) % cfg.tspmo.replay.every == 0 and len(tr.replay):
        by_id = {e.id: e for e in tr.train_examples}
        progress = tr.step / max(cfg.train.steps - 1, 1)
        prefixes = sample_replay_prefixes(  # the same on every rank: all ranks store all rollouts
            tr.replay, cfg.tspmo.replay.groups_per_step, cfg.tspmo.replay, progress=progress, generator=tr.generator
        )
        r_lo, r_hi = tr.dist.shard(len(prefixes))
        for j, rp in enumerate(prefixes[r_lo:r_hi], start=r_lo):
            global_index.append(len(ids) + j)
            examples.append(by_id[rp.prompt_key])
            prompt_ids.append(rp.input_ids)
            prefixes_text.append(tok.decode(rp.source.completion_ids[: rp.cut], skip_special_tokens=True))

    # 2. rollouts: G completions per prompt
    seeds = [derive_seed(cfg.train.seed, tr.step, "rollout", i) for i in global_index]
    merged = lora_merged(tr.model) if cfg.rollout.merge_lora else contextlib.nullcontext()
    with merged, autocast(tr.lm.device, AUTOCAST_DTYPES[cfg.model.autocast]):
        batch = generate_rollouts(tr.model, tok, [], tr.sampling, group_size=G, prompt_ids=prompt_ids, group_seeds=seeds)
    t_gen = time.perf_counter()

    # 3. rewards: a replayed completion is scored with its prefix in front; a reward function
    # that raises or returns a non-finite value stops the run or scores 0 (task.reward_errors)
    scores, reward_errors = score_completions(
        tr.reward_fn,
        [prefixes_text[int(i)] + text for i, text in zip(batch.prompt_index, batch.texts)],
        [examples[int(i)] for i in batch.prompt_index],
        on_error=cfg.task.reward_errors,
    )
    rewards = torch.tensor(scores, dtype=torch.float32)  # [B]
    t_score = time.perf_counter()

    # 4. credit assignment and token selection (which tokens enter the loss, with what advantage)
    algo_cfg = cfg.algo_config()
    generators = [torch.Generator().manual_seed(derive_seed(cfg.train.seed, tr.step, "select", i)) for i in global_index]
    inputs = get_algorithm(cfg.train.algo).prepare(batch, rewards, algo_cfg, generators)
    # a data-parallel rank holds part of the batch: scale its coefficients to the whole batch's
    local = aggregation_denominator(inputs.aggregation, inputs.update_mask, inputs.token_weights)
    inputs = rescale_coefficients(inputs, local, tr.dist.sum(local))

    # 5-7. log-probs at the selected tokens, loss, optimiser step(s)
    if tr.lm.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    update = update_policy(tr, batch, inputs)
    with warnings.catch_warnings():  # a skipped update (no signal) still advances the schedule
        warnings.simplefilter("ignore", UserWarning)
        tr.scheduler.step()
    t_update = time.perf_counter()

    # 8. bookkeeping: replay buffer (fresh groups of every rank, in global order), metrics over
    # the rows of every rank
    fresh = batch.prompt_index < n_fresh  # [B]
    if tr.replay is not None:
        fresh_rows = select_rows(batch, fresh.nonzero().squeeze(1))
        for item in tr.dist.cat_lists(rollout_items(fresh_rows, rewards[fresh], [e.id for e in examples])):
            tr.replay.add(*item)
    tr.step += 1
    rows, n_tokens = len(batch.texts), int(batch.completion_mask.sum())
    all_rewards, lengths, truncated, fresh = tr.dist.cat(rewards, batch.completion_lengths.float(), batch.truncated, fresh)
    fresh_rewards = all_rewards[fresh]
    settled = settled_groups(fresh_rewards, G)  # [len(ids)]: every rank's fresh groups, in the order of ids
    tr.sampler.record(ids, settled.tolist())
    metrics: dict[str, Any] = {
        "step": tr.step,
        "reward/mean": fresh_rewards.mean().item(),
        "reward/std": fresh_rewards.std().item() if fresh_rewards.numel() > 1 else 0.0,
        "reward/replay_mean": all_rewards[~fresh].mean().item() if bool((~fresh).any()) else None,
        "reward/errors": reward_errors,
        "completion/mean_tokens": lengths.mean().item(),
        "completion/max_tokens": lengths.max().item(),
        "completion/truncated_frac": truncated.float().mean().item(),
        "replay/groups": len(examples) - n_fresh,
        **inputs.metrics,
        # replay groups have their own reward scale: count fresh groups only, like reward/mean
        "reward/zero_std_frac": settled.float().mean().item(),
        **update,
        "optim/lr": tr.scheduler.get_last_lr()[0],
        "time/generate": t_gen - t0,
        "time/score": t_score - t_gen,
        "time/update": t_update - t_score,
        "time/step": t_update - t0,
        "cpu/step_seconds": time.process_time() - cpu0,  # all threads of this process
        "memory/peak_rss_mb": peak_rss_mb(),
    }
    if tr.lm.device.type == "cuda":
        metrics["memory/peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    metrics = tr.dist.combine(metrics, rows=rows, tokens=n_tokens)  # each rank's share -> whole batch
    if cfg.log.samples_every and tr.step % cfg.log.samples_every == 0 and tr.dist.is_main:
        write_samples(tr, batch, rewards, examples, prefixes_text)
    return metrics


def update_policy(tr: Trainer, batch: RolloutBatch, inputs: LossInputs) -> dict[str, float]:
    """optim.inner_updates AdamW steps on one batch; groups split into optim.micro_batches.

    The loss coefficients were computed over the whole batch, so the micro-batch losses add up
    to the whole-batch loss and accumulation changes memory, not the update.
    """
    cfg, algo_cfg = tr.cfg, tr.cfg.algo_config()
    has_target = inputs.logprob_mask.any(dim=1)  # [B] rows that need a forward pass
    if not tr.dist.any(bool(has_target.any())):  # on any rank: a rank without targets still joins the all-reduce
        # every group had equal rewards (or no pairs): no gradient signal, nothing to run
        return {"update/skipped": 1.0, "update/nonfinite": 0.0, "loss/policy": 0.0, "loss/kl": 0.0, "optim/grad_norm": 0.0}
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
        loss_finite = True
        for j, rows in enumerate(micro):
            sub, sub_inputs = select_rows(batch, rows), inputs.select_rows(rows)
            with autocast(tr.lm.device, AUTOCAST_DTYPES[cfg.model.autocast]):  # the forward only
                logp = completion_logprobs(tr.model, sub, sub_inputs.logprob_mask, share_prompt=cfg.optim.share_prompt)  # [b, T]
                if algo_cfg.beta > 0 and j not in ref_logp:
                    ref_logp[j] = reference_logprobs(tr.model, sub, sub_inputs.logprob_mask, share_prompt=cfg.optim.share_prompt)
            loss, m = policy_loss(
                logp,
                old_logp.get(j),  # None on the first inner update: ratio pi / sg(pi)
                sub_inputs,
                clip_low=algo_cfg.clip_low,
                clip_high=algo_cfg.clip_high,
                beta=algo_cfg.beta,
                ref_logp=ref_logp.get(j),
            )
            loss_finite = loss_finite and bool(torch.isfinite(loss))
            loss.backward()
            if inner == 0 and cfg.optim.inner_updates > 1:
                old_logp[j] = logp.detach()  # the rollout policy, for the PPO ratio later
            if inner == cfg.optim.inner_updates - 1:
                for k, v in m.items():
                    totals[k] = totals.get(k, 0.0) + v
        params = [p for p in tr.model.parameters() if p.requires_grad]
        tr.dist.all_reduce_grads(params)  # data-parallel: sum the ranks' gradients (whole-batch loss)
        loss_finite = not tr.dist.any(not loss_finite)  # skip on every rank or on none
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if not (loss_finite and torch.isfinite(grad_norm)):
            skipped += 1.0  # a non-finite gradient would poison AdamW's moments: skip this update
            tr.nonfinite_streak += 1
            continue
        tr.optimizer.step()
        tr.nonfinite_streak = 0
    if "loss/clip_frac" in totals:  # a fraction per micro-batch: average, do not add up
        totals["loss/clip_frac"] /= len(micro)
    return {**totals, "optim/grad_norm": float(grad_norm), "update/skipped": skipped, "update/nonfinite": skipped}


# ---------------------------------------------------------------------------------------------
# evaluation, samples, memory


def run_eval(tr: Trainer) -> EvalResult:
    """Greedy held-out accuracy; in a data-parallel run rank 0 evaluates and shares the result.

    Afterwards the evaluation's freed tensors go back to the OS (:func:`tokenrl.heap.trim_heap`).
    """
    if not tr.dist.is_main:
        return tr.dist.broadcast(None)
    result = evaluate(
        tr.model,
        tr.lm.tokenizer,
        tr.task,
        tr.eval_examples,
        max_new_tokens=tr.cfg.rollout.max_new_tokens,
        batch_size=tr.cfg.rollout.batch_size,
    )
    trim_heap()
    return tr.dist.broadcast(result)


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
    """Adapter + optimiser + scheduler + RNG states + data position, written atomically.

    Everything goes to a hidden ``.tmp-step-N`` folder, the ``COMPLETE`` marker last, then one
    rename makes it visible; a write that fails (full disk) removes the temporary folder.
    In a data-parallel run every rank holds the same state: rank 0 writes it, the others wait.
    """
    if not tr.dist.is_main:
        tr.dist.barrier()
        return tr.out / "checkpoints" / f"step-{tr.step:06d}"
    root = tr.out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{tr.step:06d}"
    tmp = root / f".tmp-step-{tr.step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_checkpoint(tr, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    remove_checkpoint(final)
    os.replace(tmp, final)
    for old in checkpoint_dirs(tr.out)[: -tr.cfg.train.keep_checkpoints]:
        remove_checkpoint(old)
    tr.dist.barrier()
    return final


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint folder: one rename hides it (``.old-step-N``), then it is deleted, so
    a kill at any moment leaves either the whole checkpoint or a hidden leftover, never a visible
    ``step-N`` folder with part of its files."""
    if not path.exists():
        return
    hidden = path.with_name(f".old-{path.name}")
    shutil.rmtree(hidden, ignore_errors=True)
    os.replace(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def remove_partial_checkpoints(out: Path) -> None:
    """Delete what a kill can leave in ``checkpoints/``: the hidden ``.tmp-step-*`` (writing cut
    short) and ``.old-step-*`` (deletion cut short) folders, and ``step-*`` folders without the
    ``COMPLETE`` marker (left by versions that deleted the marker first)."""
    root = out / "checkpoints"
    if not root.is_dir():
        return
    for p in root.iterdir():
        hidden = p.name.startswith((".tmp-step-", ".old-step-"))
        incomplete = p.name.startswith("step-") and not (p / CHECKPOINT_DONE).exists()
        if p.is_dir() and (hidden or incomplete):
            shutil.rmtree(p, ignore_errors=True)


def _write_checkpoint(tr: Trainer, tmp: Path) -> None:
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
    _fsync_dir(tmp)
    (tmp / CHECKPOINT_DONE).write_text(str(tr.step))
    _fsync_dir(tmp)


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


def truncate_logs(out: Path, step: int, *, redo_eval: bool = False) -> None:
    """On resume, forget log lines written after the checkpoint (they will be written again).

    ``redo_eval``: the evaluation at ``step`` itself runs again (the final one, or the one before
    training when its result did not reach eval.json), so its record is dropped too. Each file
    is replaced atomically.
    """
    for name in ("metrics.jsonl", "samples.jsonl"):
        recs = [r for r in read_jsonl(out / name) if r.get("step", 0) <= step]
        if redo_eval:
            recs = [r for r in recs if not (r.get("step") == step and "eval/accuracy" in r)]
        write_atomic(out / name, "".join(json.dumps(r) + "\n" for r in recs))


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a kill or a full disk
    leaves either the old file or the new one, never a truncated one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def train(
    cfg: Config,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_event: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) training; returns the summary written to eval.json.

    The data is read and the model loaded before anything is written, so a bad task or model
    leaves no run folder behind (``overwrite`` empties an existing ``out`` only after that).
    Ctrl-C stops after the current step with a checkpoint and raises :class:`Interrupted`;
    ``optim.max_nonfinite_steps`` skipped updates in a row raise :class:`RunError`.
    """
    from tokenrl.report import plot_run

    # torchrun / accelerate launch: join the other ranks (docs/distributed.md); rank 0 alone
    # writes the run folder, the others hold the same state and wait for it at barriers
    dist, device = init_from_env(cfg.model.device)
    check_divisible(cfg.rollout.prompts_per_step, dist.world_size)
    main = dist.is_main
    if not main:
        on_event = _quiet
    tr = build_trainer(cfg, out, device=device, dist=dist)  # reads the data and loads the model: fails before any write
    if main and overwrite and out.exists():
        shutil.rmtree(out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    if main and not resume:
        save_config(cfg, out / "config.yaml")
    dist.barrier()
    if resume:
        if main:
            remove_partial_checkpoints(out)
        ckpt = latest_loadable_checkpoint(tr, on_event)
        if ckpt is None:
            on_event(f"no complete checkpoint in {out}/checkpoints: starting from step 0")
        else:
            on_event(f"resuming from {ckpt} (step {tr.step})")
    summary_path = out / "eval.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if resume and summary_path.exists() else {}
    if resume:
        if main:  # the evaluation at the checkpoint's step runs again: before training or final
            redo_before = tr.step == 0 and cfg.train.eval_before and "before" not in summary
            truncate_logs(out, tr.step, redo_eval=redo_before or tr.step >= cfg.train.steps)
        dist.barrier()
    logger = MetricsLogger(out, tensorboard=cfg.log.tensorboard) if main else NullLogger()
    stop = StopRequest()
    try:
        with stop, progress_bar(cfg, show=main) as bar:
            if tr.step == 0 and cfg.train.eval_before and "before" not in summary:
                before = run_eval(tr)
                logger.write(eval_metrics(before, 0))
                summary["before"] = before.summary()
                if main:
                    write_atomic(summary_path, json.dumps(summary, indent=1) + "\n")
            bar.update(tr.step, None, summary.get("before", {}).get("accuracy"))
            last_acc = None
            while tr.step < cfg.train.steps:
                with stop.step():  # a first Ctrl-C lets the step finish
                    m = train_step(tr)
                    logger.write(m)
                trim_heap()  # freed transient tensors back to the OS (tokenrl.heap)
                check_nonfinite(tr, m, on_event)
                if cfg.train.eval_every and tr.step % cfg.train.eval_every == 0 and tr.step < cfg.train.steps:
                    result = run_eval(tr)
                    logger.write(eval_metrics(result, tr.step))
                    last_acc = result.accuracy
                if cfg.train.checkpoint_every and tr.step % cfg.train.checkpoint_every == 0:
                    save_checkpoint(tr)
                bar.update(tr.step, m["reward/mean"], last_acc)
                if dist.any(stop.requested):  # every rank stops after the same step
                    raise KeyboardInterrupt
            after = run_eval(tr)
            logger.write(eval_metrics(after, tr.step))
            bar.update(tr.step, None, after.accuracy)
            save_checkpoint(tr)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(tr, stop.mid_step)) from None
    finally:
        logger.close()
    if not main:  # rank 0 writes the final files; every rank returns its summary
        summary = dist.broadcast(None)
        shutdown(dist)
        return summary
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
            "train_cpu_seconds": sum(r.get("cpu/step_seconds", 0.0) for r in steps),
            "reward_errors": sum(r.get("reward/errors") or 0 for r in steps),
        }
    )
    if "before" in summary:
        summary["gain_points"] = 100 * (after.accuracy - summary["before"]["accuracy"])
    write_atomic(summary_path, json.dumps(summary, indent=1) + "\n")
    plot_run(records, out / "report.png", title=f"{cfg.train.algo} on {cfg.task.name} ({cfg.model.name})")
    dist.broadcast(summary)
    shutdown(dist)
    return summary


def _quiet(message: str) -> None:
    """``on_event`` of ranks other than 0: rank 0 reports for the run."""


class NullLogger:
    """The metrics logger of ranks other than 0: rank 0 writes the run's one metrics.jsonl."""

    def write(self, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def check_nonfinite(tr: Trainer, metrics: dict[str, Any], on_event: Callable[[str], None]) -> None:
    """Report a step whose update was skipped for a non-finite loss or gradient; raise
    :class:`RunError` once ``optim.max_nonfinite_steps`` updates in a row were skipped."""
    if metrics.get("update/nonfinite"):
        on_event(f"step {tr.step}: non-finite loss or gradient, update skipped ({tr.nonfinite_streak} in a row)")
    limit = tr.cfg.optim.max_nonfinite_steps
    if limit and tr.nonfinite_streak >= limit:
        done = checkpoint_dirs(tr.out)
        raise RunError(nonfinite_stop_message(tr.nonfinite_streak, tr.step, limit, done[-1] if done else None))


def interrupted_message(tr: Trainer, mid_step: bool) -> str:
    """After Ctrl-C: save a checkpoint of the last finished step (unless the interrupt cut a step
    short: then its state is half updated and the last checkpoint stays the newest)."""
    how = f"resume with: tokenrl train --resume {tr.out}"
    if not mid_step:
        path = save_checkpoint(tr)
        return f"interrupted after step {tr.step}; saved checkpoint {path}; {how}"
    done = checkpoint_dirs(tr.out)
    last = f"the last checkpoint is {done[-1]}" if done else "no checkpoint was written yet"
    return f"interrupted in the middle of a training step, whose work is lost; {last}; {how}"


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
        # a NaN or inf (a skipped non-finite update) is written as null: the file stays strict JSON
        metrics = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}
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

    def __init__(self, cfg: Config, *, show: bool = True) -> None:
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
            disable=not (cfg.log.progress and show),
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

"""One training step, top to bottom: prompts -> engine.generate -> score -> algorithm.prepare
-> update -> metrics.

In a data-parallel run every rank draws the same global prompt list and keeps its slice; a
group's global index keys its randomness (sampling and token selection), so the ranks together
sample and select what one process would (docs/distributed.md). The few collective calls sit in
the phases that need them: the loss coefficients (:func:`prepare`), the gradients
(:func:`tokenrl.update.update_policy`) and the metrics (:func:`finish`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from tokenrl.algorithms.advantages import settled_groups
from tokenrl.algorithms.entropy import batch_entropy_threshold, token_entropy
from tokenrl.algorithms.losses import LossInputs, aggregation_denominator, rescale_coefficients
from tokenrl.algorithms.replay import rollout_items
from tokenrl.algorithms.selectors import ENTROPY_Q, selector_needs
from tokenrl.rewards import Scores
from tokenrl.rollout import RolloutBatch, derive_seed, select_rows
from tokenrl.runlog import peak_rss_mb, write_samples
from tokenrl.tasks import Example
from tokenrl.trainer import Trainer
from tokenrl.update import update_policy


@dataclass
class StepPrompts:
    """This rank's prompts of one step: fresh problems first, then the algorithm's extra ones."""

    ids: list[int]  # the step's global list of fresh problems (indices into train_examples)
    examples: list[Example]  # this rank's groups
    token_ids: list[list[int]]  # each group's prompt (a replay group: prompt + stored prefix)
    texts: list[str]  # each group's rendered prompt (what TRL-style rewards get as `prompts`)
    prefixes: list[str]  # text in front of each group's completions when scored ("" if fresh)
    global_index: list[int]  # each group's index in the step's global list (keys its randomness)
    n_fresh: int  # this rank's fresh groups (the first n_fresh)


def train_step(tr: Trainer) -> dict[str, Any]:
    t0, cpu0 = time.perf_counter(), time.process_time()
    prompts = draw_prompts(tr)
    seeds = [derive_seed(tr.cfg.train.seed, tr.step, "rollout", i) for i in prompts.global_index]
    batch = tr.engine.generate(
        prompts.token_ids, tr.sampling, group_size=tr.cfg.rollout.group_size, seeds=seeds
    )
    t_gen = time.perf_counter()
    rewards, scores = score(tr, prompts, batch)
    t_score = time.perf_counter()
    inputs = prepare(tr, prompts, batch, rewards)
    if tr.lm.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    update = update_policy(tr, batch, inputs)
    with warnings.catch_warnings():  # a skipped update (no signal) still advances the schedule
        warnings.simplefilter("ignore", UserWarning)
        tr.scheduler.step()
    tr.engine.sync(tr.model)
    t_update = time.perf_counter()
    times = {
        "time/generate": t_gen - t0,
        "time/score": t_score - t_gen,
        "time/update": t_update - t_score,
        "time/step": t_update - t0,
        "cpu/step_seconds": time.process_time() - cpu0,  # all threads of this process
    }
    return finish(tr, prompts, batch, rewards, inputs, scores, {**update, **times})


def draw_prompts(tr: Trainer) -> StepPrompts:
    """Fresh problems from the sampler, plus the algorithm's extra groups (T-SPMO replay)."""
    tok = tr.lm.tokenizer
    ids = tr.sampler.take(tr.cfg.rollout.prompts_per_step)
    lo, hi = tr.dist.shard(len(ids))
    examples = [tr.train_examples[i] for i in ids[lo:hi]]
    texts = [tr.task.render_prompt(e, tok) for e in examples]
    token_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    n = len(examples)
    prompts = StepPrompts(ids, examples, token_ids, texts, [""] * n, list(range(lo, hi)), n)
    if tr.replay is not None:
        extra = tr.replay.prompts(tr.step, tr.cfg.train.steps)  # the same list on every rank
        by_id = {e.id: e for e in tr.train_examples}
        r_lo, r_hi = tr.dist.shard(len(extra))
        for j, rp in enumerate(extra[r_lo:r_hi], start=r_lo):
            prompts.global_index.append(len(ids) + j)
            prompts.examples.append(by_id[rp.prompt_key])
            prompts.token_ids.append(rp.input_ids)
            prompts.texts.append(tr.task.render_prompt(by_id[rp.prompt_key], tok))
            prompts.prefixes.append(tok.decode(rp.prefix_ids, skip_special_tokens=True))
    return prompts


def score(tr: Trainer, prompts: StepPrompts, batch: RolloutBatch) -> tuple[torch.Tensor, Scores]:
    """Rewards [B] (the weighted sum of the reward functions) and each function's scores. A
    replayed completion is scored with its prefix in front; a reward function that fails stops
    the run or scores 0 (``task.reward_errors``, tokenrl.rewards)."""
    rows = [int(i) for i in batch.prompt_index]
    scores = tr.rewards.score(
        [prompts.texts[i] for i in rows],
        [prompts.prefixes[i] + text for i, text in zip(rows, batch.texts)],
        [prompts.examples[i] for i in rows],
        on_error=tr.cfg.task.reward_errors,
    )
    return torch.tensor(scores.total, dtype=torch.float32), scores


def prepare(
    tr: Trainer, prompts: StepPrompts, batch: RolloutBatch, rewards: torch.Tensor
) -> LossInputs:
    """Credit assignment and token selection by the algorithm (one generator per group), with
    the loss coefficients scaled to the whole batch when this rank holds part of it."""
    seed, step, cfg = tr.cfg.train.seed, tr.step, tr.cfg.algo_config()
    spec = getattr(cfg, "selector_spec", None)
    name, options = spec() if spec is not None else (None, {})
    if name is not None and "entropy" in selector_needs(name):  # only when a selector asks
        batch.token_entropy = token_entropy(
            tr.model,
            batch,
            temperature=tr.cfg.rollout.temperature,
            merge_lora=tr.cfg.rollout.merge_lora,  # the weights sampling ran with
        )
        if options.get("per_batch"):  # TRL's cut: over every rank's real tokens, not one group
            (real,) = tr.dist.cat(batch.token_entropy[batch.completion_mask])
            batch.entropy_threshold = batch_entropy_threshold(real, options.get("q", ENTROPY_Q))
    generators = [
        torch.Generator().manual_seed(derive_seed(seed, step, "select", i))
        for i in prompts.global_index
    ]
    inputs = tr.algorithm.prepare(batch, rewards, cfg, generators)
    local = aggregation_denominator(
        inputs.aggregation, inputs.update_mask, inputs.token_weights, inputs.population
    )
    return rescale_coefficients(inputs, local, tr.dist.sum(local))


def finish(
    tr: Trainer,
    prompts: StepPrompts,
    batch: RolloutBatch,
    rewards: torch.Tensor,
    inputs: LossInputs,
    scores: Scores,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Hand the fresh rollouts to the algorithm's replay, advance the step, and return the
    metrics over the rows of every rank (replay groups have their own reward scale: the reward
    metrics count fresh groups only)."""
    fresh = batch.prompt_index < prompts.n_fresh  # [B]
    by_name = reward_means(tr, scores, fresh.tolist())
    if tr.replay is not None:
        fresh_rows = select_rows(batch, fresh.nonzero().squeeze(1))
        keys = [e.id for e in prompts.examples]
        tr.replay.observe(tr.dist.cat_lists(rollout_items(fresh_rows, rewards[fresh], keys)))
    tr.step += 1
    rows, n_tokens = len(batch.texts), int(batch.completion_mask.sum())
    all_rewards, lengths, truncated, fresh = tr.dist.cat(
        rewards, batch.completion_lengths.float(), batch.truncated, fresh
    )
    fresh_rewards = all_rewards[fresh]
    settled = settled_groups(fresh_rewards, tr.cfg.rollout.group_size)  # every rank's fresh groups
    metrics: dict[str, Any] = {
        "step": tr.step,
        "reward/mean": fresh_rewards.mean().item(),
        "reward/std": fresh_rewards.std().item() if fresh_rewards.numel() > 1 else 0.0,
        "reward/replay_mean": all_rewards[~fresh].mean().item() if bool((~fresh).any()) else None,
        "reward/errors": scores.errors,
        **by_name,
        "completion/mean_tokens": lengths.mean().item(),
        "completion/max_tokens": lengths.max().item(),
        "completion/truncated_frac": truncated.float().mean().item(),
        "replay/groups": len(prompts.examples) - prompts.n_fresh,
        **inputs.metrics,
        "reward/zero_std_frac": settled.float().mean().item(),
        **extra,
        "optim/lr": tr.scheduler.get_last_lr()[0],
        "memory/peak_rss_mb": peak_rss_mb(),
    }
    if tr.lm.device.type == "cuda":
        metrics["memory/peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    metrics = tr.dist.combine(
        metrics, rows=rows, tokens=n_tokens
    )  # each rank's share -> whole batch
    if tr.cfg.log.samples_every and tr.step % tr.cfg.log.samples_every == 0 and tr.dist.is_main:
        write_samples(tr, batch, rewards, prompts.examples, prompts.prefixes)
    return metrics


def reward_means(tr: Trainer, scores: Scores, fresh: list[bool]) -> dict[str, float | None]:
    """``reward/<name>``: each function's mean over every rank's fresh rows (``None`` left out)."""
    mine = [
        (name, v) for name, values in scores.by_name.items() for v, f in zip(values, fresh) if f
    ]
    values: dict[str, list[float]] = {name: [] for name in scores.by_name}
    for name, v in tr.dist.cat_lists(mine):
        if v is not None:
            values[name].append(v)
    return {f"reward/{k}": sum(v) / len(v) if v else None for k, v in values.items()}

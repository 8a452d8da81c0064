"""``tokenrl train``: the run loop around :func:`tokenrl.step.train_step`: the run folder,
resume, the evaluation and checkpoint cadence, Ctrl-C, and the summary in ``eval.json``.

Run folder (docs/metrics.md): ``config.yaml``, ``metrics.jsonl``, ``samples.jsonl``,
``checkpoints/step-NNNNNN/`` (adapter + ``state.pt``), ``adapter/`` (final), ``eval.json``,
``eval_completions.jsonl``, ``report.png``, ``tb/`` (TensorBoard, optional).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenrl.checkpoints import (
    checkpoint_dirs,
    latest_loadable_checkpoint,
    recover_checkpoints,
    save_checkpoint,
)
from tokenrl.config import Config, save_config
from tokenrl.distributed import check_divisible, init_from_env, shutdown
from tokenrl.errors import Interrupted, RunError
from tokenrl.evaluation import EvalResult, evaluate
from tokenrl.guards import StopRequest, nonfinite_stop_message
from tokenrl.heap import trim_heap
from tokenrl.machine import machine_info
from tokenrl.modelcard import write_model_card
from tokenrl.models import dtype_name
from tokenrl.runlock import LOCK_NAME, RunLock
from tokenrl.runlog import (
    MetricsLogger,
    NullLogger,
    eval_metrics,
    progress_bar,
    read_jsonl,
    truncate_logs,
    write_atomic,
)
from tokenrl.step import train_step
from tokenrl.trainer import Trainer, build_trainer


def train(
    cfg: Config,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_event: Callable[[str], None] = print,
    model: tuple[Any, Any] | None = None,
    rewards: list[tuple[Any, float]] | None = None,
) -> dict[str, Any]:
    """Run (or resume) training; returns the summary written to eval.json.

    The data is read and the model loaded before anything is written, so a bad task or model
    leaves no run folder behind (``overwrite`` empties an existing ``out`` only after that).
    ``model`` (a loaded ``(model, tokenizer)``) and ``rewards`` (``(function, weight)`` pairs)
    come from the Python API (:func:`tokenrl.api.train`). Ctrl-C or SIGTERM stops after the
    current step with a checkpoint and raises :class:`Interrupted`; ``optim.max_nonfinite_steps``
    skipped updates in a row raise :class:`RunError`; a folder another trainer holds raises
    :class:`tokenrl.runlock.RunFolderBusy`.
    """
    # torchrun / accelerate launch: join the other ranks (docs/distributed.md); rank 0 alone
    # writes the run folder, the others hold the same state and wait for it at barriers
    dist, device = init_from_env(cfg.model.device)
    check_divisible(cfg.rollout.prompts_per_step, dist.world_size)
    main = dist.is_main
    if not main:
        on_event = _quiet
    lock = RunLock(out)  # one trainer per folder (tokenrl.runlock), held until the run ends
    try:
        if main and out.is_dir():
            lock.acquire()  # a second trainer is refused before it loads a model
        tr = build_trainer(
            cfg, out, device=device, dist=dist, model=model, rewards=rewards
        )  # reads the data and loads the model: fails before any write
        if main:
            lock.acquire()  # creates out
            if overwrite:
                _empty_except(out, LOCK_NAME)
            if not resume:
                save_config(cfg, out / "config.yaml")
        dist.barrier()
        if resume:
            if main:
                for line in recover_checkpoints(out):
                    on_event(line)
            dist.barrier()  # every rank reads the checkpoints once rank 0 has put them in order
            ckpt = latest_loadable_checkpoint(tr, on_event)
            if ckpt is None:
                on_event(f"no complete checkpoint in {out}/checkpoints: starting from step 0")
            else:
                on_event(f"resuming from {ckpt} (step {tr.step})")
        return _run(tr, resume=resume, on_event=on_event)
    finally:
        lock.release()


def _run(tr: Trainer, *, resume: bool, on_event: Callable[[str], None]) -> dict[str, Any]:
    """The loop of :func:`train` on a set-up trainer, the final evaluation and the run files."""
    from tokenrl.report import plot_run

    cfg, out, dist = tr.cfg, tr.out, tr.dist
    main = dist.is_main
    summary_path = out / "eval.json"
    summary: dict[str, Any] = (
        json.loads(summary_path.read_text()) if resume and summary_path.exists() else {}
    )
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
                before, origin = run_base_eval(tr)
                logger.write(eval_metrics(before, 0))
                summary["before"] = before.summary()
                if origin is not None:
                    summary["before"]["shared_from"] = origin
                    on_event(f"base evaluation taken from {origin['run']} ({origin['file']})")
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
                if (
                    cfg.train.eval_every
                    and tr.step % cfg.train.eval_every == 0
                    and tr.step < cfg.train.steps
                ):
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
        raise Interrupted(interrupted_message(tr, stop), signal=stop.signal) from None
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
            "dtype": dtype_name(tr.lm.model.dtype),  # what model.dtype (auto included) chose
            "task": cfg.task.name,
            "steps": tr.step,
            "seed": cfg.train.seed,
            "tokens_update_frac": _mean([r.get("tokens/update_frac") for r in steps]),
            "peak_rss_mb": max([r.get("memory/peak_rss_mb", 0.0) for r in steps] or [0.0]),
            "train_seconds": sum(r.get("time/step", 0.0) for r in steps),
            "train_cpu_seconds": sum(r.get("cpu/step_seconds", 0.0) for r in steps),
            "reward_errors": sum(r.get("reward/errors") or 0 for r in steps),
            "machine": machine_info(tr.lm.device.type),  # CPU model and features, threads
        }
    )
    if "before" in summary:
        summary["gain_points"] = 100 * (after.accuracy - summary["before"]["accuracy"])
    write_atomic(summary_path, json.dumps(summary, indent=1) + "\n")
    write_model_card(
        out / "adapter", cfg.to_dict(), summary, f"tokenrl train {out / 'config.yaml'}"
    )
    plot_run(
        records, out / "report.png", title=f"{cfg.train.algo} on {cfg.task.name} ({cfg.model.name})"
    )
    dist.broadcast(summary)
    shutdown(dist)
    return summary


def _quiet(message: str) -> None:
    """``on_event`` of ranks other than 0: rank 0 reports for the run."""


def check_nonfinite(tr: Trainer, metrics: dict[str, Any], on_event: Callable[[str], None]) -> None:
    """Report a step whose update was skipped for a non-finite loss or gradient; raise
    :class:`RunError` once ``optim.max_nonfinite_steps`` updates in a row were skipped."""
    if metrics.get("update/nonfinite"):
        on_event(
            f"step {tr.step}: non-finite loss or gradient, update skipped ({tr.nonfinite_streak} in a row)"
        )
    limit = tr.cfg.optim.max_nonfinite_steps
    if limit and tr.nonfinite_streak >= limit:
        done = checkpoint_dirs(tr.out)
        raise RunError(
            nonfinite_stop_message(tr.nonfinite_streak, tr.step, limit, done[-1] if done else None)
        )


def interrupted_message(tr: Trainer, stop: StopRequest) -> str:
    """After Ctrl-C or SIGTERM: save a checkpoint of the last finished step (unless the signal cut
    a step short: then its state is half updated and the last checkpoint stays the newest)."""
    how = f"resume with: tokenrl train --resume {tr.out}"
    by = f" ({stop.signal_name})" if stop.signal_name != "SIGINT" else ""
    if not stop.mid_step:
        path = save_checkpoint(tr)
        return f"interrupted after step {tr.step}{by}; saved checkpoint {path}; {how}"
    done = checkpoint_dirs(tr.out)
    last = f"the last checkpoint is {done[-1]}" if done else "no checkpoint was written yet"
    return f"interrupted{by} in the middle of a training step, whose work is lost; {last}; {how}"


def _empty_except(folder: Path, keep: str) -> None:
    """``--overwrite``: delete everything in ``folder`` but ``keep`` (the lock this run holds)."""
    for p in folder.iterdir():
        if p.name != keep:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def run_eval(tr: Trainer) -> EvalResult:
    """Greedy held-out accuracy; in a data-parallel run rank 0 evaluates and shares the result.

    Afterwards the evaluation's freed tensors go back to the OS (:func:`tokenrl.heap.trim_heap`).
    """
    if not tr.dist.is_main:
        return tr.dist.broadcast(None)
    return tr.dist.broadcast(_evaluate(tr))


def run_base_eval(tr: Trainer) -> tuple[EvalResult, dict[str, Any] | None]:
    """:func:`run_eval` before training; with ``train.share_base_eval``, taken from an earlier
    run's identical evaluation where there is one (its origin returned, else None)."""
    if not tr.dist.is_main:
        return tr.dist.broadcast(None), None
    if tr.cfg.train.share_base_eval:
        from tokenrl.basecache import shared_base_eval

        result, origin = shared_base_eval(tr, lambda: _evaluate(tr))
    else:
        result, origin = _evaluate(tr), None
    return tr.dist.broadcast(result), origin


def _evaluate(tr: Trainer) -> EvalResult:
    result = evaluate(
        tr.model,
        tr.lm.tokenizer,
        tr.task,
        tr.eval_examples,
        max_new_tokens=tr.cfg.rollout.max_new_tokens,
        batch_size=tr.cfg.rollout.batch_size,
        engine=tr.engine,
    )
    trim_heap()
    return result

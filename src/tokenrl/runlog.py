"""What a run writes as it goes: ``metrics.jsonl`` (and TensorBoard), ``samples.jsonl``, the
progress bar, and the atomic file writes and log truncation that resume relies on."""

from __future__ import annotations

import json
import math
import os
import resource
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tokenrl.evaluation import EvalResult

if TYPE_CHECKING:
    from tokenrl.config import Config
    from tokenrl.rollout import RolloutBatch
    from tokenrl.trainer import Trainer


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


def write_samples(
    tr: Trainer, batch: RolloutBatch, rewards: torch.Tensor, examples, prefixes
) -> None:
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


class NullLogger:
    """The metrics logger of ranks other than 0: rank 0 writes the run's one metrics.jsonl."""

    def write(self, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


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
        metrics = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in metrics.items()
        }
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

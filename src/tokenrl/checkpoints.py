"""Resumable checkpoints in ``RUN/checkpoints/step-NNNNNN/``: the adapter, the optimiser,
scheduler, data-order and RNG states, written atomically (a hidden folder, the ``COMPLETE``
marker last, one rename), with older ones removed and corrupt ones skipped on resume.
See docs/reliability.md.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tokenrl.trainer import Trainer

CHECKPOINT_DONE = "COMPLETE"


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
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state(),
        "replay": tr.replay.state_dict() if tr.replay is not None else None,
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
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate(state["python_rng"])
    np.random.set_state(state["numpy_rng"])
    if tr.replay is not None and state["replay"] is not None:
        tr.replay.load_state_dict(state["replay"])
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

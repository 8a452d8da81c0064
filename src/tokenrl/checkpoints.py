"""Resumable checkpoints in ``RUN/checkpoints/step-NNNNNN/``: the adapter, the optimiser,
scheduler, data-order and RNG states, written atomically (a hidden folder, the ``COMPLETE``
marker last, one rename), with older ones removed and corrupt ones skipped on resume.

Names a kill can leave in ``checkpoints/`` (all hidden):

* ``.tmp-step-N``: a checkpoint being written; complete (it has ``COMPLETE``) once written.
* ``.prev-step-N``: a visible ``step-N`` that a new save of the same step is replacing (a
  resumed run saves the step it resumed at again); complete.
* ``.old-step-N``: a rotated-out checkpoint being deleted (a newer one is visible).

:func:`recover_checkpoints`, run on ``--resume``, promotes a complete ``.tmp`` or ``.prev``
folder whose step has no visible checkpoint, then deletes the rest, so a kill at any moment
of a save never resumes earlier than the last save that finished.

``state.pt`` holds only tensors and plain Python values, read with
``torch.load(weights_only=True)``: a crafted file is refused, never executed.
See docs/reliability.md.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tokenrl.errors import RunError
from tokenrl.trainer import Trainer

CHECKPOINT_DONE = "COMPLETE"
PROMOTABLE = (".tmp-step-", ".prev-step-")  # complete hidden copies, the newest kind first
HIDDEN = (*PROMOTABLE, ".old-step-")


class UnsafeCheckpointError(RunError):
    """A ``state.pt`` holds objects a safe load refuses (crafted, or from an older tokenrl)."""


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith("step-") and _complete(p)]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(tr: Trainer) -> Path:
    """Adapter + optimiser + scheduler + RNG states + data position, written atomically.

    Everything goes to a hidden ``.tmp-step-N`` folder, the ``COMPLETE`` marker last, then a
    rename makes it visible (:func:`_make_visible`); a write that fails (full disk) removes the
    temporary folder.
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
    _make_visible(tmp, final)
    for old in checkpoint_dirs(tr.out)[: -tr.cfg.train.keep_checkpoints]:
        remove_checkpoint(old)
    tr.dist.barrier()
    return final


def _make_visible(new: Path, final: Path) -> None:
    """Rename the complete ``new`` to ``final``. An existing ``final`` (the same step saved
    again) is first renamed ``.prev-step-N`` and deleted afterwards: at every moment a complete
    copy is visible or under a name that :func:`recover_checkpoints` promotes."""
    prev = final.with_name(f".prev-{final.name}")
    if final.exists():
        shutil.rmtree(prev, ignore_errors=True)
        os.replace(final, prev)
    os.replace(new, final)
    shutil.rmtree(prev, ignore_errors=True)


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


def _complete(path: Path) -> bool:
    return path.is_dir() and (path / CHECKPOINT_DONE).exists()


def recover_checkpoints(out: Path) -> list[str]:
    """Put ``checkpoints/`` in order after a kill; returns what was promoted, for the log.

    1. a visible ``step-N`` without the ``COMPLETE`` marker (left by older versions) is deleted;
    2. a complete ``.tmp-step-N`` (written, not yet renamed) or ``.prev-step-N`` (replaced, the
       new copy not yet renamed) whose step has no visible checkpoint becomes ``step-N``;
    3. every other hidden folder (cut-short writes and deletions) is deleted.
    """
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    for p in list(root.iterdir()):
        if p.name.startswith("step-") and p.is_dir() and not _complete(p):
            shutil.rmtree(p, ignore_errors=True)
    promoted = []
    for prefix in PROMOTABLE:
        for p in sorted(root.glob(f"{prefix}*")):
            visible = root / f"step-{p.name.removeprefix(prefix)}"
            if _complete(p) and not visible.exists():
                os.replace(p, visible)
                promoted.append(f"recovered {visible} from {p.name} (a save cut short)")
    for p in list(root.iterdir()):
        if p.name.startswith(HIDDEN) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
    return promoted


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
        "numpy_rng": _numpy_rng_state(),
        "replay": tr.replay.state_dict() if tr.replay is not None else None,
    }
    torch.save(state, tmp / "state.pt")
    _fsync_dir(tmp)
    (tmp / CHECKPOINT_DONE).write_text(str(tr.step))
    _fsync_dir(tmp)


def _numpy_rng_state() -> dict:
    """NumPy's global RNG state as plain values (a safe load refuses NumPy arrays)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": [int(k) for k in keys], "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}  # fmt: skip


def _set_numpy_rng_state(state: dict) -> None:
    keys = np.array(state["keys"], dtype=np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["gauss"]))


def read_state(path: Path) -> dict:
    """``state.pt`` read with ``weights_only=True``: tensors and plain values only, so a crafted
    pickle cannot run code. A well-formed file (a torch zip archive) that holds anything else
    raises :class:`UnsafeCheckpointError`; a damaged one raises the loader's own error."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        if not zipfile.is_zipfile(path):  # cut short or overwritten: not a refusal
            raise
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeCheckpointError(
            f"{path} holds Python objects that a safe load refuses ({detail}); nothing in it was "
            "run. It was altered, or written by an older tokenrl whose checkpoints cannot be "
            "resumed. Delete its checkpoint folder to resume from an older one, or start a new run"
        ) from None


def _fsync_dir(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def load_checkpoint(tr: Trainer, ckpt: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = read_state(ckpt / "state.pt")
    weights = load_file(ckpt / "adapter" / "adapter_model.safetensors")
    set_peft_model_state_dict(tr.model, weights)
    tr.optimizer.load_state_dict(state["optimizer"])
    tr.scheduler.load_state_dict(state["scheduler"])
    tr.sampler.load_state_dict(state["sampler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate(state["python_rng"])
    _set_numpy_rng_state(state["numpy_rng"])
    if tr.replay is not None and state["replay"] is not None:
        tr.replay.load_state_dict(state["replay"])
    tr.step = state["step"]


def latest_loadable_checkpoint(tr: Trainer, report: Callable[[str], None]) -> Path | None:
    """Load the newest checkpoint that reads back; fall back to older ones when one is corrupt.
    One that a safe load refuses stops the resume (:class:`UnsafeCheckpointError`)."""
    for ckpt in reversed(checkpoint_dirs(tr.out)):
        try:
            load_checkpoint(tr, ckpt)
            return ckpt
        except UnsafeCheckpointError:
            raise
        except Exception as err:  # a truncated or corrupt file: say so, try the previous one
            report(
                f"checkpoint {ckpt} is unreadable ({err.__class__.__name__}: {err}); trying an older one"
            )
    return None

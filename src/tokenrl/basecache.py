"""The base model's evaluation, shared between runs that would measure the same thing.

Several runs of one experiment (the methods, the seeds) each evaluate the base model on the same
held-out problems before training: greedy decoding of the same weights with the same settings on
the same machine gives the same tokens, so the first run's result can serve the others
(``train.share_base_eval``, on by default). A run reuses a stored result only when everything the
evaluation depends on is equal (:func:`base_eval_key`): a digest of the base weights and of the
tokenrl source, the held-out problems and their prompts, the task, LoRA and evaluation settings,
the libraries' versions, the CPU or GPU and the thread count; and only while the adapter is at its
initial zero update. Runs started together wait for the first one's evaluation (a file lock;
where ``fcntl`` is missing, on Windows, there is no lock and they may each evaluate) instead of
repeating it. Results are kept under ``<cache>/base-evals/`` (``$TOKENRL_BASE_EVALS``
overrides the folder).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from tokenrl import zoo
from tokenrl.evaluation import EvalResult
from tokenrl.machine import cpu_model, versions
from tokenrl.mklpath import is_active
from tokenrl.runlog import write_atomic

try:
    import fcntl
except ImportError:  # Windows: no lock (as tokenrl.runlock)
    fcntl = None  # type: ignore[assignment]


def cache_folder() -> Path:
    """Where shared base evaluations are kept: ``$TOKENRL_BASE_EVALS`` or ``<cache>/base-evals``."""
    return Path(os.environ.get("TOKENRL_BASE_EVALS") or zoo.cache_dir() / "base-evals")


def _digest_tensors(named: Iterator[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, t in named:
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # no copy
    return h.hexdigest()


def _source_digest() -> str:
    """A digest of tokenrl's own source: any change to the code gives other keys."""
    h = hashlib.blake2b(digest_size=16)
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def base_eval_key(tr: Any) -> dict[str, Any] | None:
    """What the trainer's base evaluation depends on, or None when it cannot be shared: an
    adapter whose update is not zero (a LoRA B matrix that is not all zeros)."""
    params = list(tr.model.named_parameters())
    if any("lora_B" in name and bool(p.detach().any()) for name, p in params):
        return None
    cfg, tok = tr.cfg, tr.lm.tokenizer
    task = tr.task.resolved(tok)
    problems = hashlib.blake2b(digest_size=16)
    for e in tr.eval_examples:
        problems.update(json.dumps([e.id, e.answer, task.render_prompt(e, tok)]).encode())
    device = tr.lm.device
    return {
        "weights": _digest_tensors((n, p) for n, p in params if "lora_" not in n),
        "model_config": hashlib.blake2b(
            tr.model.config.to_json_string().encode(), digest_size=16
        ).hexdigest(),
        "source": _source_digest(),
        "problems": problems.hexdigest(),
        "model": dataclasses.asdict(cfg.model),
        "lora": dataclasses.asdict(cfg.lora),
        "task": dataclasses.asdict(cfg.task),
        "eval": {
            "max_new_tokens": cfg.rollout.max_new_tokens,
            "batch_size": cfg.rollout.batch_size,
            "engine": cfg.rollout.engine,
            "grouped_attention": cfg.rollout.grouped_attention,  # rounds bf16 otherwise
        },
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "threads": torch.get_num_threads(),
        "mkl_intel_path": device.type == "cpu" and is_active(),  # rounds fp32 otherwise
        "versions": versions(),
    }


def key_name(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (released when the process ends, however it ends)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def result_from_summary(summary: dict[str, Any]) -> EvalResult:
    fields = {f.name for f in dataclasses.fields(EvalResult)} - {"records"}
    values = {k: v for k, v in summary.items() if k in fields}
    values["ci95"] = tuple(values["ci95"])
    values["pass_at"] = {int(k): v for k, v in values.get("pass_at", {}).items()}
    return EvalResult(**values)


def shared_base_eval(
    tr: Any, compute: Callable[[], EvalResult]
) -> tuple[EvalResult, dict[str, Any] | None]:
    """(the base evaluation, where it came from): a stored one with the same key, else
    ``compute()``, stored for the next run. The origin is None when this run computed it."""
    key = base_eval_key(tr)
    if key is None:
        return compute(), None
    path = cache_folder() / f"{key_name(key)}.json"
    with _locked(path.with_suffix(".lock")):
        if path.exists():
            stored = json.loads(path.read_text())
            if stored.get("key") == json.loads(json.dumps(key, default=str)):
                origin = {"file": str(path), "run": stored.get("run")}
                return result_from_summary(stored["result"]), origin
        result = compute()
        record = {"key": key, "run": str(tr.out), "result": result.summary()}
        write_atomic(path, json.dumps(record, indent=1, default=str) + "\n")
    return result, None

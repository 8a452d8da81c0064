"""Data-parallel training: several processes (GPUs, machines) started by torchrun or accelerate.

``torchrun --nproc_per_node N -m tokenrl train ...`` (or ``accelerate launch``) starts N copies
of the trainer with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set.
:func:`init_from_env` joins them into one process group (NCCL on GPUs, gloo on CPUs) and the
trainer calls the methods of :class:`Distributed` at a few points of a step:

* every process draws the same global prompt list and keeps its contiguous slice
  (:meth:`Distributed.shard`), so the G completions of a prompt stay on one process;
* loss coefficients are rescaled by the summed aggregation denominator (:meth:`Distributed.sum`
  and ``losses.rescale_coefficients``), so the processes' losses add up to the loss of the whole
  batch;
* the LoRA gradients are summed by one flattened all-reduce per optimiser step
  (:meth:`Distributed.all_reduce_grads`): the adapter is small, so this is simpler than DDP and
  every process takes the same AdamW step on identical weights;
* metrics are computed over every process's rows (:meth:`Distributed.cat`,
  :func:`combine_metrics`), and only rank 0 logs, evaluates and writes files.

In a single process (no WORLD_SIZE, or WORLD_SIZE=1) every method is the identity, so the
trainer runs the same code either way. See docs/distributed.md.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from tokenrl.errors import RunError

TIMEOUT = timedelta(minutes=60)
"""How long a collective waits: other ranks wait at a barrier while rank 0 evaluates."""

_joined = False  # set once this process has joined a process group (init_from_env)


@dataclass
class Distributed:
    """This process's place in a data-parallel run; a single process by default (rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # where collective tensors live (cuda for NCCL)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, evaluates and writes the run folder."""
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous slice [start, end) of n items (the first n % N ranks get one more)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def barrier(self) -> None:
        if self.enabled:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (picklable Python objects; small payloads only)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def cat(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each 1-D tensor concatenated over ranks in rank order (= the rows of the whole batch)."""
        if not self.enabled:
            return tensors
        per_rank = self.gather([t.detach().cpu().tolist() for t in tensors])
        return tuple(
            torch.tensor([x for lists in per_rank for x in lists[i]], dtype=t.dtype)
            for i, t in enumerate(tensors)
        )

    def cat_lists(self, items: list[Any]) -> list[Any]:
        """``items`` of every rank, concatenated in rank order."""
        return [x for part in self.gather(items) for x in part] if self.enabled else items

    def combine(self, metrics: dict[str, Any], *, rows: int, tokens: int) -> dict[str, Any]:
        """The whole batch's metrics from each rank's (:func:`combine_metrics`); ``rows`` and
        ``tokens`` are this rank's completion rows and completion tokens."""
        if not self.enabled:
            return metrics
        per_rank = self.gather((metrics, rows, tokens))
        return combine_metrics(
            [m for m, _, _ in per_rank], [r for _, r, _ in per_rank], [t for _, _, t in per_rank]
        )

    def sum(self, value: float) -> float:
        """``value`` summed over ranks (float64, so counts stay exact)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item())

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is True on at least one rank."""
        return self.sum(1.0 if flag else 0.0) > 0 if self.enabled else flag

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over ranks with one flattened all-reduce.

        A parameter without a gradient on this rank (no rows to train) counts as zeros and gets
        the summed gradient, so every rank hands AdamW the same gradients.
        """
        if not self.enabled:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])  # [sum of numel]
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def broadcast_params(self, params: list[torch.nn.Parameter]) -> None:
        """Copy rank 0's values of ``params`` to every rank (one flattened broadcast)."""
        if not self.enabled:
            return
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in params])
            dist.broadcast(flat, src=0)
            offset = 0
            for p in params:
                p.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()


def init_from_env(device: str = "auto") -> tuple[Distributed, str]:
    """Join the process group described by torchrun's environment; return it and this rank's device.

    Without WORLD_SIZE (or with WORLD_SIZE=1) nothing happens and ``device`` is returned as is.
    Otherwise GPU runs ("auto" with CUDA present, or any "cuda...") use NCCL and the GPU
    ``cuda:LOCAL_RANK``; CPU runs use gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if torch.cuda.device_count() <= local_rank:
            raise RunError(
                f"rank {rank} wants GPU cuda:{local_rank} but this machine has "
                f"{torch.cuda.device_count()}: start at most that many processes per node "
                "(torchrun --nproc_per_node)"
            )
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    else:
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=TIMEOUT)
    global _joined
    _joined = True
    return Distributed(rank, world, local_rank, torch.device(device)), device


def shutdown(ctx: Distributed) -> None:
    """Leave the process group (after a last barrier, so no rank exits while others still write)."""
    if ctx.enabled and dist.is_initialized():
        ctx.barrier()
        dist.destroy_process_group()


def exit_if_joined(code: int) -> None:
    """End a process that joined a process group now, skipping interpreter finalisation.

    After :func:`shutdown` the work is done and every file is written and closed, but torch's
    C++ worker threads (gloo, autograd) can still race Python's teardown at exit and abort
    with "terminate called without an active exception" (SIGABRT; pytorch/pytorch#190489).
    torchrun then reports the whole job as failed. Seen once in CI on a 2-process gloo test
    run (not reproduced in 35 runs here, 20 of them beside two busy cores); ``os._exit``
    after flushing stdout and stderr leaves no finalisation to race.
    A process that never joined a group returns and exits normally.
    """
    if not _joined:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def check_divisible(prompts_per_step: int, world_size: int) -> None:
    """Each process must get the same number of whole prompt groups."""
    if prompts_per_step % world_size:
        raise RunError(
            f"rollout.prompts_per_step={prompts_per_step} cannot be split over {world_size} "
            "processes: each process samples whole groups for an equal share of the prompts. "
            f"Fix: use a multiple of {world_size} (e.g. {world_size * max(prompts_per_step // world_size, 1)}) "
            "or start another number of processes"
        )


# ---------------------------------------------------------------------------------------------
# metrics of the whole batch


SAME_ON_EVERY_RANK = ("step", "optim/lr", "optim/grad_norm", "update/skipped", "update/nonfinite")
"""Metrics that are equal on every rank (computed after the gradient all-reduce): rank 0's value."""

SUMMED = ("tspmo/pairs", "replay/groups", "reward/errors", "cpu/step_seconds")
"""Counts and CPU seconds: the whole batch's is the sum over ranks."""


def _rule(key: str) -> str:
    """How a per-process metric combines into the whole batch's value."""
    if key in SUMMED:
        return "sum"
    if key in SAME_ON_EVERY_RANK or key.startswith(("reward/", "completion/")):
        return "first"  # reward/*, completion/*: the trainer computes them over every rank's rows
    if key.startswith("loss/") and key != "loss/clip_frac":
        return "sum"  # each process's loss uses whole-batch coefficients: they add up
    if key.startswith(("time/", "memory/")):
        return "max"  # the slowest / largest process sets the pace and the memory need
    if key.startswith("tokens/"):
        return "token_mean"  # fractions of each process's completion tokens
    return "row_mean"  # means over each process's rows


def combine_metrics(
    per_rank: list[dict[str, float | None]], rows: list[float], tokens: list[float]
) -> dict[str, float | None]:
    """Combine each process's metrics into the whole batch's (see :func:`_rule`).

    ``rows[r]`` and ``tokens[r]`` are rank r's completion rows and completion tokens: the
    weights that turn per-process means and fractions into whole-batch ones. Keys follow rank
    0's dict; a ``None`` value (metric undefined on that rank) is left out.
    """
    out: dict[str, float | None] = {}
    for key in per_rank[0]:
        pairs = [(m.get(key), r, t) for m, r, t in zip(per_rank, rows, tokens)]
        pairs = [(v, r, t) for v, r, t in pairs if v is not None]
        rule = _rule(key)
        if not pairs:
            out[key] = None
        elif rule == "first":
            out[key] = per_rank[0][key]
        elif rule == "sum":
            out[key] = sum(v for v, _, _ in pairs)
        elif rule == "max":
            out[key] = max(v for v, _, _ in pairs)
        else:
            weights = [t if rule == "token_mean" else r for _, r, t in pairs]
            total = sum(weights)
            out[key] = (
                sum(v * w for (v, _, _), w in zip(pairs, weights)) / total if total else pairs[0][0]
            )
    return out

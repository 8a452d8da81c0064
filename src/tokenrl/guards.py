"""Guards of a training run: user reward calls, non-finite updates and Ctrl-C.

* :func:`score_completions` calls the reward function on every completion; a call that raises,
  or returns something that is not a finite number, either stops the run with the example id
  and the traceback (``task.reward_errors: raise``) or scores 0 and is counted
  (``task.reward_errors: zero``, metric ``reward/errors``). Never silently.
* :func:`nonfinite_stop_message`: after ``optim.max_nonfinite_steps`` optimiser updates in a row
  were skipped for a non-finite loss or gradient, the run stops with this message.
* :class:`StopRequest`: the first Ctrl-C or SIGTERM during a training step lets the step
  finish, then the trainer saves a checkpoint and exits; outside a step (evaluation,
  checkpointing) it stops at once. A second signal during a step stops at once, losing it.

See docs/reliability.md for every fault and what happens.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tokenrl.errors import RunError

REWARD_ERROR_MODES = ("raise", "zero")


class RewardError(RunError):
    """The user's reward function failed or returned a bad value (exit status 2)."""


def reward_value(value: Any) -> float:
    """``value`` as a finite float, or a :class:`TypeError` / :class:`ValueError` saying why not.

    Accepted: Python and NumPy real numbers (``bool`` counts as 0/1) and one-element tensors.
    """
    if hasattr(value, "numel") and hasattr(value, "item") and value.numel() == 1:
        value = value.item()  # a one-element torch tensor
    if not isinstance(value, numbers.Real):
        raise TypeError(f"returned {value!r} of type {type(value).__name__}, not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"returned {number}, not a finite number")
    return number


def score_completions(
    reward_fn: Callable[[str, Any], Any],
    completions: Sequence[str],
    examples: Sequence[Any],
    *,
    on_error: str = "raise",
) -> tuple[list[float], int]:
    """``(rewards, errors)``: ``reward_fn(completion, example)`` for each pair, as finite floats.

    A call that raises an ``Exception`` or returns a non-number / non-finite value is an error:
    ``on_error="raise"`` raises :class:`RewardError` naming the function, the example id, the
    completion and the traceback; ``on_error="zero"`` scores it 0.0 and counts it in ``errors``.
    """
    if on_error not in REWARD_ERROR_MODES:
        raise ValueError(f"on_error={on_error!r}; use one of {', '.join(REWARD_ERROR_MODES)}")
    name = getattr(reward_fn, "__qualname__", repr(reward_fn))
    module = getattr(reward_fn, "__module__", None)
    name = f"{module}:{name}" if module else name
    rewards: list[float] = []
    errors = 0
    for completion, example in zip(completions, examples, strict=True):
        try:
            result = reward_fn(completion, example)
        except Exception as err:
            if on_error == "zero":
                rewards.append(0.0)
                errors += 1
                continue
            trace = "".join(traceback.format_exception(err)).rstrip()
            raise RewardError(
                f"the reward function {name} raised {err.__class__.__name__} on example "
                f"{getattr(example, 'id', example)!r} (completion {completion[:200]!r}):\n{trace}\n"
                "Fix: correct the function, or set task.reward_errors: zero to score such "
                "completions 0 (counted in the reward/errors metric)"
            ) from err
        try:
            rewards.append(reward_value(result))
        except (TypeError, ValueError) as err:
            if on_error == "zero":
                rewards.append(0.0)
                errors += 1
                continue
            raise RewardError(
                f"the reward function {name} {err} on example "
                f"{getattr(example, 'id', example)!r} (completion {completion[:200]!r}). Fix: "
                "return a finite float, or set task.reward_errors: zero to score such "
                "completions 0 (counted in the reward/errors metric)"
            ) from None
    return rewards, errors


def nonfinite_stop_message(streak: int, step: int, limit: int, last_checkpoint: Any) -> str:
    """Why a run stops after ``streak`` skipped non-finite updates in a row (at ``step``)."""
    where = (
        f"the last checkpoint is {last_checkpoint}"
        if last_checkpoint is not None
        else "no checkpoint was written yet"
    )
    return (
        f"{streak} optimiser updates in a row had a non-finite loss or gradient (up to step "
        f"{step}); each was skipped, so the adapter has not changed since, and the run stops "
        f"(optim.max_nonfinite_steps={limit}); {where}. Fix: lower optim.lr, keep optim.grad_clip "
        "set, check the reward for extreme values, then start again or resume with "
        "`tokenrl train --resume RUN_DIR`"
    )


class StopRequest:
    """Ctrl-C (SIGINT) and SIGTERM handling of the training loop, used as a context manager.

    SIGTERM is what ``timeout``, Slurm, Kubernetes and most schedulers send first, so it is
    treated like Ctrl-C. While installed (main thread only), a first signal inside :meth:`step`
    sets ``requested`` and lets the step finish; any other raises :class:`KeyboardInterrupt` at
    once. ``mid_step`` tells whether a :class:`KeyboardInterrupt` left a step half done (its
    changes to the model, optimiser and data order must not be saved); ``signal`` is the number
    of the first signal received (the command line exits with ``128 + signal``).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.in_step = False
        self.mid_step = False
        self.signal = int(signal.SIGINT)  # a KeyboardInterrupt raised by Python itself
        self._received = False
        self._previous: dict[int, Any] = {}

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signal).name

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if not self._received:
            self._received, self.signal = True, signum
        if self.in_step and not self.requested:
            self.requested = True
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            print(
                f"\n{name}: stopping after this step and saving a checkpoint "
                "(press Ctrl-C or send the signal again to stop at once, losing this step)",
                file=sys.stderr,
                flush=True,
            )
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Mark a training step: Ctrl-C waits for its end; an interrupt inside sets mid_step."""
        self.in_step = True
        try:
            yield
        except KeyboardInterrupt:
            self.mid_step = True
            raise
        finally:
            self.in_step = False

"""What every ``tokenrl`` sub-command shares: the registry the ``@command`` decorator fills, the
model options, the torch set-up and ``KEY=VALUE`` options."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from tokenrl.errors import UsageError

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {}


def command(name: str, help: str):
    """Register ``fn(args) -> int`` as a sub-command whose options ``add_args(parser)`` declares."""

    def wrap(add_args: Callable[[argparse.ArgumentParser], None]):
        def register(fn: Callable):
            COMMANDS[name] = (help, add_args, fn)
            return fn

        return register

    return wrap


def add_model_args(p: argparse.ArgumentParser, *, adapter: bool = True) -> None:
    p.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="built-in name (see `tokenrl models`), local folder or hub id (default: %(default)s)",
    )
    if adapter:
        p.add_argument(
            "--adapter", default=None, help="a saved LoRA adapter folder (peft format) to apply"
        )
    p.add_argument(
        "--dtype",
        default="fp32",
        choices=["fp32", "bf16", "auto"],
        help="weights dtype; auto: bf16 on a GPU with bf16 or a CPU with AMX or AVX-512 bf16, "
        "else fp32 (default: %(default)s)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (cuda when present, else cpu), cpu, cuda, cuda:1 ... (default: %(default)s)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )


def setup_torch(args: argparse.Namespace) -> None:
    import torch

    from tokenrl.heap import bound_heap

    try:  # resident memory kept near live memory over long runs (tokenrl.heap)
        bound_heap()
    except ValueError as err:
        raise UsageError(str(err)) from None
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def parse_key_values(
    items: list[str], flag: str = "--task-option", example: str = "seed=1"
) -> dict[str, Any]:
    """``["seed=1", "n_test=300"]`` -> ``{"seed": 1, "n_test": 300}`` (values read as YAML scalars;
    ``flag`` names the option in errors)."""
    import yaml

    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} {item!r}: write KEY=VALUE, e.g. {flag} {example}")
        options[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return options

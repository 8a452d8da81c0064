"""The ``tokenrl`` command line: one sub-command per job, each a small function."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from tokenrl import cli_inspect  # noqa: F401 (registers models, generate and eval)
from tokenrl.cli_base import (  # noqa: F401 (parse_key_values, setup_torch: used by recipes)
    COMMANDS,
    add_model_args,
    command,
    parse_key_values,
    setup_torch,
)
from tokenrl.errors import UsageError
from tokenrl.machine import apply_thread_policy
from tokenrl.mklpath import restart_with_intel_path


def _train_args(p: argparse.ArgumentParser) -> None:
    from tokenrl.algorithms.registry import ALGORITHMS
    from tokenrl.config import iter_options

    p.add_argument(
        "config",
        nargs="?",
        default=None,
        help="a YAML config (e.g. configs/quick.yaml); fields not in it keep their defaults",
    )
    p.add_argument("--model", default=None, help="shortcut for --model.name")
    p.add_argument("--task", default=None, help="shortcut for --task.name")
    p.add_argument(
        "--algo", default=None, choices=list(ALGORITHMS), help="shortcut for --train.algo"
    )
    p.add_argument("--out", default=None, help="run folder (default: runs/ALGO-TASK-TIME)")
    p.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue RUN_DIR from its last checkpoint, with its saved config",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="allow --out to name an existing run folder (its contents are replaced)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    group = p.add_argument_group(
        "config fields (--SECTION.FIELD VALUE; lists as a,b,c; none for None)"
    )
    for key, type_text, default, doc in iter_options():
        default_text = ",".join(map(str, default)) if isinstance(default, tuple) else default
        group.add_argument(f"--{key}", dest=key, default=argparse.SUPPRESS, metavar=type_text.upper().replace(" ", ""),
                           help=f"{doc} (default: {default_text})".replace("%", "%%"))  # fmt: skip


@command("train", "train a LoRA adapter with grpo, sgrpo or tspmo")(_train_args)
def cmd_train(args: argparse.Namespace) -> int:
    import time

    from tokenrl.config import ConfigError, iter_options, load_config, parse_overrides

    overrides = [(key, getattr(args, key)) for key, *_ in iter_options() if hasattr(args, key)]
    for flag, key in (("model", "model.name"), ("task", "task.name"), ("algo", "train.algo")):
        if getattr(args, flag) is not None:
            overrides.insert(0, (key, getattr(args, flag)))
    try:
        overrides += parse_overrides(args.extra)
        if args.resume:
            out = Path(args.resume)
            if not (out / "config.yaml").exists():
                raise UsageError(
                    f"--resume {out}: no config.yaml there, so it is not a tokenrl run folder"
                )
            extra = [k for k, _ in overrides if k != "train.steps"]
            if args.config or extra:
                raise UsageError(
                    "--resume uses the run's saved config.yaml; only --train.steps may change "
                    f"(got {', '.join(extra) or args.config})"
                )
            cfg = load_config(out / "config.yaml", overrides)
        else:
            cfg = load_config(args.config, overrides)
            if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not args.out:
                raise UsageError(
                    "a data-parallel run (torchrun, accelerate launch) needs --out: "
                    "every process must name the same run folder"
                )
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = Path(
                args.out
                or f"runs/{cfg.train.algo}-{cfg.task.name.replace(':', '-').replace('/', '_')}-{stamp}"
            )
            if out.exists() and not out.is_dir():
                raise UsageError(f"--out {out} is a file, not a folder; choose another --out")
            if out.exists() and any(out.iterdir()) and not args.overwrite:
                raise UsageError(
                    f"{out} already holds a run; pass --resume {out} to continue it, --overwrite to replace it, "
                    "or another --out"
                )
    except ConfigError as err:
        raise UsageError(str(err)) from None
    from tokenrl.run import train

    setup_torch(args)
    # --overwrite empties the folder only once the data and model have loaded
    summary = train(cfg, out, resume=bool(args.resume), overwrite=args.overwrite)
    before = summary.get("before", {}).get("accuracy")
    after = summary["after"]["accuracy"]
    msg = f"held-out accuracy {100 * after:.1f}%"
    if before is not None:
        msg = f"held-out accuracy {100 * before:.1f}% -> {100 * after:.1f}% ({summary['gain_points']:+.1f} points)"
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not per data-parallel process
        print(f"{cfg.train.algo} on {cfg.task.name}: {msg}; run folder {out}")
    return 0


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run folders written by tokenrl train")
    p.add_argument(
        "--out",
        default=None,
        help="write compare.png and compare.md here (default: the first run's parent)",
    )


@command("compare", "side-by-side table and plot of runs, seeds averaged")(_compare_args)
def cmd_compare(args: argparse.Namespace) -> int:
    from tokenrl.compare import compare_runs

    print(compare_runs([Path(r) for r in args.runs], Path(args.out) if args.out else None))
    return 0


def _merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run",
        help="a run folder (its config.yaml names the base model; adapter/ holds the LoRA weights)",
    )
    p.add_argument("out", help="folder for the merged model (loadable with from_pretrained)")


@command("merge", "save base model + adapter as one plain model folder")(_merge_args)
def cmd_merge(args: argparse.Namespace) -> int:
    from tokenrl.compare import merge_run

    merge_run(Path(args.run), Path(args.out))
    print(f"merged model written to {args.out}")
    return 0


def _quickstart_args(p: argparse.ArgumentParser) -> None:
    from tokenrl.recipes.quickstart.command import add_arguments  # a recipe: imported when used

    add_arguments(p)


@command(
    "quickstart", "the first run: weak base, then grpo, sgrpo and tspmo, evaluated before and after"
)(_quickstart_args)
def cmd_quickstart(args: argparse.Namespace) -> int:
    from tokenrl.recipes.quickstart.command import run

    return run(args)


def _bench_cli() -> Any:
    """``benchmarks.trl.cli`` of this source checkout, or None: the benchmarks/ folder is not installed."""
    root = (
        Path(__file__).resolve().parents[2]
    )  # src/tokenrl/cli.py -> the folder holding benchmarks/trl/
    if not (root / "benchmarks" / "trl").is_dir():
        return None
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.trl import cli  # the lab's, not the library's: imported when used

    return cli


def _bench_args(p: argparse.ArgumentParser) -> None:
    if (
        bench := _bench_cli()
    ) is None:  # an installed wheel: take any words; cmd_bench says why not
        p.add_argument(
            "words",
            nargs=argparse.REMAINDER,
            metavar="...",
            help="only in a source checkout of tokenrl (benchmarks/ is not installed)",
        )
    else:
        bench.add_bench_args(p)


@command("bench", "benchmarks against TRL: update memory, update time, whole-step speed, scaling")(
    _bench_args
)
def cmd_bench(args: argparse.Namespace) -> int:
    if (bench := _bench_cli()) is None:
        raise UsageError("`tokenrl bench` runs from a source checkout of tokenrl (the benchmarks/ folder is not "
                         "installed): clone the repository and run it there, "
                         "after pip install -e '.[bench]'")  # fmt: skip
    return bench.cmd_bench(args)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every sub-command with its help line; the options of ``only`` (None: of every command),
    so running one command does not import what the others' options need (torch, the bench)."""
    from tokenrl import __version__

    parser = argparse.ArgumentParser(
        prog="tokenrl",
        description="Token-efficient RL (S-GRPO, T-SPMO, GRPO) with LoRA for LLM reasoning.",
    )
    parser.add_argument("--version", action="version", version=f"tokenrl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_args, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            add_args(p)
    return parser


def _unknown_dotted(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split unknown ``--SECTION.FIELD [VALUE]`` tokens (and their values) out of ``argv``."""
    from tokenrl.config import iter_options

    known = {key for key, *_ in iter_options()}
    kept: list[str] = []
    extra: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        key = tok[2:].split("=", 1)[0]
        if tok.startswith("--") and "." in key and key not in known:
            take = 1 if "=" in tok or i + 1 >= len(argv) else 2
            extra += argv[i : i + take]
            i += take
        else:
            kept.append(tok)
            i += 1
    return kept, extra


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a process of its own: restart on MKL's Intel path if the user chose it
        restart_with_intel_path()
    argv = list(sys.argv[1:] if argv is None else argv)
    # before build_parser, which imports torch: the quickstart's warm-up runs alone on the cores
    apply_thread_policy(spin=argv[:1] == ["quickstart"])
    parser = build_parser(only=argv[0] if argv and argv[0] in COMMANDS else "")
    argv, extra = _unknown_dotted(argv) if argv[:1] == ["train"] else (argv, [])
    args = parser.parse_args(argv)
    args.extra = extra  # train: unknown --SECTION.FIELD keys get a "did you mean" message
    if args.command is None:
        parser.print_help()
        return 0
    from tokenrl.distributed import exit_if_joined
    from tokenrl.errors import Interrupted, RunError, describe_disk_error
    from tokenrl.models import ModelError
    from tokenrl.tasks import DataError, TaskError

    try:
        code = COMMANDS[args.command][2](args) or 0
    except (UsageError, ModelError, DataError, TaskError, RunError) as err:
        print(f"tokenrl {args.command}: error: {err}", file=sys.stderr)
        code = 2
    except Interrupted as err:  # Ctrl-C or SIGTERM in training: what was saved, how to resume
        print(f"tokenrl {args.command}: {err}", file=sys.stderr)
        code = 128 + err.signal  # 130 for SIGINT, 143 for SIGTERM
    except KeyboardInterrupt:
        print(f"tokenrl {args.command}: interrupted", file=sys.stderr)
        code = 130
    except OSError as err:  # a full disk or an unwritable folder: one message, not a traceback
        message = describe_disk_error(err)
        if message is None:
            raise
        print(f"tokenrl {args.command}: error: {message}", file=sys.stderr)
        code = 2
    exit_if_joined(code)  # a torchrun worker ends here (tokenrl.distributed.exit_if_joined)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The ``tokenrl`` command line: one sub-command per job, each a small function."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenrl.errors import UsageError
from tokenrl.machine import apply_thread_policy

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
    p.add_argument("--model", default="smollm2-135m-instruct", help="built-in name (see `tokenrl models`), local folder or hub id (default: %(default)s)")
    if adapter:
        p.add_argument("--adapter", default=None, help="a saved LoRA adapter folder (peft format) to apply")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="weights dtype (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto (cuda when present, else cpu), cpu, cuda, cuda:1 ... (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def setup_torch(args: argparse.Namespace) -> None:
    import torch

    from tokenrl.heap import bound_heap

    try:  # resident memory kept near live memory over long runs (tokenrl.heap)
        bound_heap()
    except ValueError as err:
        raise UsageError(str(err)) from None
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


# ---------------------------------------------------------------------------------------------
@command("models", "list the built-in models and their sizes")(lambda p: None)
def cmd_models(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from tokenrl import zoo
    from tokenrl.models import BUILTIN_MODELS

    table = Table(title="built-in models (any hub id or local folder also works)")
    table.add_column("name")
    table.add_column("what")
    table.add_column("available here")
    for name, what in BUILTIN_MODELS.items():
        table.add_row(name, what, zoo.status(name) if name in zoo.ZOO else "yes (built locally)")
    Console().print(table)
    return 0


def _generate_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--prompt", required=True, help="the prompt text (wrapped as a user message when the model has a chat template)")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    p.add_argument("--samples", type=int, default=1, help="how many completions to sample (default: 1 greedy)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature when --samples > 1 (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")


@command("generate", "sample completions for one prompt")(_generate_args)
def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from tokenrl.models import load_model
    from tokenrl.rollout import SamplingConfig, generate_rollouts

    if args.samples < 1 or args.max_new_tokens < 1:
        raise UsageError("--samples and --max-new-tokens must be at least 1")
    setup_torch(args)
    lm = load_model(args.model, dtype=args.dtype, device=args.device, adapter=args.adapter)
    tok = lm.tokenizer
    prompt = args.prompt
    if not args.raw and getattr(tok, "chat_template", None):
        prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, greedy=args.samples == 1)
    torch.manual_seed(args.seed)
    batch = generate_rollouts(lm.model, tok, [prompt], sampling, group_size=args.samples)
    for i, text in enumerate(batch.texts):
        flag = " [truncated]" if batch.truncated[i] else ""
        print(f"--- sample {i + 1}{flag}" if args.samples > 1 else f"---{flag}")
        print(text)
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--task", required=True, help="multiplication[:AxB], svamp, gsm8k or jsonl:PATH")
    p.add_argument("--split", default="test", choices=["train", "test"], help="(default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems")
    p.add_argument("--samples", type=int, default=1, help="completions per problem: 1 = greedy accuracy, K > 1 = pass@k with sampling")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature when --samples > 1 (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="(default: the task's own limit)")
    p.add_argument("--style", default="auto", help="prompt style: auto, chat, plain, fewshot, compact (default: %(default)s)")
    p.add_argument("--data-path", default=None, help="folder with svamp/ and gsm8k/ (default: $TOKENRL_DATA or ../shared/data)")
    p.add_argument("--batch-size", type=int, default=64, help="completions generated at once (default: %(default)s)")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a task option, repeatable: e.g. --task-option seed=1 --task-option n_test=300 "
                        "gives a quickstart seed's multiplication split (options: docs/tasks.md)")  # fmt: skip
    p.add_argument("--out", default=None, help="output folder for eval.json and completions.jsonl (default: runs/eval-TASK-TIME)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")


def parse_key_values(items: list[str], flag: str = "--task-option", example: str = "seed=1") -> dict[str, Any]:
    """``["seed=1", "n_test=300"]`` -> ``{"seed": 1, "n_test": 300}`` (values read as YAML scalars; ``flag`` names the option in errors)."""
    import yaml

    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} {item!r}: write KEY=VALUE, e.g. {flag} {example}")
        options[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return options


@command("eval", "held-out accuracy (greedy, with a 95%% CI) or pass@k of a model on a task")(_eval_args)
def cmd_eval(args: argparse.Namespace) -> int:
    import json
    import time

    import torch
    from rich.console import Console
    from rich.progress import Progress

    from tokenrl.evaluation import default_max_new_tokens, evaluate
    from tokenrl.models import load_model
    from tokenrl.tasks import get_task

    if args.samples < 1 or (args.limit is not None and args.limit < 1):
        raise UsageError("--samples and --limit must be at least 1")
    # Read and check the data before anything is loaded or written.
    options = parse_key_values(args.task_option)
    task = get_task(args.task, data_path=args.data_path, style=args.style, **options)
    examples = task.examples(args.split)[: args.limit]
    if not examples:
        raise UsageError(f"{args.task} has no {args.split} problems")
    out = Path(args.out or f"runs/eval-{args.task.replace(':', '-').replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}")
    setup_torch(args)
    lm = load_model(args.model, dtype=args.dtype, device=args.device, adapter=args.adapter)
    torch.manual_seed(args.seed)
    max_new = args.max_new_tokens or default_max_new_tokens(task, lm.tokenizer)
    with Progress(transient=True) as bar:
        job = bar.add_task(f"eval {args.task}", total=len(examples))
        result = evaluate(
            lm.model, lm.tokenizer, task, examples,
            max_new_tokens=max_new, samples=args.samples, temperature=args.temperature,
            batch_size=args.batch_size, on_progress=lambda n: bar.advance(job, n),
        )  # fmt: skip
    summary = {
        "model": args.model, "adapter": args.adapter, "split": args.split, "style": task.resolve_style(lm.tokenizer),
        "max_new_tokens": max_new, "dtype": args.dtype, "task_options": options, **result.summary(),
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "completions.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in result.records))
    lo, hi = result.ci95
    con = Console()
    con.print(f"[bold]{args.task}[/] {args.split} ({result.n} problems, {args.model}{' + ' + args.adapter if args.adapter else ''})")
    con.print(f"accuracy {100 * result.accuracy:.1f}%  (95% CI {100 * lo:.1f}-{100 * hi:.1f})  {result.correct}/{result.n}")
    for k, v in result.pass_at.items():
        con.print(f"pass@{k} {100 * v:.1f}%")
    for t, d in result.by_type.items():
        con.print(f"  {t}: {100 * d['accuracy']:.1f}% of {d['n']}")
    con.print(f"mean completion {result.mean_completion_tokens:.1f} tokens, truncated {100 * result.truncation_rate:.1f}%, "
              f"{result.tokens_per_s:.0f} tokens/s")  # fmt: skip
    con.print(f"wrote {out}/eval.json and completions.jsonl")
    return 0


def _train_args(p: argparse.ArgumentParser) -> None:
    from tokenrl.algorithms.registry import ALGORITHMS
    from tokenrl.config import iter_options

    p.add_argument("config", nargs="?", default=None, help="a YAML config (e.g. configs/quick.yaml); fields not in it keep their defaults")
    p.add_argument("--model", default=None, help="shortcut for --model.name")
    p.add_argument("--task", default=None, help="shortcut for --task.name")
    p.add_argument("--algo", default=None, choices=list(ALGORITHMS), help="shortcut for --train.algo")
    p.add_argument("--out", default=None, help="run folder (default: runs/ALGO-TASK-TIME)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint, with its saved config")
    p.add_argument("--overwrite", action="store_true", help="allow --out to name an existing run folder (its contents are replaced)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    group = p.add_argument_group("config fields (--SECTION.FIELD VALUE; lists as a,b,c; none for None)")
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
                raise UsageError(f"--resume {out}: no config.yaml there, so it is not a tokenrl run folder")
            extra = [k for k, _ in overrides if k != "train.steps"]
            if args.config or extra:
                raise UsageError(f"--resume uses the run's saved config.yaml; only --train.steps may change (got {', '.join(extra) or args.config})")
            cfg = load_config(out / "config.yaml", overrides)
        else:
            cfg = load_config(args.config, overrides)
            if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not args.out:
                raise UsageError("a data-parallel run (torchrun, accelerate launch) needs --out: every process must name the same run folder")
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = Path(args.out or f"runs/{cfg.train.algo}-{cfg.task.name.replace(':', '-').replace('/', '_')}-{stamp}")
            if out.exists() and not out.is_dir():
                raise UsageError(f"--out {out} is a file, not a folder; choose another --out")
            if out.exists() and any(out.iterdir()) and not args.overwrite:
                raise UsageError(f"{out} already holds a run; pass --resume {out} to continue it, --overwrite to replace it, or another --out")
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
    p.add_argument("--out", default=None, help="write compare.png and compare.md here (default: the first run's parent)")


@command("compare", "side-by-side table and plot of several runs")(_compare_args)
def cmd_compare(args: argparse.Namespace) -> int:
    from tokenrl.compare import compare_runs

    print(compare_runs([Path(r) for r in args.runs], Path(args.out) if args.out else None))
    return 0


def _merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder (its config.yaml names the base model; adapter/ holds the LoRA weights)")
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


@command("quickstart", "the first run: weak base, then grpo, sgrpo and tspmo, evaluated before and after")(_quickstart_args)
def cmd_quickstart(args: argparse.Namespace) -> int:
    from tokenrl.recipes.quickstart.command import run

    return run(args)


def _bench_cli() -> Any:
    """``benchmarks.trl.cli`` of this source checkout, or None: the benchmarks/ folder is not installed."""
    root = Path(__file__).resolve().parents[2]  # src/tokenrl/cli.py -> the folder holding benchmarks/trl/
    if not (root / "benchmarks" / "trl").is_dir():
        return None
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.trl import cli  # the lab's, not the library's: imported when used

    return cli


def _bench_args(p: argparse.ArgumentParser) -> None:
    if (bench := _bench_cli()) is None:  # an installed wheel: take any words; cmd_bench says why not
        p.add_argument("words", nargs=argparse.REMAINDER, metavar="...", help="only in a source checkout of tokenrl (benchmarks/ is not installed)")
    else:
        bench.add_bench_args(p)


@command("bench", "benchmarks against TRL: update memory, update time, whole-step speed, scaling")(_bench_args)
def cmd_bench(args: argparse.Namespace) -> int:
    if (bench := _bench_cli()) is None:
        raise UsageError("`tokenrl bench` runs from a source checkout of tokenrl (the benchmarks/ folder is not installed): "
                         "clone the repository and run it there, after pip install -e '.[bench]'")  # fmt: skip
    return bench.cmd_bench(args)


def build_parser() -> argparse.ArgumentParser:
    from tokenrl import __version__

    parser = argparse.ArgumentParser(
        prog="tokenrl",
        description="Token-efficient RL (S-GRPO, T-SPMO, GRPO) with LoRA for LLM reasoning.",
    )
    parser.add_argument("--version", action="version", version=f"tokenrl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
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
    argv = list(sys.argv[1:] if argv is None else argv)
    # before build_parser, which imports torch: the quickstart's warm-up runs alone on the cores
    apply_thread_policy(spin=argv[:1] == ["quickstart"])
    parser = build_parser()
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

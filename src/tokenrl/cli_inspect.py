"""``tokenrl models``, ``tokenrl generate`` and ``tokenrl eval``: the commands that look at a
model without training it."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenrl.cli_base import add_model_args, command, parse_key_values, setup_torch
from tokenrl.errors import UsageError
from tokenrl.machine import machine_info


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
    p.add_argument(
        "--prompt",
        required=True,
        help="the prompt text (wrapped as a user message when the model has a chat template)",
    )
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    p.add_argument(
        "--samples", type=int, default=1, help="how many completions to sample (default: 1 greedy)"
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="sampling temperature when --samples > 1 (default: %(default)s)",
    )
    p.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling (default: %(default)s)"
    )
    p.add_argument("--max-new-tokens", type=int, default=128, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")


@command("generate", "sample completions for one prompt")(_generate_args)
def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from tokenrl.engines import make_engine
    from tokenrl.models import load_model
    from tokenrl.rollout import SamplingConfig

    if args.samples < 1 or args.max_new_tokens < 1:
        raise UsageError("--samples and --max-new-tokens must be at least 1")
    setup_torch(args)
    lm = load_model(args.model, dtype=args.dtype, device=args.device, adapter=args.adapter)
    tok = lm.tokenizer
    prompt = args.prompt
    if not args.raw and getattr(tok, "chat_template", None):
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        greedy=args.samples == 1,
    )
    torch.manual_seed(args.seed)
    ids = [tok(prompt, add_special_tokens=False)["input_ids"]]
    engine = make_engine("shared", lm.model, tok)  # the trainer's and evaluation's CPU decode
    batch = engine.generate(ids, sampling, group_size=args.samples)
    for i, text in enumerate(batch.texts):
        flag = " [truncated]" if batch.truncated[i] else ""
        print(f"--- sample {i + 1}{flag}" if args.samples > 1 else f"---{flag}")
        print(text)
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--task", required=True, help="multiplication[:AxB], svamp, gsm8k or jsonl:PATH")
    p.add_argument(
        "--split", default="test", choices=["train", "test"], help="(default: %(default)s)"
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems")
    p.add_argument(
        "--samples",
        type=int,
        default=1,
        help="completions per problem: 1 = greedy accuracy, K > 1 = pass@k with sampling",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="sampling temperature when --samples > 1 (default: %(default)s)",
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=None, help="(default: the task's own limit)"
    )
    p.add_argument(
        "--style",
        default="auto",
        help="prompt style: auto, chat, plain, fewshot, compact (default: %(default)s)",
    )
    p.add_argument(
        "--data-path",
        default=None,
        help="folder with svamp/ and gsm8k/ (default: $TOKENRL_DATA or ../shared/data)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="completions generated at once (default: %(default)s)",
    )
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a task option, repeatable: e.g. --task-option seed=1 --task-option n_test=300 "
                        "gives a quickstart seed's multiplication split (options: docs/tasks.md)")  # fmt: skip
    p.add_argument(
        "--out",
        default=None,
        help="output folder for eval.json and completions.jsonl (default: runs/eval-TASK-TIME)",
    )
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")


@command("eval", "held-out accuracy (greedy, with a 95%% CI) or pass@k of a model on a task")(
    _eval_args
)
def cmd_eval(args: argparse.Namespace) -> int:
    import json
    import time

    import torch
    from rich.console import Console
    from rich.progress import Progress

    from tokenrl.evaluation import default_max_new_tokens, evaluate
    from tokenrl.models import dtype_name, load_model
    from tokenrl.tasks import get_task

    if args.samples < 1 or (args.limit is not None and args.limit < 1):
        raise UsageError("--samples and --limit must be at least 1")
    # Read and check the data before anything is loaded or written.
    options = parse_key_values(args.task_option)
    task = get_task(args.task, data_path=args.data_path, style=args.style, **options)
    examples = task.examples(args.split)[: args.limit]
    if not examples:
        raise UsageError(f"{args.task} has no {args.split} problems")
    out = Path(
        args.out
        or f"runs/eval-{args.task.replace(':', '-').replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
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
        "max_new_tokens": max_new, "dtype": dtype_name(lm.model.dtype), "task_options": options, **result.summary(),
        "machine": machine_info(lm.device.type),
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "completions.jsonl").write_text(
        "".join(json.dumps(rec) + "\n" for rec in result.records)
    )
    lo, hi = result.ci95
    con = Console()
    con.print(
        f"[bold]{args.task}[/] {args.split} "
        f"({result.n} problems, {args.model}{' + ' + args.adapter if args.adapter else ''})"
    )
    con.print(
        f"accuracy {100 * result.accuracy:.1f}%  (95% CI {100 * lo:.1f}-{100 * hi:.1f})  {result.correct}/{result.n}"
    )
    for k, v in result.pass_at.items():
        con.print(f"pass@{k} {100 * v:.1f}%")
    for t, d in result.by_type.items():
        con.print(f"  {t}: {100 * d['accuracy']:.1f}% of {d['n']}")
    con.print(f"mean completion {result.mean_completion_tokens:.1f} tokens, "
              f"truncated {100 * result.truncation_rate:.1f}%, {result.tokens_per_s:.0f} tokens/s")  # fmt: skip
    con.print(f"wrote {out}/eval.json and completions.jsonl")
    return 0

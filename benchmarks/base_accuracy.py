"""Base accuracy of the built-in Qwen2.5-Coder models (issue #22, section 2), with ``tokenrl eval``.

Each row of :data:`PLAN` is one ``tokenrl eval`` call in its own process (greedy unless
``samples`` > 1, which gives pass@k at temperature 0.8); its ``eval.json`` and
``completions.jsonl`` go to ``OUT/<model>/<label>/``, with ``machine.json`` (CPU model and
vector features, threads, versions) beside them. At the end a markdown table of every finished
row is written to ``OUT/table.md``. Rows already finished are skipped, so an interrupted run
continues where it stopped.

    python benchmarks/base_accuracy.py --models qwen2.5-coder-0.5b-instruct --out docs/results/base-accuracy
    python benchmarks/base_accuracy.py --only svamp-chat,mult-3x1 --samples-plan   # the pass@8 rows

Tokens/s comes from the same eval; it is only comparable between rows run alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MODELS = ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct")


@dataclass(frozen=True)
class Row:
    label: str
    task: str
    style: str
    limit: int
    max_new_tokens: int | None = None  # None: the task's default
    samples: int = 1


PLAN = (
    Row("svamp-chat", "svamp", "chat", 300, 256),
    Row("svamp-fewshot", "svamp", "fewshot", 300, 160),
    Row("gsm8k-chat", "gsm8k", "chat", 300, 320),
    Row("mult-2x1", "multiplication:2x1", "chat", 100),
    Row("mult-3x1", "multiplication:3x1", "chat", 100),
    Row("mult-2x2", "multiplication:2x2", "chat", 100),
    Row("mult-3x3", "multiplication:3x3", "chat", 100),
)
# pass@8 of the RL candidates: a group-relative method learns from problems it solves sometimes
SAMPLED = (
    Row("svamp-chat-pass8", "svamp", "chat", 100, 256, samples=8),
    Row("mult-3x1-pass8", "multiplication:3x1", "chat", 50, samples=8),
    Row("mult-2x2-pass8", "multiplication:2x2", "chat", 50, samples=8),
)


def run_row(model: str, row: Row, out: Path, args: argparse.Namespace) -> None:
    folder = out / model / row.label
    if (folder / "eval.json").exists():
        print(f"{model} {row.label}: done already", flush=True)
        return
    cmd = [sys.executable, "-m", "tokenrl", "eval", "--model", model, "--dtype", args.dtype,
           "--task", row.task, "--style", row.style, "--limit", str(row.limit),
           "--samples", str(row.samples), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads), "--out", str(folder)]  # fmt: skip
    if row.max_new_tokens:
        cmd += ["--max-new-tokens", str(row.max_new_tokens)]
    print(" ".join(cmd[2:]), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True)
    from tokenrl.machine import machine_info, versions

    meta = {"command": "tokenrl " + " ".join(cmd[3:]), "wall_seconds": round(time.time() - start, 1),
            "machine": machine_info(), "versions": versions(), "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    (folder / "machine.json").write_text(json.dumps(meta, indent=1) + "\n")


def table(out: Path) -> str:
    lines = [
        "| model | task | prompt | n | max new | accuracy (95% CI) | pass@8 | mean tokens | truncated | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        for row in (*PLAN, *SAMPLED):
            path = out / model / row.label / "eval.json"
            if not path.exists():
                continue
            e = json.loads(path.read_text())
            lo, hi = e["ci95"]
            pass8 = e.get("pass_at", {}).get("8")
            p8 = f"{100 * pass8:.0f}%" if pass8 is not None else ""
            acc = "pass@1 " if row.samples > 1 else ""
            lines.append(
                f"| {model.removeprefix('qwen2.5-coder-')} | {row.task} | {e['style']} | {e['n']} | "
                f"{e['max_new_tokens']} | {acc}{100 * e['accuracy']:.1f}% ({100 * lo:.1f}-{100 * hi:.1f}) | "
                f"{p8} | {e['mean_completion_tokens']:.0f} | {100 * e['truncation_rate']:.0f}% | "
                f"{e['tokens_per_s']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument(
        "--only", default=None, help="comma-separated row labels (default: every greedy row)"
    )
    p.add_argument("--samples-plan", action="store_true", help="run the pass@8 rows instead")
    p.add_argument("--out", default="docs/results/base-accuracy")
    p.add_argument(
        "--dtype", default="bf16", help="bf16: the cached weights' dtype (fast with AMX)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    out = Path(args.out)
    rows = SAMPLED if args.samples_plan else PLAN
    if args.only:
        wanted = set(args.only.split(","))
        rows = tuple(r for r in (*PLAN, *SAMPLED) if r.label in wanted)
    for model in args.models.split(","):
        for row in rows:
            run_row(model, row, out, args)
    (out / "table.md").write_text(table(out))
    print(table(out))


if __name__ == "__main__":
    main()

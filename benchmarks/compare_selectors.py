"""Token selectors compared on the same task, seeds and budget (issue #25's harness).

Every (selector, seed) is one ``tokenrl train`` of the same base config with
``--train.algo grpo --grpo.selector NAME --grpo.selector_options OPTIONS --train.seed S``, in its
own process, into ``OUT/<label>-s<S>/`` (a finished run is not run again, so an interrupted
comparison continues). Then ``OUT/selectors.md`` gets one row per run (held-out accuracy with
its 95% CI, the change, tokens in the loss, peak memory, mean update and step seconds) and one
row per selector (the mean over seeds), and ``OUT/compare.png`` the curves (``tokenrl compare``).

    python benchmarks/compare_selectors.py CONFIG.yaml --out runs/selectors --seeds 0,1 \\
        --selectors 'all;sgrpo={alpha: 2, p: 0.3, k: 64};entropy={q: 0.2};nat-urs={p: 0.3};nat-rpc'

CONFIG is any ``tokenrl train`` config (e.g. a quickstart's ``OUT/configs/grpo.yaml``, or
``configs/qwen0.5b/multiplication_grpo.yaml``); extra ``--set KEY=VALUE`` pairs apply to every
run; ``--include LABEL=DIR,DIR`` adds finished runs of the same settings to the table (e.g. the
methods' own runs); ``--jobs N`` trains N runs at once (each with ``--threads T`` torch threads, when given). The
machine (CPU model and features) is written to ``OUT/machine.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEFAULT = "all;sgrpo={alpha: 2, p: 0.3, k: 64};entropy={q: 0.2};nat-urs={p: 0.3};nat-rpc"


def parse_selectors(text: str) -> list[tuple[str, str, str]]:
    """``'a;b={x: 1}'`` -> [(label, name, options YAML)]; the label is the name, or name-2 ..."""
    out, seen = [], {}
    for item in filter(None, (s.strip() for s in text.split(";"))):
        name, _, options = item.partition("=")
        name = name.strip()
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}-{seen[name]}"
        out.append((label, name, options.strip() or "{}"))
    return out


def run_one(
    config: str, name: str, options: str, seed: int, out: Path, extra: list[str], log: bool = False
) -> None:
    """One ``tokenrl train`` into ``out``; with ``log`` its output goes to ``out``.log."""
    if (out / "eval.json").exists() and "after" in json.loads((out / "eval.json").read_text()):
        print(f"{out.name}: done already", flush=True)
        return
    if out.exists():  # a run cut short: it resumes with its own saved config
        threads = extra[extra.index("--threads") :][:2] if "--threads" in extra else []
        cmd = [sys.executable, "-m", "tokenrl", "train", "--resume", str(out), *threads]
    else:
        cmd = [sys.executable, "-m", "tokenrl", "train", config, "--train.algo", "grpo",
               "--grpo.selector", name, "--grpo.selector_options", options,
               "--train.seed", str(seed), "--log.progress", "false", *extra, "--out", str(out)]  # fmt: skip
    print(" ".join(cmd[2:]), flush=True)
    if not log:
        subprocess.run(cmd, check=True)
        return
    with open(out.with_name(out.name + ".log"), "a") as stream:
        subprocess.run(cmd, check=True, stdout=stream, stderr=subprocess.STDOUT)


def _mean_of(records: list[dict], key: str) -> float:
    values = [r[key] for r in records if key in r]
    return statistics.fmean(values) if values else float("nan")


def summarise(runs: dict[str, list[Path]]) -> str:
    from tokenrl.compare import compare_rows
    from tokenrl.runlog import read_jsonl

    lines = ["| run | acc before % | acc after % (95% CI) | change | tokens in loss % | "
             "peak MB | update s | step s | step CPU s |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    means = ["", "| selector (mean of seeds) | change | tokens in loss % | update s | step s | "
             "step CPU s |", "|---|---|---|---|---|---|"]  # fmt: skip
    for label, folders in runs.items():
        rows = compare_rows(folders)
        per = []
        for folder, r in zip(folders, rows):
            steps = [x for x in read_jsonl(folder / "metrics.jsonl") if "reward/mean" in x]
            upd, step = _mean_of(steps, "time/update"), _mean_of(steps, "time/step")
            cpu = _mean_of(steps, "cpu/step_seconds")
            lo, hi = r["ci95"]
            base = "-" if r["base_accuracy"] is None else f"{100 * r['base_accuracy']:.1f}"
            gain = r["gain_points"] if r["gain_points"] is not None else float("nan")
            lines.append(
                f"| {folder.name} | {base} | {100 * r['accuracy']:.1f} ({100 * lo:.1f}-{100 * hi:.1f})"
                f" | {gain:+.1f} | {100 * (r['tokens_update_frac'] or 0):.1f} | {r['peak_rss_mb'] or 0:.0f}"
                f" | {upd:.2f} | {step:.2f} | {cpu:.2f} |"
            )
            per.append((gain, 100 * (r["tokens_update_frac"] or 0), upd, step, cpu))
        m = [statistics.fmean(col) for col in zip(*per)]
        means.append(
            f"| {label} | {m[0]:+.1f} | {m[1]:.1f} | {m[2]:.2f} | {m[3]:.2f} | {m[4]:.2f} |"
        )
    return "\n".join(lines + means) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", help="a tokenrl train config")
    p.add_argument(
        "--selectors", default=DEFAULT, help=f"';'-separated NAME[=OPTIONS] (default: {DEFAULT})"
    )
    p.add_argument("--seeds", default="0,1")
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="LABEL=DIR[,DIR...]",
        help="finished runs of the same config to put in the table under LABEL (not run again)",
    )
    p.add_argument("--out", required=True)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every run",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once (default 1); with more, each run's output goes to OUT/RUN.log",
    )
    p.add_argument(
        "--threads", type=int, help="torch threads of each run (tokenrl train --threads)"
    )
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: use 1 or more runs at once")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = [tok for kv in args.set for tok in (f"--{kv.partition('=')[0]}", kv.partition("=")[2])]
    if args.threads is not None:
        extra += ["--threads", str(args.threads)]
    runs: dict[str, list[Path]] = {}
    todo = []
    for label, name, options in parse_selectors(args.selectors):
        for seed in (int(s) for s in args.seeds.split(",")):
            folder = out / f"{label}-s{seed}"
            todo.append((args.config, name, options, seed, folder, extra, args.jobs > 1))
            runs.setdefault(label, []).append(folder)
    for item in args.include:
        label, _, dirs = item.partition("=")
        folders = [Path(d) for d in dirs.split(",") if d]
        missing = [str(f) for f in folders if not (f / "eval.json").exists()]
        if not label or not folders or missing:
            p.error(
                f"--include {item!r}: give LABEL=DIR[,DIR...] of finished runs (no eval.json: {missing})"
            )
        runs[label] = folders
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for done in [pool.submit(run_one, *job) for job in todo]:
            done.result()
    from tokenrl.compare import compare_runs
    from tokenrl.machine import machine_info, versions

    compare_runs([f for folders in runs.values() for f in folders], out)
    (out / "selectors.md").write_text(summarise(runs))
    (out / "machine.json").write_text(
        json.dumps({"machine": machine_info(), "versions": versions()}, indent=1) + "\n"
    )
    print((out / "selectors.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

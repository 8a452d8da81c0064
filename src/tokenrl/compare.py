"""``tokenrl compare`` (runs side by side) and ``tokenrl merge`` (adapter folded into the model)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from tokenrl.errors import RunError
from tokenrl.report import plot_runs
from tokenrl.runlog import read_jsonl


def load_run(run: Path) -> dict[str, Any]:
    path = run / "eval.json"
    if not path.exists() or "after" not in json.loads(path.read_text()):
        raise RunError(
            f"{run} has no finished eval.json: is it a completed tokenrl train run folder?"
        )
    return json.loads(path.read_text())


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def compare_rows(runs: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        s = load_run(run)
        before, after = s.get("before"), s["after"]
        rows.append(
            {
                "run": run.name,
                "algo": s["algo"],
                "seed": s.get("seed"),
                "base_accuracy": before["accuracy"] if before else None,
                "accuracy": after["accuracy"],
                "ci95": after["ci95"],
                "gain_points": s.get("gain_points"),
                "n": after["n"],
                "tokens_update_frac": s.get("tokens_update_frac"),
                "peak_rss_mb": s.get("peak_rss_mb"),
                "train_seconds": s.get("train_seconds"),
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | algo | base acc % | acc after % (95% CI) | change (points) "
        "| tokens in loss % | peak memory MB | train time s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["ci95"]
        gain = "-" if r["gain_points"] is None else f"{r['gain_points']:+.1f}"
        lines.append(
            f"| {r['run']} | {r['algo']} | {_pct(r['base_accuracy'])} "
            f"| {_pct(r['accuracy'])} ({_pct(lo)}-{_pct(hi)}) "
            f"| {gain} | {_pct(r['tokens_update_frac'])} | {r['peak_rss_mb'] or 0:.0f} "
            f"| {r['train_seconds'] or 0:.0f} |"
        )
    return "\n".join(lines)


def by_type_table(runs: list[Path]) -> str:
    """Accuracy per problem type (SVAMP's ``Type``) before -> after, one row per run; "" when
    the runs' evaluations carry no types."""
    evals = {run.name: load_run(run) for run in runs}
    types = sorted({t for s in evals.values() for t in s["after"].get("by_type") or {}})
    if not types:
        return ""
    lines = [
        "| run | " + " | ".join(types) + " |",
        "|---|" + "---|" * len(types),
    ]
    for name, s in evals.items():
        before = (s.get("before") or {}).get("by_type") or {}
        cells = []
        for t in types:
            after = s["after"]["by_type"].get(t)
            was = before.get(t)
            cells.append(
                "-" if after is None
                else f"{_pct(was and was['accuracy'])} -> {_pct(after['accuracy'])} (n {after['n']})"
            )  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_groups(runs: list[Path]) -> list[list[Path]]:
    """``runs`` grouped by their ``config.yaml`` with ``train.seed`` left out (the same experiment
    at other seeds), in the order first seen; a run without a config is a group of its own."""
    groups: dict[str, list[Path]] = {}
    for run in runs:
        path = run / "config.yaml"
        if not path.exists():
            groups[f"no config: {run}"] = [run]
            continue
        cfg = yaml.safe_load(path.read_text()) or {}
        (cfg.get("train") or {}).pop("seed", None)
        groups.setdefault(json.dumps(cfg, sort_keys=True, default=str), []).append(run)
    return list(groups.values())


def _group_name(runs: list[Path], algo: str) -> str:
    """The runs' common name without a trailing seed marker ("-s", "_seed"), else ``algo``."""
    prefix = os.path.commonprefix([r.name for r in runs])
    return re.sub(r"([-_]+(seed|s))?[-_]*$", "", prefix) or algo


def seed_mean_table(runs: list[Path], groups: list[list[Path]] | None = None) -> str:
    """One row per group of :func:`seed_groups` (``groups``, when the caller has them) with two
    runs or more: the mean accuracy after and change over its seeds, each seed's in brackets;
    "" when no experiment has two seeds."""
    groups = [g for g in (groups or seed_groups(runs)) if len(g) > 1]
    if not groups:
        return ""
    lines = [
        "| runs | algo | seeds | base acc % | acc after %: mean (each seed) "
        "| change (points): mean (each seed) | tokens in loss % (mean) | peak memory MB (most) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for group in groups:
        rows = compare_rows(group)
        seeds = ["?" if r["seed"] is None else r["seed"] for r in rows]
        acc = [100 * r["accuracy"] for r in rows]
        gains = [r["gain_points"] for r in rows]
        base = sorted({_pct(r["base_accuracy"]) for r in rows})
        fracs = [r["tokens_update_frac"] for r in rows if r["tokens_update_frac"] is not None]
        gain_cell = (
            "-" if None in gains
            else f"{sum(gains) / len(gains):+.1f} ({', '.join(f'{g:+.1f}' for g in gains)})"
        )  # fmt: skip
        lines.append(
            f"| {_group_name(group, rows[0]['algo'])} | {rows[0]['algo']} "
            f"| {', '.join(str(s) for s in seeds)} | {' / '.join(base)} "
            f"| {sum(acc) / len(acc):.1f} ({', '.join(f'{a:.1f}' for a in acc)}) | {gain_cell} "
            f"| {_pct(sum(fracs) / len(fracs) if fracs else None)} "
            f"| {max(r['peak_rss_mb'] or 0 for r in rows):.0f} |"
        )
    return "\n".join(lines)


def compare_runs(runs: list[Path], out: Path | None = None) -> str:
    """Write compare.md and compare.png for ``runs``; return the markdown table (with the means
    over seeds and the accuracy per problem type below it where they apply)."""
    rows = compare_rows(runs)
    out = out or runs[0].parent
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    groups = seed_groups(runs)
    means = seed_mean_table(runs, groups)
    if means:
        table += "\n\nThe same experiment at several seeds (configs equal but for train.seed):\n\n"
        table += means
    per_type = by_type_table(runs)
    if per_type:
        table += "\n\nAccuracy % by problem type, before -> after:\n\n" + per_type
    (out / "compare.md").write_text(table + "\n")
    plot_runs(
        {r.name: read_jsonl(r / "metrics.jsonl") for r in runs},
        out / "compare.png",
        "tokenrl compare",
        groups=[[r.name for r in group] for group in groups],
    )
    return table


def merge_run(run: Path, out: Path) -> None:
    """Load the run's base model, apply its final adapter, merge the LoRA update and save."""
    from tokenrl.config import load_config
    from tokenrl.models import load_model

    if not (run / "adapter" / "adapter_config.json").exists():
        raise RunError(f"{run}/adapter is missing: merge needs a finished run")
    cfg = load_config(run / "config.yaml")
    lm = load_model(cfg.model.name, dtype=cfg.model.dtype, device="cpu", adapter=run / "adapter")
    merged = lm.model.merge_and_unload()
    merged.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)

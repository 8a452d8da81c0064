"""``tokenrl compare`` (runs side by side) and ``tokenrl merge`` (adapter folded into the model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def compare_runs(runs: list[Path], out: Path | None = None) -> str:
    """Write compare.md and compare.png for ``runs``; return the markdown table (with the
    accuracy per problem type below it when the evaluations have types)."""
    rows = compare_rows(runs)
    out = out or runs[0].parent
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    per_type = by_type_table(runs)
    if per_type:
        table += "\n\nAccuracy % by problem type, before -> after:\n\n" + per_type
    (out / "compare.md").write_text(table + "\n")
    plot_runs(
        {r.name: read_jsonl(r / "metrics.jsonl") for r in runs},
        out / "compare.png",
        "tokenrl compare",
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

"""Plots of runs: reward and held-out accuracy against steps (report.png, tokenrl compare)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_runs(
    runs: dict[str, list[dict[str, Any]]],
    path: Path,
    title: str = "",
    groups: list[list[str]] | None = None,
) -> None:
    """One figure, two panels (training reward; held-out greedy accuracy), one line per run.

    ``groups`` (lists of run labels, e.g. one experiment's seeds): the runs of a group share a
    colour and differ in line style; by default every run has its own colour."""
    styles = ("-", "--", ":", "-.")
    look = {
        label: {"color": f"C{g % 10}", "linestyle": styles[k % len(styles)]}
        for g, labels in enumerate(groups or [[label] for label in runs])
        for k, label in enumerate(labels)
    }
    fig, (ax_r, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    for label, records in runs.items():
        x, y = _series(records, "reward/mean")
        if x:
            ax_r.plot(x, y, label=label, alpha=0.85, **look.get(label, {}))
        x, y = _series(records, "eval/accuracy")
        if x:
            ax_a.plot(x, [100 * v for v in y], marker="o", label=label, **look.get(label, {}))
    ax_r.set(xlabel="step", ylabel="mean reward of the step's rollouts", title="training reward")
    ax_a.set(xlabel="step", ylabel="held-out accuracy (%, greedy)", title="held-out accuracy")
    for ax in (ax_r, ax_a):
        ax.grid(alpha=0.3)
        if runs:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_run(records: list[dict[str, Any]], path: Path, title: str = "") -> None:
    plot_runs({"run": records}, path, title)

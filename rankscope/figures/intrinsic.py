"""Figure of an intrinsic-dimension study: metric vs d on a log axis, one curve per mode (DID, SAID)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .style import pyplot, save_figure_replacing

if TYPE_CHECKING:
    import pandas as pd

COLOURS = {"did": "#1f77b4", "said": "#d62728"}
METRIC_LABELS = {"solved": "share of constraints solved (0–1)", "test_accuracy": "test accuracy (0–1)"}
"""Axis labels of the tasks' metrics (rankscope.subspace.tasks); any other metric is shown by its name."""


def plot_intrinsic_dim(runs: pd.DataFrame, result: dict[str, Any], path: Path) -> str:
    """Seed-averaged metric vs d (log x) per mode, every seed as a dot, the target and baseline as lines,
    d90 marked; written through a temporary file.  Returns the file name."""
    plt, _ = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for mode in result["modes"]:
        rows = runs[runs["mode"] == mode]
        if rows.empty:
            continue
        colour = COLOURS.get(mode, "black")
        ax.scatter(rows["d"], rows["metric"], s=12, alpha=0.35, color=colour)
        mean = rows.groupby("d")["metric"].mean()
        d90 = result["modes"][mode]["d90"]
        label = f"{mode.upper()}  d90 = {d90:,}" if d90 is not None else f"{mode.upper()}  d90 not reached"
        ax.plot(mean.index, mean.values, "-o", ms=4, color=colour, label=label)
        if d90 is not None:
            ax.axvline(d90, color=colour, ls=":", lw=1)
    ax.axhline(result["target"], color="black", ls="--", lw=1,
               label=f"target {result['target']:.3f} ({result['convention']})")
    ax.axhline(result["baseline"]["mean"], color="grey", ls="-", lw=1, alpha=0.6,
               label=f"baseline {result['baseline']['mean']:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("subspace dimension d")
    ax.set_ylabel(METRIC_LABELS.get(result["metric"], str(result["metric"]).replace("_", " ")))
    ax.set_title(f"{result['task']}: intrinsic dimension ({result['projection']}, D = {result['D']:,})", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure_replacing(fig, path)

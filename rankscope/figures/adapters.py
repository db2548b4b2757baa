"""The figure of a written adapter (``rankscope extract``/``resize``): ``error.png``, its error against the optimum.

Per module kind, against depth: the relative error of the adapter as stored, ``‖ΔW − s·B·A‖_F / ‖ΔW‖_F``
(``rel_error``), beside the Eckart–Young optimum of the same rank, ``√(Σ_{i>r} σ_i² / Σ σ_i²)``
(``optimal_rel_error``), each point labelled with its rank; modules outside the numbered blocks (an adapted
``lm_head``) get a panel of their own.  The two curves coincide when the adapter is the best rank-``r``
approximation (``ratio`` 1, in each panel's title).  Drawn from the result's table (``extract.csv`` /
``resize.csv``) and info only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .style import note_panel, panel_grid, pyplot, save_figure

if TYPE_CHECKING:
    import pandas as pd


class AdapterResultLike(Protocol):
    """What the figure reads: the table (``module``, ``layer``, ``kind``, ``rel_error``; ``optimal_rel_error`` and
    ``ratio`` when the optimum was computed; ``rank`` and ``role`` (extract) or ``r_after`` (resize)) and info."""

    table: pd.DataFrame
    info: dict[str, Any]


def _adapted(table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows the adapter holds a LoRA for (extract: ``role == lora``; resize: every module) and the rank column."""
    if "role" in table:
        return table[table["role"] == "lora"], "rank"
    return table, "r_after" if "r_after" in table else "rank"


def _rank_text(ranks: Any) -> str:
    values = sorted({int(r) for r in ranks})
    return f"r = {values[0]}" if len(values) == 1 else f"r = {values[0]}–{values[-1]}"


def render_error_figure(result: AdapterResultLike, path: Path) -> str:
    """``error.png``: the stored adapter's relative error per module next to the Eckart–Young optimum."""
    plt, _ = pyplot()
    rows, rank_col = _adapted(result.table)
    optimum = "optimal_rel_error" in rows and bool(rows["optimal_rel_error"].notna().any())
    layered = rows[rows["layer"].notna()]
    kinds = list(dict.fromkeys(layered["kind"]))
    outside = rows[rows["layer"].isna()]
    panels: list[tuple[str, pd.DataFrame]] = [(k, layered[layered["kind"] == k]) for k in kinds]
    if not outside.empty:
        panels.append(("outside the blocks", outside))
    fig, axes = panel_grid(max(1, len(panels)), plt)
    handles: list[Any] = []
    resized = result.info.get("command") == "resize"
    stored = ("the resized adapter as stored: ‖s·B·A − s′·B′·A′‖_F / ‖s·B·A‖_F" if resized else
              "the adapter as stored: ‖ΔW − s·B·A‖_F / ‖ΔW‖_F")
    if not panels:
        note_panel(axes[0], "no module holds a LoRA (every targeted ΔW was zero or skipped)")
    for ax, (kind, group) in zip(axes, panels, strict=False):
        worst = f", worst ratio {group['ratio'].max():.4f}" if optimum and "ratio" in group else ""
        ax.set_title(f"{kind} ({_rank_text(group[rank_col])}{worst})", fontsize=9)
        if kind == "outside the blocks":
            _bars(ax, group, optimum)
            continue
        by_layer = group.groupby("layer", sort=True)  # one module per layer, or the median over MoE experts
        x = np.array(list(by_layer.groups), dtype=int)
        err = by_layer["rel_error"].median().to_numpy(float)
        lines = [ax.plot(x, err, marker="o", color="C0", label=stored)[0]]
        if optimum:
            best = by_layer["optimal_rel_error"].median().to_numpy(float)
            lines.append(ax.plot(x, best, ls="--", color="k", label="optimum of the same rank (Eckart–Young)")[0])
        for xi, yi, r in zip(x, err, by_layer[rank_col].median().to_numpy(float), strict=True):
            ax.annotate(f"{int(r)}", (xi, yi), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7,
                        color="0.35")
        handles = handles or lines
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("layer")
        ax.set_ylabel("relative error (0 = exact)")
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    what = "resized adapter against the adapter it was cut from" if resized else \
        "extracted adapter against the full fine-tune's ΔW"
    note = "" if optimum else " (optimum not computed: --no-optimum)"
    fig.suptitle(f"Error of the {what}, per module; numbers: the rank{note}", fontsize=12)
    return save_figure(fig, path)


def _bars(ax: Any, group: pd.DataFrame, optimum: bool) -> None:
    """Modules without a layer index: one bar pair each."""
    y = np.arange(len(group))
    ax.barh(y - 0.2, group["rel_error"], 0.4, color="C0")
    if optimum:
        ax.barh(y + 0.2, group["optimal_rel_error"], 0.4, color="0.3")
    ax.set_yticks(y, [str(m) for m in group["module"]], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("relative error (blue: stored, grey: optimum)")


def render_adapter_figures(result: AdapterResultLike, folder: str | Path) -> list[str]:
    """The figures of an extract or resize result into ``folder`` (``error.png``); returns the file names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [render_error_figure(result, folder / "error.png")]

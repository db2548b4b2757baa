"""Figures of a comparison (``rankscope compare``/``compare-adapters``), drawn from its table and φ grids.

* ``energy.png`` — per layer, the share of ``||ΔW_full||²`` in LoRA's column+row space next to the
  Eckart–Young optimum for the same rank;
* ``phi_diagonal.png`` — ``φ(i, i)`` for ``i = 1..r`` (left and right spaces), one line per layer coloured by
  depth (colour bar), with the random baseline;
* ``intruders.png`` — layer × kind heatmaps of intruder-dimension counts, full vs LoRA, on one scale from 0;
* ``phi_<module>.png`` — ``φ(i, j)`` heatmaps for chosen modules (LoRA paper Figs. 3–4 style);
* ``phi_adapters.png`` (``compare-adapters``) — ``φ(i, j)`` for ``A`` and ``B`` of chosen modules.

A panel with nothing to draw (``ΔW = 0`` in every module of a kind, every intruder count 0) says so in one line
instead of showing empty axes; legends sit below the panels, not over the data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .style import depth_colours, layered_table, note_panel, panel_grid, pyplot, save_figure

if TYPE_CHECKING:
    import pandas as pd


class CompareLike(Protocol):
    """What the figures read from a comparison (``CompareResult``): its table, its φ grids keyed
    ``"<module>:left|right"`` (``compare``) or ``"<module>:A|B"`` (``compare-adapters``) and its info."""

    table: pd.DataFrame
    phi: Mapping[str, np.ndarray]
    info: dict[str, Any]


def _live(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows whose full update and LoRA update are both non-zero (a zero ΔW has no subspace to compare)."""
    keep = np.ones(len(rows), dtype=bool)
    for col in ("full_norm", "lora_norm"):
        if col in rows:
            keep &= rows[col].to_numpy(dtype=float) > 0
    return rows[keep]


ZERO_NOTE = "ΔW_full or ΔW_lora = 0 in every module: nothing to compare"


def plot_energy(result: CompareLike, path: Path, plt: Any) -> str | None:
    layered, kinds = layered_table(result.table)
    if layered.empty:
        return None
    fig, axes = panel_grid(len(kinds), plt)
    handles: list[Any] = []
    for ax, kind in zip(axes, kinds, strict=True):
        rows = layered[layered["kind"] == kind].sort_values("layer")
        ax.set_title(f"{kind} (r = {int(rows['r'].iloc[0])})", fontsize=10)
        rows = _live(rows)
        if rows.empty:
            note_panel(ax, ZERO_NOTE)
            continue
        lines = [ax.plot(rows["layer"], rows["energy_both"], marker="o", label="LoRA's column + row space")[0],
                 ax.plot(rows["layer"], rows["energy_col"], marker=".", lw=0.8, label="LoRA's column space only")[0],
                 ax.plot(rows["layer"], rows["energy_optimal"], ls="--", color="k",
                         label="optimum: top-r singular space of ΔW_full (Eckart–Young)")[0]]
        handles = handles or lines
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("layer")
        ax.set_ylabel("share of ‖ΔW_full‖² (0–1)")
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=9, frameon=False)
    fig.suptitle("Energy of the full fine-tuning update captured by LoRA's subspaces", fontsize=13)
    return save_figure(fig, path)


def plot_phi_diagonal(result: CompareLike, path: Path, plt: Any) -> str | None:
    layered, kinds = layered_table(result.table)
    if layered.empty:
        return None
    fig, axes = plt.subplots(2, len(kinds), figsize=(4.2 * len(kinds) + 1.0, 7.0), squeeze=False, layout="constrained")
    layers = [int(x) for x in layered["layer"]]
    colour = depth_colours(layers, plt)
    baseline = None
    for col, kind in enumerate(kinds):
        rows = layered[layered["kind"] == kind]
        live = _live(rows)
        for side_idx, side in enumerate(("left", "right")):
            ax = axes[side_idx][col]
            ax.set_title(f"{kind}: {'column (U)' if side == 'left' else 'row (V)'} space", fontsize=10)
            if live.empty:
                note_panel(ax, "ΔW = 0 in every module")
                continue
            n = int(rows["rows" if side == "left" else "cols"].iloc[0])
            for row in live.itertuples():
                grid = result.phi[f"{row.module}:{side}"]
                d = min(grid.shape)
                ax.plot(np.arange(1, d + 1), np.diag(grid)[:d], color=colour(int(row.layer)), lw=1.2)
            d = int(live["r"].max())
            baseline = ax.plot(np.arange(1, d + 1), np.arange(1, d + 1) / n, ls="--", color="grey",
                               label="two random subspaces: i / n")[0]
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("i (top-i directions of each)")
            ax.set_ylabel("φ(i, i)")
    sm = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(min(layers), max(max(layers), min(layers) + 1)))
    fig.colorbar(sm, ax=axes, label="layer (depth)", shrink=0.6)
    if baseline is not None:
        fig.legend(handles=[baseline], loc="outside lower center", fontsize=9, frameon=False)
    fig.suptitle("Subspace similarity φ(i, i) between the top-i directions of ΔW_full and ΔW_lora, one line per layer "
                 "(1 = the same subspace, 0 = orthogonal)", fontsize=13)
    return save_figure(fig, path)


def plot_intruders(result: CompareLike, path: Path, plt: Any, sns: Any) -> str | None:
    layered, kinds = layered_table(result.table)
    if layered.empty:
        return None
    eps = result.info.get("options", {}).get("epsilon", 0.5)
    k = result.info.get("options", {}).get("k", 10)
    zero = [not (layered[col].fillna(0) > 0).any() for col in ("intruders_full", "intruders_lora")]
    height = 2.5 if all(zero) else 0.45 * layered["layer"].nunique() + 3
    fig, axes = plt.subplots(1, 2, figsize=(2 * max(5.0, 0.9 * len(kinds) + 2.5), height), layout="constrained")
    counts = layered[["intruders_full", "intruders_lora"]].to_numpy(dtype=float)
    vmax = max(1, int(np.nanmax(counts)) if counts.size else 1)  # one scale from 0 for both panels
    for ax, col, title, empty in zip(axes, ("intruders_full", "intruders_lora"), ("full fine-tuning", "LoRA"), zero,
                                     strict=True):
        ax.set_title(f"{title}: intruders among the top-{k} (ε = {eps})")
        if empty:
            note_panel(ax, f"no intruder dimension in any module (every count is 0 at ε = {eps})")
            continue
        grid = layered.pivot_table(index="layer", columns="kind", values=col, aggfunc="median").reindex(columns=kinds)
        sns.heatmap(grid, ax=ax, annot=True, fmt=".0f", cmap="rocket_r", vmin=0, vmax=vmax,
                    cbar_kws={"shrink": 0.8, "label": "intruder dimensions (count)"})
        ax.set_xlabel("module kind")
        ax.set_ylabel("layer")
        plt.setp(ax.get_xticklabels(), rotation=40, ha="right")
    fig.suptitle("Intruder dimensions: top singular vectors of the fine-tuned W that no base direction explains",
                 fontsize=12)
    return save_figure(fig, path)


def _phi_heatmap(ax: Any, grid: np.ndarray, title: str, xlabel: str, ylabel: str, sns: Any) -> None:
    sns.heatmap(grid, ax=ax, vmin=0, vmax=1, cmap="viridis", cbar_kws={"shrink": 0.8, "label": "φ(i, j)"},
                xticklabels=_ticks(grid.shape[1]), yticklabels=_ticks(grid.shape[0]))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _ticks(n: int) -> list[str]:
    step = max(1, n // 8)
    return [str(i + 1) if i % step == 0 else "" for i in range(n)]


def chosen_modules(table: pd.DataFrame, pattern: str | None, limit: int = 4) -> list[str]:
    """Modules for φ heatmaps: those matching ``pattern``, else first and last layer of the first kinds."""
    if pattern:
        return [m for m in table["module"] if re.search(pattern, m)][:limit]
    layered, kinds = layered_table(table)
    picks: list[str] = []
    for kind in kinds[:2]:
        rows = layered[layered["kind"] == kind].sort_values("layer")
        picks += list(dict.fromkeys([rows["module"].iloc[0], rows["module"].iloc[-1]]))
    return picks[:limit] or list(table["module"][:limit])


def plot_phi_modules(result: CompareLike, folder: Path, plt: Any, sns: Any, pattern: str | None) -> list[str]:
    written = []
    live = set(_live(result.table)["module"])
    for module in chosen_modules(result.table, pattern):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
        for ax, side in zip(axes, ("left", "right"), strict=True):
            title = f"{'column' if side == 'left' else 'row'} space"
            if module not in live:
                ax.set_title(title, fontsize=10)
                note_panel(ax, "ΔW_full or ΔW_lora = 0 in this module: no subspace to compare")
                continue
            _phi_heatmap(ax, result.phi[f"{module}:{side}"], title, "j: top-j directions of ΔW_lora",
                         "i: top-i directions of ΔW_full", sns)
        fig.suptitle(f"φ(i, j), {module}", fontsize=12)
        written.append(save_figure(fig, folder / f"phi_{module.replace('/', '_')}.png"))
    return written


def plot_phi_adapters(result: CompareLike, path: Path, plt: Any, sns: Any, pattern: str | None) -> str:
    modules = chosen_modules(result.table, pattern)
    fig, axes = plt.subplots(len(modules), 2, figsize=(11, 4.2 * len(modules)), squeeze=False, layout="constrained")
    for row_axes, module in zip(axes, modules, strict=True):
        for ax, which, label in zip(row_axes, ("A", "B"), ("row space of A", "column space of B"), strict=True):
            _phi_heatmap(ax, result.phi[f"{module}:{which}"], f"{module}: {label}", "j: top-j directions of adapter 2",
                         "i: top-i directions of adapter 1", sns)
    fig.suptitle("Subspace similarity φ(i, j) between two adapters (LoRA paper §7.2)", fontsize=13)
    return save_figure(fig, path)


def render_compare_figures(result: CompareLike, folder: str | Path, phi_modules: str | None = None) -> list[str]:
    """Write the figures of a comparison into ``folder``; returns the file names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plt, sns = pyplot()
    pattern = phi_modules or result.info.get("options", {}).get("phi_modules")
    if result.info.get("command") == "compare-adapters":
        return [plot_phi_adapters(result, folder / "phi_adapters.png", plt, sns, pattern)]
    written = [plot_energy(result, folder / "energy.png", plt), plot_phi_diagonal(result, folder / "phi_diagonal.png", plt),
               plot_intruders(result, folder / "intruders.png", plt, sns)]
    written += plot_phi_modules(result, folder, plt, sns, pattern)
    return [w for w in written if w]

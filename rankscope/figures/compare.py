"""Figures of a comparison (``rankscope compare``/``compare-adapters``), drawn from its table and φ grids.

* ``energy.png`` — per layer, the share of ``||ΔW_full||²`` in LoRA's column+row space next to the
  Eckart–Young optimum for the same rank;
* ``phi_diagonal.png`` — ``φ(i, i)`` for ``i = 1..r`` (left and right spaces), one line per layer,
  with the random baseline;
* ``intruders.png`` — layer × kind heatmaps of intruder-dimension counts, full vs LoRA;
* ``phi_<module>.png`` — ``φ(i, j)`` heatmaps for chosen modules (LoRA paper Figs. 3–4 style);
* ``phi_adapters.png`` (``compare-adapters``) — ``φ(i, j)`` for ``A`` and ``B`` of chosen modules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .style import depth_colours, layered_table, panel_grid, pyplot, save_figure

if TYPE_CHECKING:
    import pandas as pd


class CompareLike(Protocol):
    """What the figures read from a comparison (``CompareResult``): its table, its φ grids keyed
    ``"<module>:left|right"`` (``compare``) or ``"<module>:A|B"`` (``compare-adapters``) and its info."""

    table: pd.DataFrame
    phi: Mapping[str, np.ndarray]
    info: dict[str, Any]


def plot_energy(result: CompareLike, path: Path, plt: Any) -> str | None:
    layered, kinds = layered_table(result.table)
    if layered.empty:
        return None
    fig, axes = panel_grid(len(kinds), plt)
    for ax, kind in zip(axes, kinds, strict=True):
        rows = layered[layered["kind"] == kind].sort_values("layer")
        ax.plot(rows["layer"], rows["energy_both"], marker="o", label="LoRA column+row space")
        ax.plot(rows["layer"], rows["energy_col"], marker=".", lw=0.8, label="LoRA column space")
        ax.plot(rows["layer"], rows["energy_optimal"], ls="--", color="k", label="optimum (top-r of ΔW_full)")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{kind} (r = {int(rows['r'].iloc[0])})", fontsize=10)
        ax.set_xlabel("layer")
        ax.set_ylabel("share of ‖ΔW_full‖²")
    axes[0].legend(fontsize=8)
    fig.suptitle("Energy of the full fine-tuning update captured by LoRA's subspaces", fontsize=13)
    return save_figure(fig, path)


def plot_phi_diagonal(result: CompareLike, path: Path, plt: Any) -> str | None:
    layered, kinds = layered_table(result.table)
    if layered.empty:
        return None
    fig, axes = plt.subplots(2, len(kinds), figsize=(4.2 * len(kinds), 6.6), squeeze=False, layout="constrained")
    colour = depth_colours([int(x) for x in layered["layer"]], plt)
    for col, kind in enumerate(kinds):
        rows = layered[layered["kind"] == kind]
        for side_idx, side in enumerate(("left", "right")):
            ax = axes[side_idx][col]
            n = int(rows["rows" if side == "left" else "cols"].iloc[0])
            for row in rows.itertuples():
                grid = result.phi[f"{row.module}:{side}"]
                d = min(grid.shape)
                ax.plot(np.arange(1, d + 1), np.diag(grid)[:d], color=colour(int(row.layer)), lw=1.2)
            d = int(rows["r"].max())
            ax.plot(np.arange(1, d + 1), np.arange(1, d + 1) / n, ls="--", color="grey", label="random max(i,j)/n")
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{kind}: {'column (U)' if side == 'left' else 'row (V)'} space", fontsize=10)
            ax.set_xlabel("i (top-i of ΔW_full vs top-i of ΔW_lora)")
            ax.set_ylabel("φ(i, i)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Subspace similarity φ(i, i) between full fine-tuning and LoRA (colour = layer)", fontsize=13)
    return save_figure(fig, path)


def plot_intruders(result: CompareLike, path: Path, plt: Any, sns: Any) -> str | None:
    layered, kinds = layered_table(result.table)
    if layered.empty:
        return None
    eps = result.info.get("options", {}).get("epsilon", 0.5)
    k = result.info.get("options", {}).get("k", 10)
    fig, axes = plt.subplots(1, 2, figsize=(2 * max(5.0, 0.9 * len(kinds) + 2.5), 0.45 * layered["layer"].nunique() + 3),
                             layout="constrained")
    vmax = max(1, int(layered[["intruders_full", "intruders_lora"]].to_numpy().max()))
    for ax, col, title in zip(axes, ("intruders_full", "intruders_lora"), ("full fine-tuning", "LoRA"), strict=True):
        grid = layered.pivot_table(index="layer", columns="kind", values=col, aggfunc="median").reindex(columns=kinds)
        sns.heatmap(grid, ax=ax, annot=True, fmt=".0f", cmap="rocket_r", vmin=0, vmax=vmax, cbar_kws={"shrink": 0.8})
        ax.set_title(f"{title}: intruders among top-{k} (ε = {eps})")
        ax.set_xlabel("module kind")
        ax.set_ylabel("layer")
        plt.setp(ax.get_xticklabels(), rotation=40, ha="right")
    return save_figure(fig, path)


def _phi_heatmap(ax: Any, grid: np.ndarray, title: str, xlabel: str, ylabel: str, sns: Any) -> None:
    sns.heatmap(grid, ax=ax, vmin=0, vmax=1, cmap="viridis", cbar_kws={"shrink": 0.8},
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
    for module in chosen_modules(result.table, pattern):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
        for ax, side in zip(axes, ("left", "right"), strict=True):
            _phi_heatmap(ax, result.phi[f"{module}:{side}"], f"{'column' if side == 'left' else 'row'} space",
                         "j (top-j of ΔW_lora)", "i (top-i of ΔW_full)", sns)
        fig.suptitle(f"φ(i, j), {module}", fontsize=12)
        written.append(save_figure(fig, folder / f"phi_{module.replace('/', '_')}.png"))
    return written


def plot_phi_adapters(result: CompareLike, path: Path, plt: Any, sns: Any, pattern: str | None) -> str:
    modules = chosen_modules(result.table, pattern)
    fig, axes = plt.subplots(len(modules), 2, figsize=(11, 4.2 * len(modules)), squeeze=False, layout="constrained")
    for row_axes, module in zip(axes, modules, strict=True):
        for ax, which, label in zip(row_axes, ("A", "B"), ("row space of A", "column space of B"), strict=True):
            _phi_heatmap(ax, result.phi[f"{module}:{which}"], f"{module}: {label}", "j (adapter 2)", "i (adapter 1)", sns)
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

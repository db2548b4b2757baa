"""Figures of a spectrum or LoRA result (``rankscope spectrum``/``lora``), drawn from its table and spectra.

Nothing is recomputed; ``render_spectrum_figures`` writes:

* ``spectra.png`` — normalised spectra ``sigma_i / sigma_1`` (log scale) per module kind, one line
  per layer coloured by depth;
* ``energy.png`` — cumulative captured energy ``sum_{i<=k} e_i`` per kind with the tau marks;
* ``heatmaps.png`` — layer x kind heatmaps of ``rank_90``, effective rank and ``||ΔW|| / ||W||``;
* ``rank_by_layer.png`` — ``rank_90`` (and its share of ``min(m, n)``) against depth, one line per kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..numerics.metrics import energy_fraction
from .style import depth_colours, layered_table, panel_grid, pyplot, save_figure

if TYPE_CHECKING:
    import pandas as pd


class SpectrumLike(Protocol):
    """What the spectrum figures read from a spectrum or LoRA result (``SpectrumResult``)."""

    table: pd.DataFrame
    spectra: Mapping[str, np.ndarray]
    info: dict[str, Any]


def _kind_panels(result: SpectrumLike, plt: Any) -> list[tuple[str, pd.DataFrame]]:
    """(kind, rows of that kind) for every kind; modules outside blocks form their own panels."""
    t = result.table
    layered, kinds = layered_table(t)
    panels = [(k, layered[layered["kind"] == k]) for k in kinds]
    panels += [(row.module, t[t["module"] == row.module]) for row in t[t["layer"].isna()].itertuples()]
    return panels


def plot_spectra(result: SpectrumLike, path: Path, plt: Any) -> str:
    panels = _kind_panels(result, plt)
    fig, axes = panel_grid(len(panels), plt)
    layers = [int(x) for x in result.table["layer"].dropna()]
    colour = depth_colours(layers, plt)
    for ax, (kind, rows) in zip(axes, panels, strict=True):
        for row in rows.itertuples():
            s = result.spectra[row.module]
            if s.size == 0 or s[0] == 0:
                ax.text(0.5, 0.5, "ΔW = 0", transform=ax.transAxes, ha="center")
                continue
            c = colour(int(row.layer)) if row.layer is not None and not _isna(row.layer) else "C0"
            ax.semilogy(np.arange(1, s.size + 1), np.maximum(s / s[0], 1e-12), color=c, lw=1.2,
                        label=None if _isna(row.layer) else f"layer {int(row.layer)}")
        ax.set_title(f"{kind}  ({rows['rows'].iloc[0]}×{rows['cols'].iloc[0]})", fontsize=9)
        ax.set_xlabel("singular value index i")
        ax.set_ylabel("σ_i / σ_1")
    if layers:
        sm = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(min(layers), max(layers)))
        fig.colorbar(sm, ax=axes, label="layer (depth)", shrink=0.6)
    fig.suptitle("Normalised singular-value spectra of ΔW = W_finetuned − W_base", fontsize=13)
    return save_figure(fig, path)


def plot_energy(result: SpectrumLike, path: Path, plt: Any) -> str:
    taus = result.info.get("options", {}).get("taus", [0.5, 0.9, 0.99])
    panels = _kind_panels(result, plt)
    fig, axes = panel_grid(len(panels), plt)
    layers = [int(x) for x in result.table["layer"].dropna()]
    colour = depth_colours(layers, plt)
    for ax, (kind, rows) in zip(axes, panels, strict=True):
        for row in rows.itertuples():
            c = energy_fraction(result.spectra[row.module])
            if c.size == 0 or c[-1] == 0:
                ax.text(0.5, 0.5, "ΔW = 0", transform=ax.transAxes, ha="center")
                continue
            col = "C0" if _isna(row.layer) else colour(int(row.layer))
            ax.plot(np.arange(1, c.size + 1), c, color=col, lw=1.2)
        for tau in taus:
            ax.axhline(tau, color="grey", ls="--", lw=0.8)
            ax.text(ax.get_xlim()[1], tau, f" τ={tau:g}", va="center", fontsize=8, color="grey")
        ax.set_ylim(0, 1.02)
        ax.set_title(str(kind), fontsize=10)
        ax.set_xlabel("rank k")
        ax.set_ylabel("captured energy (share of ‖ΔW‖²)")
    fig.suptitle("Cumulative energy of ΔW (colour = layer depth)", fontsize=13)
    return save_figure(fig, path)


def plot_heatmaps(result: SpectrumLike, path: Path, plt: Any, sns: Any) -> str | None:
    layered, kinds = layered_table(result.table)
    if layered.empty:
        return None
    specs = [("rank_90", "rank for 90% energy", "d"), ("effective_rank", "entropy effective rank", ".0f"),
             ("rel_delta", "‖ΔW‖_F / ‖W‖_F (%)", ".2f")]
    specs = [s for s in specs if s[0] in layered]
    width = max(5.0, 0.9 * len(kinds) + 2.5)
    height = 0.45 * layered["layer"].nunique() + 3
    fig, axes = plt.subplots(1, len(specs), figsize=(width * len(specs), height), squeeze=False, layout="constrained")
    for ax, (col, title, fmt) in zip(axes[0], specs, strict=True):
        grid = layered.pivot_table(index="layer", columns="kind", values=col, aggfunc="first")[kinds]
        if col == "rel_delta":
            grid = 100 * grid
        annot = grid.shape[0] * grid.shape[1] <= 400
        sns.heatmap(grid, ax=ax, annot=annot, fmt=fmt, cmap="mako_r", cbar_kws={"shrink": 0.8},
                    annot_kws={"fontsize": 7})
        ax.set_title(title)
        ax.set_xlabel("module kind")
        ax.set_ylabel("layer")
        plt.setp(ax.get_xticklabels(), rotation=40, ha="right")
    fig.suptitle("Per-layer, per-module rank of the fine-tuning update", fontsize=13)
    return save_figure(fig, path)


def plot_rank_by_layer(result: SpectrumLike, path: Path, plt: Any) -> str | None:
    layered, kinds = layered_table(result.table)
    if layered.empty or "rank_90" not in layered:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
    for i, kind in enumerate(kinds):
        rows = layered[layered["kind"] == kind].sort_values("layer")
        ax1.plot(rows["layer"], rows["rank_90"], marker="o", label=kind, color=f"C{i % 10}")
        share = 100 * rows["rank_90"] / np.minimum(rows["rows"], rows["cols"])
        ax2.plot(rows["layer"], share, marker="o", label=kind, color=f"C{i % 10}")
    ax1.set_title("rank_90 by layer")
    ax1.set_xlabel("layer")
    ax1.set_ylabel("rank for 90% of ‖ΔW‖² (count)")
    ax2.set_title("rank_90 as share of full rank")
    ax2.set_xlabel("layer")
    ax2.set_ylabel("rank_90 / min(m, n) (%)")
    ax2.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    return save_figure(fig, path)


def render_spectrum_figures(result: SpectrumLike, folder: str | Path) -> list[str]:
    """Write every spectrum figure into ``folder``; returns the file names written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plt, sns = pyplot()
    written = [
        plot_spectra(result, folder / "spectra.png", plt),
        plot_energy(result, folder / "energy.png", plt),
        plot_heatmaps(result, folder / "heatmaps.png", plt, sns),
        plot_rank_by_layer(result, folder / "rank_by_layer.png", plt),
    ]
    return [w for w in written if w]


def _isna(value: Any) -> bool:
    try:
        return value is None or bool(np.isnan(value))
    except TypeError:
        return value is None or str(value) == "<NA>"

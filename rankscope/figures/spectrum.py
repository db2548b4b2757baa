"""Figures of a spectrum or LoRA result (``rankscope spectrum``/``lora``), drawn from its table and spectra.

Nothing is recomputed; ``render_spectrum_figures`` writes:

* ``spectra.png`` — normalised spectra ``sigma_i / sigma_1`` (log scale) per module kind, one line
  per layer coloured by depth;
* ``energy.png`` — cumulative captured energy ``sum_{i<=k} e_i`` per kind with the tau marks;
* ``heatmaps.png`` — layer x kind heatmaps of ``rank_90``, effective rank and ``||ΔW|| / ||W||``;
* ``rank_by_layer.png`` — ``rank_90`` (and its share of ``min(m, n)``) against depth, one line per kind
  (``rank_90`` from the spectra when ``--tau`` left out 0.9);
* ``lora_energy.png`` (spectrum, probe) — the most of each module's update a rank-r LoRA could hold,
  r = 4, 8, 16, 32, 64, layer × kind, one 0–100 % scale (the numbers: ``lora_energy.csv``);
* ``utilization.png`` (lora) — effective and stable rank of ``s·B·A`` as a share of ``r``.

LoRA results draw only the ``r`` non-zero singular values of ``s·B·A`` and say so in their titles.

Mixture-of-experts modules (an ``expert`` column) are aggregated over the experts of each layer × kind:
the median curve per layer with its 10–90 % band, median cells in the heatmaps, median ``rank_90`` with
its band by layer — so 128 experts × 48 layers stay readable.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..numerics.metrics import energy_fraction
from .style import depth_colours, layered_table, panel_grid, pyplot, save_figure

LORA_RANKS = (4, 8, 16, 32, 64)
"""The usual LoRA ranks of ``lora_energy.png``."""

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


def _has_experts(rows: pd.DataFrame) -> bool:
    return "expert" in rows and bool(rows["expert"].notna().any())


def _curves(result: SpectrumLike, rows: pd.DataFrame, curve: Any) -> list[tuple[Any, np.ndarray, Any]]:
    """``(layer, curve, band)`` per module, or per layer for experts (median curve, 10–90 % band).

    ``curve(sigma)`` returns the plotted values or None (ΔW = 0).
    """
    if not _has_experts(rows):
        return [(row.layer, c, None) for row in rows.itertuples()
                if (c := curve(_shown(result, row))) is not None]
    out = []
    for layer, group in rows.groupby("layer", sort=True):
        stack = [c for m in group["module"] if (c := curve(result.spectra[m])) is not None]
        if stack and len({c.size for c in stack}) == 1:
            arr = np.vstack(stack)
            out.append((layer, np.median(arr, axis=0), np.percentile(arr, [10, 90], axis=0)))
    return out


def _shown(result: SpectrumLike, row: Any) -> np.ndarray:
    """The singular values to draw: a LoRA update ``s·B·A`` has at most ``r`` non-zero ones, so only those."""
    s = result.spectra[row.module]
    r = getattr(row, "r", None)
    return s[: int(r)] if r is not None and not _isna(r) and int(r) > 0 else s


def _subject(result: SpectrumLike) -> str:
    """What the spectra are of: the LoRA update, a probe's signal or the full fine-tuning difference."""
    info = result.info
    if info.get("command") == "probe":
        return "the loss gradient at θ₀ (probe)" if info.get("signal") == "gradient" else "a short fine-tune's ΔW (probe)"
    return "s·B·A (LoRA)" if info.get("command") == "lora" else "ΔW = W_finetuned − W_base"


def _symbol(result: SpectrumLike) -> str:
    """The matrix in axis labels: ``G`` (a gradient probe), ``s·B·A`` (LoRA), else ``ΔW``."""
    info = result.info
    if info.get("command") == "probe" and info.get("signal") == "gradient":
        return "G"
    return "s·B·A" if info.get("command") == "lora" else "ΔW"


def rank_at(s: np.ndarray, tau: float = 0.9) -> int:
    """The smallest k with ``Σ_{i≤k} σ_i² ≥ τ Σ σ_i²`` (0 for ΔW = 0)."""
    c = energy_fraction(s)
    if c.size == 0 or c[-1] == 0:
        return 0
    return int(np.searchsorted(c, tau - 1e-12) + 1)


def with_rank_90(result: SpectrumLike) -> pd.DataFrame:
    """The table with ``rank_90``, computed from the spectra when ``--tau`` did not include 0.9."""
    t = result.table
    if "rank_90" in t:
        return t
    return t.assign(rank_90=[rank_at(result.spectra[m]) for m in t["module"]])


def _normalised(s: np.ndarray) -> np.ndarray | None:
    return None if s.size == 0 or s[0] == 0 else np.maximum(s / s[0], 1e-12)


def _expert_note(rows: pd.DataFrame) -> str:
    return f", median of {rows['expert'].nunique()} experts" if _has_experts(rows) else ""


def plot_spectra(result: SpectrumLike, path: Path, plt: Any) -> str:
    panels = _kind_panels(result, plt)
    fig, axes = panel_grid(len(panels), plt)
    layers = [int(x) for x in result.table["layer"].dropna()]
    colour = depth_colours(layers, plt)
    for ax, (kind, rows) in zip(axes, panels, strict=True):
        curves = _curves(result, rows, _normalised)
        if not curves:
            ax.text(0.5, 0.5, f"{_symbol(result)} = 0", transform=ax.transAxes, ha="center")
        for layer, c, band in curves:
            col = "C0" if _isna(layer) else colour(int(layer))
            x = np.arange(1, c.size + 1)
            ax.semilogy(x, c, color=col, lw=1.2, label=None if _isna(layer) else f"layer {int(layer)}")
            if band is not None:
                ax.fill_between(x, band[0], band[1], color=col, alpha=0.15, lw=0)
        ax.set_title(f"{kind}  ({rows['rows'].iloc[0]}×{rows['cols'].iloc[0]}{_expert_note(rows)})", fontsize=9)
        ax.set_xlabel("singular value index i")
        ax.set_ylabel("σ_i / σ_1")
    if layers:
        sm = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(min(layers), max(layers)))
        fig.colorbar(sm, ax=axes, label="layer (depth)", shrink=0.6)
    fig.suptitle(f"Normalised singular-value spectra of {_subject(result)}", fontsize=13)
    return save_figure(fig, path)


def plot_energy(result: SpectrumLike, path: Path, plt: Any) -> str:
    taus = result.info.get("options", {}).get("taus", [0.5, 0.9, 0.99])
    panels = _kind_panels(result, plt)
    fig, axes = panel_grid(len(panels), plt)
    layers = [int(x) for x in result.table["layer"].dropna()]
    colour = depth_colours(layers, plt)
    for ax, (kind, rows) in zip(axes, panels, strict=True):
        curves = _curves(result, rows, lambda s: None if s.size == 0 or s[0] == 0 else energy_fraction(s))
        if not curves:
            ax.text(0.5, 0.5, f"{_symbol(result)} = 0", transform=ax.transAxes, ha="center")
        for layer, c, band in curves:
            col = "C0" if _isna(layer) else colour(int(layer))
            ax.plot(np.arange(1, c.size + 1), c, color=col, lw=1.2)
            if band is not None:
                ax.fill_between(np.arange(1, c.size + 1), band[0], band[1], color=col, alpha=0.15, lw=0)
        for tau in taus:
            ax.axhline(tau, color="grey", ls="--", lw=0.8)
            ax.text(ax.get_xlim()[1], tau, f" τ={tau:g}", va="center", fontsize=8, color="grey")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{kind}{_expert_note(rows)}", fontsize=10)
        ax.set_xlabel("rank k")
        ax.set_ylabel(f"captured share of ‖{_symbol(result)}‖²")
    if layers:
        sm = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(min(layers), max(layers)))
        fig.colorbar(sm, ax=axes, label="layer (depth)", shrink=0.6)
    fig.suptitle(f"Cumulative energy of {_subject(result)}: the share the top-k directions hold", fontsize=13)
    return save_figure(fig, path)


def plot_heatmaps(result: SpectrumLike, path: Path, plt: Any, sns: Any) -> str | None:
    layered, kinds = layered_table(with_rank_90(result))
    if layered.empty:
        return None
    specs = [("rank_90", "rank for 90% energy", ".4g"), ("effective_rank", "entropy effective rank", ".0f"),
             ("rel_delta", f"‖{_symbol(result)}‖_F / ‖W‖_F (%)", ".2f")]
    specs = [s for s in specs if s[0] in layered]
    width = max(5.0, 0.9 * len(kinds) + 2.5)
    height = 0.45 * layered["layer"].nunique() + 3
    fig, axes = plt.subplots(1, len(specs), figsize=(width * len(specs), height), squeeze=False, layout="constrained")
    for ax, (col, title, fmt) in zip(axes[0], specs, strict=True):
        grid = layered.pivot_table(index="layer", columns="kind", values=col, aggfunc="median").reindex(columns=kinds)
        if col == "rel_delta":
            grid = 100 * grid
        annot = grid.shape[0] * grid.shape[1] <= 400
        # colour from 0, not from the panel's minimum: cells that differ in the third digit look alike
        sns.heatmap(grid, ax=ax, annot=annot, fmt=fmt, cmap="mako_r", vmin=0, cbar_kws={"shrink": 0.8},
                    annot_kws={"fontsize": 7})
        ax.set_title(title)
        ax.set_xlabel("module kind")
        ax.set_ylabel("layer")
        plt.setp(ax.get_xticklabels(), rotation=40, ha="right")
    experts = " (MoE experts: median over the experts of each cell)" if _has_experts(layered) else ""
    fig.suptitle(f"Per-layer, per-module rank of {_subject(result)}{experts}", fontsize=13)
    return save_figure(fig, path)


def plot_rank_by_layer(result: SpectrumLike, path: Path, plt: Any) -> str | None:
    layered, kinds = layered_table(with_rank_90(result))
    if layered.empty or "rank_90" not in layered:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
    for i, kind in enumerate(kinds):
        rows = layered[layered["kind"] == kind].sort_values("layer")
        rows = rows.assign(share=100 * rows["rank_90"] / np.minimum(rows["rows"], rows["cols"]))
        for ax, col in ((ax1, "rank_90"), (ax2, "share")):
            by_layer = rows.groupby("layer", sort=True)[col]  # one value per layer, or the experts' median and band
            med = by_layer.median()
            ax.plot(med.index.astype(int), med.values, marker="o", label=kind, color=f"C{i % 10}")
            if _has_experts(rows):
                lo, hi = by_layer.quantile(0.1), by_layer.quantile(0.9)
                ax.fill_between(med.index.astype(int), lo.values, hi.values, color=f"C{i % 10}", alpha=0.15, lw=0)
    ax1.set_title("rank for 90 % of the energy, by layer")
    ax1.set_xlabel("layer")
    ax1.set_ylabel(f"rank for 90% of ‖{_symbol(result)}‖² (count)")
    ax2.set_title("the same rank as a share of the full rank")
    ax2.set_xlabel("layer")
    ax2.set_ylabel("rank for 90 % / min(m, n) (%)")
    ax2.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle(f"Rank holding 90 % of the energy of {_subject(result)}, by depth", fontsize=12)
    return save_figure(fig, path)


def lora_energy_table(result: SpectrumLike, ranks: tuple[int, ...] = LORA_RANKS) -> pd.DataFrame:
    """Per module: the share of ``‖ΔW‖²`` a rank-r LoRA could hold at most (Eckart–Young), r in ``ranks``."""
    import pandas as pd

    t = result.table
    rows = []
    for row in t.itertuples():
        s = result.spectra[row.module]
        total = float(np.sum(s ** 2))
        rows.append([float(np.sum(s[:r] ** 2)) / total if total > 0 else float("nan") for r in ranks])
    cols = [c for c in ("module", "layer", "kind", "expert", "rows", "cols") if c in t]
    out = t[cols].reset_index(drop=True)
    return pd.concat([out, pd.DataFrame(rows, columns=[f"energy_r{r}" for r in ranks])], axis=1)


def plot_lora_energy(result: SpectrumLike, path: Path, plt: Any, sns: Any) -> str | None:
    """``lora_energy.png``: layer × kind heatmaps of the most a rank-r LoRA could hold, r = 4 … 64, on one 0–100 % scale."""
    table = lora_energy_table(result)
    layered, kinds = layered_table(table)
    if layered.empty:
        return None
    width = max(4.0, 0.8 * len(kinds) + 2.0)
    height = 0.42 * layered["layer"].nunique() + 2.8
    fig, axes = plt.subplots(1, len(LORA_RANKS), figsize=(width * len(LORA_RANKS), height), squeeze=False,
                             layout="constrained")
    for i, (ax, r) in enumerate(zip(axes[0], LORA_RANKS, strict=True)):
        grid = 100 * layered.pivot_table(index="layer", columns="kind", values=f"energy_r{r}", aggfunc="median").reindex(columns=kinds)
        sns.heatmap(grid, ax=ax, annot=grid.size <= 300, fmt=".0f", cmap="mako_r", vmin=0, vmax=100,
                    cbar=i == len(LORA_RANKS) - 1, cbar_kws={"label": f"% of ‖{_symbol(result)}‖² held", "shrink": 0.8},
                    annot_kws={"fontsize": 7})
        ax.set_title(f"rank {r}")
        ax.set_xlabel("module kind")
        ax.set_ylabel("layer" if i == 0 else "")
        plt.setp(ax.get_xticklabels(), rotation=40, ha="right")
    fig.suptitle("The most of each module's update a LoRA of rank r could hold (Σ_{i≤r} σ_i² / Σ σ_i²)", fontsize=13)
    return save_figure(fig, path)


def plot_utilization(result: SpectrumLike, path: Path, plt: Any, sns: Any) -> str | None:
    """``utilization.png`` (LoRA results): effective and stable rank of ``s·B·A`` as a share of ``r``, layer × kind."""
    layered, kinds = layered_table(result.table)
    if layered.empty or "utilization_effective" not in layered:
        return None
    specs = [("utilization_effective", "effective rank / r"), ("utilization_stable", "stable rank / r")]
    specs = [sp for sp in specs if sp[0] in layered]
    width = max(5.0, 0.9 * len(kinds) + 2.5)
    fig, axes = plt.subplots(1, len(specs), figsize=(width * len(specs), 0.45 * layered["layer"].nunique() + 3),
                             squeeze=False, layout="constrained")
    for ax, (col, title) in zip(axes[0], specs, strict=True):
        grid = 100 * layered.pivot_table(index="layer", columns="kind", values=col, aggfunc="median").reindex(columns=kinds)
        sns.heatmap(grid, ax=ax, annot=grid.size <= 400, fmt=".0f", cmap="mako_r", vmin=0, vmax=100,
                    cbar_kws={"label": "% of the rank r", "shrink": 0.8}, annot_kws={"fontsize": 7})
        ax.set_title(title)
        ax.set_xlabel("module kind")
        ax.set_ylabel("layer")
        plt.setp(ax.get_xticklabels(), rotation=40, ha="right")
    fig.suptitle("How much of its rank each LoRA module uses (100 % = all r directions equally)", fontsize=13)
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
    if result.info.get("command") == "lora":
        written.append(plot_utilization(result, folder / "utilization.png", plt, sns))
    else:
        written.append(plot_lora_energy(result, folder / "lora_energy.png", plt, sns))
    return [w for w in written if w]


def _isna(value: Any) -> bool:
    try:
        return value is None or bool(np.isnan(value))
    except TypeError:
        return value is None or str(value) == "<NA>"

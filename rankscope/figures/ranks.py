"""The figures of a LoRA rank plan (``rankscope recommend``), drawn from the plan's tables.

* ``ranks.png`` — the recommended rank per layer × kind (a scale from 0), and per kind the parameters and captured
  energy of the plan beside the uniform alternative with the same budget;
* ``budget_curve.png`` — captured share of ``‖ΔW‖²`` against LoRA parameters: the best allocation of each budget,
  one rank ``r`` everywhere, and where the plan and its uniform alternative sit (from ``budget_curve.csv``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..numerics.metrics import energy_weighted_mean
from .style import note_panel, percent, pyplot, save_figure

if TYPE_CHECKING:
    import pandas as pd

MARKED_RANKS = (1, 4, 8, 16, 32, 64, 128, 256)
"""Uniform ranks labelled on the budget curve."""


class RankPlanLike(Protocol):
    """What the figures read from a rank plan (``RankPlan``): its table (``layer``, ``kind``, ``rank``, ``params``,
    ``uniform_params``, ``captured_energy``, ``uniform_captured_energy``, ``delta_energy``), its info and, when it
    has one, ``budget_curve`` (``allocation``, ``rank``, ``params``, ``captured_energy``)."""

    table: pd.DataFrame
    info: dict[str, Any]


def render_rank_figure(plan: RankPlanLike, path: Path) -> str:
    """``ranks.png``: recommended rank per layer × kind, and per kind the parameters and captured energy
    of the plan beside the uniform alternative with the same budget."""
    plt, sns = pyplot()
    t = plan.table
    layered = t[t["layer"].notna()]
    kinds = list(dict.fromkeys(t["kind"]))
    n_lkinds = len(dict.fromkeys(layered["kind"]))
    width = 3 + 0.8 * max(n_lkinds, 2) + 9
    height = max(4.0, 0.4 * layered["layer"].nunique() + 2.5, 0.3 * len(kinds) + 2.5)
    fig, axes = plt.subplots(1, 3, figsize=(width, height), layout="constrained",
                             gridspec_kw={"width_ratios": [3 + 0.8 * max(n_lkinds, 2), 4.5, 4.5]})
    ax = axes[0]
    ax.set_title("recommended LoRA rank")
    if layered.empty:
        note_panel(ax, "no module in numbered blocks: ranks per kind on the right")
    else:
        lkinds = list(dict.fromkeys(layered["kind"]))
        grid = layered.pivot_table(index="layer", columns="kind", values="rank", aggfunc="median").reindex(columns=lkinds)
        sns.heatmap(grid, ax=ax, annot=grid.size <= 400, fmt=".0f", cmap="mako_r", vmin=0,
                    cbar_kws={"shrink": 0.8, "label": "rank r"}, annot_kws={"fontsize": 7})
        ax.set_xlabel("module kind")
        ax.set_ylabel("layer")
        plt.setp(ax.get_xticklabels(), rotation=40, ha="right")
    groups = [(k, t[t["kind"] == k]) for k in kinds]
    y = np.arange(len(kinds))
    h = 0.4
    uniform_rank = plan.info.get("results", {}).get("uniform", {}).get("rank")
    plan_params = [g["params"].sum() for _, g in groups]
    uni_params = [g["uniform_params"].sum() for _, g in groups]
    bars = [axes[1].barh(y - h / 2, plan_params, h, label="plan", color="C0"),
            axes[1].barh(y + h / 2, uni_params, h, label=f"uniform r = {uniform_rank}, the same budget", color="C7")]
    axes[1].set_title("LoRA parameters per kind")
    axes[1].set_xlabel("trainable parameters (count)")
    plan_e = [100 * energy_weighted_mean(g["captured_energy"], g["delta_energy"]) for _, g in groups]
    uni_e = [100 * energy_weighted_mean(g["uniform_captured_energy"], g["delta_energy"]) for _, g in groups]
    axes[2].barh(y - h / 2, plan_e, h, color="C0")
    axes[2].barh(y + h / 2, uni_e, h, color="C7")
    axes[2].set_title("captured energy per kind")
    axes[2].set_xlabel("captured share of the kind's ‖ΔW‖² (%)")
    axes[2].set_xlim(0, 100)
    for a in axes[1:]:
        a.set_yticks(y, kinds, fontsize=8)
        a.invert_yaxis()
        for i, (_, g) in enumerate(groups):
            if not (g["delta_energy"] > 0).any():  # nothing to adapt: say so where the bars would be
                a.text(0.02, i, "ΔW = 0: not adapted", transform=a.get_yaxis_transform(), va="center", fontsize=8,
                       color="0.3")
    fig.legend(handles=bars, loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    res = plan.info.get("results", {})
    fig.suptitle(f"LoRA ranks, rule {plan.info.get('options', {}).get('rule')}: {res.get('params', 0):,} parameters, "
                 f"{percent(res.get('captured_energy', 0.0))} of ‖ΔW‖² captured", fontsize=12)
    return save_figure(fig, path)


def render_budget_figure(plan: RankPlanLike, path: Path) -> str | None:
    """``budget_curve.png``: captured share of ``‖ΔW‖²`` against LoRA parameters (log scale) for the best allocation
    of each budget and for one rank everywhere, with the plan and its uniform alternative marked; None without a
    ``budget_curve`` (a plan saved before it existed)."""
    curve = getattr(plan, "budget_curve", None)
    if curve is None:
        return None
    plt, _ = pyplot()
    fig, (ax, gap) = plt.subplots(2, 1, figsize=(8.5, 6.8), layout="constrained", sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    best = curve[curve["allocation"] == "best"]
    uniform = curve[curve["allocation"] == "uniform"]
    if best.empty:
        note_panel(ax, "ΔW = 0 in every target module: no energy to capture")
        gap.set_visible(False)
        return save_figure(fig, path)
    ax.plot(best["params"], 100 * best["captured_energy"], color="C0", lw=1.8,
            label="best allocation of each budget (ranks per module, Eckart–Young)")
    ax.plot(uniform["params"], 100 * uniform["captured_energy"], color="C7", lw=1.4, marker=".", ms=3,
            label="uniform: rank r in every module")
    for row in uniform[uniform["rank"].isin(MARKED_RANKS)].itertuples():
        ax.annotate(f"r={int(row.rank)}", (row.params, 100 * row.captured_energy), textcoords="offset points",
                    xytext=(4, -10), fontsize=8, color="0.35")
    res = plan.info.get("results", {})
    gain = plan.info.get("options", {}).get("gain")
    if res.get("params"):
        ax.plot([res["params"]], [100 * res.get("captured_energy", 0.0)], marker="*", ms=14, color="C3", ls="none",
                label=f"the plan ({plan.info.get('options', {}).get('rule')}"
                      + (", gain relative: per-module shares" if gain == "relative" else "") + ")")
    uni = res.get("uniform") or {}
    if uni.get("params"):
        ax.plot([uni["params"]], [100 * uni.get("captured_energy", 0.0)], marker="s", ms=8, color="0.3", ls="none",
                label=f"uniform r = {uni.get('rank')} within the plan's budget")
    # the best allocation at each uniform budget (between exact breakpoints, linearly in log N): the gain over uniform
    inside = uniform[(uniform["params"] >= best["params"].min()) & (uniform["params"] <= best["params"].max())]
    at = np.interp(np.log(inside["params"].to_numpy(float)), np.log(best["params"].to_numpy(float)),
                   best["captured_energy"].to_numpy(float))
    gap.plot(inside["params"], 100 * (at - inside["captured_energy"].to_numpy(float)), color="C0", lw=1.4)
    gap.axhline(0, color="0.5", lw=0.8)
    gap.set_ylabel("best − uniform\n(percentage points)", fontsize=9)
    gap.set_xlabel("LoRA parameters (trainable, log scale)")
    ax.set_xscale("log")
    ax.set_ylim(0, 101)
    ax.set_ylabel("captured share of ‖ΔW‖² (%)")
    ax.legend(loc="best", fontsize=8)
    ax.set_title("How much of the update each LoRA budget can hold at best: plan, best allocation and uniform rank",
                 fontsize=11)
    return save_figure(fig, path)


def render_plan_figures(plan: RankPlanLike, folder: Path) -> list[str]:
    """Every figure of a plan into ``folder`` (``ranks.png``, ``budget_curve.png``); returns the file names."""
    written = [render_rank_figure(plan, folder / "ranks.png"), render_budget_figure(plan, folder / "budget_curve.png")]
    return [w for w in written if w]

"""The figure of a LoRA rank plan (``rankscope recommend``): ``ranks.png``, drawn from the plan's table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..numerics.metrics import energy_weighted_mean
from .style import percent, pyplot, save_figure

if TYPE_CHECKING:
    import pandas as pd


class RankPlanLike(Protocol):
    """What the figure reads from a rank plan (``RankPlan``): its table (``layer``, ``kind``, ``rank``, ``params``,
    ``uniform_params``, ``captured_energy``, ``uniform_captured_energy``, ``delta_energy``) and its info."""

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
    if layered.empty:
        ax.text(0.5, 0.5, "no numbered blocks", ha="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        lkinds = list(dict.fromkeys(layered["kind"]))
        grid = layered.pivot_table(index="layer", columns="kind", values="rank", aggfunc="median").reindex(columns=lkinds)
        sns.heatmap(grid, ax=ax, annot=grid.size <= 400, fmt=".0f", cmap="mako_r", cbar_kws={"shrink": 0.8},
                    annot_kws={"fontsize": 7})
        ax.set_title("recommended rank")
        ax.set_xlabel("module kind")
        ax.set_ylabel("layer")
        plt.setp(ax.get_xticklabels(), rotation=40, ha="right")
    groups = [(k, t[t["kind"] == k]) for k in kinds]
    y = np.arange(len(kinds))
    h = 0.4
    plan_params = [g["params"].sum() for _, g in groups]
    uni_params = [g["uniform_params"].sum() for _, g in groups]
    axes[1].barh(y - h / 2, plan_params, h, label="plan", color="C0")
    axes[1].barh(y + h / 2, uni_params, h, label=f"uniform r={plan.info.get('results', {}).get('uniform', {}).get('rank')}",
                 color="C7")
    axes[1].set_title("LoRA parameters per kind")
    plan_e = [100 * energy_weighted_mean(g["captured_energy"], g["delta_energy"]) for _, g in groups]
    uni_e = [100 * energy_weighted_mean(g["uniform_captured_energy"], g["delta_energy"]) for _, g in groups]
    axes[2].barh(y - h / 2, plan_e, h, label="plan", color="C0")
    axes[2].barh(y + h / 2, uni_e, h, label="uniform", color="C7")
    axes[2].set_title("captured energy per kind (% of ‖ΔW‖²)")
    axes[2].set_xlim(0, 100)
    for a in axes[1:]:
        a.set_yticks(y, kinds, fontsize=8)
        a.invert_yaxis()
        a.legend(fontsize=8, loc="lower right")
    res = plan.info.get("results", {})
    fig.suptitle(f"LoRA ranks, rule {plan.info.get('options', {}).get('rule')}: {res.get('params', 0):,} parameters, "
                 f"{percent(res.get('captured_energy', 0.0))} of ‖ΔW‖² captured", fontsize=12)
    return save_figure(fig, path)

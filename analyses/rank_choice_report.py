"""The rank-choice study's report: README.md, CSVs and figures generated from the run cache, pending work stated.

Called by ``rank_choice.py`` at the end of every stage (and by ``--stage report``).  Every number in the README
comes from the cached runs; an arm without its full set of paired seeds is listed as pending, never as a result.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rank_choice_arms as arms
import study_stats as st

DEFAULT_RUN_SECONDS = 60.0
"""Projection for a kind of run not yet timed on any task."""
ARM_TEXT = {
    "uniform": "uniform rank r, default init (the reference)",
    "plan-full": "`recommend --rule budget:N` on the full fine-tune's ΔW spectra",
    "plan-update": "`recommend` on the probe update (short full fine-tuning run)",
    "plan-gradient": "`recommend` on the probe gradient at the base",
    "placebo": "plan-full's ranks shuffled across modules of the same shape (seeded)",
    "uniform+init-gradient": "uniform r, factors started in the probe gradient's subspace",
    "uniform+init-update": "uniform r, factors = best rank-r approximation of the probe update",
    "plan+init-gradient": "probe-gradient plan with gradient-subspace init",
    "eva": "peft EVA init (rho = 1: equal budget), uniform r",
    "adalora": "peft AdaLoRA, 1.5r → average r (final budget in rank units)",
    "adalora-params": "the same AdaLoRA, its masking counting parameters: final model ≤ the budget",
    "resize4x": "uniform 4r trained, then `rankscope resize` to the budget",
    "extract-greedy": "no training: full fine-tune's ΔW cut with the greedy plan",
    "extract-uniform": "no training: full fine-tune's ΔW cut at uniform r",
}


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def _pm(values: list[float]) -> str:
    if not values:
        return "–"
    mean, sd = st.mean_sd(values)
    return f"{mean:.3f} ± {sd:.3f}"


def _projection(study: Any) -> dict[str, Any]:
    """Pending runs per stage and task, and their projected minutes (medians of the runs so far)."""
    from rank_choice import GAP_SEEDS, LR_SEEDS, STUDY_SEEDS, TASKS

    def per_run(task: str, kind: str) -> float:
        for t in [task, *study.tasks]:
            v = study.seconds_per_run(t, kind)
            if v is not None:
                return v
        return DEFAULT_RUN_SECONDS

    out: dict[str, Any] = {}
    for task in study.tasks:
        s = TASKS[task]
        n_gap = {"full": 0, "lora": 0}
        for which, r in study.gap_runs(task):
            arm, kind = ("full", "full") if which == "full" else ("uniform", "lora")
            lrs = s.full_lrs if which == "full" else study.lr_grid(task, arm, r)
            rows = study.rows(task, arm, r)
            n_gap[kind] += sum(1 for lr in lrs for seed in LR_SEEDS
                               if not any(x["lr"] == lr and x["seed"] == seed for x in rows))
            best = study.task_lr(task, arm, r)
            n_gap[kind] += sum(1 for seed in GAP_SEEDS[len(LR_SEEDS):]
                               if best is None or not any(x["lr"] == best and x["seed"] == seed for x in rows))
        r = study.budget_rank(task)
        n_lr = n_seeds = 0
        for arm in arms.TRAINED_ARMS:
            rows = study.rows(task, arm, r) if r is not None else []
            n_lr += sum(1 for lr in study.lr_grid(task, arm, r) for seed in LR_SEEDS
                        if not any(x["lr"] == lr and x["seed"] == seed for x in rows))
            lr = study.arm_lr(task, arm, r) if r is not None else None
            n_seeds += sum(1 for seed in STUDY_SEEDS
                           if lr is None or not any(x["lr"] == lr and x["seed"] == seed for x in rows)) \
                - (len(LR_SEEDS) if lr is None else 0)  # the grid's seeds at the chosen rate are reused
        full_s, lora_s = per_run(task, "full"), per_run(task, "lora")
        out[task] = {"gap_runs": n_gap["full"] + n_gap["lora"], "lr_runs": n_lr, "seeds_runs": max(n_seeds, 0),
                     "gap_minutes": (n_gap["full"] * full_s + n_gap["lora"] * lora_s) / 60,
                     "lr_minutes": n_lr * lora_s / 60, "seeds_minutes": max(n_seeds, 0) * lora_s / 60,
                     "seconds_per_lora_run": lora_s, "seconds_per_full_run": full_s}
    return out


def _results(study: Any, task: str, r: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(lr table, per-arm results with paired statistics, per-seed test accuracies)."""
    from rank_choice import LR_SEEDS, STUDY_SEEDS

    lr_rows, result_rows, seed_rows = [], [], []
    ref_lr = study.arm_lr(task, "uniform", r)
    ref = {x["seed"]: x for x in study.rows(task, "uniform", r) if x["lr"] == ref_lr}
    ref_cost = float(np.mean([x.get("run_seconds", 0.0) for x in ref.values()])) if ref else None
    finished: dict[str, dict[int, float]] = {}  # arm → test accuracy per study seed (arms with every seed)
    for arm in [*arms.TRAINED_ARMS, *arms.EXTRACTED_ARMS]:
        rows = study.rows(task, arm, r)
        if arm in arms.TRAINED_ARMS:
            for lr in study.lr_grid(task, arm, r):
                grid = [x for x in rows if x["lr"] == lr and x["seed"] in LR_SEEDS]
                if grid:
                    lr_rows.append({"task": task, "arm": arm, "lr": lr, "seeds": len(grid),
                                    "validation_accuracy": float(np.mean([x["validation_accuracy"] for x in grid])),
                                    "validation_loss": float(np.mean([x["validation_loss"] for x in grid]))})
            lr = study.arm_lr(task, arm, r)
            chosen = {x["seed"]: x for x in rows if lr is not None and x["lr"] == lr}
        else:
            lr = None
            chosen = {x["seed"]: x for x in rows}
        for seed, x in sorted(chosen.items()):
            seed_rows.append({"task": task, "arm": arm, "lr": lr, "seed": seed, "test_accuracy": x["test_accuracy"],
                              "test_loss": x["test_loss"], "validation_accuracy": x["validation_accuracy"],
                              "lora_params": x.get("lora_params"), "run_seconds": x.get("run_seconds")})
        row: dict[str, Any] = {"task": task, "arm": arm, "budget_rank": r, "lr": lr, "seeds": len(chosen),
                               "what": ARM_TEXT.get(arm, "")}
        if not chosen:
            row["status"] = "pending: " + study.unavailable[task].get(arm, "not run yet")
            result_rows.append(row)
            continue
        params = [x.get("lora_params") for x in chosen.values() if x.get("lora_params") is not None]
        budget = st.lora_parameters(study.shapes, st.uniform_ranks(study.shapes, r))
        accs = [x["test_accuracy"] for x in chosen.values()]
        losses = [x["test_loss"] for x in chosen.values()]
        cost = float(np.mean([x.get("run_seconds", 0.0) for x in chosen.values()])) + \
            float(next(iter(chosen.values())).get("setup_seconds", 0.0))
        row.update({"lora_params": int(np.mean(params)) if params else None,
                    "budget_error_pct": 100 * st.budget_error(int(np.mean(params)), budget) if params else None,
                    "test_accuracy": float(np.mean(accs)), "test_accuracy_sd": st.mean_sd(accs)[1],
                    "test_loss": float(np.mean(losses)), "cost_seconds": cost})
        complete = all(seed in chosen for seed in STUDY_SEEDS) and all(seed in ref for seed in STUDY_SEEDS)
        if arm in arms.EXTRACTED_ARMS:
            row["status"] = "done (deterministic, one evaluation)"
        elif arm == "uniform":
            row["status"] = "done" if complete else f"pending: {len(chosen)}/{len(STUDY_SEEDS)} seeds"
        elif not complete:
            row["status"] = f"pending: {len(chosen)}/{len(STUDY_SEEDS)} seeds (uniform {len(ref)})"
        else:
            paired = st.paired_bootstrap({k: v["test_accuracy"] for k, v in chosen.items() if k in STUDY_SEEDS},
                                         {k: v["test_accuracy"] for k, v in ref.items() if k in STUDY_SEEDS})
            loss = st.paired_bootstrap({k: v["test_loss"] for k, v in chosen.items() if k in STUDY_SEEDS},
                                       {k: v["test_loss"] for k, v in ref.items() if k in STUDY_SEEDS})
            arm_acc = {k: v["test_accuracy"] for k, v in chosen.items() if k in STUDY_SEEDS}
            ref_acc = {k: v["test_accuracy"] for k, v in ref.items() if k in STUDY_SEEDS}
            family = st.paired_t_interval(arm_acc, ref_acc, level=1 - 0.05 / COMPARISONS)
            extra = cost - (ref_cost or 0.0)
            equal = row["budget_error_pct"] is None or abs(row["budget_error_pct"]) <= 100 * st.BUDGET_TOLERANCE
            finished[arm] = arm_acc
            if arm == "placebo" and "plan-full" in finished:  # does the plan beat its own shuffle?
                against = st.paired_bootstrap(finished["plan-full"], arm_acc)
                row.update({"plan_minus_placebo": against["mean"], "plan_minus_placebo_low": against["low"],
                            "plan_minus_placebo_high": against["high"],
                            "plan_minus_placebo_p": st.sign_flip_p(finished["plan-full"], arm_acc)})
            row.update({"status": "done" if equal else "done, but NOT within 1 % of the budget", "diff": paired["mean"], "diff_low": paired["low"], "diff_high": paired["high"],
                        "verdict": st.verdict(paired["low"], paired["high"]), "loss_diff": loss["mean"],
                        "diff_low_family": family["low"], "diff_high_family": family["high"],
                        "verdict_family": st.verdict(family["low"], family["high"]),
                        "sign_flip_p": st.sign_flip_p(arm_acc, ref_acc),
                        "extra_seconds": extra, "accuracy_per_extra_second": st.gain_per_second(paired["mean"], extra)})
        result_rows.append(row)
    return pd.DataFrame(lr_rows), pd.DataFrame(result_rows), pd.DataFrame(seed_rows)


EXTRACTION_MARGIN = 0.01
"""A difference of extraction accuracies below one point is read as none (one evaluation of a few hundred examples:
one point is a handful of them)."""
COMPARISONS = len(arms.TRAINED_ARMS) - 1
"""The arms compared with uniform in one task (every trained arm but uniform): the family of the Bonferroni
intervals, fixed by the design whatever has run."""


def _probe_lines(study: Any) -> list[str]:
    """One line per probe of each task: its signal, size, cost and (update) how far its short run got."""
    lines = []
    for task in study.tasks:
        for signal in ("gradient", "update"):
            try:  # written by rank_choice_arms.probe_folder when the probe is made or reused
                info = json.loads(arms.probe_facts_path(study.runs, task, signal).read_text())
            except (OSError, ValueError):
                continue
            probe = info.get("probe") or {}
            size = f"{info.get('batches')} batches" if signal == "gradient" else f"{info.get('steps')} steps"
            text = f"* {task} / {signal}: {size} at the base, {float(info.get('cost_seconds', 0.0)):.0f} s"
            if signal == "update" and probe.get("validation_accuracy") is not None:
                text += (f"; after its {info.get('steps')} steps of full fine-tuning (lr {probe.get('lr')}, "
                         f"{probe.get('epochs_completed')} epochs) validation accuracy was "
                         f"{probe['validation_accuracy']:.3f} (loss {probe.get('validation_loss', float('nan')):.3f})")
            lines.append(text + ".")
    return lines


def _plot_gap(gap: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(gap["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), layout="constrained", squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        g = gap[gap["task"] == task].sort_values("rank")
        ax.errorbar(g["params"], g["lora_mean"], yerr=g["lora_sd"], marker="o", capsize=4, label="uniform LoRA")
        full, sd = g["full_mean"].iloc[0], g["full_sd"].iloc[0]
        ax.axhline(full, color="k", ls="--", label=f"full fine-tuning {full:.3f} ± {sd:.3f}")
        ax.axhspan(full - sd, full + sd, color="k", alpha=0.08)
        for _, row in g.iterrows():
            ax.annotate(f"r={row['rank']}", (row["params"], row["lora_mean"]), textcoords="offset points",
                        xytext=(6, -12), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("trainable LoRA parameters")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"gap check: {task}")
        ax.legend(fontsize=8, loc="lower right")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_results(results: pd.DataFrame, path: Path) -> bool:
    done = results[results["diff"].notna()] if "diff" in results else results[:0]
    if done.empty:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(done["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 0.4 * done.groupby("task").size().max() + 1.8),
                             layout="constrained", squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        d = done[done["task"] == task]
        y = np.arange(len(d))
        ax.errorbar(d["diff"], y, xerr=[d["diff"] - d["diff_low"], d["diff_high"] - d["diff"]], fmt="o", capsize=3)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(y, d["arm"])
        ax.set_xlabel("test accuracy − uniform (paired, 95 % bootstrap)")
        ax.set_title(task)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(study: Any, out: Path, info: dict[str, Any]) -> None:
    """Regenerate ``out`` (README.md, CSVs, figures, run.json) from the cache."""
    from rank_choice import GAP_SEEDS, LR_SEEDS, STUDY_SEEDS, TASKS

    gap = pd.DataFrame([row for task in study.tasks for row in study.gap_table(task)])
    lr_tables, result_tables, seed_tables = [], [], []
    budgets = {}
    for task in study.tasks:
        r = study.budget_rank(task)
        budgets[task] = r
        if r is not None:
            a, b, c = _results(study, task, r)
            lr_tables.append(a)
            result_tables.append(b)
            seed_tables.append(c)
    lrs = pd.concat(lr_tables) if lr_tables else pd.DataFrame()
    results = pd.concat(result_tables) if result_tables else pd.DataFrame()
    seeds = pd.concat(seed_tables) if seed_tables else pd.DataFrame()
    runs = pd.DataFrame([{k: v for k, v in x.items() if k not in ("history", "spec", "settings", "final_ranks", "_mtime")}
                         for t in study.tasks for x in study.cache.records(t)])
    projection = _projection(study)

    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "figures").mkdir(parents=True)
    gap.to_csv(tmp / "gap.csv", index=False)
    lrs.to_csv(tmp / "lr.csv", index=False)
    results.to_csv(tmp / "results.csv", index=False)
    seeds.to_csv(tmp / "seeds.csv", index=False)
    runs.to_csv(tmp / "runs.csv", index=False)
    figures = []
    if not gap.empty:
        _plot_gap(gap, tmp / "figures" / "gap.png")
        figures.append("gap.png")
    if not results.empty and _plot_results(results, tmp / "figures" / "differences.png"):
        figures.append("differences.png")
    readme = _readme(study, gap, lrs, results, budgets, projection, figures)
    (tmp / "README.md").write_text(readme)
    meta = {"command": "analyses/rank_choice.py", **info, "budgets": budgets, "projection": projection,
            "unavailable": study.unavailable, "seeds": {"lr": LR_SEEDS, "gap": GAP_SEEDS, "study": STUDY_SEEDS},
            "written": time.strftime("%Y-%m-%d %H:%M:%S"), "tasks": {t: TASKS[t].key() for t in study.tasks}}
    from rankscope.io.results import versions

    meta["versions"] = versions()
    (tmp / "run.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def _sizes(s: Any) -> str:
    from rankscope.training.data import load_task

    t = load_task(s.task, max_train=s.max_train, max_eval=s.max_eval)
    return f"{len(t.train):,} / {len(t.validation):,} / {len(t.test):,}"


def _facts_text() -> str:
    from rankscope.training.synthetic import SYNTHETIC_TASKS

    t = SYNTHETIC_TASKS["entity-facts"]
    rest = len(t.templates) - t.train_templates - t.validation_templates
    test = rest if t.test_templates is None else t.test_templates
    unused = f" ({rest - test} not used)" if rest > test else ""
    return (f"{t.entities} invented people, each given one of {len(t.labels)} home countries (exactly balanced), "
            f"written in sentence templates that never name the country: {t.train_templates} / "
            f"{t.validation_templates} / {test} of its {len(t.templates)} templates for train / validation / test"
            f"{unused}.  Only the name carries the label, so a model must *store* {t.entities} independent facts")


def _readme(study: Any, gap: pd.DataFrame, lrs: pd.DataFrame, results: pd.DataFrame, budgets: dict[str, int | None],
            projection: dict[str, Any], figures: list[str]) -> str:
    from rank_choice import LR_SEEDS, STUDY_SEEDS, TASKS

    L: list[str] = []
    done_arms = results[results["status"].str.startswith("done")] if "status" in results else results
    verdicts = done_arms[done_arms["verdict"].notna()] if "verdict" in done_arms else done_arms[:0]
    L.append("# Does any rank plan, spectral init or resizing beat uniform LoRA rank? (a fair test, MiniLM-L6)\n")
    L.append("Generated by `analyses/rank_choice.py` from its run cache (`runs/rank-choice/cache/`); do not edit by "
             "hand.  Reproduce or resume with one command (finished runs are reused):\n")
    L.append("```bash\n.venv/bin/python analyses/rank_choice.py                 # all stages: gap → lr → seeds → report\n"
             ".venv/bin/python analyses/rank_choice.py --stage seeds --max-hours 2   # one stage, time-limited\n```\n")
    # ---- status
    L.append("## Status\n")
    for task in study.tasks:
        p = projection[task]
        r = budgets[task]
        n_verdicts = int((verdicts["task"] == task).sum()) if not verdicts.empty else 0
        stages = []
        stages.append("gap: done" if p["gap_runs"] == 0 else f"gap: **pending** ({p['gap_runs']} runs)")
        stages.append("lr: done" if r is not None and p["lr_runs"] == 0 else f"lr: **pending** ({p['lr_runs']} runs)")
        stages.append("seeds: done" if r is not None and p["seeds_runs"] <= 0 else
                      f"seeds: **pending** ({max(p['seeds_runs'], 0)} runs)")
        L.append(f"* **{task}** — {'; '.join(stages)}; {n_verdicts} arm(s) with a verdict.")
    total_min = sum(p["gap_minutes"] + p["lr_minutes"] + p["seeds_minutes"] for p in projection.values())
    L.append(f"\nProjected cost of what is pending: **{total_min / 60:.1f} h** on this machine (medians of the "
             "runs so far: " + ", ".join(f"{t} {p['seconds_per_lora_run']:.0f} s per LoRA run, "
                                          f"{p['seconds_per_full_run']:.0f} s per full run"
                                          for t, p in projection.items()) + "; upper bound: arms that cannot run "
             "here are counted).  **Nothing below that is marked pending is a result.**\n")
    # ---- setup
    L.append("## Setup (fixed before running)\n")
    L.append("* Model: all-MiniLM-L6-v2 (`bundled:minilm-base`) as a sequence classifier; LoRA on all 37 linear "
             "modules (`all-linear`: q, k, v, attention output, FFN in/out × 6 layers + pooler), α = 2r in every "
             "module (α/r constant whatever the rank), the head trained whole.")
    L.append("* Primary metric: **test accuracy**; held-out (test) loss beside it.  Validation chooses the learning "
             f"rate (grid × seeds {list(LR_SEEDS)}); test is reported on seeds {list(STUDY_SEEDS)} at that rate "
             "(the grid's two seeds are reused).")
    L.append("* Same steps, batch, schedule in every arm of a task (AdamW, 10 % warm-up, linear decay, clipping 1.0, "
             "best-on-validation weights after each epoch); a seed fixes the data order and the head init, so arms "
             "are paired by seed.")
    L.append("* Paired difference against `uniform` over the seeds, 95 % percentile bootstrap resampling seeds "
             "(10,000 resamples); verdict **wins** (interval above 0), **loses** (below), **ties**.")
    L.append("* Equal budget: every arm's trainable LoRA parameters are counted exactly, Σ rᵢ·(outᵢ + inᵢ) from the "
             "module shapes, checked against the trained model's own count, and must be within 1 % of uniform "
             "rank r's (`study_stats.lora_parameters`).")
    if study.device == "cpu":
        L.append(f"* Hardware: every run on CPU, {study.threads} torch threads ({os.cpu_count()} cores here); no GPU "
                 "was lent to the sessions that ran this study, so the seed sweep ran on CPU too (`--device cuda` "
                 "runs it on a GPU, cached apart).  Seconds are wall seconds on this machine.\n")
    else:
        L.append(f"* Hardware: every run of this report on `{study.device}` (`--device`); CPU runs in the cache are "
                 "not mixed in.  Seconds are wall seconds on that machine.\n")
    L.append("| task | train / val / test | max tokens | epochs × steps | batch | LoRA lr grid (grown past an edge, §2) | full FT lr grid |")
    L.append("|---|---|---|---|---|---|---|")
    for task in study.tasks:
        s = TASKS[task]
        sizes = _sizes(s)
        L.append(f"| {task} | {sizes} | {s.max_length} | {s.epochs} × {s.steps // s.epochs} | {s.batch_size} | "
                 f"{', '.join(f'{x:g}' for x in s.lora_lrs)} | {', '.join(f'{x:g}' for x in s.full_lrs)} |")
    L.append("")
    L.append("**Why `entity-facts` is the headroom task.** Rotten Tomatoes is saturated (in the earlier study uniform "
             "r = 2 came within 2 points of full fine-tuning), so no allocation could show a gain there.  The "
             "headroom task must be built offline; `entity-facts` (`rankscope/training/synthetic.py`, "
             "`rankscope train --task entity-facts`) is generated from a seed: " + _facts_text() + " (capacity-bound: where a low-rank update should run out of room) and "
             "store them so that they carry over to phrasings it never saw (no template is shared between splits).  "
             "It is cheap (sentences of about 15 tokens), so the 8-seed sweep fits on 2 cores.  The 5-topic BBC News at "
             "small rank was the alternative; its articles run to hundreds of tokens, so every step at 128+ tokens "
             "costs several times more, and whether it has headroom at all would itself have to be measured first "
             "(not done here).  The sizes were calibrated once before the study (single runs, not part of the "
             "cache): with 200 facts in 8 phrasings, uniform r = 2 at lr 3e-3 reached test accuracy 1.000 like full "
             "fine-tuning (no headroom); with 1,000 facts in 2 phrasings and 8 labels both stayed at chance; 400 facts "
             "in 4 phrasings gave full fine-tuning 0.91 and uniform r = 2 0.815, the setting used here.\n")
    # ---- gap
    L.append("## 1. Gap check (is there headroom?)\n")
    if gap.empty:
        L.append("**Pending**: no gap-check runs finished yet.\n")
    else:
        if "gap.png" in figures:
            L.append("![gap check](figures/gap.png)\n")
        L.append("| task | uniform r | LoRA params | full FT (lr, seeds) | uniform LoRA (lr, seeds) | gap | gap / SD | "
                 "headroom (≥ 3 pts and ≥ 4 SD) |")
        L.append("|---|---|---|---|---|---|---|---|")
        for _, g in gap.iterrows():
            L.append(f"| {g['task']} | {g['rank']} | {g['params']:,} | {g['full_mean']:.3f} ± {g['full_sd']:.3f} "
                     f"({g['full_lr']:g}, {g['full_seeds']}) | {g['lora_mean']:.3f} ± {g['lora_sd']:.3f} "
                     f"({g['lora_lr']:g}, {g['lora_seeds']}) | {100 * g['gap']:+.1f} pts | {g['gap_in_sds']:.1f} | "
                     f"{'**yes**' if g['headroom'] else 'no'} |")
        L.append("\nSD: the larger of the two arms' seed SDs.  Budget per task: the largest studied rank with "
                 "headroom, else the smallest studied rank (the control).")
        for task in study.tasks:
            r = budgets[task]
            if r is None:
                L.append(f"* {task}: budget **pending** (gap check incomplete).")
            else:
                rows = gap[(gap["task"] == task) & (gap["rank"] == r)]
                head = bool(rows["headroom"].iloc[0]) if len(rows) else False
                L.append(f"* {task}: budget = uniform r = {r} "
                         f"({st.lora_parameters(study.shapes, st.uniform_ranks(study.shapes, r)):,} LoRA parameters)"
                         f"{' — headroom' if head else ' — no headroom at any studied rank: the saturated control'}.")
        L.append("")
    # ---- lr
    L.append("## 2. Learning rate per arm (validation, 2 seeds)\n")
    if lrs.empty:
        L.append("**Pending** (stage `lr`).\n")
    else:
        for task in dict.fromkeys(lrs["task"]):
            pivot = lrs[lrs["task"] == task].pivot_table(index="arm", columns="lr", values="validation_accuracy")
            L.append(f"**{task}** (mean validation accuracy of the grid seeds):\n")
            L.append("| arm | " + " | ".join(f"lr {c:g}" for c in pivot.columns) + " | chosen |")
            L.append("|---|" + "---|" * len(pivot.columns) + "---|")
            for arm, row in pivot.iterrows():
                chosen = study.arm_lr(task, arm, budgets[task])
                grid = study.lr_grid(task, arm, budgets[task])
                grown = len(grid) - len(TASKS[task].lora_lrs)
                edge = (" (grid edge, after the grid grew to its limit)" if chosen in (grid[0], grid[-1]) else
                        f" (grid grown by {grown})" if grown else "") if chosen is not None else ""
                L.append(f"| {arm} | " + " | ".join(_fmt(v) for v in row.to_numpy()) +
                         f" | {'pending' if chosen is None else f'{chosen:g}{edge}'} |")
            L.append("")
    # ---- results
    L.append("## 3. Arms at equal budget: paired difference against uniform (test accuracy)\n")
    if results.empty:
        L.append("**Pending** (stages `lr` and `seeds`).\n")
    else:
        if "differences.png" in figures:
            L.append("![paired differences](figures/differences.png)\n")
        L.append("| task | arm | what | LoRA params (Δ budget) | seeds | test acc mean ± sd | test loss | "
                 f"Δ vs uniform [95 % CI] | verdict | family-wise t CI (Bonferroni, m = {COMPARISONS}) | family-wise "
                 "verdict | sign-flip p | cost s | Δacc per extra s | status |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for _, x in results.iterrows():
            has = pd.notna(x.get("test_accuracy"))
            done = str(x.get("status")).startswith("done") and pd.notna(x.get("diff"))
            params = f"{int(x['lora_params']):,} ({x['budget_error_pct']:+.2f} %)" if has and pd.notna(
                x.get("lora_params")) else "–"
            final = done or x["arm"] in arms.EXTRACTED_ARMS or (x["arm"] == "uniform" and x["status"] == "done")
            has = has and final  # an arm without all its paired seeds shows no numbers: it is pending, not a result
            acc = f"{x['test_accuracy']:.3f} ± {x['test_accuracy_sd']:.3f}" if has else "–"
            diff = f"{100 * x['diff']:+.2f} pts [{100 * x['diff_low']:+.2f}, {100 * x['diff_high']:+.2f}]" if done else "–"
            family = (f"[{100 * x['diff_low_family']:+.2f}, {100 * x['diff_high_family']:+.2f}]"
                      if done and pd.notna(x.get("diff_low_family")) else "–")
            per = x.get("accuracy_per_extra_second")
            per_text = f"{1e4 * per:+.2f} pts/100 s" if done and pd.notna(per) else "–"
            L.append(f"| {x['task']} | {x['arm']} | {x['what']} | {params} | {x['seeds']} | {acc} | "
                     f"{_fmt(x.get('test_loss')) if has else '–'} | {diff} | {x.get('verdict') if done else '–'} | "
                     f"{family} | {x.get('verdict_family') if done else '–'} | "
                     f"{_fmt(x.get('sign_flip_p'), 4) if done else '–'} | "
                     f"{_fmt(x.get('cost_seconds'), 0) if has else '–'} | {per_text} | {x['status']} |")
        L.append("\nCost: mean seconds of one run of the arm plus its one-off preparation (probe, full fine-tune + "
                 "spectrum for the full-FT plans and extraction), on this 2-core machine shared with other work.  "
                 f"Family-wise: the paired Student-t interval at level 1 − 0.05/{COMPARISONS}, so that all "
                 f"{COMPARISONS} comparisons of a task hold together with 95 % probability (Bonferroni); a win there "
                 "survives the multiplicity of this many arms.  (The bootstrap is not used at that level: with 8 "
                 "seeds its extreme quantiles are far too narrow.)  Sign-flip p: the exact paired randomisation test "
                 f"of no difference over the 2⁸ sign patterns; its smallest possible value, 2/256 = 0.0078, is above "
                 f"the Bonferroni threshold 0.05/{COMPARISONS} = {0.05 / COMPARISONS:.4f}, so with 8 seeds no arm can "
                 "pass an exact family-wise test: the per-arm verdicts are the study's primary answer, the "
                 "family-wise columns say how much of it would survive a strict correction.\n")
        probes = _probe_lines(study)
        if probes:
            L.append("**The probes** (made once per task, their cost counted in every arm that uses them):\n")
            L += probes
            L.append("")
        ext = results[results["arm"].isin(list(arms.EXTRACTED_ARMS)) & results["test_accuracy"].notna()] \
            if "test_accuracy" in results else results[:0]
        L.append("### Extraction from the full fine-tune (no training): the headroom check of allocation\n")
        if ext.empty:
            L.append("**Pending** (runs with stage `seeds`).\n")
        else:
            for task in study.tasks:
                e = ext[ext["task"] == task].set_index("arm")["test_accuracy"]
                if {"extract-greedy", "extract-uniform"} <= set(e.index):
                    diff = e["extract-greedy"] - e["extract-uniform"]
                    says = ("greedy allocation helps extraction, so there is room for allocation to matter."
                            if diff >= EXTRACTION_MARGIN else
                            "within a point: one deterministic evaluation cannot tell the two apart, so cutting the "
                            "full update itself shows no room for allocation." if diff > -EXTRACTION_MARGIN else
                            "greedy allocation does worse than uniform even when cutting the full update itself; "
                            "allocation cannot be expected to help training.")
                    L.append(f"* {task}: greedy {e['extract-greedy']:.3f} vs uniform {e['extract-uniform']:.3f} "
                             f"({100 * diff:+.1f} pts): {says}")
            L.append("")
    # ---- verdict
    L.append("## Verdict\n")
    if verdicts.empty:
        L.append("**No verdict yet.** The paired seed sweep (stage `seeds`) has not finished for any arm; the only "
                 "numbers above that are results are the gap check" + (" and the learning-rate grid." if not lrs.empty
                                                                        else "."))
    else:
        for task in study.tasks:
            v = verdicts[verdicts["task"] == task]
            if v.empty:
                continue
            parts = [f"{a} ({100 * d:+.2f} pts [{100 * lo:+.2f}, {100 * hi:+.2f}])" for a, d, lo, hi in
                     zip(v["arm"], v["diff"], v["diff_low"], v["diff_high"], strict=True)]
            wins = v[v["verdict"] == "wins"]["arm"].tolist()
            loses = v[v["verdict"] == "loses"]["arm"].tolist()
            family_wins = v[v["verdict_family"] == "wins"]["arm"].tolist() if "verdict_family" in v else []
            L.append(f"* **{task}** (budget r = {budgets[task]}): wins: {', '.join(wins) or 'none'}; loses: "
                     f"{', '.join(loses) or 'none'}; the rest tie.  Wins that survive the family-wise (Bonferroni) "
                     f"intervals: {', '.join(family_wins) or 'none'}.  " + "; ".join(parts) + ".")
            placebo = v[(v["arm"] == "placebo")]
            if "plan_minus_placebo" in v and len(placebo) and pd.notna(placebo["plan_minus_placebo"].iloc[0]):
                x = placebo.iloc[0]
                says = st.verdict(x["plan_minus_placebo_low"], x["plan_minus_placebo_high"])
                L.append(f"  * Does the plan carry information?  plan-full − placebo (the same ranks shuffled "
                         f"within module shapes): {100 * x['plan_minus_placebo']:+.2f} pts "
                         f"[{100 * x['plan_minus_placebo_low']:+.2f}, {100 * x['plan_minus_placebo_high']:+.2f}], "
                         f"sign-flip p = {x['plan_minus_placebo_p']:.4f}: "
                         + ("the plan beats its own shuffle — where the ranks go matters, not only how many."
                            if says == "wins" else "the plan does not beat its own shuffle: no evidence that it "
                            "carries information beyond its multiset of ranks."))
        if "status" in results:
            waiting = results[results["status"].str.startswith("pending")]
            per_task = [f"{task}: {', '.join(dict.fromkeys(group['arm']))}" for task, group in
                        waiting.groupby("task", sort=False)]
            if per_task:
                L.append(f"\nStill pending (no verdict, not results): {'; '.join(per_task)}.")
    L.append("")
    # ---- unavailable
    missing = {(t, a): why for t in study.tasks for a, why in study.unavailable[t].items()}
    if missing:
        L.append("## Arms that could not run in this session\n")
        for (task, arm), why in missing.items():
            L.append(f"* {task} / {arm}: {why}")
        L.append("")
    L.append("## Arms, and what each one needs\n")
    L.append("| arm | what | needs |")
    L.append("|---|---|---|")
    needs = {"plan-full": "a full fine-tune", "plan-update": "`rankscope probe --signal update`",
             "plan-gradient": "`rankscope probe --signal gradient`", "placebo": "plan-full",
             "uniform+init-gradient": "probe + `recommend --init-from` + `train --init`",
             "uniform+init-update": "probe + `recommend --init-from` + `train --init`",
             "plan+init-gradient": "probe + `recommend --init-from` + `train --init`",
             "eva": "peft 0.21 `EvaConfig`, `initialize_lora_eva_weights`", "adalora": "`rankscope train --method adalora --orth-reg 0` (same runs, checked on seed 0)",
             "adalora-params": "`rankscope train --method adalora --budget-unit params --orth-reg 0` (same runs, "
                               "checked on seed 0)",
             "resize4x": "`rankscope resize`", "extract-greedy": "a full fine-tune", "extract-uniform": "a full fine-tune"}
    for arm, text in ARM_TEXT.items():
        L.append(f"| {arm} | {text} | {needs.get(arm, '–')} |")
    L.append("\nNotes on the arms: the placebo shuffles ranks only among modules of the same shape (moving a rank "
             "from a 384×384 to a 1536×384 module would change the parameter count), so its multiset of ranks and "
             "its parameter count equal plan-full's exactly.  EVA's own redistribution (`rho` > 1) keeps the *sum of "
             "ranks*, not the parameter count, so the equal-budget EVA arm uses `rho = 1` (EVA's data-driven init at "
             "uniform rank).  AdaLoRA's final budget is r per module in rank units; its effective parameter count "
             "after the final allocation (kept triplets × (out + in + 1)) is measured per run and shown in the "
             "table; its orthogonality penalty is not applied (the training loop computes the loss from logits).  "
             "resize4x is evaluated as resized, without further training; its cost includes the 4r training.\n")
    L.append("## Files\n")
    L.append("| file | content |\n|---|---|")
    L.append("| `gap.csv` | the gap check per task and studied rank |")
    L.append("| `lr.csv` | mean validation accuracy and loss per arm and learning rate (grid seeds) |")
    L.append("| `results.csv` | per arm: parameters, budget error, seeds, test accuracy/loss, paired difference and "
             "interval, verdict, cost, status |")
    L.append("| `seeds.csv` | per arm and seed at the chosen rate: test/validation accuracy, test loss |")
    L.append("| `runs.csv` | every cached run (all stages) |")
    L.append("| `figures/` | " + (", ".join(f"`{f}`" for f in figures) or "none yet") + " |")
    L.append("| `run.json` | settings, budgets, projection of pending work, unavailable arms, versions |")
    return "\n".join(L) + "\n"

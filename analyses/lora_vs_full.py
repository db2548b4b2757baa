"""LoRA vs full fine-tuning on MiniLM-L6 / Rotten Tomatoes: did they learn the same update?

One command (about 20 minutes on 2 CPU cores; finished runs are reused, so an interrupted study resumes)::

    .venv/bin/python analyses/lora_vs_full.py            # → reports/lora-vs-full/

Steps:
1. full fine-tuning of all-MiniLM-L6-v2 (``bundled:minilm-base``) on 2,000 Rotten Tomatoes reviews, 2 epochs;
2. LoRA with r ∈ {1, 2, 4, 8, 16, 64} (alpha = 2r) on ``query,value`` and on ``all-linear``, same data and seed;
3. ``rankscope spectrum`` of the full update, ``rankscope compare`` of every adapter with it,
   ``rankscope compare-adapters`` between r = 8 and r = 64 (query,value);
4. tables (``accuracy.csv``, ``summary.csv``, ``compare-*.csv``) and figures into the report folder.

Heavy artefacts (checkpoints, adapters, φ grids) stay under ``--runs`` (default ``runs/lora-vs-full``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pandas as pd

from rankscope.compare import CompareResult, compare, compare_adapters
from rankscope.io.results import versions
from rankscope.spectrum import SpectrumResult, spectrum
from rankscope.train import train

BASE = "bundled:minilm-base"
TARGETS = {"qv": "query,value", "all": "all-linear"}


def trained(out: Path, **kwargs) -> dict:
    """Train once; reuse ``metrics.json`` of a finished run."""
    metrics_file = out / "metrics.json"
    if not metrics_file.is_file():
        train(out=out, **kwargs)
    return json.loads(metrics_file.read_text())


def compared(out: Path, make) -> CompareResult:
    if not (out / "run.json").is_file():
        make().save(out)
    return CompareResult.load(out)


def summarise(table: pd.DataFrame) -> dict:
    return {
        "modules": len(table),
        "energy_lora_space": table["energy_both"].median(),
        "energy_optimum": table["energy_optimal"].median(),
        "energy_ratio": table["energy_vs_optimal"].median(),
        "phi_left_1": table["phi_left_1"].median(),
        "phi_right_1": table["phi_right_1"].median(),
        "phi_left_r": table["phi_left_r"].median(),
        "phi_random_r": table["phi_random_left_r"].median(),
        "cosine": table["cosine"].median(),
        "norm_ratio": table["norm_ratio"].median(),
        "intruders_full_mean": table["intruders_full"].mean(),
        "intruders_lora_mean": table["intruders_lora"].mean(),
        "amp_full_r": table["amp_full_r"].median(),
        "amp_lora_r": table["amp_lora_r"].median(),
    }


def plot_study(acc: pd.DataFrame, summary: pd.DataFrame, full_acc: float, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), layout="constrained")
    for targets, rows in acc[acc["method"] == "lora"].groupby("targets"):
        rows = rows.sort_values("r")
        axes[0].plot(rows["trainable_params"], rows["test_accuracy"], marker="o", label=f"LoRA {targets}")
        for row in rows.itertuples():
            axes[0].annotate(f"r={row.r}", (row.trainable_params, row.test_accuracy), fontsize=7,
                             textcoords="offset points", xytext=(3, -9))
    full = acc[acc["method"] == "full"].iloc[0]
    axes[0].scatter([full["trainable_params"]], [full_acc], color="k", marker="*", s=150, label="full fine-tuning")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("trainable parameters (log)")
    axes[0].set_ylabel("test accuracy")
    axes[0].set_title("Accuracy vs trainable parameters")
    axes[0].legend(fontsize=8)
    for targets, rows in summary.groupby("targets"):
        rows = rows.sort_values("r")
        line = axes[1].plot(rows["r"], rows["energy_lora_space"], marker="o", label=f"LoRA space, {targets}")[0]
        axes[1].plot(rows["r"], rows["energy_optimum"], ls="--", color=line.get_color(), label=f"optimum, {targets}")
        axes[2].plot(rows["r"], rows["intruders_lora_mean"], marker="o", color=line.get_color(), label=f"LoRA {targets}")
        axes[2].plot(rows["r"], rows["intruders_full_mean"], ls="--", color=line.get_color(),
                     label=f"full FT (same modules, {targets})")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("LoRA rank r")
    axes[1].set_ylabel("share of ‖ΔW_full‖² (median over modules)")
    axes[1].set_title("Full update energy inside LoRA's column+row space")
    axes[1].legend(fontsize=8)
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("LoRA rank r")
    axes[2].set_ylabel("intruder dimensions per module (top-10, ε=0.5)")
    axes[2].set_title("Intruder dimensions (Shuttleworth et al. 2024)")
    axes[2].legend(fontsize=8)
    fig.savefig(folder / "study.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("reports/lora-vs-full"))
    parser.add_argument("--runs", type=Path, default=Path("runs/lora-vs-full"))
    parser.add_argument("--ranks", default="1,2,4,8,16,64")
    parser.add_argument("--targets", default="qv,all", help="Comma list of: " + ", ".join(TARGETS))
    parser.add_argument("--max-train", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-eval", type=int, default=None, help="Cap validation/test size (quick checks only).")
    args = parser.parse_args()
    ranks = [int(r) for r in args.ranks.split(",")]
    target_keys = args.targets.split(",")
    runs, out = args.runs, args.out
    runs.mkdir(parents=True, exist_ok=True)
    common = {"model": BASE, "task": "rotten-tomatoes", "max_train": args.max_train, "epochs": args.epochs,
              "seed": args.seed, "max_eval": args.max_eval, "progress": True}
    t0 = time.perf_counter()

    accuracy = []
    full = trained(runs / "full", method="full", **common)
    accuracy.append({"method": "full", "targets": "all", "r": None, **_acc(full)})
    for key in target_keys:
        for r in ranks:
            m = trained(runs / f"lora-{key}-r{r}", method="lora", r=r, alpha=2 * r, target_modules=TARGETS[key],
                        **common)
            accuracy.append({"method": "lora", "targets": key, "r": r, **_acc(m)})
    acc = pd.DataFrame(accuracy)
    acc["r"] = acc["r"].astype("Int64")

    if not (runs / "full-spectrum" / "run.json").is_file():
        spectrum(BASE, runs / "full").save(runs / "full-spectrum")
    full_spec = SpectrumResult.load(runs / "full-spectrum")

    summary, tables = [], {}
    for key in target_keys:
        for r in ranks:
            name = f"{key}-r{r}"
            result = compared(runs / f"compare-{name}", lambda k=key, q=r: compare(BASE, runs / "full",
                                                                                   runs / f"lora-{k}-r{q}"))
            tables[name] = result
            summary.append({"targets": key, "r": r, **summarise(result.table)})
    summary = pd.DataFrame(summary)
    pair = None
    if "qv" in target_keys and {8, 64} <= set(ranks):
        pair = compared(runs / "r8-vs-r64", lambda: compare_adapters(runs / "lora-qv-r8", runs / "lora-qv-r64"))

    clear_generated(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    acc.to_csv(out / "accuracy.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    full_spec.table.to_csv(out / "full-spectrum.csv", index=False)
    for name, result in tables.items():
        result.table.to_csv(out / f"compare-{name}.csv", index=False)
    plot_study(acc, summary, full["test_accuracy"], out / "figures")
    for name in ("qv-r8", "all-r8", "qv-r64"):
        if name in tables:
            for fig in ("energy.png", "intruders.png", "phi_diagonal.png"):
                shutil.copy(runs / f"compare-{name}" / "figures" / fig, out / "figures" / f"{name}-{fig}")
    shutil.copy(runs / "full-spectrum" / "figures" / "heatmaps.png", out / "figures" / "full-spectrum-heatmaps.png")
    if pair is not None:
        pair.table.to_csv(out / "r8-vs-r64.csv", index=False)
        shutil.copy(runs / "r8-vs-r64" / "figures" / "phi_adapters.png", out / "figures" / "r8-vs-r64-phi.png")
    facts = {"seconds": round(time.perf_counter() - t0, 1), "full_test_accuracy": full["test_accuracy"],
             "runs": str(runs), "ranks": ranks, "targets": target_keys, "max_train": args.max_train,
             "epochs": args.epochs, "seed": args.seed, "command": "analyses/lora_vs_full.py", "versions": versions()}
    if pair is not None:
        facts["r8_vs_r64_phi_A_top1_median"] = float(pair.table["phi_A_1"].median())
        facts["r8_vs_r64_phi_B_top1_median"] = float(pair.table["phi_B_1"].median())
        facts["r8_vs_r64_phi_A_random"] = float(pair.table["phi_random_A"].median())
    (out / "run.json").write_text(json.dumps(facts, indent=2) + "\n")
    pd.set_option("display.width", 200)
    print(acc.to_string(index=False))
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(json.dumps(facts, indent=2))


GENERATED = ("*.csv", "run.json", "figures/*.png")
"""What this script writes into the report folder; anything else there (the README, notes) is kept."""


def clear_generated(out: Path) -> None:
    """Remove the files an earlier run of this script wrote into ``out``, and nothing else."""
    for pattern in GENERATED:
        for path in out.glob(pattern):
            if path.is_file() and not path.is_symlink():
                path.unlink()


def _acc(metrics: dict) -> dict:
    return {"validation_accuracy": metrics["validation_accuracy"], "test_accuracy": metrics["test_accuracy"],
            "trainable_params": metrics["trainable_params"]}


if __name__ == "__main__":
    main()

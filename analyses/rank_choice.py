"""Does rankscope's budgeted rank_pattern beat uniform LoRA rank at the same parameter budget?

One command (about 30 minutes on 2 CPU cores; finished runs are reused, so an interrupted study resumes)::

    .venv/bin/python analyses/rank_choice.py             # → reports/rank-choice/

Setting: all-MiniLM-L6-v2 on Rotten Tomatoes (2,000 training reviews, 2 epochs), LoRA on all linear
layers with alpha = 2r.  For each budget — the parameter count of uniform rank r ∈ {2, 8, 32} — and
seeds {0, 1, 2}:

* **uniform**: LoRA rank r in every module;
* **rankscope**: ``rankscope recommend --rule avg-rank:r`` on the spectra of a full fine-tune of the
  same model on the same data (the greedy allocation that maximises the captured ``‖ΔW_full‖²`` within
  the budget), trained with its ``rank_pattern`` / ``alpha_pattern``;
* **extracted**: the adapter ``rankscope extract`` cuts from the full fine-tune with the same plan
  (no training), evaluated on the same test split.

The full fine-tune is read from ``--full`` (the one of ``analyses/lora_vs_full.py``) or trained if missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pandas as pd

from rankscope.io.results import versions
from rankscope.ranks import RankPlan, recommend
from rankscope.spectrum import SpectrumResult, spectrum
from rankscope.train import evaluate_checkpoint, train

BASE = "bundled:minilm-base"


def trained(out: Path, **kwargs) -> dict:
    """Train once; reuse ``metrics.json`` of a finished run."""
    if not (out / "metrics.json").is_file():
        train(out=out, **kwargs)
    return json.loads((out / "metrics.json").read_text())


def planned(out: Path, spectra: Path, r: int) -> RankPlan:
    if not (out / "run.json").is_file():
        recommend(spectra, rule=f"avg-rank:{r}", targets="all-linear", alpha="2r").save(out)
    return RankPlan.load(out)


def classification_base(folder: Path) -> Path:
    """The base as a sequence classifier (``bert.`` names, a seeded head): the layout the adapters apply to."""
    if not (folder / "config.json").is_file():
        from rankscope.io.checkpoints import resolve
        from rankscope.training.models import load_classifier, load_tokenizer

        tokenizer = load_tokenizer(resolve(BASE))
        model = load_classifier(resolve(BASE), ["rotten", "fresh"], tokenizer.pad_token_id, seed=0)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def extracted_accuracy(folder: Path, full: Path, plan_dir: Path, base_cls: Path, common: dict) -> dict:
    """Accuracy of the adapter cut from the full fine-tune with the plan's ranks (no training).

    Besides the planned LoRA factors the adapter carries what LoRA training also trains or what the
    low-rank factors cannot express: the classifier head, the fine-tuned biases and LayerNorms.
    """
    from rankscope.extract import extract

    if not (folder / "adapter_config.json").is_file():
        extract(base_cls, full, config=plan_dir / "lora_config.json", save_modules=["classifier", "LayerNorm"],
                bias="all").save(folder)
    result = folder / "accuracy.json"
    if not result.is_file():
        metrics = evaluate_checkpoint(base_cls, "rotten-tomatoes", adapter=folder, max_length=common["max_length"])
        result.write_text(json.dumps(metrics, indent=2) + "\n")
    return json.loads(result.read_text())


def plot(results: pd.DataFrame, full_acc: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    trained_runs = results[results["method"] != "extracted"]
    for i, (method, rows) in enumerate(trained_runs.groupby("method")):
        stats = rows.groupby("budget")["test_accuracy"].agg(["mean", "std"]).reset_index()
        ax.errorbar(stats["budget"] * (1 + 0.04 * (i - 0.5)), stats["mean"], yerr=stats["std"], marker="o",
                    capsize=4, label=f"LoRA, {method} ranks (mean ± sd, 3 seeds)")
    ext = results[results["method"] == "extracted"].sort_values("budget")
    ax.plot(ext["budget"], ext["test_accuracy"], marker="s", ls=":", label="extracted from full FT (no training)")
    ax.axhline(full_acc, color="k", ls="--", label=f"full fine-tuning ({full_acc:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("trainable LoRA parameters (budget)")
    ax.set_ylabel("test accuracy")
    ax.set_title("MiniLM-L6 on Rotten Tomatoes: budgeted rank_pattern vs uniform rank")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("reports/rank-choice"))
    parser.add_argument("--runs", type=Path, default=Path("runs/rank-choice"))
    parser.add_argument("--full", type=Path, default=Path("runs/lora-vs-full/full"))
    parser.add_argument("--ranks", default="2,8,32", help="Uniform ranks whose parameter counts are the budgets.")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max-train", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-eval", type=int, default=None, help="Cap validation/test size (quick checks only).")
    parser.add_argument("--no-extract", action="store_true", help="Skip the extracted adapters.")
    args = parser.parse_args()
    ranks = [int(r) for r in args.ranks.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    runs, out = args.runs, args.out
    runs.mkdir(parents=True, exist_ok=True)
    common = {"model": BASE, "task": "rotten-tomatoes", "max_train": args.max_train, "epochs": args.epochs,
              "max_eval": args.max_eval, "max_length": 128, "progress": True}
    t0 = time.perf_counter()

    full = trained(args.full, method="full", seed=0, **common)
    spectra = runs / "full-spectrum"
    if not (spectra / "run.json").is_file():
        spectrum(BASE, args.full).save(spectra, plots=False)
    SpectrumResult.load(spectra)

    rows = []
    for r in ranks:
        plan_dir = runs / f"plan-r{r}"
        plan = planned(plan_dir, spectra, r)
        cfg = plan.lora_config
        budget = int(plan.info["results"]["budget"])
        for seed in seeds:
            uni = trained(runs / f"uniform-r{r}-s{seed}", method="lora", r=r, alpha=2 * r, target_modules="all-linear",
                          seed=seed, **common)
            rec = trained(runs / f"rankscope-r{r}-s{seed}", method="lora", r=cfg["r"], alpha=cfg["lora_alpha"],
                          target_modules=cfg["target_modules"], rank_pattern=cfg["rank_pattern"],
                          alpha_pattern=cfg["alpha_pattern"], seed=seed, **common)
            for method, m in (("uniform", uni), ("rankscope", rec)):
                rows.append({"budget_rank": r, "budget": budget, "method": method, "seed": seed,
                             "trainable_lora_params": m["trainable_params"], "test_accuracy": m["test_accuracy"],
                             "validation_accuracy": m["validation_accuracy"]})
        if not args.no_extract:
            base_cls = classification_base(runs / "base-seqcls")
            ext = extracted_accuracy(runs / f"extracted-r{r}", args.full, plan_dir, base_cls, common)
            rows.append({"budget_rank": r, "budget": budget, "method": "extracted", "seed": None,
                         "trainable_lora_params": plan.info["results"]["params"],
                         "test_accuracy": ext["test_accuracy"], "validation_accuracy": ext["validation_accuracy"]})
    results = pd.DataFrame(rows)
    summary = (results.groupby(["budget_rank", "budget", "method"])["test_accuracy"]
               .agg(["mean", "std", "min", "max", "count"]).reset_index())
    wide = summary.pivot(index="budget_rank", columns="method", values="mean")
    verdict = {}
    for r in ranks:
        a = results[(results["budget_rank"] == r) & (results["method"] == "rankscope")]["test_accuracy"]
        b = results[(results["budget_rank"] == r) & (results["method"] == "uniform")]["test_accuracy"]
        diff = a.mean() - b.mean()
        spread = max(a.std(), b.std())
        verdict[r] = "win" if diff > spread else "loss" if diff < -spread else "tie"

    if out.exists():
        shutil.rmtree(out)
    (out / "figures").mkdir(parents=True)
    results.to_csv(out / "results.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    for r in ranks:
        shutil.copy(runs / f"plan-r{r}" / "lora_config.json", out / f"lora_config-r{r}.json")
        shutil.copy(runs / f"plan-r{r}" / "ranks.csv", out / f"ranks-r{r}.csv")
        shutil.copy(runs / f"plan-r{r}" / "figures" / "ranks.png", out / "figures" / f"ranks-r{r}.png")
    plot(results, full["test_accuracy"], out / "figures" / "accuracy.png")
    info = {"command": "analyses/rank_choice.py", "seconds": round(time.perf_counter() - t0, 1),
            "full_test_accuracy": full["test_accuracy"], "ranks": ranks, "seeds": seeds, "verdict": verdict,
            "runs": str(runs), "max_train": args.max_train, "epochs": args.epochs, "versions": versions()}
    (out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    pd.set_option("display.width", 200)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(wide.to_string(float_format=lambda v: f"{v:.4f}"))
    print("verdict (difference of means vs the larger seed spread):", verdict)


if __name__ == "__main__":
    main()

"""Benchmark ``rankscope extract`` against the common way of extracting LoRA: a full ``torch.linalg.svd`` per module.

What it does, in one run:

1. Reuses (or builds) the ≈170M-parameter Llama-shaped pair of ``benchmarks/spectrum.py`` (8 layers,
   hidden 1024, intermediate 2816; ΔW = rank-64 part with σ_i ∝ 1/i plus a dense noise floor, so
   there is *no* spectral gap at r = 64) and its cached float64 LAPACK spectra.
2. Times, as separate processes (median of ``--repeats`` runs, wall time including interpreter start,
   peak RSS):

   * ``rankscope extract BASE FT --rank 64 -o OUT`` (defaults: exact truncation + Eckart–Young optimum);
   * the same with ``--model-check always`` (imports transformers to cross-check module names; the
     default ``auto`` skips that for checkpoints named as ``save_pretrained`` writes them, as here);
   * ``rankscope extract … --method randomized --no-optimum`` (randomized block Krylov, q = 3);
   * the baseline (``--baseline-worker`` mode of this file): for every 2-D linear weight, load both
     tensors with ``safetensors.safe_open``, ``torch.linalg.svd(ft - base, full_matrices=False)`` in
     float32 (as mergekit's ``extract_lora`` and similar scripts do), keep the top 64, split
     ``√Σ`` between the factors and save a peft adapter.

   All three extract the same 56 modules (every linear layer; embeddings and ``lm_head`` are
   excluded, rankscope's default).
3. Checks every adapter independently: for each module, ``‖ΔW − s·B·A‖_F / ‖ΔW‖_F`` in float64
   against the Eckart–Young optimum ``√(Σ_{i>64} σ_i² / Σ σ_i²)`` from the float64 reference
   spectra; reports the worst ratio over modules (and how far ``extract.csv`` is from this check).

Usage::

    .venv/bin/python benchmarks/extract.py [--repeats 3] [--rank 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import spectrum as bench  # noqa: E402  (benchmarks/spectrum.py: the model generator and process timing)

TARGETS = {"wall_s": 10.0, "of_baseline": 1 / 3, "error_ratio": 1.001}
VOCAB_MODULES = ("embed_tokens", "lm_head")


# --------------------------------------------------------------------------------------------------
# the baseline (runs in its own process)
# --------------------------------------------------------------------------------------------------


def baseline_extract(base: Path, finetuned: Path, out: Path, rank: int) -> None:
    """Full float32 ``torch.linalg.svd`` of every linear ΔW, truncated to ``rank``, saved as a peft adapter."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    base_map, ft_map = bench_weight_map(base), bench_weight_map(finetuned)
    tensors: dict[str, torch.Tensor] = {}
    targets = []
    for name, path in base_map.items():
        if name not in ft_map or any(v in name for v in VOCAB_MODULES):
            continue
        with safe_open(path, framework="pt") as fb:
            b = fb.get_tensor(name)
        if b.dim() != 2:
            continue
        with safe_open(ft_map[name], framework="pt") as ff:
            f = ff.get_tensor(name)
        delta = f.float() - b.float()
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        root = s[:rank].sqrt()
        module = name.removesuffix(".weight")
        tensors[f"base_model.model.{module}.lora_B.weight"] = (u[:, :rank] * root).contiguous()
        tensors[f"base_model.model.{module}.lora_A.weight"] = (root[:, None] * vh[:rank]).contiguous()
        targets.append(module)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank,
              "target_modules": sorted(targets), "base_model_name_or_path": str(base)}
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")


def bench_weight_map(folder: Path) -> dict[str, Path]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    return {name: folder / shard for name, shard in index.items()}


# --------------------------------------------------------------------------------------------------
# independent accuracy check of an adapter
# --------------------------------------------------------------------------------------------------


def adapter_errors(adapter: Path, folder: Path, reference: dict[str, np.ndarray], rank: int) -> dict[str, Any]:
    """Per module: float64 ``‖ΔW − s·B·A‖/‖ΔW‖``, the Eckart–Young optimum and their ratio; worst over modules."""
    from safetensors.numpy import load_file

    config = json.loads((adapter / "adapter_config.json").read_text())
    factors = load_file(adapter / "adapter_model.safetensors")
    rows = {}
    for name, b, f in bench.iter_matrix_pairs(folder / "base", folder / "finetuned"):
        module = name.removesuffix(".weight")
        key = f"base_model.model.{module}"
        if f"{key}.lora_A.weight" not in factors:
            continue
        r = int(config.get("rank_pattern", {}).get(module, config["r"]))
        alpha = float(config.get("alpha_pattern", {}).get(module, config["lora_alpha"]))
        scale = alpha / np.sqrt(r) if config.get("use_rslora") else alpha / r
        delta = f.astype(np.float64) - b.astype(np.float64)
        approx = scale * (factors[f"{key}.lora_B.weight"].astype(np.float64) @ factors[f"{key}.lora_A.weight"])
        err = float(np.linalg.norm(delta - approx) / np.linalg.norm(delta))
        sigma = reference[name]
        optimum = float(np.sqrt(np.sum(sigma[rank:] ** 2) / np.sum(sigma**2)))
        rows[module] = {"rel_error": err, "optimal_rel_error": optimum, "ratio": err / optimum}
    worst = max(rows, key=lambda m: rows[m]["ratio"])
    return {"modules": len(rows), "max_ratio": rows[worst]["ratio"], "worst_module": worst, "per_module": rows}


def csv_agreement(out: Path, errors: dict[str, Any]) -> float:
    """Largest |rel_error in extract.csv − independent rel_error| over modules."""
    import csv

    with open(out / "extract.csv") as fh:
        table = {row["module"]: float(row["rel_error"]) for row in csv.DictReader(fh) if row["role"] == "lora"}
    return max(abs(table[m] - e["rel_error"]) for m, e in errors["per_module"].items())


# --------------------------------------------------------------------------------------------------
# commands and report
# --------------------------------------------------------------------------------------------------


def rankscope_prefix(exe: Path, python: Path) -> list[str]:
    """``rankscope extract`` when the console script has the command, else ``python -m rankscope.cli.extract``."""
    if exe.is_file():
        probe = subprocess.run([str(exe), "extract", "--help"], capture_output=True, text=True)
        if probe.returncode == 0:
            return [str(exe), "extract"]
    return [str(python), "-m", "rankscope.cli.extract"]


def render_table(rows: list[dict[str, Any]]) -> str:
    header = (f"{'tool':<44} {'wall s (median)':>15} {'CPU s':>7} {'peak RSS MB':>11} {'max err/optimum':>15} "
              f"{'x baseline time':>15}")
    lines = [header, "-" * len(header)]
    base_wall = next((r["wall_s"] for r in rows if r["tool"].startswith("baseline")), None)
    for r in rows:
        share = f"{r['wall_s'] / base_wall:.2f}" if base_wall else "-"
        lines.append(f"{r['tool']:<44} {r['wall_s']:>15.2f} {r['cpu_s']:>7.1f} {r['peak_rss_mb']:>11.0f} "
                     f"{r['max_ratio']:>15.6f} {share:>15}")
    lines.append(f"{'target (rankscope default)':<44} {'≤ ' + format(TARGETS['wall_s'], 'g'):>15} {'':>7} {'':>11} "
                 f"{'≤ ' + format(TARGETS['error_ratio'], 'g'):>15} {'≤ 0.33':>15}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    venv_bin = Path(sys.executable).parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("/tmp/rankscope-bench"), help="Cache folder (see spectrum.py).")
    p.add_argument("--layers", type=int, default=8, help="Decoder layers of the benchmarked model.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the synthetic weights.")
    p.add_argument("--rank", type=int, default=64, help="LoRA rank to extract.")
    p.add_argument("--repeats", type=int, default=3, help="Timed runs per tool (median wall, max peak RSS).")
    p.add_argument("--rankscope", type=Path, default=venv_bin / "rankscope", help="rankscope console script.")
    p.add_argument("--python", type=Path, default=Path(sys.executable), help="Interpreter for the baseline.")
    p.add_argument("--skip-baseline", action="store_true", help="Time rankscope only.")
    p.add_argument("--skip-variants", action="store_true",
                   help="Time only rankscope's default (not --no-model-check, not the randomized solver).")
    p.add_argument("--max-busy", type=float, default=0.25,
                   help="Before each timed run, wait until other processes use fewer CPUs than this ...")
    p.add_argument("--idle-wait", type=float, default=120.0, help="... for at most this many seconds (0: don't wait).")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="Also save all figures as JSON.")
    p.add_argument("--baseline-worker", nargs=3, metavar=("BASE", "FINETUNED", "OUT"), type=Path,
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.layers < 1 or args.repeats < 1 or args.rank < 1:
        p.error("--layers, --repeats and --rank must be at least 1")
    return args


def timed(label: str, cmd: list[str], out: Path, args, use_gnu_time: bool) -> dict[str, Any]:
    m = bench.measure(label, cmd, args.repeats, use_gnu_time, args.max_busy, args.idle_wait)
    return {"tool": label, "command": " ".join(cmd), "out": str(out), "wall_s": m.wall_s, "cpu_s": m.cpu_s,
            "peak_rss_mb": m.peak_rss_mb, "runs": [vars(s) for s in m.samples]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline_worker:
        baseline_extract(*args.baseline_worker, args.rank)
        return 0
    # Every timed process gets the environment rankscope's CLI sets for itself: on this shared 2-core machine
    # MKL's spinning OpenMP threads made a 1024x1024 torch.linalg.svd take 24 s instead of 0.4 s under load.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    use_gnu_time = bench._gnu_time_works()
    shape = bench.LlamaShape(layers=args.layers)
    folder, reference = bench.prepare(args.data, shape, args.seed)
    bench.warm_page_cache(folder)
    runs = folder / "runs"
    runs.mkdir(exist_ok=True)
    base, ft = folder / "base", folder / "finetuned"
    prefix = rankscope_prefix(args.rankscope, args.python)
    print(f"rankscope command: {' '.join(prefix)}; {args.repeats} runs per tool, page cache warm; peak RSS via "
          f"{'/usr/bin/time -v' if use_gnu_time else 'getrusage'}", flush=True)

    tools = [(f"rankscope extract --rank {args.rank} (exact)", runs / "extract-exact", [])]
    if not args.skip_variants:
        tools.append(("  same, --model-check always", runs / "extract-check", ["--model-check", "always"]))
        tools.append(("  --method randomized --no-optimum", runs / "extract-randomized",
                      ["--method", "randomized", "--no-optimum"]))
    rows = []
    for label, out, extra in tools:
        cmd = [*prefix, str(base), str(ft), "--rank", str(args.rank), "-q", "-o", str(out), *extra]
        rows.append(timed(label, cmd, out, args, use_gnu_time))
    if not args.skip_baseline:
        out = runs / "extract-baseline"
        cmd = [str(args.python), str(Path(__file__).resolve()), "--rank", str(args.rank), "--baseline-worker",
               str(base), str(ft), str(out)]
        rows.append(timed("baseline (torch.linalg.svd fp32 per module)", cmd, out, args, use_gnu_time))

    print("checking every adapter against the float64 reference ...", flush=True)
    t0 = time.perf_counter()
    for row in rows:
        errors = adapter_errors(Path(row["out"]), folder, reference, args.rank)
        row.update(modules=errors["modules"], max_ratio=errors["max_ratio"], worst_module=errors["worst_module"])
        if (Path(row["out"]) / "extract.csv").is_file():
            row["extract_csv_max_abs_diff"] = csv_agreement(Path(row["out"]), errors)
    print(f"  done in {time.perf_counter() - t0:.1f} s\n")
    print(render_table(rows))
    main_row = rows[0]
    base_row = next((r for r in rows if r["tool"].startswith("baseline")), None)
    verdict = [f"wall {'ok' if main_row['wall_s'] <= TARGETS['wall_s'] else 'MISS'}",
               f"error {'ok' if main_row['max_ratio'] <= TARGETS['error_ratio'] else 'MISS'}"]
    if base_row:
        share = main_row["wall_s"] / base_row["wall_s"]
        verdict.append(f"{share:.2f} of the baseline's time {'ok' if share <= TARGETS['of_baseline'] else 'MISS'}")
    print(f"\nrankscope vs targets: {', '.join(verdict)}; modules per adapter: "
          f"{', '.join(str(r['modules']) for r in rows)}; extract.csv vs independent check: max |Δ rel_error| "
          f"{max(r.get('extract_csv_max_abs_diff', 0.0) for r in rows):.1e}")
    if args.json is not None:
        report = {"model": {"folder": str(folder), "recipe": bench.recipe(shape, args.seed)}, "rank": args.rank,
                  "cpu_count": os.cpu_count(), "repeats": args.repeats, "targets": TARGETS, "rows": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark ``rankscope train``: seconds per optimisation step of full fine-tuning, LoRA and AdaLoRA, side by side.

What it does, in one run (the bundled MiniLM-L6, the generated ``entity-facts`` task, batch 16, 32 tokens, LoRA
and AdaLoRA at r = 2 on all 37 linear modules, as in ``reports/rank-choice/``):

* for each method — ``full``, ``lora``, ``adalora`` (budget in triplets), ``adalora`` with ``--budget-unit
  params``, and ``adalora`` without its orthogonality term (``--orth-reg 0``: what that term costs) — one training run of ``--steps`` steps through :func:`rankscope.train.train` (no output folder), the
  methods interleaved ``--repeats`` times so that a slow moment of the machine hits every method alike;
* the figure is the loop's own ``train_seconds / steps`` (evaluation excluded; the engine pauses its clock while
  it validates); medians over the repeats, and each method's ratio to LoRA's median.

AdaLoRA's extra work per step is its importance update (three element-wise products per factor), a masking step
every ``T/40`` steps and the orthogonality term (two r×r Gram matrices per module).

Usage::

    .venv/bin/python benchmarks/train.py [--steps 30] [--repeats 3] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

METHODS: dict[str, dict[str, Any]] = {
    "full": {"method": "full", "lr": 3e-4},
    "lora r=2": {"method": "lora", "r": 2, "alpha": 4.0, "target_modules": "all-linear", "lr": 2e-3},
    "adalora r=2 (rank)": {"method": "adalora", "r": 2, "target_modules": "all-linear", "lr": 8e-3},
    "adalora r=2 (params)": {"method": "adalora", "r": 2, "target_modules": "all-linear", "lr": 8e-3,
                             "budget_unit": "params"},
    "adalora r=2 (orth 0)": {"method": "adalora", "r": 2, "target_modules": "all-linear", "lr": 8e-3,
                             "orth_reg": 0.0},
}


def one_run(options: dict[str, Any], steps: int, threads: int) -> dict[str, float]:
    """Seconds per step (training only) of one run of ``steps`` steps."""
    from rankscope.train import train

    batch = 16
    metrics = train("bundled:minilm-base", "entity-facts", options["method"], None, epochs=1,
                    max_train=steps * batch, max_eval=64, batch_size=batch, max_length=32, threads=threads,
                    progress=False, **{k: v for k, v in options.items() if k != "method"})
    return {"seconds_per_step": metrics["train_seconds"] / metrics["steps"], "steps": metrics["steps"],
            "trainable_params": metrics["trainable_params"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="Also write the figures to this JSON file.")
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    params: dict[str, int] = {}
    for repeat in range(args.repeats):
        for name, options in METHODS.items():
            result = one_run(options, args.steps, args.threads)
            times[name].append(result["seconds_per_step"])
            params[name] = result["trainable_params"]
            print(f"  repeat {repeat + 1}/{args.repeats} {name:22s} {result['seconds_per_step'] * 1000:8.1f} ms/step",
                  file=sys.stderr)
    lora = statistics.median(times["lora r=2"])
    rows = []
    print(f"\nseconds per training step, median of {args.repeats} (MiniLM-L6, entity-facts, batch 16, 32 tokens, "
          f"{args.threads} threads)")
    print(f"{'method':22s} {'ms/step':>9s} {'x LoRA':>7s} {'trainable':>11s}")
    for name, values in times.items():
        median = statistics.median(values)
        rows.append({"method": name, "ms_per_step": round(median * 1000, 2), "ratio_to_lora": round(median / lora, 3),
                     "trainable_params": params[name], "all_ms": [round(v * 1000, 2) for v in values]})
        print(f"{name:22s} {median * 1000:9.1f} {median / lora:7.2f} {params[name]:11,d}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"steps": args.steps, "repeats": args.repeats, "threads": args.threads, "rows": rows}, handle,
                      indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

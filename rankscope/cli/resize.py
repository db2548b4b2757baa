"""``rankscope resize``: a peft LoRA adapter cut to per-module ranks under a ``recommend`` rule, from its factors.

A thin layer over :func:`rankscope.resize.resize`, registered in :mod:`rankscope.cli`.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from .support import OneLineCommand, finish, handle_errors, no_plots_option, out_option, overwrite_option, quiet_option


@click.command("resize", cls=OneLineCommand)
@click.argument("adapter")
@out_option("Adapter folder to write (created; replaced only if it holds an earlier rankscope resize result).")
@click.option("--rule", required=True, metavar="RULE",
              help="energy:TAU | gd | budget:N (k/M suffixes) | avg-rank:R | kohya-fro:T | kohya-ratio:T | "
                   "kohya-cumulative:T, applied to the adapter's own spectra.")
@click.option("--min-rank", type=click.IntRange(min=0), default=1, show_default=True,
              help="Smallest rank of a module (0 lets a module drop out of target_modules).")
@click.option("--max-rank", type=click.IntRange(min=1), default=None,
              help="Largest rank  [default: the module's adapter rank; a rule never gets more than the adapter has].")
@click.option("--snap", default=None, metavar="LIST", help="Allowed ranks, e.g. 4,8,16 (what a serving stack accepts).")
@click.option("--alpha", default=None, metavar="POLICY",
              help="lora_alpha: r, 2r, <c>r (alpha = c·rank) or a number (the same alpha everywhere)  "
                   "[default: keep each module's alpha/r; keep alpha with rsLoRA].")
@click.option("--gain", type=click.Choice(["absolute", "relative"]), default="absolute", show_default=True,
              help="Budget rules: maximise the kept energy of the whole update (absolute) or the mean per-module "
                   "kept fraction (relative).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
              help="Write every floating tensor of the adapter in this format (errors in resize.csv are those of the "
                   "rounded factors)  [default: new factors float32, other tensors as stored].")
@no_plots_option("Skip OUT/figures/error.png.")
@quiet_option("No summary.")
@overwrite_option()
@handle_errors
def resize_cmd(adapter: str, out: Path, rule: str, min_rank: int, max_rank: int | None, snap: str | None,
               alpha: str | None, gain: str, dtype: str | None, no_plots: bool, quiet: bool, overwrite: bool) -> None:
    """Cut a peft LoRA ADAPTER to per-module ranks under a recommend rule, exactly from its factors.

    Each module's update s·B·A is decomposed from its factors (QR of B and Aᵀ, SVD of an r×r core) and
    replaced by its best rank-r' approximation: B' = U√Σ/√s', A' = √ΣVᵀ/√s'.  Writes a peft adapter
    (OUT/adapter_config.json, OUT/adapter_model.safetensors), OUT/resize.csv (ranks before and after,
    error next to the Eckart–Young optimum), a model card OUT/README.md, OUT/figures/error.png and OUT/run.json.

    Example: rankscope resize adapters/r64 --rule avg-rank:16 -o adapters/r16-planned
    """
    from ..io.results import check_output_target
    from ..resize import resize

    t0 = time.perf_counter()
    check_output_target(out, "resize", overwrite)
    result = resize(adapter, rule=rule, min_rank=min_rank, max_rank=max_rank, snap=snap, alpha=alpha, gain=gain,
                    dtype=dtype)
    finish(result, out, quiet=quiet, overwrite=overwrite, plots=not no_plots, started=t0)

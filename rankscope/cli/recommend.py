"""``rankscope recommend``: LoRA ranks per module from the spectra of a full fine-tune, a probe or an adapter.

A thin layer over :func:`rankscope.ranks.recommend`, registered in :mod:`rankscope.cli`.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from .support import (
    OneLineCommand,
    device_option,
    executor_option,
    finish,
    handle_errors,
    no_plots_option,
    out_option,
    overwrite_option,
    quiet_option,
    ray_address_option,
    workers_option,
)


@click.command("recommend", cls=OneLineCommand)
@click.argument("source")
@click.argument("finetuned", required=False)
@out_option()
@click.option("--rule", default="energy:0.9", show_default=True, metavar="RULE",
              help="energy:TAU | gd | budget:N (k/M suffixes) | avg-rank:R | kohya-fro:T | kohya-ratio:T | "
                   "kohya-cumulative:T.")
@click.option("--targets", default="all-linear", show_default=True, metavar="KINDS",
              help="Module kinds to adapt (query,value; name suffixes such as dense also work) or all-linear.")
@click.option("--min-rank", type=click.IntRange(min=0), default=1, show_default=True,
              help="Smallest rank of a target module (0 lets a module drop out).")
@click.option("--max-rank", type=click.IntRange(min=1), default=None, help="Largest rank  [default: min(m, n)].")
@click.option("--snap", default=None, metavar="LIST", help="Allowed ranks, e.g. 8,16,32,64 (what a serving stack accepts).")
@click.option("--alpha", default="2r", show_default=True, metavar="POLICY",
              help="lora_alpha: r, 2r, <c>r (constant scale alpha/r = c) or a number (the same alpha everywhere).")
@click.option("--gain", type=click.Choice(["absolute", "relative"]), default="absolute", show_default=True,
              help="Budget rules: maximise the energy of the whole update (absolute) or the mean per-module "
                   "captured fraction (relative).")
@click.option("--use-rslora", is_flag=True,
              help="Rank-stabilised LoRA: scale alpha/sqrt(r); with --alpha <c>r, alpha = c*sqrt(r).")
@click.option("--exclude-embeddings/--include-embeddings", default=True, show_default=True,
              help="Leave out input/output embeddings and the LM head.")
@click.option("--init-from", default=None, metavar="PROBE_OR_PAIR",
              help="Also write OUT/init/, a peft adapter at the planned ranks started in the signal's top singular "
                   "subspace: a rankscope probe folder, or 'pair' (the BASE FINETUNED pair given as SOURCE).")
@click.option("--init-scale", type=click.FloatRange(min=0, min_open=True), default=None, metavar="GAMMA",
              help="Gradient probe: LoRA-One's gamma, s*B*A = -(s/gamma)*G_r/sigma_1  [default: 128].")
@device_option("Spectra on the fly: cpu, cuda, cuda:N or auto.")
@workers_option("Spectra on the fly: matrices in parallel.")
@executor_option("Spectra on the fly: local threads (with --device cuda, one per visible GPU) or one Ray task "
                 "per matrix (pip install 'rankscope[ray]').")
@ray_address_option()
@no_plots_option("Skip the figure.")
@quiet_option()
@overwrite_option()
@handle_errors
def recommend_cmd(source: str, finetuned: str | None, out: Path, rule: str, targets: str, min_rank: int,
                  max_rank: int | None, snap: str | None, alpha: str, gain: str, use_rslora: bool,
                  exclude_embeddings: bool, init_from: str | None, init_scale: float | None, device: str,
                  workers: int | None, executor: str, ray_address: str | None, no_plots: bool, quiet: bool,
                  overwrite: bool) -> None:
    """Recommend a LoRA rank per module from the spectra of SOURCE.

    SOURCE is a `rankscope spectrum`, `rankscope probe` or `rankscope lora` result folder, or give
    BASE FINETUNED to compute the spectra on the fly (saved in OUT/spectrum/ for reuse).  Writes
    OUT/ranks.csv, OUT/lora_config.json (and the same as OUT/adapter_config.json, so
    LoraConfig.from_pretrained(OUT) loads it), OUT/run.json and OUT/figures/ranks.png; with
    --init-from also OUT/init/ (train from it with rankscope train --method lora --init OUT/init).

    Example: rankscope recommend bundled:minilm-base bundled:minilm-finetuned --rule budget:500k -o out/ranks
    """
    from ..io.results import check_output_target
    from ..ranks import recommend

    t0 = time.perf_counter()
    check_output_target(out, "recommend", overwrite)
    plan = recommend(source, finetuned, rule=rule, targets=targets, min_rank=min_rank, max_rank=max_rank,
                     snap=snap, alpha=alpha, gain=gain, use_rslora=use_rslora,
                     exclude_embeddings=exclude_embeddings, init_from=init_from, init_scale=init_scale,
                     device=device, workers=workers, executor=executor, ray_address=ray_address,
                     progress=not quiet)
    finish(plan, out, quiet=quiet, overwrite=overwrite, plots=not no_plots, started=t0,
           notes=plan.spectrum.info if plan.spectrum is not None else {})

"""``rankscope recommend``: LoRA ranks per module from the spectra of a full fine-tune (register with
``main.add_command(recommend_cmd)`` in :mod:`rankscope.cli`)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .support import OneLineCommand, argv_line, echo_notes, handle_errors, overwrite_option


@click.command("recommend", cls=OneLineCommand)
@click.argument("source")
@click.argument("finetuned", required=False)
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="Output folder (created; replaced if it holds an earlier result).")
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
@click.option("--exclude-embeddings/--include-embeddings", default=True, show_default=True,
              help="Leave out input/output embeddings and the LM head.")
@click.option("--device", default="cpu", show_default=True, help="Spectra on the fly: cpu, cuda, cuda:N or auto.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Spectra on the fly: matrices in parallel.")
@click.option("--no-plots", is_flag=True, help="Skip the figure.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@overwrite_option
@handle_errors
def recommend_cmd(source, finetuned, out, rule, targets, min_rank, max_rank, snap, alpha, gain, exclude_embeddings,
                  device, workers, no_plots, quiet, overwrite):
    """Recommend a LoRA rank per module from the ΔW spectra of SOURCE.

    SOURCE is a `rankscope spectrum` result folder, or give BASE FINETUNED to compute the spectra
    on the fly (saved in OUT/spectrum/ for reuse).  Writes OUT/ranks.csv, OUT/lora_config.json (and
    the same as OUT/adapter_config.json, so LoraConfig.from_pretrained(OUT) loads it), OUT/run.json
    and OUT/figures/ranks.png.

    Example: rankscope recommend bundled:minilm-base bundled:minilm-finetuned --rule budget:500k -o out/ranks
    """
    from ..io.results import check_output_target
    from ..ranks import recommend

    t0 = time.perf_counter()
    check_output_target(out, "recommend", overwrite)
    plan = recommend(source, finetuned, rule=rule, targets=targets, min_rank=min_rank, max_rank=max_rank, snap=snap,
                     alpha=alpha, gain=gain, exclude_embeddings=exclude_embeddings, device=device, workers=workers,
                     progress=not quiet)
    if plan.spectrum is not None:
        echo_notes(plan.spectrum.info, quiet)
    plan.info["argv"] = argv_line()
    plan.save(out, plots=not no_plots, overwrite=overwrite)
    if not quiet:
        click.echo(plan.summary())
        click.echo(f"wrote {out}/ in {time.perf_counter() - t0:.1f} s")

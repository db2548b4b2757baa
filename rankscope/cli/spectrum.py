"""``rankscope spectrum``: exact ΔW spectra of a full fine-tune (a thin layer over :func:`rankscope.spectrum.spectrum`)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .support import (
    OneLineCommand,
    device_option,
    exclude_option,
    executor_option,
    finish,
    handle_errors,
    include_option,
    no_plots_option,
    out_option,
    overwrite_option,
    quiet_option,
    ray_address_option,
    tau_option,
    workers_option,
)


@click.command("spectrum", cls=OneLineCommand)
@click.argument("base")
@click.argument("finetuned")
@out_option()
@include_option()
@exclude_option()
@tau_option()
@device_option()
@click.option("--method", type=click.Choice(["auto", "gram", "svd", "torch"]), default="auto", show_default=True,
              help="Exact singular-value method; auto picks the fastest measured one per shape.")
@workers_option("Matrices processed in parallel [default: CPU count; one per GPU].")
@executor_option()
@ray_address_option()
@no_plots_option("Skip figures (render later with `rankscope plot OUT`).")
@quiet_option("No progress bar and no summary table.")
@overwrite_option()
@handle_errors
def spectrum_cmd(base: str, finetuned: str, out: Path, include: tuple[str, ...], exclude: tuple[str, ...],
                 taus: tuple[float, ...], device: str, method: str, workers: int | None, executor: str,
                 ray_address: str | None, no_plots: bool, quiet: bool, overwrite: bool) -> None:
    """Exact singular-value spectrum of every ΔW = FINETUNED − BASE, with per-module ranks.

    Writes OUT/modules.csv, OUT/vectors.csv, OUT/spectra.npz, OUT/run.json and OUT/figures/.

    Example: rankscope spectrum bundled:minilm-base bundled:minilm-finetuned -o reports/demo
    """
    from ..io.results import check_output_target
    from ..spectrum import spectrum

    t0 = time.perf_counter()
    check_output_target(out, "spectrum", overwrite)
    result = spectrum(base, finetuned, include=include, exclude=exclude, taus=taus, device=device, method=method,
                      workers=workers, progress=not quiet, executor=executor, ray_address=ray_address)
    finish(result, out, quiet=quiet, overwrite=overwrite, plots=not no_plots, started=t0)

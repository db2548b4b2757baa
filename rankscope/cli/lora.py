"""``rankscope lora``: exact spectra of a peft LoRA adapter's updates, from its factors.

A thin layer over :func:`rankscope.lora.lora_spectrum`.
"""

from __future__ import annotations

from pathlib import Path

import click

from .support import (
    OneLineCommand,
    finish,
    handle_errors,
    kind_medians,
    no_plots_option,
    out_option,
    overwrite_option,
    quiet_option,
    tau_option,
)

SUMMARY_COLUMNS = ("r", "effective_rank", "stable_rank", "utilization_effective", "rank_90")


@click.command("lora", cls=OneLineCommand)
@click.argument("adapter")
@click.option("--base", default=None, help="Base checkpoint: names modules as its tensors, adds base norms, needed for DoRA.")
@out_option("Output folder.")
@tau_option()
@no_plots_option()
@quiet_option("No progress bar and no summary table.")
@overwrite_option()
@handle_errors
def lora_cmd(adapter: str, base: str | None, out: Path, taus: tuple[float, ...], no_plots: bool, quiet: bool,
             overwrite: bool) -> None:
    """Exact spectra of a peft LoRA ADAPTER's updates ΔW = s·B·A, from the factors.

    Writes the same files as `spectrum` (modules.csv with r, alpha, scale and utilisation columns).

    Example: rankscope lora runs/lora-r8 --base bundled:minilm-base -o reports/lora-r8
    """
    from ..io.results import check_output_target
    from ..lora import lora_spectrum

    check_output_target(out, "lora", overwrite)
    result = lora_spectrum(adapter, base, taus=taus, progress=not quiet)
    columns = [c for c in SUMMARY_COLUMNS if c in result.table]
    finish(result, out, quiet=quiet, overwrite=overwrite, plots=not no_plots,
           summary=lambda: kind_medians(result.table, columns, 2))

"""``rankscope compare`` and ``rankscope compare-adapters``: LoRA against full fine-tuning, adapter against adapter.

Thin layers over :func:`rankscope.compare.compare` and :func:`rankscope.compare.compare_adapters`.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..options import compile_regex, compile_regexes
from .support import (
    OneLineCommand,
    device_option,
    executor_option,
    finish,
    handle_errors,
    include_option,
    no_plots_option,
    out_option,
    overwrite_option,
    quiet_option,
    ray_address_option,
    workers_option,
)


@click.command("compare", cls=OneLineCommand)
@click.argument("base")
@click.argument("finetuned")
@click.argument("adapter")
@out_option("Output folder.")
@include_option()
@click.option("--phi-max", type=click.IntRange(min=1), default=64, show_default=True,
              help="Largest i of the full fine-tune's top-i subspace in the φ(i, j) grids.")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Top singular vectors examined for intruder dimensions.")
@click.option("--epsilon", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5, show_default=True,
              help="Intruder threshold on the best |cos| with the base's singular vectors.")
@click.option("--phi-modules", metavar="REGEX", default=None, help="Modules for φ(i, j) heatmaps [default: first/last layers].")
@device_option("Where the dense float64 SVDs run: cpu, cuda, cuda:N or auto.")
@workers_option("Modules in parallel [default: 1; each holds several dense copies of its matrix].")
@executor_option("local: threads on this machine (with --device cuda, one per visible GPU); ray: one Ray task per "
                 "module, checkpoints and adapter re-read by path on the nodes (pip install 'rankscope[ray]').")
@ray_address_option()
@no_plots_option()
@quiet_option("No progress bar and no summary table.")
@overwrite_option()
@handle_errors
def compare_cmd(base: str, finetuned: str, adapter: str, out: Path, include: tuple[str, ...], phi_max: int, k: int,
                epsilon: float, phi_modules: str | None, device: str, workers: int | None, executor: str,
                ray_address: str | None, no_plots: bool, quiet: bool, overwrite: bool) -> None:
    """Compare a LoRA ADAPTER with the full fine-tune FINETUNED of the same BASE, module by module.

    Writes OUT/compare.csv, amplification.csv, intruders.csv, phi.npz, run.json and figures/.

    Example: rankscope compare bundled:minilm-base runs/full runs/lora-r8 -o reports/compare-r8
    """
    from ..compare import compare
    from ..io.results import check_output_target

    check_output_target(out, "compare", overwrite)
    if phi_modules is not None:
        compile_regex(phi_modules, "--phi-modules")
    compile_regexes(include, "--include")
    result = compare(base, finetuned, adapter, include=include, phi_max=phi_max, k=k, epsilon=epsilon,
                     progress=not quiet, device=device, workers=workers, executor=executor, ray_address=ray_address)
    result.info["options"]["phi_modules"] = phi_modules
    finish(result, out, quiet=quiet, overwrite=overwrite, plots=not no_plots,
           summary=result.summary_text)


@click.command("compare-adapters", cls=OneLineCommand)
@click.argument("adapter_1")
@click.argument("adapter_2")
@out_option("Output folder.")
@click.option("--phi-modules", metavar="REGEX", default=None, help="Modules for φ(i, j) heatmaps.")
@no_plots_option()
@quiet_option("No summary table.")
@overwrite_option()
@handle_errors
def compare_adapters_cmd(adapter_1: str, adapter_2: str, out: Path, phi_modules: str | None, no_plots: bool, quiet: bool,
                         overwrite: bool) -> None:
    """φ(i, j) between two LoRA adapters (different ranks or seeds), for A and B, per module.

    Writes OUT/compare.csv, phi.npz (keys "<module>:A", "<module>:B"), run.json and figures/.

    Example: rankscope compare-adapters runs/lora-r8 runs/lora-r64 -o reports/r8-vs-r64
    """
    from ..compare import compare_adapters
    from ..io.results import check_output_target

    check_output_target(out, "compare-adapters", overwrite)
    if phi_modules is not None:
        compile_regex(phi_modules, "--phi-modules")
    result = compare_adapters(adapter_1, adapter_2)
    result.info["options"] = {"phi_modules": phi_modules}
    finish(result, out, quiet=quiet, overwrite=overwrite, plots=not no_plots,
           summary=result.summary_text)

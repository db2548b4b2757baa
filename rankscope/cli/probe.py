"""``rankscope probe``: rank signals from a base model and the data, without a full fine-tune.

A thin layer over :func:`rankscope.probe.probe`.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import RankscopeError
from .support import (
    OneLineCommand,
    device_option,
    exclude_option,
    finish,
    handle_errors,
    include_option,
    no_plots_option,
    out_option,
    overwrite_option,
    quiet_option,
    tau_option,
)
from .train import objective_option, task_help

SIGNALS = ("gradient", "update")
ONLY_FOR = {"batches": "gradient", "steps": "update", "lr": "update"}
"""Options that only one signal uses."""


def misplaced_options(signal: str) -> list[str]:
    """The options typed on the command line that ``signal`` does not use."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return [f"--{name}" for name, owner in ONLY_FOR.items()
            if owner != signal and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]


@click.command("probe", cls=OneLineCommand)
@click.option("--model", default="bundled:minilm-base", show_default=True, metavar="CHECKPOINT",
              help="Base model: local HF folder, Hub id or bundled:minilm-base.")
@click.option("--task", default=None, metavar="TASK", help=task_help() + "  [default: rotten-tomatoes]")
@click.option("--data", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="CSV/TSV/JSONL file with a text and a label column (instead of a built-in task).")
@click.option("--text-column", default="text", show_default=True, help="Text column of --data.")
@click.option("--label-column", default="label", show_default=True, help="Label column of --data.")
@objective_option()
@click.option("--signal", type=click.Choice(SIGNALS), default="gradient", show_default=True,
              help="gradient: ∂L/∂W at the base weights; update: ΔW after --steps full fine-tuning steps.")
@click.option("--batches", type=int, default=8, show_default=True,
              help="gradient: batches of the seeded training order the mean loss is taken over.")
@click.option("--steps", type=int, default=50, show_default=True, help="update: full fine-tuning steps.")
@click.option("--lr", type=float, default=None, help="update: peak learning rate  [default: 5e-5, as train full].")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--max-length", type=int, default=128, show_default=True, help="Tokens per text.")
@click.option("--max-train", type=click.IntRange(min=1), default=None,
              help="A seeded subsample of the training split of this size (as train).")
@click.option("--seed", type=int, default=0, show_default=True, help="Head init and data order, as train --seed.")
@click.option("--split-seed", type=int, default=0, show_default=True, help="Train/validation/test split.")
@click.option("--keep-vectors", type=int, default=64, show_default=True,
              help="Top singular triplets kept per module in OUT/singular_vectors.npz.")
@device_option("Where the model runs: cpu, cuda, cuda:N or auto (spectra: float64 on the CPU).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads  [default: torch's, all cores].")
@include_option()
@exclude_option()
@tau_option()
@out_option()
@no_plots_option("Skip figures (render later with `rankscope plot OUT`).")
@quiet_option("No progress bars and no summary.")
@overwrite_option()
@handle_errors
def probe_cmd(model: str, task: str | None, data: Path | None, text_column: str, label_column: str, objective: str,
              signal: str, batches: int, steps: int, lr: float | None, batch_size: int, max_length: int,
              max_train: int | None, seed: int, split_seed: int, keep_vectors: int, device: str, threads: int | None,
              include: tuple[str, ...], exclude: tuple[str, ...], taus: tuple[float, ...], out: Path,
              no_plots: bool, quiet: bool, overwrite: bool) -> None:
    """Spectra of the loss gradient at the base weights, or of a short full fine-tune's ΔW.

    No full fine-tune needed: `rankscope recommend OUT` plans LoRA ranks from the result.  Writes
    OUT/modules.csv, OUT/vectors.csv, OUT/spectra.npz, OUT/singular_vectors.npz, OUT/run.json and
    OUT/figures/.

    Example: rankscope probe --task rotten-tomatoes --signal gradient --batches 8 -o runs/probe-grad
    """
    from ..io.results import check_output_target

    t0 = time.perf_counter()
    check_output_target(out, "probe", overwrite)
    wrong = misplaced_options(signal)
    if wrong:
        raise RankscopeError(f"{', '.join(wrong)} only appl{'ies' if len(wrong) == 1 else 'y'} to --signal "
                             f"{ONLY_FOR[wrong[0][2:]]}")
    if task is None:
        task = Path(data).stem if data is not None else "rotten-tomatoes"
    from ..probe import probe

    result = probe(model, task, signal, data=data, text_column=text_column, label_column=label_column,
                   split_seed=split_seed, max_train=max_train, max_length=max_length, batch_size=batch_size,
                   batches=batches, steps=steps, lr=lr, seed=seed, keep_vectors=keep_vectors, device=device,
                   threads=threads, include=include, exclude=exclude, taus=taus, progress=not quiet,
                   objective=objective)
    finish(result, out, quiet=quiet, overwrite=overwrite, plots=not no_plots, started=t0)

"""``rankscope intrinsic-dim``: d90 of a task by training in random subspaces (a thin layer over
:func:`rankscope.subspace.intrinsic.intrinsic_dimension`; registered in :mod:`rankscope.cli`)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .support import OneLineCommand, argv_line, echo_notes, handle_errors, overwrite_option

TASK_HELP = ("toy (Li et al.'s D = 1000 problem), mnist-fc (FC 784-200-200-10 on 5k MNIST digits), digits "
             "(sklearn 8x8), rotten-tomatoes, bbc-news (text tasks on --model)")


def _int_list(ctx, param, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        numbers = [int(float(v)) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of integers", param_hint="--d") from exc
    if not numbers:
        raise click.BadParameter("give at least one dimension", param_hint="--d")
    return numbers


@click.command("intrinsic-dim", cls=OneLineCommand)
@click.option("--task", default="toy", show_default=True, metavar="TASK", help=TASK_HELP + ".")
@click.option("--model", default="bundled:minilm-base", show_default=True, metavar="CHECKPOINT",
              help="Text tasks: local HF folder, Hub id or bundled:minilm-base.")
@click.option("--data", default=None, metavar="FILE", help="Text tasks: a CSV/JSONL file with text and label columns.")
@click.option("--text-column", default="text", show_default=True, help="Text column of --data.")
@click.option("--label-column", default="label", show_default=True, help="Label column of --data.")
@click.option("--mode", type=click.Choice(["did", "said", "both"]), default="did", show_default=True,
              help="DID: one θ_d for all parameters; SAID: plus one scale λ per tensor, counted in d.")
@click.option("--projection", default="fastfood", show_default=True, metavar="KIND", help="dense, sparse or fastfood.")
@click.option("--layout", default="blocked", show_default=True, metavar="LAYOUT",
              help="Fastfood: blocked (2^20-row blocks), global (one transform over all D) or per-tensor.")
@click.option("--head", default="subspace", show_default=True, metavar="WHERE",
              help="Classification head: inside the subspace (subspace) or trained directly, outside d (direct).")
@click.option("--head-lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate of a directly trained head, whatever d is  [default: 5e-2 text, 1e-3 MLPs].")
@click.option("--include", multiple=True, metavar="REGEX", help="Only parameters whose name matches (repeatable).")
@click.option("--exclude", multiple=True, metavar="REGEX", help="Leave out (frozen) parameters that match (repeatable).")
@click.option("--threshold", type=float, default=0.9, show_default=True,
              help="Target = threshold × baseline (relative convention).")
@click.option("--target-absolute", type=float, default=None, help="Target metric value instead (absolute convention).")
@click.option("--baseline", type=float, default=None,
              help="Baseline metric  [default: measured by ordinary training with the same loop].")
@click.option("--seeds", type=int, default=1, show_default=True, help="Runs per d (seeds SEED, SEED+1, …), averaged.")
@click.option("--seed", type=int, default=0, show_default=True, help="First seed: θ₀ init, projection, data order.")
@click.option("--d", "grid", default=None, callback=_int_list, metavar="LIST",
              help="Evaluate exactly these d (e.g. 100,1000,10000) instead of searching.")
@click.option("--d-start", type=int, default=10, show_default=True, help="First d of the geometric sweep.")
@click.option("--d-max", type=int, default=None, help="Largest d to try  [default: D].")
@click.option("--factor", type=float, default=2.0, show_default=True, help="Ratio between successive sweep points.")
@click.option("--tolerance", type=float, default=0.1, show_default=True,
              help="Bisection stops when hi/lo <= 1 + tolerance (0: exact integer d90).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs  [default: the task's].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Subspace learning rate  [default: the task's full-training lr × √(D/d)].")
@click.option("--baseline-lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate of the baseline run  [default: the task's: 1e-3 MLPs, 5e-5 text].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Mini-batch size  [default: the task's].")
@click.option("--max-train", type=click.IntRange(min=1), default=None, help="Train on a seeded subsample of this size.")
@click.option("--max-eval", type=click.IntRange(min=1), default=None, help="Cap validation and test at this size.")
@click.option("--max-length", type=click.IntRange(min=2), default=128, show_default=True, help="Text tasks: tokens per text.")
@click.option("--split-seed", type=int, default=0, show_default=True, help="Train/validation/test split.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for text tasks.")
@click.option("--restart", is_flag=True, help="Discard the runs cached in OUT and start again.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="Output folder; finished runs are cached in OUT/runs/ and reused when the command is re-run.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines and no summary.")
@overwrite_option
@handle_errors
def intrinsic_dim_cmd(task, model, data, text_column, label_column, mode, projection, layout, head, head_lr, include, exclude, threshold, target_absolute,
                      baseline, seeds, seed, grid, d_start, d_max, factor, tolerance, epochs, lr, baseline_lr,
                      batch_size, max_train, max_eval, max_length, split_seed, device, threads, restart, out, quiet,
                      overwrite):
    """Intrinsic dimension: the smallest d whose random d-dimensional subspace reaches the target.

    Trains θ = θ₀ + P·θ_d (DID) or θ_i = θ₀,i + λ_i·(P·θ)_i (SAID) at each d, searched by a geometric
    sweep then bisection in log d.  Writes OUT/runs.csv, OUT/result.json, OUT/figures/intrinsic-dim.png,
    OUT/run.json and the run cache OUT/runs/ (an interrupted search resumes from it).

    Example: rankscope intrinsic-dim --task toy --seeds 3 --d-start 1 --tolerance 0 -o runs/toy
    """
    from ..subspace.intrinsic import intrinsic_dimension

    t0 = time.perf_counter()
    modes = ("did", "said") if mode == "both" else (mode,)
    result = intrinsic_dimension(
        task, out, modes=modes, model=model, data=data, projection=projection, layout=layout, head=head, head_lr=head_lr,
        include=include, exclude=exclude, threshold=threshold, target_absolute=target_absolute, baseline=baseline,
        seeds=seeds, seed=seed, d_start=d_start, d_max=d_max, factor=factor, tolerance=tolerance, grid=grid,
        epochs=epochs, lr=lr, baseline_lr=baseline_lr, batch_size=batch_size, split_seed=split_seed,
        max_train=max_train, max_eval=max_eval, max_length=max_length, text_column=text_column,
        label_column=label_column, device=device, threads=threads,
        restart=restart, progress=not quiet, log=None if quiet else (lambda msg: click.echo(msg, err=True)),
        argv=argv_line(), overwrite=overwrite)
    if quiet:  # otherwise the warnings were logged as they happened
        echo_notes(result.info, quiet=True)
    if not quiet:
        click.echo(result.summary())
        click.echo(f"wrote {out}/ in {time.perf_counter() - t0:.1f} s")

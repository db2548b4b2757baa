"""``rankscope intrinsic-dim``: d90 of a task by training in random subspaces.

A thin layer over :func:`rankscope.subspace.intrinsic.run_study`, registered in :mod:`rankscope.cli`.
Every option fills one field of :class:`~rankscope.subspace.intrinsic.SearchConfig` (what decides a
training run: the cache key) or of :class:`~rankscope.subspace.intrinsic.StudyOptions` (how d90 is
searched; ``--mode`` fills ``modes``), by name, or is one of :data:`RUN_OPTIONS`;
:func:`split_options` builds the two objects and refuses an option that fills neither, and
tests/test_subspace.py checks the names and defaults against the dataclasses and
:func:`~rankscope.subspace.intrinsic.intrinsic_dimension`.
"""

from __future__ import annotations

import time
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import click

from .support import (
    OneLineCommand,
    argv_line,
    device_option,
    exclude_option,
    finish,
    handle_errors,
    include_option,
    out_option,
    overwrite_option,
    quiet_option,
)

if TYPE_CHECKING:
    from ..subspace.intrinsic import SearchConfig, StudyOptions

MODES_OF = {"did": ("did",), "said": ("said",), "both": ("did", "said")}
"""``--mode`` → :attr:`StudyOptions.modes`."""
RUN_OPTIONS = ("device", "threads", "restart", "out", "quiet", "overwrite")
"""The options that are how to run, not what to measure (keywords of ``run_study``, plus ``out`` and ``quiet``)."""

TASK_HELP = ("toy (Li et al.'s D = 1000 problem), mnist-fc (FC 784-200-200-10 on 5k MNIST digits), digits "
             "(sklearn 8x8), rotten-tomatoes, bbc-news (text tasks on --model)")


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
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
@include_option("Only parameters whose name matches (repeatable).")
@exclude_option("Leave out (frozen) parameters that match (repeatable).")
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
@device_option()
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for text tasks.")
@click.option("--restart", is_flag=True, help="Discard the runs cached in OUT and start again.")
@out_option("Output folder; finished runs are cached in OUT/runs/ and reused when the command is re-run.")
@quiet_option("No progress lines and no summary.")
@overwrite_option()
@handle_errors
def intrinsic_dim_cmd(**options: Any) -> None:
    """Intrinsic dimension: the smallest d whose random d-dimensional subspace reaches the target.

    Trains θ = θ₀ + P·θ_d (DID) or θ_i = θ₀,i + λ_i·(P·θ)_i (SAID) at each d, searched by a geometric
    sweep then bisection in log d.  Writes OUT/runs.csv, OUT/result.json, OUT/figures/intrinsic-dim.png,
    OUT/run.json and the run cache OUT/runs/ (an interrupted search resumes from it).

    Example: rankscope intrinsic-dim --task toy --seeds 3 --d-start 1 --tolerance 0 -o runs/toy
    """
    from ..subspace.intrinsic import run_study

    t0 = time.perf_counter()
    config, study, run = split_options(options)
    out, quiet = run.pop("out"), run.pop("quiet")
    result = run_study(config, study, out, **run, progress=not quiet,
                       log=None if quiet else (lambda msg: click.echo(msg, err=True)), argv=argv_line())
    # the study wrote OUT; its warnings were logged as they happened unless quiet
    finish(result, out, quiet=quiet, saved=True, notes=result.info if quiet else {}, started=t0)


def split_options(options: dict[str, Any]) -> tuple[SearchConfig, StudyOptions, dict[str, Any]]:
    """The command's parameters as ``(SearchConfig, StudyOptions, {run option: value})``, filled by name."""
    from ..subspace.intrinsic import SearchConfig, StudyOptions

    options = dict(options)
    run = {name: options.pop(name) for name in RUN_OPTIONS}
    modes = MODES_OF[options.pop("mode")]
    config = SearchConfig(**{f.name: options.pop(f.name) for f in fields(SearchConfig) if f.name in options})
    study = StudyOptions(modes=modes, **{f.name: options.pop(f.name) for f in fields(StudyOptions) if f.name in options})
    if options:
        raise TypeError(f"intrinsic-dim: {', '.join(sorted(options))} fill neither SearchConfig nor StudyOptions")
    return config, study, run

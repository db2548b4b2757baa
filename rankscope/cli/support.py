"""Click plumbing shared by every command: one-line errors with exit status 2, the shared options, the ending.

Every option that several commands take (``-o/--out``, ``--tau``, ``--device``, ``--workers``, ``--executor``,
``--ray-address``, ``--no-plots``, ``-q/--quiet``, ``--overwrite``, ``--include``/``--exclude``) is defined once here, as a decorator factory
whose help text a command may reword; :func:`finish` is the one way a command ends.
"""

from __future__ import annotations

import functools
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from .. import interrupts
from ..errors import RankscopeError

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]

EXIT_BAD_INPUT = 2
OUT_HELP = "Output folder (created; replaced if it holds an earlier result)."
OVERWRITE_HELP = ("Write into an OUT that holds other files or another command's result: rankscope's earlier "
                  "files there are replaced, every other file is kept.")
DEVICE_HELP = "cpu, cuda, cuda:N or auto."
TAU_HELP = "Energy thresholds for the rank_XX columns."
DEFAULT_TAUS = "0.5,0.9,0.99"


def handle_errors(func: F) -> F:
    """Turn :class:`RankscopeError` (and unexpected failures) into one line on stderr."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.pop("debug", False) or click.get_current_context().find_root().params.get("debug", False)
        try:
            with interrupts.raising(), warnings.catch_warnings(record=True) as caught:
                value = func(*args, **kwargs)
            for w in caught:  # on success, the libraries' warnings are shown; on an error, only the error line
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
            return value
        except RankscopeError as exc:
            if debug:
                raise
            click.echo(f"Error: {_one_line(str(exc))}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except interrupts.Interrupted as exc:
            click.echo(interrupts.message(exc.signum), err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Error: interrupted (SIGINT); nothing was written", err=True)
            sys.exit(130)
        except Exception as exc:  # a bug, not bad input: still one line unless --debug
            if debug:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(f"Error: unexpected {type(exc).__name__}: {first} (rerun with --debug for the traceback)", err=True)
            sys.exit(1)

    return click.option("--debug", is_flag=True, help="Show the full traceback on errors.")(wrapper)


def _one_line(text: str) -> str:
    """Messages are one line whatever a library put into them."""
    return " ".join(text.split()) if "\n" in text or "\r" in text else text


JSON_HELP = "Print the result's key figures (its summary.json) as JSON on stdout instead of the text summary."
NO_JSON = ("plot", "report")
"""Commands that write no result folder, hence no summary.json."""


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta["rankscope.json"] = bool(value)
    return value


class OneLineCommand(click.Command):
    """Option and argument errors follow the same contract as input errors: one line, status 2.

    Every command that writes a result folder also gets ``--json`` (like ``--debug``, on every command):
    :func:`finish` then prints ``summary.json`` instead of the text summary.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.name not in NO_JSON:
            self.params.append(click.Option(["--json", "json_summary"], is_flag=True, expose_value=False,
                                            is_eager=True, callback=_remember_json, help=JSON_HELP))

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            error = click.ClickException(exc.format_message())
            error.exit_code = EXIT_BAD_INPUT
            raise error from exc


# --------------------------------------------------------------------------------------------------
# the shared options (one definition each; the help text may be reworded per command)
# --------------------------------------------------------------------------------------------------


def out_option(help: str = OUT_HELP) -> Decorator:
    """``-o/--out OUT``: the output folder (required)."""
    return click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help=help)


def include_option(help: str = "Only modules whose name matches (repeatable).") -> Decorator:
    """``--include REGEX`` (repeatable): only names that match."""
    return click.option("--include", multiple=True, metavar="REGEX", help=help)


def exclude_option(help: str = "Skip modules whose name matches (repeatable).") -> Decorator:
    """``--exclude REGEX`` (repeatable): leave out names that match."""
    return click.option("--exclude", multiple=True, metavar="REGEX", help=help)


def tau_option(help: str = TAU_HELP) -> Decorator:
    """``--tau LIST``: energy thresholds, parsed into the ``taus`` parameter (a tuple of floats)."""
    return click.option("--tau", "taus", default=DEFAULT_TAUS, show_default=True,
                        callback=lambda ctx, param, value: parse_taus(value), help=help)


def device_option(help: str = DEVICE_HELP) -> Decorator:
    """``--device``: cpu, cuda, cuda:N or auto (checked by the analysis)."""
    return click.option("--device", default="cpu", show_default=True, help=help)


def workers_option(help: str = "Matrices processed in parallel [default: CPU count].") -> Decorator:
    """``--workers N``: parallel workers (None: the analysis picks)."""
    return click.option("--workers", type=click.IntRange(min=1), default=None, help=help)


EXECUTOR_HELP = ("local: threads on this machine (with --device cuda, one per visible GPU); ray: one Ray task per "
                 "matrix, checkpoints re-opened by path on the nodes (pip install 'rankscope[ray]').")
RAY_ADDRESS_HELP = ("With --executor ray: auto (the running cluster), HOST:PORT or ray://HOST:PORT  "
                    "[default: start or join a local cluster].")


def executor_option(help: str = EXECUTOR_HELP) -> Decorator:
    """``--executor local|ray``: where the per-matrix jobs run (:mod:`rankscope.pairing.executors`)."""
    return click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help=help)


def ray_address_option(help: str = RAY_ADDRESS_HELP) -> Decorator:
    """``--ray-address ADDR``: the Ray cluster of ``--executor ray`` (None: ``ray.init()`` starts or joins one)."""
    return click.option("--ray-address", metavar="ADDR", default=None, help=help)


def no_plots_option(help: str = "Skip figures.") -> Decorator:
    """``--no-plots``: skip the figures (``rankscope plot OUT`` renders them later)."""
    return click.option("--no-plots", is_flag=True, help=help)


def quiet_option(help: str = "No progress bar and no summary.") -> Decorator:
    """``-q/--quiet``: no progress and no summary (warnings are still printed)."""
    return click.option("-q", "--quiet", is_flag=True, help=help)


def overwrite_option(help: str = OVERWRITE_HELP) -> Decorator:
    """``--overwrite``: the one way to write into a folder that is not empty and not this command's result."""
    return click.option("--overwrite", is_flag=True, help=help)


def parse_taus(value: str) -> tuple[float, ...]:
    """``--tau`` text (``0.5,0.9``) as a tuple of thresholds in (0, 1]."""
    try:
        taus = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of numbers", param_hint="--tau") from exc
    if not taus or any(not 0 < t <= 1 for t in taus):
        raise click.BadParameter(f"'{value}': every threshold must be in (0, 1]", param_hint="--tau")
    return taus


# --------------------------------------------------------------------------------------------------
# the ending
# --------------------------------------------------------------------------------------------------


def echo_notes(info: Mapping[str, Any], quiet: bool = False) -> None:
    """Print a result's warnings (``Warning: …``) and, unless quiet, its notes (``Note: …``) on stderr."""
    for warning in info.get("warnings", []) or []:
        click.echo(f"Warning: {warning}", err=True)
    if not quiet:
        for note in info.get("notes", []) or []:
            click.echo(f"Note: {note}", err=True)


def argv_line() -> str:
    """The command line as typed, for ``run.json``."""
    import shlex

    return shlex.join(["rankscope", *sys.argv[1:]])


def finish(result: Any, out: Path, *, quiet: bool, overwrite: bool = False, plots: bool | None = None,
           saved: bool = False, notes: Mapping[str, Any] | None = None, summary: Callable[[], str] | None = None,
           started: float | None = None) -> None:
    """How every command ends.

    1. :func:`echo_notes` of ``notes`` (default: ``result.info``; ``{}`` prints nothing);
    2. unless ``saved`` (the analysis wrote OUT itself, as train and intrinsic-dim do):
       ``result.info["argv"]`` and ``result.save(out, overwrite=..., [plots=...])``;
    3. unless ``quiet``: ``summary()`` (default ``result.summary_text()``), then ``wrote OUT/``, with
       `` in X s`` since ``started`` (a :func:`time.perf_counter` value) when given.
    """
    echo_notes(result.info if notes is None else notes, quiet)
    if not saved:
        result.info["argv"] = argv_line()
        result.save(out, overwrite=overwrite, **({} if plots is None else {"plots": plots}))
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get("rankscope.json"):
        summary_file = Path(out) / "summary.json"
        click.echo(summary_file.read_text() if summary_file.is_file() else "{}")
        return
    if quiet:
        return
    click.echo(result.summary_text() if summary is None else summary())
    took = "" if started is None else f" in {time.perf_counter() - started:.1f} s"
    click.echo(f"wrote {out}/{took}")


def kind_medians(table: Any, columns: Sequence[str], digits: int) -> str:
    """The per-kind median of ``columns`` of a result table, as text (the summary of lora and compare)."""
    return table.groupby("kind", sort=False)[list(columns)].median().to_string(float_format=lambda v: f"{v:.{digits}f}")

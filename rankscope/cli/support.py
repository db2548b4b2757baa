"""Click plumbing shared by every command: one-line errors with exit status 2, ``--debug``, shared options."""

from __future__ import annotations

import functools
import sys
import warnings

import click

from .. import interrupts
from ..errors import RankscopeError

EXIT_BAD_INPUT = 2
OVERWRITE_HELP = ("Write into an OUT that holds other files or another command's result: rankscope's earlier "
                  "files there are replaced, every other file is kept.")


def handle_errors(func):
    """Turn :class:`RankscopeError` (and unexpected failures) into one line on stderr."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
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


def overwrite_option(func):
    """``--overwrite``: the one way to write into a folder that is not empty and not this command's result."""
    return click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)(func)


def echo_notes(info: dict, quiet: bool = False) -> None:
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


class OneLineCommand(click.Command):
    """Option and argument errors follow the same contract as input errors: one line, status 2."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            error = click.ClickException(exc.format_message())
            error.exit_code = EXIT_BAD_INPUT
            raise error from exc


def parse_taus(value: str) -> tuple[float, ...]:
    try:
        taus = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of numbers", param_hint="--tau") from exc
    if not taus or any(not 0 < t <= 1 for t in taus):
        raise click.BadParameter(f"'{value}': every threshold must be in (0, 1]", param_hint="--tau")
    return taus

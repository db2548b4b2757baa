"""Click plumbing shared by every command: one-line errors with exit status 2, ``--debug``, option parsing."""

from __future__ import annotations

import functools
import sys

import click

from .errors import RankscopeError

EXIT_BAD_INPUT = 2


def handle_errors(func):
    """Turn :class:`RankscopeError` (and unexpected failures) into one line on stderr."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        debug = kwargs.pop("debug", False) or click.get_current_context().find_root().params.get("debug", False)
        try:
            return func(*args, **kwargs)
        except RankscopeError as exc:
            if debug:
                raise
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            click.echo("Error: interrupted; nothing was written", err=True)
            sys.exit(130)
        except Exception as exc:  # a bug, not bad input: still one line unless --debug
            if debug:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(f"Error: unexpected {type(exc).__name__}: {first} (rerun with --debug for the traceback)", err=True)
            sys.exit(1)

    return click.option("--debug", is_flag=True, help="Show the full traceback on errors.")(wrapper)


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

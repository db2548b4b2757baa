"""``rankscope report``: one self-contained HTML (or Markdown) page for one or more result folders."""

from __future__ import annotations

from pathlib import Path

import click

from .support import OneLineCommand, handle_errors


@click.command("report", cls=OneLineCommand)
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="The page to write (default: RESULT/report.html for one result, else report.html here).")
@click.option("--format", "fmt", type=click.Choice(["html", "md"]), default=None,
              help="html (self-contained, figures embedded) or md; default from the file name, else html.")
@click.option("--overwrite", is_flag=True,
              help="Accepted for symmetry with the other commands: an earlier rankscope report is always replaced, "
                   "any other file never.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@handle_errors
def report_cmd(results: tuple[Path, ...], out: Path | None, fmt: str | None, overwrite: bool, quiet: bool) -> None:
    """One page answering the question of RESULTS (result folders of one command, side by side).

    The first screen answers in sentences with the numbers, then key figures, figures and tables.

    Example: rankscope report reports/demo -o reports/demo/report.html
    """
    from ..report import report

    if fmt is None:
        fmt = "md" if out is not None and out.suffix.lower() in (".md", ".markdown") else "html"
    if out is None:
        name = f"report.{fmt}"
        out = results[0] / name if len(results) == 1 else Path(name)
    page = report(list(results), fmt=fmt, out=out)
    path = page.save(out, overwrite=overwrite)
    owner = next((r for r in results if r.resolve() == path.resolve().parent), None)
    if owner is not None:  # a page inside a result folder becomes part of that result (never a foreign file)
        from .plot import add_to_marker

        add_to_marker(owner, [path.name])
    if not quiet:
        for sentence in page.key_figures[0].get("answer", []) if len(page.key_figures) == 1 else []:
            click.echo(sentence)
        click.echo(f"wrote {path}")

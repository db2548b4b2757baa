"""``rankscope plot``: re-render the figures of a saved result folder (no recomputation)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import RankscopeError
from .support import OneLineCommand, handle_errors


@click.command("plot", cls=OneLineCommand)
@click.argument("out", type=click.Path(path_type=Path))
@handle_errors
def plot_cmd(out: Path) -> None:
    """Re-render the figures of a saved result folder OUT (no recomputation).

    Works for the results of every command that writes a result folder (spectrum, lora, probe, compare,
    compare-adapters, recommend, extract, resize, train, intrinsic-dim).

    Example: rankscope plot reports/demo
    """
    from ..io.results import MARKER, marker_with_files, read_json, read_marker, write_json

    if not out.is_dir():
        raise RankscopeError(f"no such result folder: {out}")
    info = read_json(out / "run.json")
    marker = read_marker(out)
    legacy = isinstance(info.get("versions"), dict) and "rankscope" in info["versions"]  # before the marker
    if marker is None and not legacy:
        raise RankscopeError(f"{out / 'run.json'} was not written by rankscope: not a rankscope result folder")
    command = marker["command"] if marker is not None else info.get("command")
    if command in ("intrinsic-dim", "train", "extract", "resize"):
        written = _rerender_record(out, command, info)
        add_to_marker(out, [f"figures/{w}" for w in written])
        click.echo(f"wrote {', '.join(written)} to {out / 'figures'}/")
        return
    if command == "recommend":
        from ..figures.ranks import render_plan_figures
        from ..ranks import RankPlan

        result = RankPlan.load(out)
        (out / "figures").mkdir(exist_ok=True)
        written = render_plan_figures(result, out / "figures")
    elif command in ("compare", "compare-adapters"):
        from ..compare import CompareResult
        from ..figures.compare import render_compare_figures

        result = CompareResult.load(out)
        written = render_compare_figures(result, out / "figures")
    else:
        from ..figures.spectrum import render_spectrum_figures
        from ..spectrum import SpectrumResult

        result = SpectrumResult.load(out)
        written = render_spectrum_figures(result, out / "figures")
    result.info.setdefault("outputs", {})["figures"] = written
    if marker is not None and marker.get("files") is not None:  # the new figures belong to the result
        figures = [(out / "figures" / w).relative_to(out).as_posix() for w in written]
        result.info[MARKER] = marker_with_files(marker, out, figures)
    write_json(out / "run.json", result.info)
    click.echo(f"wrote {', '.join(written)} to {out / 'figures'}/")


def _rerender_record(out: Path, command: str, info: dict) -> list[str]:
    """The figures of a folder whose run.json is only amended (its marker): intrinsic-dim, train, extract, resize."""
    if command == "intrinsic-dim":
        from ..subspace.intrinsic import rerender

        return rerender(out)
    if command == "train":
        from ..train import TrainResult

        return TrainResult.load(out).render_figures(out / "figures")
    from types import SimpleNamespace

    from ..figures.adapters import render_adapter_figures
    from ..io.results import read_table

    table = read_table(out / f"{command}.csv", ("module", "layer", "kind", "rel_error"), ("rel_error",))
    return render_adapter_figures(SimpleNamespace(table=table, info=info), out / "figures")


def add_to_marker(out: Path, files: list[str]) -> None:
    """Record files that `plot` added to a result folder in its run.json marker."""
    from ..io.results import MARKER, marker_with_files, read_json, read_marker, write_json

    marker = read_marker(out)
    if marker is None or marker.get("files") is None:
        return
    info = read_json(out / "run.json")
    info[MARKER] = marker_with_files(marker, out, files)
    write_json(out / "run.json", info)

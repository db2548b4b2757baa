"""Command line: a thin click layer over the Python API (one command per analysis).

Errors caused by the input print one line, ``Error: <message>``, and exit with status 2; add
``--debug`` (before or after the command) for the traceback.
"""

from __future__ import annotations

import functools
import shlex
import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import RankscopeError

EXIT_BAD_INPUT = 2


def _debug_requested() -> bool:
    return "--debug" in sys.argv


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


def _parse_taus(value: str) -> tuple[float, ...]:
    try:
        taus = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of numbers", param_hint="--tau") from exc
    if not taus or any(not 0 < t <= 1 for t in taus):
        raise click.BadParameter(f"'{value}': every threshold must be in (0, 1]", param_hint="--tau")
    return taus


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rankscope")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
def main(debug: bool) -> None:
    """rankscope: how low-rank is fine-tuning? Measured from the weights.

    CHECKPOINT arguments accept a local Hugging Face folder, a .safetensors/.bin file, a Hub id
    (org/name[@revision]) or bundled:minilm-base / bundled:minilm-finetuned.
    """


@main.command("spectrum", cls=OneLineCommand)
@click.argument("base")
@click.argument("finetuned")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output folder (created; replaced if it holds an earlier result).")
@click.option("--include", multiple=True, metavar="REGEX", help="Only modules whose name matches (repeatable).")
@click.option("--exclude", multiple=True, metavar="REGEX", help="Skip modules whose name matches (repeatable).")
@click.option("--tau", "taus", default="0.5,0.9,0.99", show_default=True, callback=lambda c, p, v: _parse_taus(v),
              help="Energy thresholds for the rank_XX columns.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--method", type=click.Choice(["auto", "gram", "svd", "torch"]), default="auto", show_default=True,
              help="Exact singular-value method; auto picks the fastest measured one per shape.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Matrices processed in parallel [default: CPU count].")
@click.option("--no-plots", is_flag=True, help="Skip figures (render later with `rankscope plot OUT`).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary table.")
@handle_errors
def spectrum_cmd(base, finetuned, out, include, exclude, taus, device, method, workers, no_plots, quiet):
    """Exact singular-value spectrum of every ΔW = FINETUNED − BASE, with per-module ranks.

    Writes OUT/modules.csv, OUT/vectors.csv, OUT/spectra.npz, OUT/run.json and OUT/figures/.

    Example: rankscope spectrum bundled:minilm-base bundled:minilm-finetuned -o reports/demo
    """
    from .outputs import check_output_target
    from .spectrum import spectrum

    t0 = time.perf_counter()
    check_output_target(out)
    result = spectrum(base, finetuned, include=include, exclude=exclude, taus=taus, device=device, method=method,
                      workers=workers, progress=not quiet)
    for warning in result.info["warnings"]:
        click.echo(f"Warning: {warning}", err=True)
    result.info["argv"] = shlex.join(["rankscope", *sys.argv[1:]])
    result.save(out, plots=not no_plots)
    if not quiet:
        click.echo(result.summary())
        click.echo(f"wrote {out}/ in {time.perf_counter() - t0:.1f} s")


@main.command("lora", cls=OneLineCommand)
@click.argument("adapter")
@click.option("--base", default=None, help="Base checkpoint: names modules as its tensors, adds base norms, needed for DoRA.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--tau", "taus", default="0.5,0.9,0.99", show_default=True, callback=lambda c, p, v: _parse_taus(v),
              help="Energy thresholds for the rank_XX columns.")
@click.option("--no-plots", is_flag=True, help="Skip figures.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary table.")
@handle_errors
def lora_cmd(adapter, base, out, taus, no_plots, quiet):
    """Exact spectra of a peft LoRA ADAPTER's updates ΔW = s·B·A, from the factors.

    Writes the same files as `spectrum` (modules.csv with r, alpha, scale and utilisation columns).

    Example: rankscope lora runs/lora-r8 --base bundled:minilm-base -o reports/lora-r8
    """
    from .lora import lora_spectrum
    from .outputs import check_output_target

    check_output_target(out)
    result = lora_spectrum(adapter, base, taus=taus, progress=not quiet)
    result.info["argv"] = shlex.join(["rankscope", *sys.argv[1:]])
    result.save(out, plots=not no_plots)
    if not quiet:
        cols = [c for c in ("r", "effective_rank", "stable_rank", "utilization_effective", "rank_90") if c in result.table]
        click.echo(result.table.groupby("kind", sort=False)[cols].median().to_string(float_format=lambda v: f"{v:.2f}"))
        click.echo(f"wrote {out}/")


@main.command("compare", cls=OneLineCommand)
@click.argument("base")
@click.argument("finetuned")
@click.argument("adapter")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--include", multiple=True, metavar="REGEX", help="Only modules whose name matches (repeatable).")
@click.option("--phi-max", type=click.IntRange(min=1), default=64, show_default=True,
              help="Largest i of the full fine-tune's top-i subspace in the φ(i, j) grids.")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Top singular vectors examined for intruder dimensions.")
@click.option("--epsilon", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5, show_default=True,
              help="Intruder threshold on the best |cos| with the base's singular vectors.")
@click.option("--phi-modules", metavar="REGEX", default=None, help="Modules for φ(i, j) heatmaps [default: first/last layers].")
@click.option("--no-plots", is_flag=True, help="Skip figures.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary table.")
@handle_errors
def compare_cmd(base, finetuned, adapter, out, include, phi_max, k, epsilon, phi_modules, no_plots, quiet):
    """Compare a LoRA ADAPTER with the full fine-tune FINETUNED of the same BASE, module by module.

    Writes OUT/compare.csv, amplification.csv, intruders.csv, phi.npz, run.json and figures/.

    Example: rankscope compare bundled:minilm-base runs/full runs/lora-r8 -o reports/compare-r8
    """
    from .compare import compare
    from .outputs import check_output_target

    check_output_target(out)
    result = compare(base, finetuned, adapter, include=include, phi_max=phi_max, k=k, epsilon=epsilon,
                     progress=not quiet)
    result.info["options"]["phi_modules"] = phi_modules
    result.info["argv"] = shlex.join(["rankscope", *sys.argv[1:]])
    result.save(out, plots=not no_plots)
    if not quiet:
        cols = ["r", "energy_both", "energy_optimal", "phi_left_1", "phi_right_1", "cosine", "norm_ratio",
                "intruders_full", "intruders_lora", "amp_full_r", "amp_lora_r"]
        click.echo(result.table.groupby("kind", sort=False)[cols].median().to_string(float_format=lambda v: f"{v:.3f}"))
        click.echo(f"wrote {out}/")


@main.command("compare-adapters", cls=OneLineCommand)
@click.argument("adapter_1")
@click.argument("adapter_2")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--phi-modules", metavar="REGEX", default=None, help="Modules for φ(i, j) heatmaps.")
@click.option("--no-plots", is_flag=True, help="Skip figures.")
@click.option("-q", "--quiet", is_flag=True, help="No summary table.")
@handle_errors
def compare_adapters_cmd(adapter_1, adapter_2, out, phi_modules, no_plots, quiet):
    """φ(i, j) between two LoRA adapters (different ranks or seeds), for A and B, per module.

    Writes OUT/compare.csv, phi.npz (keys "<module>:A", "<module>:B"), run.json and figures/.

    Example: rankscope compare-adapters runs/lora-r8 runs/lora-r64 -o reports/r8-vs-r64
    """
    from .compare import compare_adapters
    from .outputs import check_output_target

    check_output_target(out)
    result = compare_adapters(adapter_1, adapter_2)
    result.info["options"] = {"phi_modules": phi_modules}
    result.info["argv"] = shlex.join(["rankscope", *sys.argv[1:]])
    result.save(out, plots=not no_plots)
    if not quiet:
        cols = ["r_1", "r_2", "phi_A_1", "phi_A_min_r", "phi_B_1", "phi_B_min_r", "phi_random_A"]
        click.echo(result.table.groupby("kind", sort=False)[cols].median().to_string(float_format=lambda v: f"{v:.3f}"))
        click.echo(f"wrote {out}/")


@main.command("plot", cls=OneLineCommand)
@click.argument("out", type=click.Path(path_type=Path))
@handle_errors
def plot_cmd(out):
    """Re-render the figures of a saved result folder OUT (no recomputation).

    Works for the results of spectrum, lora, compare and compare-adapters.

    Example: rankscope plot reports/demo
    """
    from .outputs import read_json, write_json

    if not out.is_dir():
        raise RankscopeError(f"no such result folder: {out}")
    command = read_json(out / "run.json").get("command")
    if command in ("compare", "compare-adapters"):
        from .compare import CompareResult
        from .compare_plots import render_compare_figures

        result = CompareResult.load(out)
        written = render_compare_figures(result, out / "figures")
    else:
        from .plots import render_spectrum_figures
        from .spectrum import SpectrumResult

        result = SpectrumResult.load(out)
        written = render_spectrum_figures(result, out / "figures")
    result.info.setdefault("outputs", {})["figures"] = written
    write_json(out / "run.json", result.info)
    click.echo(f"wrote {', '.join(written)} to {out / 'figures'}/")


if __name__ == "__main__":
    main()

"""Command line: a thin click layer over the Python API (one command per analysis).

Errors caused by the input print one line, ``Error: <message>``, and exit with status 2; add
``--debug`` (before or after the command) for the traceback.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

# Before anything loads torch's libgomp: idle OpenMP workers sleep instead of spinning.  On a shared
# 2-core machine spinning made a MiniLM training step 10x slower; on an idle one it costs nothing measurable.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click  # noqa: E402

from .. import __version__  # noqa: E402
from ..errors import RankscopeError  # noqa: E402
from ..options import compile_regex, compile_regexes  # noqa: E402
from ..train import METHODS  # noqa: E402  (light: torch loads only when training starts)
from ..training.data import BUILTINS  # noqa: E402
from .extract import extract_cmd  # noqa: E402  (light: extract loads inside the command)
from .intrinsic_dim import intrinsic_dim_cmd  # noqa: E402  (light: torch loads inside the command)
from .recommend import recommend_cmd  # noqa: E402  (light: ranks loads inside the command)
from .support import OneLineCommand, argv_line, echo_notes, handle_errors, overwrite_option, parse_taus


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
@click.option("--tau", "taus", default="0.5,0.9,0.99", show_default=True, callback=lambda c, p, v: parse_taus(v),
              help="Energy thresholds for the rank_XX columns.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--method", type=click.Choice(["auto", "gram", "svd", "torch"]), default="auto", show_default=True,
              help="Exact singular-value method; auto picks the fastest measured one per shape.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Matrices processed in parallel [default: CPU count].")
@click.option("--no-plots", is_flag=True, help="Skip figures (render later with `rankscope plot OUT`).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary table.")
@overwrite_option
@handle_errors
def spectrum_cmd(base, finetuned, out, include, exclude, taus, device, method, workers, no_plots, quiet, overwrite):
    """Exact singular-value spectrum of every ΔW = FINETUNED − BASE, with per-module ranks.

    Writes OUT/modules.csv, OUT/vectors.csv, OUT/spectra.npz, OUT/run.json and OUT/figures/.

    Example: rankscope spectrum bundled:minilm-base bundled:minilm-finetuned -o reports/demo
    """
    from ..io.results import check_output_target
    from ..spectrum import spectrum

    t0 = time.perf_counter()
    check_output_target(out, "spectrum", overwrite)
    result = spectrum(base, finetuned, include=include, exclude=exclude, taus=taus, device=device, method=method,
                      workers=workers, progress=not quiet)
    echo_notes(result.info, quiet)
    result.info["argv"] = argv_line()
    result.save(out, plots=not no_plots, overwrite=overwrite)
    if not quiet:
        click.echo(result.summary())
        click.echo(f"wrote {out}/ in {time.perf_counter() - t0:.1f} s")


@main.command("lora", cls=OneLineCommand)
@click.argument("adapter")
@click.option("--base", default=None, help="Base checkpoint: names modules as its tensors, adds base norms, needed for DoRA.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--tau", "taus", default="0.5,0.9,0.99", show_default=True, callback=lambda c, p, v: parse_taus(v),
              help="Energy thresholds for the rank_XX columns.")
@click.option("--no-plots", is_flag=True, help="Skip figures.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary table.")
@overwrite_option
@handle_errors
def lora_cmd(adapter, base, out, taus, no_plots, quiet, overwrite):
    """Exact spectra of a peft LoRA ADAPTER's updates ΔW = s·B·A, from the factors.

    Writes the same files as `spectrum` (modules.csv with r, alpha, scale and utilisation columns).

    Example: rankscope lora runs/lora-r8 --base bundled:minilm-base -o reports/lora-r8
    """
    from ..io.results import check_output_target
    from ..lora import lora_spectrum

    check_output_target(out, "lora", overwrite)
    result = lora_spectrum(adapter, base, taus=taus, progress=not quiet)
    echo_notes(result.info, quiet)
    result.info["argv"] = argv_line()
    result.save(out, plots=not no_plots, overwrite=overwrite)
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
@overwrite_option
@handle_errors
def compare_cmd(base, finetuned, adapter, out, include, phi_max, k, epsilon, phi_modules, no_plots, quiet, overwrite):
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
                     progress=not quiet)
    echo_notes(result.info, quiet)
    result.info["options"]["phi_modules"] = phi_modules
    result.info["argv"] = argv_line()
    result.save(out, plots=not no_plots, overwrite=overwrite)
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
@overwrite_option
@handle_errors
def compare_adapters_cmd(adapter_1, adapter_2, out, phi_modules, no_plots, quiet, overwrite):
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
    echo_notes(result.info, quiet)
    result.info["options"] = {"phi_modules": phi_modules}
    result.info["argv"] = argv_line()
    result.save(out, plots=not no_plots, overwrite=overwrite)
    if not quiet:
        cols = ["r_1", "r_2", "phi_A_1", "phi_A_min_r", "phi_B_1", "phi_B_min_r", "phi_random_A"]
        click.echo(result.table.groupby("kind", sort=False)[cols].median().to_string(float_format=lambda v: f"{v:.3f}"))
        click.echo(f"wrote {out}/")


def _task_help() -> str:
    return "Built-in task (" + ", ".join(BUILTINS) + ") or a name for --data."


_LORA_ONLY = ("r", "alpha", "target_modules", "rank_pattern", "alpha_pattern", "use_rslora")


def _lora_options_given() -> list[str]:
    """The LoRA-only options that were typed on the command line."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return [f"--{n.replace('_', '-')}" for n in _LORA_ONLY if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE]


@main.command("train", cls=OneLineCommand)
@click.option("--model", default="bundled:minilm-base", show_default=True, metavar="CHECKPOINT",
              help="Local HF folder, Hub id or bundled:minilm-base.")
@click.option("--task", default=None, metavar="TASK", help=_task_help() + "  [default: rotten-tomatoes]")
@click.option("--data", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="CSV/TSV/JSONL file with a text and a label column (instead of a built-in task).")
@click.option("--text-column", default="text", show_default=True, help="Text column of --data.")
@click.option("--label-column", default="label", show_default=True, help="Label column of --data.")
@click.option("--method", type=click.Choice(METHODS), default="full", show_default=True,
              help="full: every weight trainable; lora: a peft LoRA adapter plus the classifier head.")
@click.option("--r", "r", type=click.IntRange(min=1), default=8, show_default=True, help="LoRA rank.")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=16.0, show_default=True,
              help="LoRA alpha (scale alpha/r, alpha/sqrt(r) with --use-rslora).")
@click.option("--target-modules", default=None, metavar="NAMES",
              help="Comma-separated module names (query,value) or all-linear  [default: peft's for the architecture].")
@click.option("--rank-pattern", default=None, metavar="FILE", help="JSON {module pattern: r} overriding --r.")
@click.option("--alpha-pattern", default=None, metavar="FILE", help="JSON {module pattern: alpha} overriding --alpha.")
@click.option("--use-rslora", is_flag=True, help="Rank-stabilised LoRA scale alpha/sqrt(r).")
@click.option("--lora-config", default=None, metavar="FILE",
              help="A peft lora_config.json (e.g. from `rankscope recommend`): sets --r, --alpha, --target-modules, "
                   "--rank-pattern, --alpha-pattern and --use-rslora.")
@click.option("--epochs", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate  [default: 5e-5 full, 5e-4 lora].")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--max-length", type=click.IntRange(min=2), default=128, show_default=True, help="Tokens per text.")
@click.option("--max-train", type=click.IntRange(min=1), default=None, help="Train on a seeded subsample of this size.")
@click.option("--max-eval", type=click.IntRange(min=1), default=None, help="Cap validation and test at this size.")
@click.option("--seed", type=int, default=0, show_default=True, help="Head/LoRA init, data order, dropout.")
@click.option("--split-seed", type=int, default=0, show_default=True, help="Train/validation/test split.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--eval-every", type=click.IntRange(min=1), default=None, help="Also evaluate every N steps.")
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="Stop after N evaluations without validation improvement.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads  [default: torch's, all cores].")
@click.option("--last", is_flag=True, help="Test and save the last weights instead of the best on validation.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="Output folder (created; replaced if it holds an earlier result).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@overwrite_option
@handle_errors
def train_cmd(model, task, data, text_column, label_column, method, r, alpha, target_modules, rank_pattern,
              alpha_pattern, use_rslora, lora_config, epochs, lr, batch_size, max_length, max_train, max_eval, seed,
              split_seed, device, eval_every, patience, threads, last, out, quiet, overwrite):
    """Fine-tune MODEL on a classification task (full or LoRA) and save it with its metrics.

    Writes the model (full: HF checkpoint; lora: peft adapter), the tokenizer, OUT/metrics.json and
    OUT/run.json.  The test accuracy is that of the best validation checkpoint (--last: the final one).

    Example: rankscope train --task rotten-tomatoes --method lora --max-train 2000 -o runs/lora
    """
    from ..io.results import check_output_target

    check_output_target(out, "train", overwrite)
    if task is None:
        task = Path(data).stem if data is not None else "rotten-tomatoes"
    given = _lora_options_given()
    if method != "lora" and given:
        raise RankscopeError(f"{', '.join(given)} only apply to --method lora")
    from ..train import summary_line, train

    if lora_config is not None:
        from ..train import lora_options_from_config

        if method != "lora":
            raise RankscopeError("--lora-config only applies to --method lora")
        if given:
            raise RankscopeError(f"--lora-config already sets {', '.join(given)}: give one or the other")
        opts = lora_options_from_config(lora_config)
        r, alpha, target_modules = opts["r"], opts["alpha"], opts["target_modules"]
        rank_pattern, alpha_pattern, use_rslora = opts["rank_pattern"], opts["alpha_pattern"], opts["use_rslora"]
    metrics = train(model, task, method, out, data=data, text_column=text_column, label_column=label_column,
                    split_seed=split_seed, max_train=max_train, max_eval=max_eval, seed=seed, epochs=epochs, lr=lr,
                    batch_size=batch_size, max_length=max_length, device=device, eval_every=eval_every,
                    patience=patience, restore_best=not last, r=r, alpha=alpha, target_modules=target_modules,
                    rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, use_rslora=use_rslora, threads=threads,
                    progress=not quiet, argv=argv_line(), overwrite=overwrite)
    if not quiet:
        click.echo(summary_line(metrics))
        click.echo(f"wrote {out}/")


@main.command("plot", cls=OneLineCommand)
@click.argument("out", type=click.Path(path_type=Path))
@handle_errors
def plot_cmd(out):
    """Re-render the figures of a saved result folder OUT (no recomputation).

    Works for the results of spectrum, lora, compare, compare-adapters, recommend and intrinsic-dim.

    Example: rankscope plot reports/demo
    """
    from ..io.results import MARKER, read_json, read_marker, write_json

    if not out.is_dir():
        raise RankscopeError(f"no such result folder: {out}")
    info = read_json(out / "run.json")
    marker = read_marker(out)
    legacy = isinstance(info.get("versions"), dict) and "rankscope" in info["versions"]  # before the marker
    if marker is None and not legacy:
        raise RankscopeError(f"{out / 'run.json'} was not written by rankscope: not a rankscope result folder")
    command = marker["command"] if marker is not None else info.get("command")
    if command in ("train", "extract"):
        raise RankscopeError(f"{out} holds {'a trained model' if command == 'train' else 'an adapter'}: "
                             "it has no figures to render")
    if command == "intrinsic-dim":
        from ..subspace.intrinsic import rerender

        written = rerender(out)
        _add_to_marker(out, [f"figures/{w}" for w in written])
        click.echo(f"wrote {', '.join(written)} to {out / 'figures'}/")
        return
    if command == "recommend":
        from ..figures.spectrum import render_rank_figure
        from ..ranks import RankPlan

        result = RankPlan.load(out)
        (out / "figures").mkdir(exist_ok=True)
        written = [render_rank_figure(result, out / "figures" / "ranks.png")]
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
        result.info[MARKER] = {**marker, "files": sorted({*marker["files"], *figures})}
    write_json(out / "run.json", result.info)
    click.echo(f"wrote {', '.join(written)} to {out / 'figures'}/")


def _add_to_marker(out: Path, files: list[str]) -> None:
    """Record files that `plot` added to a result folder in its run.json marker."""
    from ..io.results import MARKER, read_json, read_marker, write_json

    marker = read_marker(out)
    if marker is None or marker.get("files") is None:
        return
    info = read_json(out / "run.json")
    info[MARKER] = {**marker, "files": sorted({*marker["files"], *files})}
    write_json(out / "run.json", info)


main.add_command(recommend_cmd)
main.add_command(extract_cmd)
main.add_command(intrinsic_dim_cmd)

if __name__ == "__main__":
    main()

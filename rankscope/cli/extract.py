"""``rankscope extract``: a peft LoRA adapter from the truncated SVD of every ΔW.

A thin layer over :func:`rankscope.extract.extract`.  Registered in the ``rankscope`` group by :mod:`rankscope.cli`; also runnable alone as
``python -m rankscope.cli.extract BASE FINETUNED --rank 64 -o OUT``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as rankscope.cli: idle OpenMP workers sleep on a shared machine

import click  # noqa: E402

from .support import (  # noqa: E402
    OneLineCommand,
    device_option,
    exclude_option,
    executor_option,
    finish,
    handle_errors,
    no_plots_option,
    out_option,
    overwrite_option,
    quiet_option,
    ray_address_option,
    workers_option,
)


def _targets(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not [t for t in value.split(",") if t.strip()]:
        raise click.BadParameter("give module names separated by commas, or all-linear", param_hint="--targets")
    return value


@click.command("extract", cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"],
                                                                 "max_content_width": 100})
@click.argument("base")
@click.argument("finetuned")
@out_option("Adapter folder to write (created; replaced only if it holds an earlier rankscope result).")
@click.option("--rank", "rank", type=click.IntRange(min=1), default=None,
              help="One LoRA rank r for every targeted module (or use --config).")
@click.option("--config", "config", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="peft lora_config.json / adapter_config.json: target_modules, r, lora_alpha, rank_pattern, "
                   "alpha_pattern, use_rslora, bias, modules_to_save.")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=None,
              help="lora_alpha with --rank  [default: the rank, i.e. scale s = 1].")
@click.option("--use-rslora", is_flag=True, help="With --rank: rsLoRA scale s = alpha/sqrt(r).")
@click.option("--targets", default=None, callback=_targets, metavar="NAMES",
              help="With --rank: comma-separated module names, peft style (q_proj,v_proj)  [default: all-linear].")
@exclude_option("Never extract modules whose name matches (repeatable).")
@click.option("--embeddings", type=click.Choice(["auto", "skip", "lora", "save"]), default="auto", show_default=True,
              help="Embeddings and lm_head: LoRA on them, full copies in modules_to_save, or skip; auto = LoRA "
                   "if the targets name them, else skip.")
@click.option("--save-modules", multiple=True, metavar="REGEX",
              help="Also copy these modules whole into modules_to_save, e.g. 'norm' (repeatable).")
@click.option("--bias", type=click.Choice(["none", "lora_only", "all"]), default=None,
              help="Fine-tuned biases to include (peft's bias)  [default: the config's, else none].")
@click.option("--method", type=click.Choice(["auto", "exact", "randomized"]), default="auto", show_default=True,
              help="Truncated SVD: exact (Gram + top-r eigh / LAPACK) or randomized block Krylov.")
@click.option("--power-iterations", type=click.IntRange(min=0), default=3, show_default=True,
              help="Randomized: power iterations q.")
@click.option("--oversample", type=click.IntRange(min=0), default=10, show_default=True,
              help="Randomized: oversampling p.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the randomized test matrices.")
@click.option("--no-optimum", is_flag=True,
              help="Skip the exact spectrum (Eckart–Young optimum column); lets auto pick the randomized SVD.")
@device_option()
@workers_option("Modules in parallel [default: CPU count; one per GPU].")
@executor_option("local: threads on this machine (with --device cuda, one per visible GPU); ray: one Ray task per "
                 "module, checkpoints re-opened by path on the nodes (pip install 'rankscope[ray]').")
@ray_address_option()
@click.option("--model-check", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="Cross-check module names and layer types with the model class built on the meta device "
                   "(imports transformers, ~2-3 s); auto: only when the checkpoint's names look unusual.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
              help="Write every floating tensor of the adapter in this format (errors in extract.csv are those of the "
                   "rounded factors)  [default: LoRA factors float32, other tensors as read].")
@no_plots_option("Skip OUT/figures/error.png.")
@quiet_option()
@overwrite_option()
@handle_errors
def extract_cmd(base: str, finetuned: str, out: Path, rank: int | None, config: Path | None, alpha: float | None,
                use_rslora: bool, targets: str | None, exclude: tuple[str, ...], embeddings: str,
                save_modules: tuple[str, ...], bias: str | None, method: str, power_iterations: int, oversample: int,
                seed: int, no_optimum: bool, device: str, workers: int | None, executor: str, ray_address: str | None,
                model_check: str, dtype: str | None, no_plots: bool, quiet: bool, overwrite: bool) -> None:
    """Extract a LoRA adapter from a full fine-tune: rank-r truncated SVD of every ΔW = FINETUNED − BASE.

    Writes a peft adapter (OUT/adapter_config.json, OUT/adapter_model.safetensors) whose merge gives
    BASE + the best rank-r approximation of each ΔW (B = U√Σ/√s, A = √Σ Vᵀ/√s), plus OUT/extract.csv
    (reconstruction error per module next to the Eckart–Young optimum), a model card OUT/README.md,
    OUT/figures/error.png and OUT/run.json.

    Example: rankscope extract ./llama-base ./llama-sft --rank 64 -o adapters/sft-r64
    """
    from ..errors import RankscopeError
    from ..extract import extract
    from ..io.results import check_output_target

    t0 = time.perf_counter()
    if (rank is None) == (config is None):
        raise RankscopeError("give exactly one of --rank R and --config FILE")
    if config is not None and (alpha is not None or use_rslora or targets is not None):
        raise RankscopeError("--alpha, --use-rslora and --targets only apply with --rank (--config sets them)")
    check_output_target(out, "extract", overwrite)
    result = extract(base, finetuned, rank=rank, alpha=alpha, config=config, targets=targets or "all-linear",
                     use_rslora=use_rslora, exclude=exclude, embeddings=embeddings, save_modules=save_modules,
                     bias=bias, method=method, power_iterations=power_iterations, oversample=oversample, seed=seed,
                     optimum=not no_optimum, device=device, dtype=dtype, workers=workers, check_model=model_check,
                     progress=not quiet, executor=executor, ray_address=ray_address)
    finish(result, out, quiet=quiet, overwrite=overwrite, plots=not no_plots, started=t0)


if __name__ == "__main__":
    extract_cmd()

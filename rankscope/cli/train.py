"""``rankscope train``: fine-tune a classifier or a causal LM (full, LoRA or AdaLoRA) and save it with its metrics.

A thin layer over :func:`rankscope.train.train`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from ..errors import RankscopeError
from ..train import METHODS, OBJECTIVES  # light: torch loads only when training starts
from ..training.data import task_names
from .support import (
    OneLineCommand,
    argv_line,
    device_option,
    finish,
    handle_errors,
    no_plots_option,
    out_option,
    overwrite_option,
    quiet_option,
)


def task_help() -> str:
    """The help of ``--task``: the built-in task names."""
    return "Built-in task (" + ", ".join(task_names()) + ") or a name for --data."


LORA_ONLY = ("r", "alpha", "target_modules", "rank_pattern", "alpha_pattern", "use_rslora")
ADALORA_TOO = ("r", "alpha", "target_modules")
"""The LoRA options that ``--method adalora`` also takes (its final average rank, alpha and targets)."""


def typed(name: str) -> bool:
    """Whether the option ``name`` was typed on the command line."""
    from click.core import ParameterSource

    return click.get_current_context().get_parameter_source(name) == ParameterSource.COMMANDLINE


def objective_option() -> Callable[[Callable], Callable]:
    """``--objective classification|causal-lm`` (shared by the commands that train through the engine)."""
    return click.option("--objective", type=click.Choice(OBJECTIVES), default="classification", show_default=True,
                        help="classification: a label per text (accuracy); causal-lm: next-token loss of a decoder on "
                             "a .txt or .jsonl file (text, or prompt/response with the loss on the response).")


def tokenizer_option() -> Callable[[Callable], Callable]:
    """``--tokenizer NAME_OR_PATH``: the tokenizer when the model folder has none."""
    return click.option("--tokenizer", default=None, metavar="NAME_OR_PATH",
                        help="Tokenizer folder or Hub id  [default: the model folder's].")


def lora_options_given(names: tuple[str, ...] = LORA_ONLY) -> list[str]:
    """The options among ``names`` (default: the LoRA-only ones) that were typed on the command line."""
    return [f"--{n.replace('_', '-')}" for n in names if typed(n)]


@click.command("train", cls=OneLineCommand)
@click.option("--model", default="bundled:minilm-base", show_default=True, metavar="CHECKPOINT",
              help="Local HF folder, Hub id or bundled:minilm-base.")
@click.option("--task", default=None, metavar="TASK", help=task_help() + "  [default: rotten-tomatoes]")
@click.option("--data", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="CSV/TSV/JSONL file with a text and a label column (instead of a built-in task); causal-lm: "
                   ".txt or .jsonl.")
@click.option("--text-column", default="text", show_default=True, help="Text column of --data.")
@click.option("--label-column", default="label", show_default=True, help="Label column of --data.")
@objective_option()
@tokenizer_option()
@click.option("--method", type=click.Choice(METHODS), default="full", show_default=True,
              help="full: every weight trainable; lora: a peft LoRA adapter (plus the classifier head); adalora: "
                   "peft's AdaLoRA, which allocates the rank per module while training (saved as LoRA at its final "
                   "ranks).")
@click.option("--r", "r", type=click.IntRange(min=1), default=8, show_default=True,
              help="LoRA rank (adalora: the final average rank).")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=None,
              help="LoRA alpha (scale alpha/r, alpha/sqrt(r) with --use-rslora)  [default: 16; adalora: 2 x --init-r, "
                   "scale alpha/init-r].")
@click.option("--target-modules", default=None, metavar="NAMES",
              help="Comma-separated module names (query,value) or all-linear  [default: peft's for the architecture].")
@click.option("--rank-pattern", default=None, metavar="FILE", help="JSON {module pattern: r} overriding --r.")
@click.option("--alpha-pattern", default=None, metavar="FILE", help="JSON {module pattern: alpha} overriding --alpha.")
@click.option("--use-rslora", is_flag=True, help="Rank-stabilised LoRA scale alpha/sqrt(r).")
@click.option("--lora-config", default=None, metavar="FILE",
              help="A peft lora_config.json (e.g. from `rankscope recommend`): sets --r, --alpha, --target-modules, "
                   "--rank-pattern, --alpha-pattern and --use-rslora.")
@click.option("--init", "init", default=None, metavar="ADAPTER",
              help="Start LoRA from this peft adapter's factors (e.g. OUT/init of `rankscope recommend --init-from`); "
                   "its adapter_config.json sets the ranks, alphas and targets.")
@click.option("--init-r", type=click.IntRange(min=2), default=None,
              help="adalora: initial rank of every module  [default: ceil(1.5 x --r)].")
@click.option("--budget-unit", type=click.Choice(("rank", "params")), default="rank", show_default=True,
              help="adalora: the final budget counts triplets (peft's AdaLoRA) or parameters (at most uniform LoRA's "
                   "count at --r).")
@click.option("--adalora-schedule", default="0.1,0.55", show_default=True, metavar="WARMUP,FINAL",
              help="adalora: warm-up before pruning and the final phase at the final ranks, as fractions of the steps.")
@click.option("--orth-reg", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="adalora: weight of the orthogonality regulariser of P and Q.")
@click.option("--epochs", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--lr", default=None, metavar="LR[,LR…]",
              help="Peak learning rate, or several (e.g. 1e-3,2e-3,4e-3): one run per rate, the best on validation "
                   "is tested and saved, lr_sweep.csv lists them  [default: 5e-5 full, 5e-4 lora and adalora].")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--max-length", type=click.IntRange(min=2), default=128, show_default=True, help="Tokens per text.")
@click.option("--max-train", type=click.IntRange(min=1), default=None, help="Train on a seeded subsample of this size.")
@click.option("--max-eval", type=click.IntRange(min=1), default=None, help="Cap validation and test at this size.")
@click.option("--seed", type=int, default=0, show_default=True, help="Head/LoRA init, data order, dropout.")
@click.option("--split-seed", type=int, default=0, show_default=True, help="Train/validation/test split.")
@device_option()
@click.option("--eval-every", type=click.IntRange(min=1), default=None, help="Also evaluate every N steps.")
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="Stop after N evaluations without validation improvement.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads  [default: torch's, all cores].")
@click.option("--last", is_flag=True, help="Test and save the last weights instead of the best on validation.")
@out_option()
@no_plots_option("Skip OUT/figures/learning_curves.png.")
@quiet_option()
@overwrite_option()
@handle_errors
def train_cmd(model: str, task: str | None, data: Path | None, text_column: str, label_column: str, objective: str,
              tokenizer: str | None, method: str, r: int, alpha: float | None, target_modules: str | None, rank_pattern: str | None, alpha_pattern: str | None,
              use_rslora: bool, lora_config: str | None, init: str | None, init_r: int | None, budget_unit: str,
              adalora_schedule: str, orth_reg: float, epochs: int, lr: str | None, batch_size: int,
              max_length: int, max_train: int | None, max_eval: int | None, seed: int, split_seed: int, device: str,
              eval_every: int | None, patience: int | None, threads: int | None, last: bool, out: Path,
              no_plots: bool, quiet: bool, overwrite: bool) -> None:
    """Fine-tune MODEL on a classification task, or a decoder on text (--objective causal-lm), full, LoRA or AdaLoRA.

    Writes the model (full: HF checkpoint; lora: peft adapter), the tokenizer, OUT/metrics.json,
    OUT/figures/learning_curves.png and OUT/run.json.  The test scores are those of the best validation checkpoint (--last: the final one):
    accuracy, or for causal-lm the mean token loss and perplexity.

    --method adalora writes OUT/adapter_model.safetensors as plain LoRA at the final ranks (rank_pattern and
    alpha_pattern in adapter_config.json) and the final ranks under "adalora" in metrics.json and run.json.

    Example: rankscope train --task rotten-tomatoes --method lora --max-train 2000 -o runs/lora
    """
    from ..io.results import check_output_target

    check_output_target(out, "train", overwrite)
    if objective == "causal-lm":
        if data is None and task is None:
            raise RankscopeError("--objective causal-lm needs --data FILE (.txt, or .jsonl with text or "
                                 "prompt/response)")
        if typed("label_column"):
            raise RankscopeError("--label-column only applies to --objective classification")
    if task is None:
        task = Path(data).stem if data is not None else "rotten-tomatoes"
    given = lora_options_given(tuple(n for n in LORA_ONLY if n not in ADALORA_TOO) if method == "adalora" else LORA_ONLY)
    if method != "lora" and given:
        raise RankscopeError(f"{', '.join(given)} only apply to --method lora")
    adalora_given = lora_options_given(("init_r", "budget_unit", "adalora_schedule", "orth_reg"))
    if method != "adalora" and adalora_given:
        raise RankscopeError(f"{', '.join(adalora_given)} only apply to --method adalora")
    schedule = _schedule(adalora_schedule)
    if init is not None:
        if method != "lora":
            raise RankscopeError("--init only applies to --method lora")
        if given or lora_config is not None:
            clash = [*given, *(["--lora-config"] if lora_config is not None else [])]
            raise RankscopeError(f"--init sets the ranks, alphas and targets from the adapter's adapter_config.json: "
                                 f"{', '.join(clash)} cannot be given with it")
    from ..train import summary_line, train

    if lora_config is not None:
        from ..training.lora import lora_options_from_config

        if method != "lora":
            raise RankscopeError("--lora-config only applies to --method lora")
        if given:
            raise RankscopeError(f"--lora-config already sets {', '.join(given)}: give one or the other")
        opts = lora_options_from_config(lora_config)
        r, alpha, target_modules = opts["r"], opts["alpha"], opts["target_modules"]
        rank_pattern, alpha_pattern, use_rslora = opts["rank_pattern"], opts["alpha_pattern"], opts["use_rslora"]
    metrics = train(model, task, method, out, data=data, text_column=text_column, label_column=label_column,
                    split_seed=split_seed, max_train=max_train, max_eval=max_eval, seed=seed, epochs=epochs,
                    lr=_learning_rates(lr),
                    batch_size=batch_size, max_length=max_length, device=device, eval_every=eval_every,
                    patience=patience, restore_best=not last, r=r, alpha=alpha, target_modules=target_modules,
                    rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, use_rslora=use_rslora, init=init,
                    threads=threads, progress=not quiet, argv=argv_line(), overwrite=overwrite, objective=objective,
                    tokenizer=tokenizer, plots=not no_plots, init_r=init_r, budget_unit=budget_unit,
                    adalora_schedule=schedule, orth_reg=orth_reg)
    finish(None, out, quiet=quiet, saved=True, summary=lambda: summary_line(metrics),
           notes={"warnings": metrics.info.get("warnings", []), "notes": metrics.info.get("notes", [])})


def _schedule(value: str) -> tuple[float, float]:
    """``--adalora-schedule WARMUP,FINAL`` as two floats (a one-line error otherwise)."""
    parts = [part.strip() for part in value.split(",")]
    try:
        warmup, final = (float(part) for part in parts)
    except ValueError:
        raise RankscopeError(f"--adalora-schedule: expected WARMUP,FINAL (two fractions of the steps, e.g. 0.1,0.55), "
                             f"got {value!r}") from None
    return warmup, final


def _learning_rates(value: str | None) -> float | list[float] | None:
    """``--lr 5e-4`` -> 5e-4; ``--lr 1e-3,2e-3`` -> a sweep (the values are checked by :func:`rankscope.train.train`);
    text that is not numbers is a one-line error."""
    if value is None:
        return None
    try:
        rates = [float(part) for part in value.split(",")]
    except ValueError:
        raise RankscopeError(f"--lr: expected a number or comma-separated numbers (1e-3,2e-3), got {value!r}") from None
    return rates[0] if len(rates) == 1 else rates

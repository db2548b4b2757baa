"""The train API: fine-tune a checkpoint on a classification or causal-LM task (full, LoRA, AdaLoRA), evaluate one.

Data flow::

    train(model, task, method, out) ── load_task ─► build_model ─► train_model ─► TrainResult
                                                                       └─ save_model, metrics.json, run.json ─► OUT/

The pieces live in :mod:`rankscope.training`: :mod:`~rankscope.training.data` (tasks and splits),
:mod:`~rankscope.training.lm_data` (causal-LM files: plain text or prompt/response, response-only labels),
:mod:`~rankscope.training.models` (tokenizer, seeded classifier head or causal LM, peft LoRA, saving),
:mod:`~rankscope.training.lora` (the LoRA options as given) and :mod:`~rankscope.training.engine` (the loop:
AdamW, warm-up and linear decay, clipping, length-sorted buckets, best-on-validation weights, seeding; its
docstring gives the defaults and the determinism rules).  :func:`train` returns a :class:`TrainResult`, a
read-only mapping of the metrics (what ``metrics.json`` holds) that also carries the ``run.json`` content.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import RankscopeError
from .protocol import ResultView
from .summaries import ResultFiles
from .training.adalora import AdaLoraHooks, AdaLoraSpec, apply_adalora, to_lora
from .training.data import TaskData
from .training.engine import (
    OBJECTIVES,
    TrainConfig,
    encode,
    evaluate,
    test_scores,
    torch_device,
    train_model,
    usable_length,
)
from .training.lm_data import LMTaskData, load_task_for
from .training.lora import LoraSpec, init_options, load_pattern, parse_target_modules
from .training.models import build_init_model, build_model, lora_summary, save_model

if TYPE_CHECKING:  # torch and pandas are imported inside functions so that `rankscope --help` stays fast
    import pandas as pd
    import torch

METHODS = ("full", "lora", "adalora")
"""Training methods: every weight, a LoRA adapter, or AdaLoRA (saved as LoRA at its final ranks)."""
ADALORA_SCHEDULE = (0.1, 0.55)
"""AdaLoRA's warm-up and final phases as fractions of the steps (:class:`rankscope.training.adalora.AdaLoraSpec`)."""
RECORD_FILES = ("metrics.json", "run.json", "summary.json")
"""What :meth:`TrainResult.save` writes (with any ``figures/``): the record of a run, without its weights."""

__all__ = ["METHODS", "OBJECTIVES", "TrainResult", "evaluate_checkpoint", "majority_warning", "summary_line", "train"]


class TrainResult(ResultView, Mapping[str, Any]):
    """Result of :func:`train`: the metrics, read like the dict it used to be, plus the run's provenance.

    As a mapping it is exactly the metrics dict (``metrics.json``): ``result["test_accuracy"]``,
    ``dict(result)``, ``json.dumps(dict(result))``, ``**result`` and ``result == {...}`` work as before.

    Attributes:
        metrics: the metrics dict itself (validation/test accuracy and loss, parameter counts, steps, timings,
            ``history``; see :func:`rankscope.training.engine.train_model`).
        info: the content of ``run.json`` (inputs, task, options, ``lora``, seed, device, versions; with an
            output folder also ``outputs``, ``seconds``, ``peak_rss_mb`` and the rankscope marker).

    ``train(out=...)`` writes the trained weights and the tokenizer, which a result does not hold (keeping them
    would keep every trained network alive as long as its metrics); :meth:`save` therefore writes the record of
    the run only (``metrics.json``, ``run.json``, ``summary.json``), never over a folder that holds a trained
    model.  :meth:`load` reads either folder's ``metrics.json`` and ``run.json``.  :meth:`summary` is the final
    metrics per split, :meth:`summary_text` the line the command prints (:mod:`rankscope.protocol`).
    """

    __slots__ = ("metrics", "info")

    def __init__(self, metrics: dict[str, Any], info: dict[str, Any] | None = None) -> None:
        self.metrics: dict[str, Any] = metrics
        self.info: dict[str, Any] = {} if info is None else info

    def __getitem__(self, key: str) -> Any:
        return self.metrics[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)

    def __repr__(self) -> str:
        return f"TrainResult({self.metrics!r})"

    @property
    def table(self) -> pd.DataFrame:
        """The metrics as a one-row DataFrame (list-valued metrics such as ``history`` stay lists in their cell)."""
        import pandas as pd

        return pd.DataFrame([self.metrics])

    def summary(self) -> pd.DataFrame:
        """The final metrics, one row per split (``validation``, ``test``), one column per metric (accuracy, loss,
        perplexity, examples)."""
        import pandas as pd

        rows: dict[str, dict[str, Any]] = {}
        for key, value in self.metrics.items():
            split, _, name = key.partition("_")
            if split in ("validation", "test") and name and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                rows.setdefault(split, {})[name] = value
        return pd.DataFrame.from_dict(rows, orient="index")

    def summary_text(self) -> str:
        """One line: accuracies, trainable parameters and time (:func:`summary_line`)."""
        return summary_line(self.metrics)

    def result_files(self) -> ResultFiles:
        """``metrics.json``, as the key figures read it."""
        return ResultFiles(documents={"metrics.json": self.metrics})

    def render_figures(self, folder: Path) -> list[str]:
        """``learning_curves.png`` (:mod:`rankscope.figures.training`): loss and validation metric per evaluation."""
        from .figures.training import render_learning_curves

        folder.mkdir(parents=True, exist_ok=True)
        return [render_learning_curves(self.metrics, folder / "learning_curves.png")]

    def save(self, out: str | os.PathLike, plots: bool = True, overwrite: bool = False) -> Path:
        """Write the record of the run, ``metrics.json`` and ``run.json`` (and ``summary.json``), atomically.

        The weights are not part of a result (class docstring): a folder that holds a trained model (``train``'s
        own output) is refused, so that its weights are never replaced by a record without them.
        """
        from .io.results import atomic_output, read_marker, resolve_output, write_json

        marker = read_marker(resolve_output(out)) if Path(out).is_dir() else None
        weights = [f for f in (marker or {}).get("files") or [] if f not in RECORD_FILES and not f.startswith("figures/")]
        if marker is not None and marker.get("command") == "train" and weights:
            raise RankscopeError(f"output folder {out} holds a model trained by `rankscope train` (e.g. {weights[0]}); "
                                 f"TrainResult.save writes the metrics only and would replace it: give another folder")
        with atomic_output(out, "train", overwrite, self.info) as tmp:
            write_json(tmp / "metrics.json", self.metrics)
            figures = self.render_figures(tmp / "figures") if plots else []
            self.info["outputs"] = sorted(["metrics.json", "run.json", *(f"figures/{f}" for f in figures)])
        return Path(out)

    @classmethod
    def load(cls, out: str | os.PathLike) -> TrainResult:
        """Read ``metrics.json`` and ``run.json`` of a folder written by ``train(out=...)`` (nothing is loaded into torch).

        A missing or broken file, or a ``run.json`` of another command, is a :class:`RankscopeError` naming it.
        """
        from .io.results import read_json

        out = Path(out)
        info = read_json(out / "run.json")
        command = info.get("command")
        if command is not None and command != "train":
            raise RankscopeError(f"{out}: holds a '{command}' result, not the output of rankscope train")
        return cls(read_json(out / "metrics.json"), info)


def _run_info(inputs: dict[str, Any], task_data: TaskData | LMTaskData, config: TrainConfig, model: torch.nn.Module,
              metrics: dict[str, Any], argv: str | None) -> dict[str, Any]:
    """Provenance for ``run.json``: inputs as given and resolved, task, options, seed, environment."""
    from .io.results import versions

    return {
        "command": "train",
        "argv": argv,
        "inputs": inputs,
        "task": task_data.describe(),
        "options": {**{k: v for k, v in asdict(config).items() if k != "progress"}, "lr": config.learning_rate},
        "lora": lora_summary(model),
        "seed": config.seed,
        "device": metrics["device"],
        "threads": metrics["threads"],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "versions": versions(),
    }


def train(model: str | os.PathLike = "bundled:minilm-base", task: str = "rotten-tomatoes", method: str = "full",
          out: str | os.PathLike | None = None, *, data: str | os.PathLike | None = None, text_column: str = "text",
          label_column: str = "label", split_seed: int = 0, max_train: int | None = None,
          max_eval: int | None = None, seed: int = 0, epochs: int = 2, lr: float | Sequence[float] | None = None,
          batch_size: int = 16,
          max_length: int = 128, warmup_ratio: float = 0.1, weight_decay: float = 0.01, grad_clip: float | None = 1.0,
          device: str = "cpu", eval_every: int | None = None, patience: int | None = None, restore_best: bool = True,
          r: int = 8, alpha: float | None = None, target_modules: str | Sequence[str] | None = None,
          rank_pattern: dict | str | None = None, alpha_pattern: dict | str | None = None, use_rslora: bool = False,
          lora_dropout: float = 0.0, init: str | os.PathLike | None = None, threads: int | None = None,
          progress: bool = True, argv: str | None = None, overwrite: bool = False, objective: str = "classification",
          tokenizer: str | os.PathLike | None = None, plots: bool = True, init_r: int | None = None,
          budget_unit: str = "rank", adalora_schedule: tuple[float, float] = ADALORA_SCHEDULE,
          orth_reg: float = 0.5) -> TrainResult:
    """Fine-tune ``model`` on ``task`` with ``method`` (``full``, ``lora`` or ``adalora``); return the metrics as a
    :class:`TrainResult`.

    ``objective``: ``classification`` (a sequence classifier with a fresh seeded head; accuracy) or ``causal-lm``
    (a decoder with its LM head on a plain-text or prompt/response file, the loss on the response tokens only,
    :mod:`rankscope.training.lm_data`; held-out mean token loss and perplexity, no labels: ``label_column`` unused).
    ``tokenizer``: a folder, ``bundled:NAME`` or Hub id to take the tokenizer from (default: the model folder's).

    With ``out``, writes (atomically) the trained model at the top of ``out`` (``full``: a Hugging Face
    checkpoint, ``model.safetensors`` + ``config.json``; ``lora``: ``adapter_model.safetensors`` +
    ``adapter_config.json``), the tokenizer, ``metrics.json``, ``figures/learning_curves.png`` (unless ``plots`` is
    false; :mod:`rankscope.figures.training`) and ``run.json``.  The saved and tested
    weights are the best on validation (``restore_best=False``: the last).  See
    :class:`rankscope.training.engine.TrainConfig` and :class:`rankscope.training.lora.LoraSpec` for the options,
    :func:`rankscope.training.data.load_task` for ``task``/``data``.

    ``init`` (``lora`` only): a peft adapter folder (e.g. ``OUT/init`` of ``recommend --init-from``) to start
    from: its ``adapter_config.json`` supplies the ranks, alphas, targets and rsLoRA (``r`` and ``alpha`` are then
    unused; ``target_modules``, ``rank_pattern``, ``alpha_pattern`` and ``use_rslora`` must not be given) and its
    LoRA factors replace the fresh ones before the first step; the head starts fresh and seeded as in any run
    (:func:`rankscope.training.models.build_init_model`).  ``run.json`` records it under ``"init"``.

    ``lr``: the peak learning rate, or several (a learning-rate sweep): one run per rate, every one from the same
    seed, the same data order and the same initial weights, and the run with the best validation score (accuracy,
    then lower loss; causal LM: loss; a diverged run's NaN loss counts as the worst; exact ties: the earlier rate
    given) is the one tested and saved; the other rates are scored on validation only (the test set is neither used
    to choose nor evaluated for them).  ``metrics.json`` / ``run.json`` hold ``lr_sweep`` (every rate's validation
    scores and the chosen one) and ``OUT/lr_sweep.csv`` the same table; ``seconds.sweep`` is the whole sweep,
    ``train`` / ``eval`` the kept run's.  A best rate at either end of a grid of three or more, or a grid whose rates
    all reach the same validation accuracy, is a warning.  At most two models are held at a time (the best so far,
    in host memory while the next rate trains on an accelerator, and the one training).

    ``adalora``: peft's AdaLoRA (:mod:`rankscope.training.adalora`) from ``init_r`` (default ``⌈1.5·r⌉``) triplets per
    module down to a final average rank ``r``, its budget counted in triplets (``budget_unit="rank"``, peft's rule)
    or in parameters (``"params"``: at most uniform-rank LoRA's count at ``r``); ``alpha`` default ``2·init_r``;
    ``adalora_schedule``: the warm-up and final phases as fractions of the steps; ``orth_reg``: the weight γ of the
    orthogonality regulariser.  The best weights are chosen among the evaluations at the final allocation.  The
    adapter is saved as plain LoRA at the final ranks (exactly the trained update; modules left with no triplet
    are not adapted) and ``run.json`` / ``metrics.json`` record the schedule and the final ranks under ``"adalora"``.

    Example::

        metrics = train("bundled:minilm-base", "rotten-tomatoes", "lora", "runs/lora-r8", max_train=2000)
        metrics["test_accuracy"], metrics.summary(), metrics.info["lora"]
    """
    from .io.results import PARTIAL_MARKER, atomic_output, check_output_target, peak_rss_mb, resolve_output, write_json

    t_start = time.perf_counter()
    if method not in METHODS:
        raise RankscopeError(f"--method: unknown method '{method}' (choose from {', '.join(METHODS)})")
    if objective not in OBJECTIVES:
        raise RankscopeError(f"--objective: unknown objective '{objective}' (choose from {', '.join(OBJECTIVES)})")
    if out is not None:
        check_output_target(Path(out), "train", overwrite)
    rates = _rates(lr)
    config = TrainConfig(epochs=epochs, lr=rates[0], method=method, batch_size=batch_size, max_length=max_length,
                         warmup_ratio=warmup_ratio, weight_decay=weight_decay, grad_clip=grad_clip, seed=seed,
                         device=device, eval_every=eval_every, patience=patience, restore_best=restore_best,
                         progress=progress, threads=threads, objective=objective)
    torch_device(device)  # fail on a bad device before loading anything
    adalora = _adalora_spec(method, r, alpha, target_modules, init_r, budget_unit, adalora_schedule, orth_reg,
                            lora_dropout, patience, rank_pattern, alpha_pattern, use_rslora, init)
    alpha = 16.0 if alpha is None else alpha
    if method == "lora":  # and on a bad pattern file
        load_pattern(rank_pattern, "--rank-pattern")
        load_pattern(alpha_pattern, "--alpha-pattern")
    init_opts = _init_options(init, method, target_modules, rank_pattern, alpha_pattern, use_rslora, objective)
    if init_opts is not None:
        r, alpha, target_modules = init_opts["r"], init_opts["alpha"], init_opts["target_modules"]
        rank_pattern, alpha_pattern, use_rslora = init_opts["rank_pattern"], init_opts["alpha_pattern"], init_opts["use_rslora"]
    task_data = load_task_for(objective, task, data, text_column=text_column, label_column=label_column,
                              split_seed=split_seed, max_train=max_train, max_eval=max_eval)
    lora = LoraSpec(r, alpha, parse_target_modules(target_modules), rank_pattern, alpha_pattern, use_rslora,
                    lora_dropout) if method == "lora" else None
    warnings: list[str] = []
    notes: list[str] = []
    task_type = "CAUSAL_LM" if objective == "causal-lm" else "SEQ_CLS"

    def fit(run_config: TrainConfig, first: bool) -> _Run:
        """Build the model afresh (same seed) and train it at ``run_config``'s rate (``first``: keep its notes)."""
        hooks, init_info = None, None
        t_build = time.perf_counter()
        if adalora is not None:
            net, tok, path = build_model(model, task_data.label_names, "full", None, seed, objective=objective,
                                         tokenizer=tokenizer)
            net = apply_adalora(net, adalora, task_type)
            hooks = AdaLoraHooks(net, adalora)
        elif init_opts is None:
            net, tok, path = build_model(model, task_data.label_names, method, lora, seed, objective=objective,
                                         tokenizer=tokenizer)
        else:
            net, tok, path, loaded = build_init_model(model, task_data.label_names, init, lora, seed,
                                                      objective=objective, tokenizer=tokenizer)
            init_info = _init_record(init, init_opts, loaded, path, warnings if first else [], notes if first else [])
        built = time.perf_counter() - t_build
        loop = train_model(net, task_data, tok, run_config, hooks, test=len(rates) == 1)
        metrics = {"method": method, "task": task_data.name, "model": str(model), **loop}
        if hooks is not None:
            metrics["adalora"] = hooks.record()
        return _Run(net, tok, path, metrics, init_info, hooks, built)

    best: _Run | None = None
    sweep: list[dict[str, Any]] = []
    t_built = time.perf_counter()
    for index, rate in enumerate(rates):
        run_config = replace(config, lr=rate)
        if len(rates) > 1 and progress:
            from tqdm.auto import tqdm

            tqdm.write(f"learning rate {run_config.learning_rate:g} ({index + 1} of {len(rates)})")
        run = fit(run_config, index == 0)
        sweep.append(_sweep_row(run.metrics, run_config.learning_rate))
        if best is None or _selection_key(run.metrics) > _selection_key(best.metrics):  # ties: the earlier rate given
            best, config = run, run_config
        del run
        if index + 1 < len(rates) and config.device != "cpu":
            best.net.to("cpu")  # the best so far waits in host memory while the next rate trains
    assert best is not None
    net, tok, path, metrics, init_info, hooks, build_seconds = best
    t_swept = time.perf_counter()
    if len(rates) > 1:
        net.to(torch_device(config.device))
        scores = test_scores(net, task_data, tok, config)  # the kept rate only
        metrics.update({k: v for k, v in scores.items() if k != "seconds"})
        metrics["eval_seconds"] = round(metrics["eval_seconds"] + scores["seconds"], 3)
        for row in sweep:
            row["chosen"] = row["lr"] == config.learning_rate
        metrics["lr_sweep"] = sweep
        notes.append(f"--lr: {config.learning_rate:g} chosen on validation of {len(rates)} rates "
                     f"({', '.join(f'{r:g}' for r in sorted(row['lr'] for row in sweep))}); only it was tested")
        warnings.extend(_edge_warning(sweep))
    if hooks is not None:
        net = to_lora(net, hooks, task_type)
    warnings += _loop_warnings(metrics, task_data, config.max_length)
    inputs = {"model": str(model), "model_resolved": str(path), "task": task, "data": None if data is None else str(data),
              "tokenizer": None if tokenizer is None else str(tokenizer)}
    info = _run_info(inputs, task_data, config, net, metrics, argv)
    if init_opts is not None:
        info["init"] = init_info
    if "adalora" in metrics:
        info["adalora"] = metrics["adalora"]
    if len(rates) > 1:
        info["lr_sweep"] = sweep
    info["warnings"], info["notes"] = warnings, notes
    if out is None:
        return TrainResult(metrics, info)
    with atomic_output(out, "train", overwrite, info) as tmp:
        t_save = time.perf_counter()
        files = save_model(net, tok, tmp, final=resolve_output(out))
        write_json(tmp / "metrics.json", metrics)
        if len(rates) > 1:
            import pandas as pd

            pd.DataFrame(sweep).to_csv(tmp / "lr_sweep.csv", index=False)
        figures = _learning_curves(TrainResult(metrics, info), tmp / "figures", warnings) if plots else []
        info["outputs"] = sorted({*files, "metrics.json", "run.json", *(f"figures/{f}" for f in figures),
                                  *(["lr_sweep.csv"] if len(rates) > 1 else [])}
                                 - {PARTIAL_MARKER})  # the work folder's own marker is no output
        info["seconds"] = {"load": round(t_built - t_start + build_seconds, 3),
                           **({"sweep": round(t_swept - t_built, 3)} if len(rates) > 1 else {}),
                           "train": metrics["train_seconds"],
                           "eval": metrics["eval_seconds"], "save": round(time.perf_counter() - t_save, 3),
                           "total": round(time.perf_counter() - t_start, 3)}
        info["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return TrainResult(metrics, info)


class _Run(NamedTuple):
    """One trained rate of :func:`train`: the model (AdaLoRA still unconverted), its tokenizer and resolved path, the
    metrics, ``run.json``'s ``init`` record (with ``init``), AdaLoRA's hooks, and the seconds spent building it."""

    net: Any
    tokenizer: Any
    path: Path
    metrics: dict[str, Any]
    init_info: dict[str, Any] | None
    hooks: AdaLoraHooks | None
    build_seconds: float


def _rates(lr: float | Sequence[float] | None) -> list[float | None]:
    """The rates of a run: one (or None: the method's default), or a sweep of distinct positive rates."""
    import numbers

    if lr is None:
        return [None]
    single = isinstance(lr, numbers.Real) and not isinstance(lr, bool)
    if not single and (isinstance(lr, (str, bytes)) or not isinstance(lr, Iterable)):
        raise RankscopeError(f"--lr: a number or a sequence of numbers, got {lr!r}")
    rates = [lr] if single else list(lr)
    if not rates:
        raise RankscopeError("--lr: give at least one learning rate")
    for rate in rates:
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 < rate < float("inf"):
            raise RankscopeError(f"--lr: every learning rate must be a positive, finite number, got {rate!r}")
    if len(set(rates)) != len(rates):
        raise RankscopeError(f"--lr: a rate is given twice ({', '.join(f'{r:g}' for r in rates)})")
    return [float(r) for r in rates]


def _selection_key(metrics: Mapping[str, Any]) -> tuple[float, ...]:
    """What a sweep maximises: validation accuracy, then lower validation loss (causal LM: lower loss)."""
    loss = metrics["validation_loss"]
    loss = -loss if loss is not None and math.isfinite(loss) else -math.inf  # a diverged run never wins on loss
    if "validation_accuracy" in metrics:
        accuracy = metrics["validation_accuracy"]
        return (accuracy if accuracy is not None and math.isfinite(accuracy) else -math.inf, loss)
    return (loss,)


def _sweep_row(metrics: Mapping[str, Any], rate: float) -> dict[str, Any]:
    """One rate of a sweep: its validation scores (never the test set's), best step and training time."""
    scores = {k: metrics[k] for k in ("validation_accuracy", "validation_perplexity", "validation_loss") if k in metrics}
    return {"lr": rate, **scores, "best_step": metrics["best_step"], "train_seconds": metrics["train_seconds"]}


def _edge_warning(sweep: list[dict[str, Any]]) -> list[str]:
    """A warning when the chosen rate is the smallest or the largest of a grid of three or more, or when every rate
    reached the same validation accuracy (nothing to choose by but the loss)."""
    rates = sorted(row["lr"] for row in sweep)
    chosen = next(row["lr"] for row in sweep if row["chosen"])
    accuracies = {row.get("validation_accuracy") for row in sweep}
    if "validation_accuracy" in sweep[0] and len(accuracies) == 1:
        return [f"--lr: every rate reached the same validation accuracy ({next(iter(accuracies)):.4f}): the choice of "
                f"{chosen:g} rests on the validation loss alone (did any rate learn?)"]
    if len(rates) < 3 or chosen not in (rates[0], rates[-1]):
        return []
    side, beyond = ("largest", "higher") if chosen == rates[-1] else ("smallest", "lower")
    return [f"--lr: the best rate on validation, {chosen:g}, is the {side} of the grid ({', '.join(f'{r:g}' for r in rates)}): "
            f"a {beyond} rate may be better (extend the grid)"]


def _learning_curves(result: TrainResult, folder: Path, warnings: list[str]) -> list[str]:
    """``figures/learning_curves.png`` of a finished run; a drawing failure is a warning, never the loss of the run."""
    try:
        return result.render_figures(folder)
    except Exception as exc:  # noqa: BLE001 (matplotlib missing or broken: the trained model is still written)
        warnings.append(f"figures/learning_curves.png not drawn: {type(exc).__name__}: {exc}")
        return []


def majority_warning(metrics: Mapping[str, Any], task_data: TaskData) -> str | None:
    """A warning when the validation accuracy equals the majority-class rate of the validation split (the model may
    predict one class only: chance level), else None."""
    accuracy = metrics.get("validation_accuracy")
    counts = task_data.validation.label_counts(task_data.num_labels)
    n = sum(counts)
    if accuracy is None or not n:
        return None
    top = max(counts)
    if round(accuracy * n) != top:
        return None
    name = task_data.label_names[counts.index(top)]
    return (f"validation accuracy {accuracy:.4f} equals the majority-class rate ({top} of {n} validation examples are "
            f"'{name}'): the model may predict one class only (train longer, another --lr?)")


def _loop_warnings(metrics: Mapping[str, Any], task_data: TaskData | LMTaskData, max_length: int) -> list[str]:
    """Warnings on a finished loop: accuracy at the majority-class rate; causal-LM examples dropped for having no
    counted token within ``max_length``."""
    if isinstance(task_data, TaskData):
        warning = majority_warning(metrics, task_data)
        return [warning] if warning else []
    dropped = {k: v for k, v in metrics.get("dropped_examples", {}).items() if v}
    if not dropped:
        return []
    what = ", ".join(f"{v} {k}" for k, v in dropped.items())
    return [f"{what} example(s) left out: no response token within --max-length {max_length} (a longer --max-length?)"]


def _adalora_spec(method: str, r: int, alpha: float | None, target_modules: Any, init_r: int | None,
                  budget_unit: str, schedule: tuple[float, float], orth_reg: float, dropout: float,
                  patience: int | None, rank_pattern: Any, alpha_pattern: Any, use_rslora: bool,
                  init: Any) -> AdaLoraSpec | None:
    """The checked :class:`AdaLoraSpec` of an ``adalora`` run (None for the other methods, which must not set its
    options); LoRA-only options and ``--patience`` are errors with it."""
    if method != "adalora":
        given = [name for name, value, default in (("--init-r", init_r, None), ("--budget-unit", budget_unit, "rank"),
                                                   ("--adalora-schedule", tuple(schedule), ADALORA_SCHEDULE),
                                                   ("--orth-reg", orth_reg, 0.5)) if value != default]
        if given:
            raise RankscopeError(f"{', '.join(given)} only apply to --method adalora")
        return None
    clash = [name for name, value in (("--rank-pattern", rank_pattern), ("--alpha-pattern", alpha_pattern),
                                      ("--use-rslora", use_rslora or None), ("--init", init)) if value is not None]
    if clash:
        raise RankscopeError(f"{', '.join(clash)} only apply to --method lora (AdaLoRA allocates the ranks itself)")
    if patience is not None:
        raise RankscopeError("--patience does not apply to --method adalora (its budget schedule runs over every step)")
    if len(tuple(schedule)) != 2:
        raise RankscopeError(f"--adalora-schedule: give WARMUP,FINAL (two fractions of the steps), got {schedule!r}")
    warmup, final = (float(x) for x in schedule)
    spec = AdaLoraSpec(target_r=r, init_r=init_r, alpha=alpha, target_modules=parse_target_modules(target_modules),
                       budget_unit=budget_unit, warmup=warmup, final=final, orth_reg_weight=orth_reg,
                       dropout=dropout)
    spec.check()
    return spec


def _init_options(init: str | os.PathLike | None, method: str, target_modules: Any, rank_pattern: Any,
                  alpha_pattern: Any, use_rslora: bool, objective: str = "classification") -> dict[str, Any] | None:
    """The adapter's LoRA options for ``init`` (None without it), after checking that nothing else sets them."""
    if init is None:
        return None
    if method != "lora":
        raise RankscopeError("--init only applies to --method lora")
    given = [name for name, value in (("--target-modules", target_modules), ("--rank-pattern", rank_pattern),
                                      ("--alpha-pattern", alpha_pattern), ("--use-rslora", use_rslora or None))
             if value is not None]
    if given:
        raise RankscopeError(f"--init {init} sets the ranks, alphas and targets from its adapter_config.json: "
                             f"{', '.join(given)} cannot be given with it")
    return init_options(init, objective)


def _init_record(init: str | os.PathLike, opts: dict[str, Any], loaded: dict[str, Any], model_path: Path,
                 warnings: list[str], notes: list[str]) -> dict[str, Any]:
    """``run.json``'s ``"init"``; a note on tensors left unused, a warning on a base other than the adapter's."""
    ignored = loaded["ignored"]
    if ignored:
        notes.append(f"--init {init}: {len(ignored)} tensor(s) that are not LoRA factors were not used (the head "
                     f"starts fresh and seeded, as in any run), e.g. {ignored[0]}")
    base = opts.get("base_model_name_or_path")
    if base:
        recorded = Path(base).expanduser()
        if recorded.exists() and os.path.realpath(recorded) != os.path.realpath(model_path):
            warnings.append(f"--init {init}: the adapter was made for {base}, training uses {model_path} (the shapes "
                            "match)")
    return {"adapter": str(init), "resolved": str(opts["folder"]), "task_type": opts["task_type"],
            "base_model_name_or_path": base, "modules": loaded["modules"], "factors": loaded["factors"],
            "ignored_tensors": ignored}


def evaluate_checkpoint(model: str | os.PathLike = "bundled:minilm-base", task: str = "rotten-tomatoes", *,
                        adapter: str | os.PathLike | None = None, data: str | os.PathLike | None = None,
                        text_column: str = "text", label_column: str = "label", split_seed: int = 0,
                        max_eval: int | None = None, max_length: int = 128, batch_size: int = 64,
                        device: str = "cpu", objective: str = "classification",
                        tokenizer: str | os.PathLike | None = None) -> dict[str, Any]:
    """Validation and test accuracy and loss of a checkpoint, optionally with a peft adapter, without training.

    The splits are those of :func:`train` with the same ``split_seed``, so the numbers compare with its
    ``metrics.json``.  A head missing from ``model`` (a bare ``BertModel``) is seeded fresh unless the adapter
    brings it (``modules_to_save``), as adapters extracted from a full fine-tune do.  ``objective="causal-lm"``:
    mean token loss and perplexity instead of accuracy.
    """
    task_data = load_task_for(objective, task, data, text_column=text_column, label_column=label_column,
                              split_seed=split_seed, max_eval=max_eval)
    net, tok, _ = build_model(model, task_data.label_names, "full", None, 0, objective=objective, tokenizer=tokenizer)
    if adapter is not None:
        from peft import PeftModel

        from .io.checkpoints import resolve

        net = PeftModel.from_pretrained(net, resolve(adapter))
    config = TrainConfig(max_length=max_length, eval_batch_size=batch_size, device=device, progress=False)
    dev = torch_device(device)
    net.to(dev)
    pad_id, left = tok.pad_token_id, getattr(tok, "padding_side", "right") == "left"
    length = usable_length(net, max_length)
    scores = {name: evaluate(net, encode(split, tok, length), pad_id, config, dev, left)
              for name, split in (("validation", task_data.validation), ("test", task_data.test))}
    return {"model": str(model), "adapter": None if adapter is None else str(adapter), "task": task_data.name,
            **{f"{name}_{k}": v for name, s in scores.items() for k, v in s.items()}}


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def summary_line(metrics: Mapping[str, Any]) -> str:
    """One line: accuracies (causal LM: token loss and perplexity), trainable parameters and time."""
    if "validation_perplexity" in metrics:
        scores = (f"validation loss {_score(metrics['validation_loss'])} (perplexity "
                  f"{_score(metrics['validation_perplexity'])}), test loss {_score(metrics['test_loss'])} (perplexity "
                  f"{_score(metrics['test_perplexity'])})")
    else:
        scores = (f"validation accuracy {_score(metrics['validation_accuracy'])}, test accuracy "
                  f"{_score(metrics['test_accuracy'])}")
    return (f"{metrics['method']} on {metrics['task']}: {scores}, {metrics['trainable_params']:,} of "
            f"{metrics['total_params']:,} parameters trainable, {metrics['steps']} steps in {metrics['seconds']:.1f} s "
            f"({metrics['examples_per_second']:.1f} examples/s)")

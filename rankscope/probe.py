"""Cheap rank signals without a full fine-tune: the loss gradient at θ₀, or a short full fine-tune's ΔW, with exact spectra.

``probe(model, task, signal)`` builds the task model exactly as ``rankscope train --method full`` would
(:func:`rankscope.training.models.build_model`: the base checkpoint with a fresh classification head seeded by
``seed``), and measures one matrix ``M`` per module:

``gradient``
    ``M = ∂L/∂W`` at θ₀, ``L`` the *mean* cross-entropy over the examples of the first ``batches`` batches of
    the seeded training order — the order ``train`` draws for ``seed`` (:func:`rankscope.training.engine
    .train_batches`: the same encoding, length-sorted buckets and shuffles; past one epoch the next epoch's
    order, as in training).  The model is in eval mode, so dropout adds no noise, and runs in float64 (the
    float32 weights θ₀ widen exactly): a float32 backward pass carries relative errors of ~1e-6 (measured on the
    tiny test BERT against a float64 one), the float64 one gives the gradient to ~1e-12.  Each batch's summed loss
    is back-propagated and the gradients are accumulated, then divided by the number of examples.
``update``
    ``M = ΔW = W_after − W_before`` after ``steps`` optimisation steps of the training engine
    (:func:`rankscope.training.engine.train_model` with ``max_steps``: the loop, AdamW, warm-up and linear decay
    over those ``steps``, clipping and learning rate of ``train --method full``; the last weights, not the best on
    validation, and no test evaluation).

``objective="causal-lm"`` (a decoder and a causal-LM file, :mod:`rankscope.training.lm_data`): the task model is
the decoder with its own LM head, as ``train --objective causal-lm`` builds it, and ``L`` is the mean cross-entropy
over the counted tokens (the response tokens of prompt/response examples) of those batches; ``update`` runs that
objective's loop.

Modules are named and oriented as ``rankscope spectrum BASE <that task model>`` would name them
(:func:`rankscope.pairing.align.align`: the base checkpoint's names without the task model's prefix such as
``bert.``, rows = output dimension, GPT-2 ``Conv1D`` transposed): every 2-D weight of the backbone, embeddings
included, and every 1-D tensor in ``vectors.csv``; the fresh head exists only in the task model and is recorded as
``only_in_finetuned``, so ``recommend`` puts it in ``modules_to_save``.  Each matrix gets all its singular values
(:mod:`rankscope.numerics.linalg`, float64) and its top ``keep_vectors`` singular triplets
(:func:`rankscope.numerics.truncation.exact_truncation`).  The result is a spectrum result (same ``modules.csv``
columns, with ``delta_norm = ‖M‖_F`` and ``rel_delta = ‖M‖_F/‖W₀‖_F``), so ``rankscope recommend OUT`` reads it
unchanged, plus ``singular_vectors.npz`` (keys ``"<module>:U"``, ``":S"``, ``":Vt"``, float64).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .errors import RankscopeError
from .io.checkpoints import Checkpoint, TensorInfo, open_checkpoint
from .io.results import peak_rss_mb, read_arrays, versions
from .io.skipped import skipped_notes
from .numerics import linalg, metrics
from .numerics.truncation import exact_truncation
from .options import compile_regexes
from .pairing.align import Alignment, TensorPair, align
from .pairing.deltas import run_parallel, select_pairs
from .spectrum import DEFAULT_TAUS, SpectrumResult

if TYPE_CHECKING:
    import torch

    from .training.data import TaskData

SIGNALS = ("gradient", "update")
"""What ``M`` is: the loss gradient at θ₀, or the ΔW of a short full fine-tune."""
DEFAULT_BATCHES = 8
DEFAULT_STEPS = 50
DEFAULT_KEEP = 64
"""Top singular triplets kept per module by default (the largest rank a plan usually chooses)."""
VECTORS_FILE = "singular_vectors.npz"
PARTS = ("U", "S", "Vt")


@dataclass
class ProbeResult(SpectrumResult):
    """Result of :func:`probe`: a :class:`~rankscope.spectrum.SpectrumResult` of the matrices ``M``, plus their top
    singular triplets.

    Attributes:
        singular_vectors: ``module -> (U, S, Vt)``, float64, ``U`` rows × R, ``S`` R, ``Vt`` R × cols with
            R = min(keep_vectors, min(rows, cols)); ``U @ diag(S) @ Vt`` is the best rank-R approximation of ``M``.
    """

    singular_vectors: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)

    def write_data(self, folder: Path) -> None:
        """The spectrum result's data files and ``singular_vectors.npz``."""
        super().write_data(folder)
        arrays = {f"{module}:{part}": value for module, triplet in self.singular_vectors.items()
                  for part, value in zip(PARTS, triplet, strict=True)}
        np.savez(folder / VECTORS_FILE, **arrays)

    @classmethod
    def load(cls, out: str | os.PathLike) -> ProbeResult:
        """Read a folder written by :meth:`save`; a missing or misshapen triplet is a :class:`RankscopeError`."""
        result = super().load(out)
        path = Path(out) / VECTORS_FILE
        arrays = read_arrays(path)
        for row in result.table.itertuples():
            keys = [f"{row.module}:{part}" for part in PARTS]
            missing = [k for k in keys if k not in arrays]
            if missing:
                raise RankscopeError(f"{path}: no array '{missing[0]}'")
            u, s, vt = (np.asarray(arrays[k], dtype=np.float64) for k in keys)
            r = s.shape[0] if s.ndim == 1 else -1
            if r < 0 or u.shape != (int(row.rows), r) or vt.shape != (r, int(row.cols)):
                raise RankscopeError(f"{path}: the triplet of '{row.module}' has shapes U {u.shape}, S {s.shape}, "
                                     f"Vt {vt.shape}; expected ({row.rows}, R), (R,), (R, {row.cols})")
            result.singular_vectors[row.module] = (u, s, vt)
        return result

    def summary(self) -> pd.DataFrame:
        """One row per module kind: ``n``, the first module's ``rows`` × ``cols``, and the medians of ``norm``
        (``‖M‖_F``), ``effective_rank``, ``rank_90`` and ``gd_rank``."""
        t = self.table
        if t.empty:
            return pd.DataFrame()
        return t.groupby("kind", sort=False).agg(n=("module", "count"), rows=("rows", "first"), cols=("cols", "first"),
                                                 norm=("delta_norm", "median"),
                                                 effective_rank=("effective_rank", "median"),
                                                 rank_90=("rank_90", "median"), gd_rank=("gd_rank", "median"))

    def summary_text(self) -> str:
        """One line on the probe, then :meth:`summary` as text."""
        info, t = self.info, self.table
        what = (f"{info.get('batches')} batches ({info.get('examples')} examples)" if info.get("signal") == "gradient"
                else f"{info.get('steps')} full fine-tuning steps")
        head = (f"probe {info.get('signal')}: {what} of {info.get('task', {}).get('name')}, seed {info.get('seed')}, "
                f"{info.get('cost_seconds')} s")
        if t.empty:
            return head
        by_kind = self.summary()
        lines = [head, by_kind.to_string(float_format=lambda v: f"{v:.3g}"),
                 f"{len(t)} matrices; norm = median ‖M‖_F of the kind; top {info.get('keep_vectors')} singular triplets "
                 f"kept per module"]
        zero = t.loc[t["delta_norm"] == 0, "module"].tolist()
        if zero:
            lines.append(f"M = 0 exactly: {', '.join(zero[:8])}{' …' if len(zero) > 8 else ''}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# the task model as a checkpoint, so that modules are named as `spectrum` names them
# --------------------------------------------------------------------------------------------------


def task_model_checkpoint(net: torch.nn.Module, path: Path) -> Checkpoint:
    """The in-memory task model seen as a checkpoint (names and shapes only; never read): what
    ``train --method full`` would save, for :func:`rankscope.pairing.align.align` against the base."""
    tensors = {name: TensorInfo(name, tuple(p.shape), "F32", path) for name, p in net.named_parameters()}
    return Checkpoint(f"the task model {type(net).__name__}", path, [], tensors, net.config.to_dict())


def describe_task_model(net: torch.nn.Module, seed: int, objective: str = "classification") -> dict[str, Any]:
    """The task model for ``run.json`` (its ``architectures`` give ``recommend`` the peft task type)."""
    config = net.config
    made = "its own LM head" if objective == "causal-lm" else f"a fresh head seeded by {seed}"
    return {"given": f"the probe's {type(net).__name__} (the base with {made})",
            "resolved": None, "format": "in memory", "model_type": getattr(config, "model_type", None),
            "architectures": [type(net).__name__],
            "is_encoder_decoder": bool(getattr(config, "is_encoder_decoder", False))}


def alignment_info(alignment: Alignment, matrices: list[TensorPair], vectors: list[TensorPair]) -> dict[str, Any]:
    """``run.json``'s ``alignment``, as :func:`rankscope.spectrum.spectrum` writes it."""
    return {"base_prefix": alignment.base_prefix, "finetuned_prefix": alignment.finetuned_prefix,
            "matrices": len(matrices), "vectors": len(vectors), "only_in_base": alignment.only_in_base,
            "only_in_finetuned": alignment.only_in_finetuned, "skipped": alignment.skipped,
            "transposed_conv1d": [p.module for p in matrices if p.transpose]}


# --------------------------------------------------------------------------------------------------
# the signals
# --------------------------------------------------------------------------------------------------


def gradient_signal(net: torch.nn.Module, task_data: TaskData, tokenizer: Any, names: set[str], *, batches: int,
                    batch_size: int, max_length: int, seed: int, device: str, threads: int | None,
                    progress: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``∂L/∂W`` (float64, on the CPU) of the parameters ``names``: the mean loss of the first ``batches`` batches of
    the seeded training order, in eval mode and float64 (module docstring); and what was used."""
    import torch
    from tqdm.auto import tqdm

    from .training.engine import (
        batch_loss,
        collate,
        deterministic_algorithms,
        encode,
        logits_of,
        num_threads,
        seed_everything,
        torch_device,
        train_batches,
        usable_length,
    )

    dev = torch_device(device)
    pad_id, left = tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right") == "left"
    train_data = encode(task_data.train, tokenizer, usable_length(net, max_length))
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    if len(train_data) == 0:
        raise RankscopeError(f"task '{task_data.name}' has an empty train split")
    order: list[list[int]] = []
    while len(order) < batches:  # the training order, epoch after epoch
        order += train_batches(train_data, batch_size, generator)
    order = order[:batches]
    net.to(dev, torch.float64).eval()
    params = {n: p for n, p in net.named_parameters() if n in names}
    for n, p in net.named_parameters():
        p.requires_grad_(n in names)
    acc = {n: torch.zeros(p.shape, dtype=torch.float64, device=dev) for n, p in params.items()}
    count, terms, loss_sum = 0, 0, 0.0
    with deterministic_algorithms(), num_threads(threads), tqdm(total=len(order), desc="gradient", unit="batch",
                                                                disable=not progress, dynamic_ncols=True) as bar:
        for idx in order:
            batch = {k: v.to(dev) for k, v in collate(train_data, idx, pad_id, left).items()}
            logits = logits_of(net, batch).to(torch.float64)
            loss, n_terms = batch_loss(logits, batch["labels"])  # classification: one term per example
            net.zero_grad(set_to_none=True)
            loss.backward()
            for n, p in params.items():
                if p.grad is not None:
                    acc[n] += p.grad.double()
            count, terms, loss_sum = count + len(idx), terms + n_terms, loss_sum + loss.item()
            bar.update(1)
    net.zero_grad(set_to_none=True)
    for p in net.parameters():
        p.requires_grad_(True)
    grads = {n: (a / terms).cpu() for n, a in acc.items()}
    per_epoch = math.ceil(len(train_data) / batch_size)
    tokens = {} if train_data.token_labels is None else {"tokens": terms}
    return grads, {"examples": count, **tokens, "epochs": round(batches / per_epoch, 4), "mean_loss": loss_sum / terms}


def update_signal(net: torch.nn.Module, task_data: TaskData, tokenizer: Any, names: set[str], *, steps: int,
                  lr: float | None, batch_size: int, max_length: int, seed: int, device: str, threads: int | None,
                  progress: bool, objective: str = "classification") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``ΔW = W_after − W_before`` (float64, on the CPU) of the parameters ``names`` after ``steps`` steps of the
    training engine, as ``train --method full`` runs them (module docstring); and the run's metrics."""
    import torch

    from .training.engine import TrainConfig, train_model

    before = {n: p.detach().to("cpu", torch.float64, copy=True) for n, p in net.named_parameters() if n in names}
    per_epoch = math.ceil(len(task_data.train) / batch_size)
    config = TrainConfig(epochs=math.ceil(steps / per_epoch), lr=lr, method="full", batch_size=batch_size,
                         max_length=max_length, seed=seed, device=device, restore_best=False, progress=progress,
                         threads=threads, max_steps=steps, objective=objective)
    empty = type(task_data.test)([], [])  # no test evaluation
    loop = train_model(net, replace(task_data, test=empty), tokenizer, config)
    after = dict(net.named_parameters())
    deltas = {n: after[n].detach().to("cpu", torch.float64) - b for n, b in before.items()}
    keep = ("steps", "epochs_completed", "train_loss", "validation_loss", "validation_accuracy", "validation_perplexity",
            "train_seconds", "eval_seconds", "examples_per_second", "device", "threads")
    return deltas, {"lr": config.learning_rate, **{k: loop[k] for k in keep if k in loop}}


# --------------------------------------------------------------------------------------------------
# spectra
# --------------------------------------------------------------------------------------------------


def oriented(pair: TensorPair, tensor: torch.Tensor) -> np.ndarray:
    """A parameter's ``M`` as the ``rows x cols`` float64 matrix of the pair (2-D view, Conv1D transposed)."""
    m = tensor.numpy().reshape(tensor.shape[0], -1) if tensor.dim() > 1 else tensor.numpy().reshape(-1, 1)
    m = m.T if pair.transpose else m
    if not np.all(np.isfinite(m)):
        raise RankscopeError(f"the probe's matrix of '{pair.module}' holds NaN or Inf (lower --lr?)")
    return np.ascontiguousarray(m[:pair.rows, :pair.cols])


def analyse(pair: TensorPair, m: np.ndarray, base_sq: float, taus: tuple[float, ...],
            keep: int) -> tuple[dict[str, Any], np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One row of ``modules.csv``, the spectrum and the top-R triplets of one module's ``M``."""
    t0 = time.perf_counter()
    chosen = linalg.choose_method(pair.rows, pair.cols, "cpu", "auto")
    sigma = linalg.spectrum_of_blocks([m], pair.rows, pair.cols, chosen)
    delta_norm, base_norm = math.sqrt(float(np.vdot(m, m))), math.sqrt(base_sq)
    if delta_norm == 0:
        sigma = np.zeros_like(sigma)
    trunc = exact_truncation(m, min(keep, pair.rows, pair.cols))
    row: dict[str, Any] = {"module": pair.module, "layer": pair.layer, "kind": pair.kind, "rows": pair.rows,
                           "cols": pair.cols, "params": pair.rows * pair.cols, "dtype": pair.base.dtype,
                           "base_norm": base_norm, "delta_norm": delta_norm,
                           "rel_delta": delta_norm / base_norm if base_norm else (0.0 if delta_norm == 0 else math.inf)}
    row.update(metrics.summarize(sigma, pair.rows, pair.cols, taus))
    row["method"] = chosen
    row["seconds"] = round(time.perf_counter() - t0, 4)
    return row, sigma, (trunc.U, trunc.s, trunc.Vt)


def vector_row(pair: TensorPair, tensor: torch.Tensor, base_sq: float) -> dict[str, Any]:
    """One row of ``vectors.csv``: ``‖b₀‖`` and ``‖M‖`` of a 1-D parameter."""
    v = tensor.numpy().ravel()
    if not np.all(np.isfinite(v)):
        raise RankscopeError(f"the probe's vector of '{pair.module}' holds NaN or Inf (lower --lr?)")
    base_norm, delta_norm = math.sqrt(base_sq), float(np.linalg.norm(v))
    return {"module": pair.module, "layer": pair.layer, "numel": pair.base.numel, "base_norm": base_norm,
            "delta_norm": delta_norm,
            "rel_delta": delta_norm / base_norm if base_norm else (0.0 if delta_norm == 0 else math.inf)}


# --------------------------------------------------------------------------------------------------
# the probe
# --------------------------------------------------------------------------------------------------


def check_options(signal: str, batches: int, steps: int, keep_vectors: int, batch_size: int, max_length: int,
                  lr: float | None, taus: Sequence[float], include: Sequence[str], exclude: Sequence[str]) -> None:
    """Every option checked before any work (one :class:`RankscopeError` line naming it)."""
    if signal not in SIGNALS:
        raise RankscopeError(f"--signal: unknown signal '{signal}' (choose from {', '.join(SIGNALS)})")
    for option, value in (("--batches", batches), ("--steps", steps), ("--keep-vectors", keep_vectors),
                          ("--batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RankscopeError(f"{option} must be a whole number of at least 1, got {value!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise RankscopeError(f"--max-length must be a whole number of at least 2, got {max_length!r}")
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise RankscopeError(f"--lr must be a positive number, got {lr!r}")
    for tau in taus:
        if not 0 < tau <= 1:
            raise RankscopeError(f"--tau: {tau} is not in (0, 1]")
    compile_regexes(include, "--include"), compile_regexes(exclude, "--exclude")


def probe(model: str | os.PathLike = "bundled:minilm-base", task: str = "rotten-tomatoes", signal: str = "gradient", *,
          data: str | os.PathLike | None = None, text_column: str = "text", label_column: str = "label",
          split_seed: int = 0, max_train: int | None = None, max_length: int = 128, batch_size: int = 16,
          batches: int = DEFAULT_BATCHES, steps: int = DEFAULT_STEPS, lr: float | None = None, seed: int = 0,
          keep_vectors: int = DEFAULT_KEEP, device: str = "cpu", threads: int | None = None,
          include: Sequence[str] = (), exclude: Sequence[str] = (), taus: Sequence[float] = DEFAULT_TAUS,
          workers: int | None = None, progress: bool = False, objective: str = "classification") -> ProbeResult:
    """The ``gradient`` or ``update`` matrices of every module of ``model`` on ``task``, with exact spectra.

    Args:
        model: the base checkpoint (a model folder with its tokenizer, a Hub id or ``bundled:minilm-base``).
        task, data, text_column, label_column, split_seed, max_train, max_length, batch_size: as
            :func:`rankscope.train.train` (the same splits, encoding and batches).
        signal: ``gradient`` (``batches`` batches at θ₀) or ``update`` (``steps`` full fine-tuning steps at
            learning rate ``lr``, default that of ``train --method full``); module docstring.
        seed: the head's initialisation and the data order (and dropout, for ``update``), as ``train --seed``.
        keep_vectors: top singular triplets kept per module (fewer when ``min(rows, cols)`` is smaller).
        device, threads: where the model runs (``cpu``, ``cuda``, ``auto``) and its CPU threads; the spectra are
            always float64 on the CPU, ``workers`` matrices at a time (default: the CPU count).
        include, exclude: regular expressions on module names (``re.search``), as ``spectrum``.
        taus: energy thresholds for the ``rank_XX`` columns.
        objective: ``classification`` or ``causal-lm`` (a decoder and a causal-LM ``data`` file), as ``train``.

    Returns:
        :class:`ProbeResult` (``.save(out)`` writes the folder).
    """
    from .training.engine import torch_device
    from .training.lm_data import load_task_for
    from .training.models import build_model

    t_start = time.perf_counter()
    taus = tuple(sorted(float(t) for t in taus))
    include, exclude = tuple(include), tuple(exclude)
    check_options(signal, batches, steps, keep_vectors, batch_size, max_length, lr, taus, include, exclude)
    dev = str(torch_device(device))
    task_data = load_task_for(objective, task, data, text_column=text_column, label_column=label_column,
                              split_seed=split_seed, max_train=max_train)
    net, tokenizer, path = build_model(model, task_data.label_names, "full", None, seed, objective=objective)
    with open_checkpoint(model) as base_ckpt:
        alignment = align(base_ckpt, task_model_checkpoint(net, path))
        base_description = base_ckpt.describe()
    if not any(p.is_matrix for p in alignment.pairs):
        raise RankscopeError(f"{model}: no 2-D tensor of the checkpoint is a weight of the task model it builds")
    selected = select_pairs(alignment, include, exclude)
    matrices = [p for p in selected if p.is_matrix]
    vectors = [p for p in selected if not p.is_matrix]
    if not matrices:
        raise RankscopeError("--include/--exclude leave no 2-D tensor to analyse")
    names = {p.finetuned.name for p in selected}
    params = dict(net.named_parameters())
    base_sq = {n: float(params[n].detach().double().pow(2).sum()) for n in names}
    inputs = {"base": base_description, "finetuned": describe_task_model(net, seed, objective), "model": str(model),
              "model_resolved": str(path), "task": task, "data": None if data is None else str(data)}
    del params
    t_loaded = time.perf_counter()
    common = {"batch_size": batch_size, "max_length": max_length, "seed": seed, "device": device, "threads": threads,
              "progress": progress}
    if signal == "gradient":
        signals, run = gradient_signal(net, task_data, tokenizer, names, batches=batches, **common)
    else:
        signals, run = update_signal(net, task_data, tokenizer, names, steps=steps, lr=lr, objective=objective, **common)
    del net
    t_signal = time.perf_counter()
    n_workers = workers or (os.cpu_count() or 1)

    def work(pair: TensorPair) -> Any:
        name = pair.finetuned.name
        if pair.is_matrix:
            return analyse(pair, oriented(pair, signals[name]), base_sq[name], taus, keep_vectors)
        return vector_row(pair, signals[name], base_sq[name])

    results = run_parallel(matrices + vectors, work, n_workers, progress)
    t_done = time.perf_counter()
    table = pd.DataFrame([results[p.module][0] for p in matrices])
    table["layer"] = table["layer"].astype("Int64")
    vec_table = pd.DataFrame([results[p.module] for p in vectors],
                             columns=["module", "layer", "numel", "base_norm", "delta_norm", "rel_delta"])
    vec_table["layer"] = vec_table["layer"].astype("Int64")
    info = {
        "command": "probe",
        "signal": signal,
        **({"batches": batches, "examples": run["examples"]} if signal == "gradient" else {"steps": steps}),
        "seed": seed,
        "seeds": {"seed": seed, "split_seed": split_seed},
        "cost_seconds": round(t_done - t_start, 3),
        "keep_vectors": keep_vectors,
        "inputs": inputs,
        "task": task_data.describe(),
        "options": {"objective": objective, "signal": signal, "batches": batches if signal == "gradient" else None,
                    "steps": steps if signal == "update" else None, "lr": run.get("lr"), "batch_size": batch_size,
                    "max_length": max_length, "max_train": max_train, "split_seed": split_seed, "seed": seed,
                    "keep_vectors": keep_vectors, "include": list(include), "exclude": list(exclude),
                    "taus": list(taus), "threads": threads, "workers": n_workers},
        "probe": run,
        "device": dev,
        "methods_by_shape": {f"{r['rows']}x{r['cols']}": r["method"] for r in table.to_dict("records")},
        "alignment": alignment_info(alignment, matrices, vectors),
        "warnings": alignment.warnings,
        "skipped_tensors": alignment.skipped_tensors,
        "notes": skipped_notes(alignment.skipped_tensors),
        "seconds": {"load": round(t_loaded - t_start, 3), "signal": round(t_signal - t_loaded, 3),
                    "spectra": round(t_done - t_signal, 3), "analysis": round(t_done - t_start, 3)},
        "outputs": {"singular_vectors": VECTORS_FILE},
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "versions": versions(),
    }
    singular = {p.module: results[p.module][2] for p in matrices}
    spectra = {p.module: results[p.module][1] for p in matrices}
    return ProbeResult(table, spectra, vec_table, info, singular)

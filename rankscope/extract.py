"""Extract a LoRA adapter from a full fine-tune: the best rank-``r`` approximation of every ``ΔW``.

For every targeted module, ``ΔW = W_finetuned - W_base`` (``out x in``, float64) is replaced by its
rank-``r`` truncated SVD ``ΔW_r = U_r Σ_r V_rᵀ`` — by Eckart–Young–Mirsky (1936) the best rank-``r``
approximation in the Frobenius and spectral norms — and written as a peft LoRA adapter::

    B = U_r Σ_r^{1/2} / √s,     A = Σ_r^{1/2} V_rᵀ / √s,     s = α / r   (α / √r with rsLoRA),

so that peft's merge ``W_base + s·B·A`` equals ``W_base + ΔW_r`` exactly: nothing is clamped, and
``√Σ`` is split evenly between the factors (as in LoRD and mergekit's ``extract_lora``).  ``r`` and
``α`` come from ``--rank``/``--alpha`` or, per module, from a peft ``lora_config.json`` with peft's
``rank_pattern``/``alpha_pattern`` rule (:class:`rankscope.io.peft.LoraSpec`,
:func:`rankscope.io.peft.pattern_value`).

The pieces: the role of every tensor (LoRA, ``modules_to_save`` copy, bias, skipped) is planned by
:mod:`rankscope.pairing.roles`; ``ΔW`` is streamed by :mod:`rankscope.pairing.deltas`; the top-``r``
singular subspace (``method=``: ``exact``, ``randomized`` block Krylov, or ``auto``) and the errors
come from :mod:`rankscope.numerics.truncation`, whose docstring gives the solvers and their cost model;
module names and layer types are cross-checked with the model peft will build
(:class:`rankscope.pairing.model_layout.ModelLayout`).

Reported per module (``extract.csv``): ``rel_error = ‖ΔW − s·B·A‖_F / ‖ΔW‖_F`` with ``B, A`` as stored
(float32), ``optimal_rel_error = √(Σ_{i>r} σ_i² / Σ σ_i²)`` from the exact spectrum (Eckart–Young),
and ``ratio = max(rel_error, 1e-6) / max(optimal_rel_error, 1e-6)`` (errors below float32 storage
resolution count as 1e-6, so a ``ΔW`` of rank ``<= r`` recovered exactly has ratio 1, never NaN).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import RankscopeError
from .io.checkpoints import MEMORY_FORMAT, Checkpoint, open_checkpoint
from .io.peft import BIAS, PEFT_PREFIX, WRAPPED_HEADS, LoraSpec, adapter_config, lora_tensor_keys
from .io.results import peak_rss_mb, read_json, read_table, result_folder, versions, write_json
from .io.skipped import skipped_notes
from .numerics.truncation import (
    OVERSAMPLE,
    POWER_ITERATIONS,
    STORAGE_DTYPES,
    TorchOps,
    choose_method,
    error_ratio,
    exact_top_energy,
    exact_truncation,
    lora_factors,
    module_rng,
    optimal_relative_error,
    randomized_truncation,
    relative_error,
    stored_as,
)
from .options import compile_regexes
from .pairing.align import TensorPair, align
from .pairing.deltas import DeltaNorms, delta_norms, read_delta
from .pairing.executors import Executor, make_executor
from .pairing.model_layout import (
    MODEL_CHECKS,
    OUTPUT_HEADS,
    ModelLayout,
    choose_task,
    is_vocab_module,
    naming_suspicion,
)
from .pairing.order import checkpoint_swap_warning
from .pairing.roles import (
    ModulePlan,
    apply_layout,
    check_ranks,
    check_vocab,
    drop_zero_updates,
    fine_tune_only_saves,
    model_tensor,
    plan_roles,
    vector_tensors,
)
from .protocol import ResultView
from .summaries import ResultFiles

METHODS = ("auto", "exact", "randomized")
EMBEDDINGS = ("auto", "skip", "lora", "save")
TABLE_COLUMNS = ("module", "layer", "kind", "rows", "cols", "layer_type", "role", "rank", "alpha", "scale",
                 "lora_params", "base_norm", "delta_norm", "rel_delta", "method", "rel_error")
"""Columns every ``extract.csv`` has (``optimal_rel_error``, ``ratio`` with the optimum; ``sigma_r``, ``seconds``)."""
TABLE_NUMBERS = ("rows", "cols", "rank", "alpha", "scale", "lora_params", "base_norm", "delta_norm", "rel_delta",
                 "rel_error")
"""Columns of ``extract.csv`` that hold a number in every row."""


@dataclass
class Options:
    """How the truncations are computed (see :func:`extract`)."""

    method: str = "auto"
    power_iterations: int = POWER_ITERATIONS
    oversample: int = OVERSAMPLE
    seed: int = 0
    optimum: bool = True
    device: str = "cpu"
    dtype: str | None = None


# --------------------------------------------------------------------------------------------------
# the per-module work
# --------------------------------------------------------------------------------------------------


def _base_row(plan: ModulePlan, norms: DeltaNorms) -> dict[str, Any]:
    p = plan.pair
    base_norm, delta_norm = float(np.sqrt(norms.base_sq)), float(np.sqrt(norms.delta_sq))
    return {"module": plan.name, "layer": p.layer, "kind": p.kind, "rows": p.rows, "cols": p.cols,
            "layer_type": plan.layer_type, "role": plan.role, "rank": plan.r, "alpha": plan.alpha, "scale": plan.scale,
            "lora_params": plan.r * (p.rows + p.cols), "base_norm": base_norm, "delta_norm": delta_norm,
            "rel_delta": delta_norm / base_norm if base_norm else (0.0 if delta_norm == 0 else float("inf"))}


def extract_module(plan: ModulePlan, base: Checkpoint, ft: Checkpoint, opts: Options,
                   ops: TorchOps | None = None) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
    """One row of ``extract.csv`` and, for ``lora``, the factors ``(B, A)`` (float32, ``out x r``, ``r x in``)."""
    t0 = time.perf_counter()
    if plan.role != "lora":
        norms = delta_norms(plan.pair, base, ft)
        row = _base_row(plan, norms)
        captured = plan.role == "save"
        row.update(method="modules_to_save" if captured else "skipped",
                   rel_error=0.0 if captured or norms.delta_sq == 0 else 1.0)
        if opts.optimum:
            row.update(optimal_rel_error=row["rel_error"], ratio=1.0)
        row["seconds"] = round(time.perf_counter() - t0, 4)
        return row, None
    delta, norms = read_delta(plan.pair, base, ft)
    row = _base_row(plan, norms)
    if norms.delta_sq == 0:  # ΔW = 0 exactly: nothing to adapt, decided once ΔW is read (see drop_zero_updates)
        row.update(role="skip", rank=0, alpha=0.0, scale=0.0, lora_params=0, method="zero", rel_error=0.0)
        if opts.optimum:
            row.update(optimal_rel_error=0.0, ratio=1.0)
        row["seconds"] = round(time.perf_counter() - t0, 4)
        return row, None
    method = choose_method(*delta.shape, plan.r, opts.method, opts.optimum, opts.power_iterations, opts.oversample)
    if method == "randomized":
        trunc = randomized_truncation(delta, plan.r, module_rng(opts.seed, plan.name), opts.power_iterations,
                                      opts.oversample, ops)
    else:
        trunc = exact_truncation(delta, plan.r, ops, opts.optimum)
    if opts.optimum and trunc.top_energy is None:
        trunc.top_energy = exact_top_energy(delta, plan.r, ops)
    b, a = lora_factors(trunc, plan.scale)  # of ΔW as stored; Conv1D stores ΔWᵀ = (B A)ᵀ
    b, a = storage_rounded(b, opts.dtype, f"{plan.name}.lora_B"), storage_rounded(a, opts.dtype, f"{plan.name}.lora_A")
    stored_left, stored_right = b, a
    if plan.pair.transpose:
        b, a = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
    row["method"] = trunc.method
    row["rel_error"] = relative_error(delta, stored_left, stored_right, plan.scale, norms.delta_sq)
    if opts.optimum:
        row["optimal_rel_error"] = optimal_relative_error(trunc.top_energy, norms.delta_sq)
        row["ratio"] = error_ratio(row["rel_error"], row["optimal_rel_error"])
    row["sigma_r"] = float(trunc.s[-1]) if trunc.s.size else 0.0
    row["seconds"] = round(time.perf_counter() - t0, 4)
    return row, (b, a)


# --------------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------------


@dataclass
class ExtractResult(ResultView):
    """Result of :func:`extract`: a peft adapter in memory plus its report.

    Attributes:
        table: one row per 2-D tensor of the pair (``extract.csv``; columns in the README).
        tensors: ``adapter_model.safetensors`` content, key → array (float32 LoRA factors,
            fine-tuned values of modules_to_save and biases; with ``dtype``, float32 arrays holding the values
            rounded to it, which :meth:`save` writes in that format).
        adapter_config: ``adapter_config.json`` content (a peft ``LoraConfig``).
        info: provenance, options, timings and warnings (``run.json``).
    """

    table: pd.DataFrame
    tensors: dict[str, np.ndarray]
    adapter_config: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, out: str | os.PathLike, plots: bool = True, overwrite: bool = False) -> Path:
        """Write ``adapter_config.json``, ``adapter_model.safetensors`` (in ``info["options"]["dtype"]`` when set),
        ``extract.csv``, the model card ``README.md``, ``figures/error.png`` (unless ``plots`` is false) and
        ``run.json`` atomically."""
        from .model_card import extract_card

        t0 = time.perf_counter()
        with result_folder(out, self.info, overwrite) as tmp:
            write_json(tmp / "adapter_config.json", self.adapter_config)
            write_adapter_tensors(self.tensors, tmp / "adapter_model.safetensors",
                                  (self.info.get("options") or {}).get("dtype"))
            self.table.to_csv(tmp / "extract.csv", index=False)
            if plots:
                self.info.setdefault("outputs", {})["figures"] = self.render_figures(tmp / "figures")
            (tmp / "README.md").write_text(extract_card(self.table, self.adapter_config, self.info))
            self.info.setdefault("seconds", {})["save"] = round(time.perf_counter() - t0, 3)
        return Path(out)

    def render_figures(self, folder: Path) -> list[str]:
        """``error.png`` (:mod:`rankscope.figures.adapters`): the error per module against the optimum."""
        from .figures.adapters import render_adapter_figures

        return render_adapter_figures(self, folder)

    @classmethod
    def load(cls, out: str | os.PathLike) -> ExtractResult:
        """Read a folder written by :meth:`save` (no recomputation): ``adapter_config.json``,
        ``adapter_model.safetensors``, ``extract.csv`` and ``run.json``.

        A missing or unreadable file, or an ``extract.csv`` without the columns of :data:`TABLE_COLUMNS`, is a
        :class:`RankscopeError` naming the file.
        """
        out = Path(out)
        info = read_json(out / "run.json")
        config = read_json(out / "adapter_config.json")
        table = read_table(out / "extract.csv", TABLE_COLUMNS, TABLE_NUMBERS)
        weights = out / "adapter_model.safetensors"
        if not weights.is_file():
            raise RankscopeError(f"{weights} not found: is this a rankscope extract folder?")
        with open_checkpoint(weights) as ckpt:
            tensors = {n: ckpt.read_rows(n).reshape(t.shape) for n, t in ckpt.tensors.items()}
        return cls(table, tensors, config, info)

    def result_files(self) -> ResultFiles:
        """``extract.csv``, as the key figures read it."""
        return ResultFiles(tables={"extract.csv": self.table})

    def summary(self) -> pd.DataFrame:
        """Per module kind of the LoRA modules: ``n`` and the medians of ``rank``, ``rel_delta``, ``rel_error``,
        ``optimal_rel_error`` and ``ratio`` (error against the Eckart–Young optimum)."""
        t = self.table[self.table["role"] == "lora"]
        if t.empty:
            return pd.DataFrame()
        cols = [c for c in ("rank", "rel_delta", "rel_error", "optimal_rel_error", "ratio") if c in t]
        return t.groupby("kind", sort=False).agg(n=("module", "count"), **{c: (c, "median") for c in cols})

    def summary_text(self) -> str:
        """One line per module kind (:meth:`summary`), then the adapter's totals."""
        t = self.table[self.table["role"] == "lora"]
        lines = []
        if not t.empty:
            lines.append(self.summary().to_string(float_format=lambda v: f"{v:.4g}"))
        a = self.info.get("adapter", {})
        lines.append(f"{a.get('lora_modules', 0)} LoRA modules ({a.get('lora_parameters', 0):,} parameters), "
                     f"{len(a.get('modules_to_save') or [])} modules_to_save, "
                     f"{a.get('bytes', 0) / 1e6:.1f} MB; methods {a.get('methods', {})}"
                     + (f"; worst ratio to optimum {t['ratio'].max():.6f}" if "ratio" in t and not t.empty else ""))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# the analysis
# --------------------------------------------------------------------------------------------------


def _base_model_path(ckpt: Checkpoint) -> str:
    given = ckpt.given
    if ckpt.fmt == MEMORY_FORMAT:  # a model in memory: the folder or Hub id it was loaded from, when it says
        return str((ckpt.config or {}).get("_name_or_path") or given)
    if given.startswith("bundled:") or Path(given).expanduser().exists():
        path = Path(ckpt.path).resolve()
        return str(path.parent if path.is_file() else path)
    return given


def extract(
    base: str | os.PathLike,
    finetuned: str | os.PathLike,
    *,
    rank: int | None = None,
    alpha: float | None = None,
    config: str | os.PathLike | dict[str, Any] | None = None,
    targets: str | Sequence[str] = "all-linear",
    use_rslora: bool = False,
    exclude: Sequence[str] = (),
    embeddings: str = "auto",
    save_modules: Sequence[str] = (),
    bias: str | None = None,
    method: str = "auto",
    power_iterations: int = POWER_ITERATIONS,
    oversample: int = OVERSAMPLE,
    seed: int = 0,
    optimum: bool = True,
    device: str = "cpu",
    dtype: str | None = None,
    workers: int | None = None,
    check_model: str | bool = "auto",
    progress: bool = False,
    executor: str | Executor | None = None,
    ray_address: str | None = None,
) -> ExtractResult:
    """A peft LoRA adapter whose merge gives ``base + rank-r truncation of ΔW`` for every targeted module.

    Args:
        base, finetuned: checkpoints as for :func:`rankscope.spectrum` (folder, file, Hub id).
        rank, alpha, targets, use_rslora: ``--rank`` mode: one rank for every targeted module,
            ``alpha`` defaults to ``rank`` (scale 1); ``targets`` is ``"all-linear"`` or peft-style
            module names (a list, or comma-separated).
        config: instead of ``rank``: a peft LoRA config (path or dict) giving ``target_modules``,
            ``r``, ``lora_alpha``, ``rank_pattern``, ``alpha_pattern``, ``use_rslora``, ``bias``,
            ``modules_to_save``, ``exclude_modules`` (a pattern rank of 0 skips the module).
        exclude: regular expressions (``re.search``) of modules never to extract.
        embeddings: embeddings and output heads (``lm_head``): ``lora`` (LoRA on the embedding /
            head), ``save`` (full fine-tuned copy in ``modules_to_save``), ``skip``, or ``auto``
            (LoRA if the targets name them explicitly, else skip).
        save_modules: regular expressions of further modules to copy whole into ``modules_to_save``
            (e.g. ``"LayerNorm"``); the task heads of ``SEQ_CLS`` / ``TOKEN_CLS`` / ``QUESTION_ANS``
            always are, as peft requires, and so is a head that only the fine-tune has (a classifier
            trained on a bare backbone, an ``lm_head`` on a bare ``LlamaModel``).
        bias: peft's ``bias``: ``none``, ``lora_only`` (fine-tuned biases of the LoRA layers) or ``all``.
        method: ``auto``, ``exact`` or ``randomized`` (:mod:`rankscope.numerics.truncation`); ``power_iterations``,
            ``oversample`` and ``seed`` drive the randomized solver.
        optimum: compute the Eckart–Young optimum of every module (exact spectrum).
        dtype: ``fp32``, ``bf16`` or ``fp16``: every floating tensor of the adapter is written in it, and the errors
            of ``extract.csv`` are those of the factors so rounded; ``None`` (default): LoRA factors in float32, other
            tensors (``modules_to_save`` copies, biases) as read from the fine-tune.
        device: ``cpu``, ``cuda`` (``cuda:N``) or ``auto``: where the SVDs run (torch on GPUs).
        workers: modules in parallel (default: CPU count on CPU, one per GPU).
        executor, ray_address: ``local`` (threads; ``cuda`` uses every GPU visible) or ``ray`` (one task per
            module on the cluster at ``ray_address``), as for :func:`rankscope.spectrum`.
        check_model: cross-check module names and layer types against the model class built on
            the meta device (imports transformers: ~2–3 s): ``always``, ``never`` or ``auto`` (only
            when :func:`rankscope.pairing.model_layout.naming_suspicion` finds the names unusual).  ``True``/``False`` mean
            always/never.  If the model cannot be built the names are used as they are, with a warning.
        progress: progress bar on stderr.

    The task type and the module names come from the task model of the pair
    (:func:`rankscope.pairing.model_layout.choose_task`): for a bare ``BertModel`` base and a
    ``BertForSequenceClassification`` fine-tune, ``SEQ_CLS`` and ``bert.encoder…``, so that
    ``PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=N), OUT)``
    loads it.  A targeted module whose ``ΔW`` is exactly zero is left out (rank 0, with a note); when
    every targeted module is, :class:`RankscopeError`.
    """
    t_start = time.perf_counter()
    if (rank is None) == (config is None):
        raise RankscopeError("give exactly one of --rank and --config")
    if config is not None:
        if alpha is not None or use_rslora or (targets != "all-linear"):
            raise RankscopeError("--alpha, --use-rslora and --targets only apply with --rank (--config sets them)")
        spec = LoraSpec.from_config(config)
    else:
        spec = LoraSpec.from_rank(rank, alpha, targets, use_rslora)
    bias = bias if bias is not None else spec.bias
    _check_choice(bias, BIAS, "--bias")
    _check_choice(embeddings, EMBEDDINGS, "--embeddings")
    _check_choice(method, METHODS, "--method")
    if dtype is not None:
        _check_choice(dtype, STORAGE_DTYPES, "--dtype")
    check_model = {True: "always", False: "never"}.get(check_model, check_model)
    _check_choice(check_model, MODEL_CHECKS, "--model-check")
    if power_iterations < 0 or oversample < 0:
        raise RankscopeError("--power-iterations and --oversample must be >= 0")
    exclude_re = compile_regexes(list(exclude), "--exclude")
    save_re = compile_regexes(list(save_modules), "--save-modules")
    runner = make_executor(executor, device, workers, ray_address)
    device = runner.device
    opts = Options(method, power_iterations, oversample, seed, optimum, device, dtype)
    warnings: list[str] = []
    with open_checkpoint(base) as b_ckpt, open_checkpoint(finetuned) as f_ckpt:
        choice = choose_task(b_ckpt.config, f_ckpt.config, b_ckpt.given, f_ckpt.given)
        task, side = choice.task, choice.side  # names follow the task model's checkpoint (choose_task)
        model_ckpt = f_ckpt if side == "finetuned" else b_ckpt
        warnings += choice.notes
        swap = checkpoint_swap_warning(b_ckpt, f_ckpt)
        warnings += [swap] if swap else []
        suspicion = naming_suspicion(model_ckpt.config, list(model_ckpt.tensors))
        checking = check_model == "always" or (check_model == "auto" and suspicion is not None)
        layout_probe = ModelLayout(model_ckpt.config) if checking else None
        alignment = align(b_ckpt, f_ckpt)
        if not any(p.is_matrix for p in alignment.pairs):
            raise RankscopeError(f"{b_ckpt.given} and {f_ckpt.given} share no 2-D tensor: are they the same architecture?")
        warnings += alignment.warnings
        save_names = WRAPPED_HEADS.get(task, ()) + tuple(spec.modules_to_save)
        plans, saved = plan_roles(alignment.pairs, spec, embeddings, save_names, save_re, exclude_re, side)
        lora_plans = [p for p in plans if p.role == "lora"]
        if not lora_plans:
            raise RankscopeError(f"{spec.source}: the targets select no 2-D module of {b_ckpt.given} "
                                 f"(target_modules={spec.target_modules!r}); nothing to extract")
        check_ranks(plans)
        check_vocab(plans, warnings)
        t_open = time.perf_counter()
        results = runner.run([p.pair for p in plans], extract_pair, (b_ckpt, f_ckpt),
                             ({p.pair.module: p for p in plans}, opts), progress)
        drop_zero_updates(plans, results, warnings)
        t_done = time.perf_counter()
        layout = layout_probe.result() if layout_probe else None
        if not choice.architecture:
            warnings.append("no config.json with 'architectures' on either side: task_type is null and module names "
                            "are used as stored (not cross-checked)")
        elif checking and layout is None:
            warnings.append(f"module names and layer types not cross-checked: {layout_probe.reason}"
                            + (f" (and {suspicion})" if suspicion else ""))
        ft_only = fine_tune_only_saves(alignment, f_ckpt, save_names + OUTPUT_HEADS.get(task, ()), save_re, side,
                                       task, warnings)
        saved = sorted(set(saved) | {owner for owner, _, _, _ in ft_only})
        names = apply_layout(plans, saved, layout, warnings)
        tensors, vec_summary = _collect_tensors(plans, results, names, saved, bias, alignment.pairs, b_ckpt, f_ckpt,
                                                side)
        tensors.update({f"{PEFT_PREFIX}{names.get(owner, owner)}{name[len(owner):]}": value
                        for owner, name, _, value in ft_only})
        tensors = {k: storage_rounded(v, dtype, k) for k, v in tensors.items()}
        taken = {core for _, _, core, _ in ft_only}
        _note_uncaptured(plans, results, vec_summary, [n for n in alignment.only_in_finetuned if n not in taken],
                         warnings)
        adapted = [p for p in plans if p.role == "lora"]
        peft_config = adapter_config({names[p.name]: (p.r, p.alpha) for p in adapted}, spec, task,
                                     _base_model_path(b_ckpt), bias, any(p.layer_type == "conv1d" for p in adapted),
                                     [names.get(s, s) for s in saved])
        inputs = {"base": b_ckpt.describe(), "finetuned": f_ckpt.describe()}
        tied = bool((b_ckpt.config or {}).get("tie_word_embeddings", False))
    if tied and any(p.role in ("lora", "save") and is_vocab_module(p.name, p.layer_type) for p in plans):
        warnings.append("the base ties input and output embeddings: an adapted embedding reaches the output head "
                        "only after merge_and_unload")
    table = pd.DataFrame([results[p.pair.module][0] for p in plans])
    table["layer"] = table["layer"].astype("Int64")
    lora_table = table[table["role"] == "lora"]
    skipped = [s for s in alignment.skipped_tensors if not (s["checkpoint"] == "finetuned" and s["tensor"] in taken)]
    info = {
        "command": "extract",
        "inputs": inputs,
        "spec": spec.describe(),
        "options": {"embeddings": embeddings, "save_modules": list(save_modules), "exclude": list(exclude),
                    "bias": bias, "method": method, "power_iterations": power_iterations, "oversample": oversample,
                    "optimum": optimum, "workers": runner.workers, "check_model": check_model, "dtype": dtype},
        "seed": seed,
        "device": device,
        "executor": runner.describe(),
        "task_type": task,
        "adapter": {"lora_modules": len(lora_table), "lora_parameters": int(lora_table["lora_params"].sum()),
                    "modules_to_save": saved, "bias_tensors": vec_summary["written"],
                    "methods": dict(Counter(lora_table["method"])),
                    "bytes": int(sum(v.size * {"fp32": 4, "bf16": 2, "fp16": 2}.get(dtype or "", v.itemsize)
                                     if v.dtype.kind == "f" else v.nbytes for v in tensors.values()))},
        "model_layout_checked": layout is not None,
        "naming_suspicion": suspicion,
        "alignment": {"base_prefix": alignment.base_prefix, "finetuned_prefix": alignment.finetuned_prefix,
                      "only_in_base": alignment.only_in_base, "only_in_finetuned": alignment.only_in_finetuned,
                      "skipped": alignment.skipped, "transposed_conv1d": [p.name for p in plans if p.pair.transpose]},
        "uncaptured_vectors": vec_summary["uncaptured"],
        "skipped_tensors": skipped,  # tensors only in the fine-tune that travel in modules_to_save are not skipped
        "notes": skipped_notes(skipped),
        "warnings": warnings,
        "seconds": {"open": round(t_open - t_start, 3), "compute": round(t_done - t_open, 3),
                    "analysis": round(time.perf_counter() - t_start, 3)},
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "versions": versions(),
    }
    return ExtractResult(table, tensors, peft_config, info)


def write_adapter_tensors(tensors: dict[str, np.ndarray], path: Path, dtype: str | None = None) -> None:
    """``adapter_model.safetensors`` of ``tensors`` (numpy arrays), every floating tensor in ``dtype`` (``fp32``,
    ``bf16``, ``fp16``) when given, else as held."""
    if dtype == "bf16":  # numpy has no bfloat16: through torch, as peft saves a bf16 adapter
        import torch
        from safetensors.torch import save_file as save_torch

        save_torch({k: torch.from_numpy(np.ascontiguousarray(v)).to(torch.bfloat16) if v.dtype.kind == "f"
                    else torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()},
                   str(path), metadata={"format": "pt"})
        return
    from safetensors.numpy import save_file

    target = {"fp32": np.float32, "fp16": np.float16}.get(dtype or "")
    save_file({k: np.ascontiguousarray(v if target is None or v.dtype.kind != "f" else v.astype(target))
               for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def storage_rounded(values: np.ndarray, dtype: str | None, name: str) -> np.ndarray:
    """``values`` as ``--dtype`` stores them (:func:`rankscope.numerics.truncation.stored_as`; unchanged for None);
    a value beyond the format's range is a :class:`RankscopeError` naming the tensor."""
    if dtype is None or np.asarray(values).dtype.kind != "f":
        return values
    rounded = stored_as(values, dtype)
    if not np.isfinite(rounded).all() and np.isfinite(values).all():
        raise RankscopeError(f"--dtype {dtype}: tensor '{name}' has values beyond the range of {dtype} "
                             f"(largest |value| {float(np.abs(values).max()):.4g}); use bf16 or fp32")
    return rounded


def _check_choice(value: str, choices: Sequence[str], option: str) -> None:
    if value not in choices:
        raise RankscopeError(f"{option}: '{value}' is not one of {', '.join(choices)}")


def extract_pair(pair: TensorPair, base: Checkpoint, ft: Checkpoint, device: str, plans: dict[str, ModulePlan],
                 opts: Options) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
    """The job of one pair on ``device`` (an executor's work function): :func:`extract_module` of its plan."""
    return extract_module(plans[pair.module], base, ft, opts, TorchOps(device) if device != "cpu" else None)


def _read_ft(pair: TensorPair, ft: Checkpoint) -> np.ndarray:
    """The fine-tuned tensor as stored (shape and orientation), float32 (float64 for F64 data)."""
    info = pair.finetuned
    return ft.read_rows(info.name).reshape(info.shape)


def _collect_tensors(plans: list[ModulePlan], results: dict[str, Any], names: dict[str, str], saved: list[str],
                     bias: str, pairs: list[TensorPair], b_ckpt: Checkpoint, f_ckpt: Checkpoint,
                     side: str = "base") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The adapter's tensors: LoRA factors, modules_to_save copies and biases (fine-tuned values), named
    as in the task model's checkpoint (``side``, :func:`rankscope.pairing.roles.model_tensor`)."""
    tensors: dict[str, np.ndarray] = {}
    for plan in plans:
        factors = results[plan.pair.module][1]
        if factors is not None:
            tensors.update(lora_tensor_keys(names[plan.name], plan.layer_type == "embedding", *factors))
    saved_set = set(saved)
    for p in pairs:
        tensor = model_tensor(p, side)
        owner = next((s for s in saved_set if tensor.startswith(s + ".")), None)
        if owner is not None:
            core = tensor[len(owner):]
            tensors[f"{PEFT_PREFIX}{names.get(owner, owner)}{core}"] = _read_ft(p, f_ckpt)
    lora_names = {p.name for p in plans if p.role == "lora"}
    written, rest = vector_tensors(pairs, bias, lora_names, saved, side)
    for p in written:
        tensor = model_tensor(p, side)
        owner = tensor.rsplit(".", 1)[0]
        model_owner = names.get(owner, owner)
        key = f"{model_owner}.base_layer.bias" if owner in lora_names else tensor
        tensors[f"{PEFT_PREFIX}{key}"] = _read_ft(p, f_ckpt)
    uncaptured = []
    for p in rest:
        norms = delta_norms(p, b_ckpt, f_ckpt)
        base_norm, delta_norm = float(np.sqrt(norms.base_sq)), float(np.sqrt(norms.delta_sq))
        if delta_norm > 0:
            uncaptured.append({"tensor": model_tensor(p, side), "delta_norm": delta_norm,
                               "rel_delta": delta_norm / base_norm if base_norm else float("inf")})
    return tensors, {"written": [model_tensor(p, side) for p in written], "uncaptured": uncaptured}


def _note_uncaptured(plans: list[ModulePlan], results: dict[str, Any], vec_summary: dict[str, Any],
                     only_in_ft: list[str], warnings: list[str]) -> None:
    skipped = [p.name for p in plans if p.role == "skip" and results[p.pair.module][0]["delta_norm"] > 0]
    if skipped:
        warnings.append(f"{len(skipped)} changed 2-D module(s) not in the adapter (rel_error 1 in extract.csv): "
                        f"{', '.join(skipped[:5])}{' …' if len(skipped) > 5 else ''}")
    vec = vec_summary["uncaptured"]
    if vec:
        warnings.append(f"{len(vec)} changed 1-D tensor(s) (biases, norms) not in the adapter, e.g. {vec[0]['tensor']}"
                        " (see --bias and --save-modules)")
    if only_in_ft:
        warnings.append(f"{len(only_in_ft)} tensor(s) exist only in the fine-tune and cannot be extracted, e.g. "
                        f"{only_in_ft[0]}")

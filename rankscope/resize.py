"""Resize a peft LoRA adapter to per-module ranks under any ``recommend`` rule, exactly from its factors.

Every module's update ``ΔW = s·B·A`` (``out x in``; ``s = α/r``, ``α/√r`` with rsLoRA) is decomposed from its
factors alone (:meth:`rankscope.io.adapters.LoraModule.factored_svd`: reduced QR of ``B`` and ``Aᵀ`` and the SVD of
an ``r x r`` core — never an ``out x in`` product) into ``U Σ Vᵀ``.  A rank rule of ``rankscope recommend``
(:mod:`rankscope.numerics.rank_rules`: ``energy:τ``, ``gd``, ``budget:N``, ``avg-rank:r``, ``kohya-fro:t``,
``kohya-ratio:t``, ``kohya-cumulative:t``; the global rules through
:func:`rankscope.numerics.allocation.greedy_allocation`, with ``min_rank`` / ``max_rank`` / ``snap`` / ``gain``
exactly as :func:`rankscope.ranks.recommend` applies them) picks ``r'`` per module from ``σ`` (padded with zeros
to ``min(out, in)`` values, as ``rankscope lora`` reports it), and the module is written as::

    B' = U_{r'} √Σ_{r'} / √s',     A' = √Σ_{r'} V_{r'}ᵀ / √s',     s' = α'/r'  (α'/√r' with rsLoRA),

so that ``s'·B'·A' = U_{r'} Σ_{r'} V_{r'}ᵀ``, the best rank-``r'`` approximation of the original update
(Eckart–Young), in float32.  A module whose rank and scale do not change keeps its factors as stored.

``α'`` (the scale policy): by default the module keeps its own ``α/r``, ``α' = (α/r)·r'`` (``s' = s``: the
resized adapter trains further at the same scale); with ``use_rslora`` it keeps its ``α`` (rsLoRA's scale
``α/√r'``, which rsLoRA prescribes for rank ``r'``).  ``alpha=`` overrides both with recommend's policy: ``"r"``,
``"2r"``, ``"<c>r"`` (``α' = c·r'``) or a number (the same ``α'`` everywhere).

Capping: an adapter holds at most ``r`` directions per module, so a rule (or ``min_rank`` / ``snap``) asking for
more is capped at the module's ``r`` (its update copied exactly), with a warning and ``capped`` in ``resize.csv``.
A module that gets rank 0 (an update that is exactly zero, or ``min_rank=0`` with a budget rule or a snap list
holding 0) is dropped from ``target_modules``, with a warning; a bias peft saved for it (``bias="lora_only"``,
``<module>.base_layer.bias``) is kept under the plain layer's name ``<module>.bias``.

Everything else of the adapter is kept: ``modules_to_save`` copies, biases and other tensors are copied as stored
(dtype included); ``task_type``, ``base_model_name_or_path``, ``modules_to_save``, ``bias``, ``use_rslora``,
``fan_in_fan_out`` and every other field of ``adapter_config.json`` are the original's; ``r``, ``lora_alpha``,
``target_modules`` (the full module names that keep a rank), ``rank_pattern`` and ``alpha_pattern`` are written by
:func:`rankscope.io.peft.lora_config_dict` and checked against every module under peft's matching rules
(:func:`rankscope.io.peft.check_lora_config`).

An AdaLoRA adapter (``peft_type`` ``ADALORA``) is read as its equivalent plain LoRA
(:mod:`rankscope.io.adapters`: ``B = P``, ``A = diag(λ)·Q``, ``s = α/(r₀ + 1e-5)``) and written as a plain LoRA
adapter: every module is re-factored as above (none is copied as stored), ``peft_type`` becomes ``LORA`` and
AdaLoRA's own fields (:data:`ADALORA_FIELDS`) are dropped; its modules that kept no triplet stay out.

Refused with one line: non-LoRA adapters, DoRA (``use_dora``: its update is not ``s·B·A``), ``lora_bias``
(a bias on ``lora_B``), adapters saved with a base-modifying init (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA) without
peft's conversion, and NaN / Inf factors (:func:`rankscope.io.adapters.read_adapter`).

Reported per module (``resize.csv``): ``rel_error = ‖ΔW − s'·B'·A'‖_F / ‖ΔW‖_F`` with ``B', A'`` as stored, from
the factors (:func:`rankscope.numerics.factored.difference_norm`: QR of the stacked factors and an
``(r + r') x (r + r')`` core), ``optimal_rel_error = √(Σ_{i>r'} σ_i² / Σσ²)`` (Eckart–Young from the exact ``σ``)
and their ``ratio`` (:func:`rankscope.numerics.truncation.error_ratio`).  This is kohya-ss ``resize_lora.py``'s
job (``--dynamic_method sv_fro / sv_ratio / sv_cumulative`` = ``kohya-fro`` / ``kohya-ratio`` /
``kohya-cumulative``) and peft's LoRA → LoRA conversion, with rankscope's budgeted allocation.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import RankscopeError
from .io.adapters import Adapter, LoraModule, read_adapter
from .io.peft import LORA_KEY, PEFT_PREFIX, check_lora_config, lora_config_dict, lora_scale, lora_tensor_keys
from .io.results import peak_rss_mb, read_json, read_table, result_folder, versions, write_json
from .numerics import metrics
from .numerics.allocation import Allocation, greedy_allocation, rank_levels, snap_up, uniform_rank_for_budget
from .numerics.factored import difference_norm
from .numerics.rank_rules import (
    AlphaPolicy,
    Rule,
    parse_alpha,
    parse_rule,
    parse_snap,
    rule_rank,
    validate_rank_options,
)
from .numerics.truncation import (
    STORAGE_DTYPES,
    Truncation,
    error_ratio,
    lora_factors,
    optimal_relative_error,
    stored_as,
)
from .pairing.align import assign_kinds
from .protocol import ResultView
from .summaries import ResultFiles

TABLE_COLUMNS = ("module", "layer", "kind", "rows", "cols", "embedding", "action", "r_before", "r_after",
                 "planned_rank", "rule_rank", "capped", "alpha_before", "alpha_after", "scale_before", "scale_after",
                 "params_before", "params_after", "delta_energy", "captured_energy", "rel_error",
                 "optimal_rel_error", "ratio")
"""The columns of ``resize.csv``, in order."""
TABLE_NUMBERS = ("rows", "cols", "r_before", "r_after", "planned_rank", "alpha_before", "alpha_after",
                 "scale_before", "scale_after", "params_before", "params_after", "delta_energy", "captured_energy",
                 "rel_error", "optimal_rel_error", "ratio")
"""Columns of ``resize.csv`` that hold a number in every row."""
BASE_MODIFYING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")
"""``init_lora_weights`` values whose unconverted adapters are relative to a modified base (peft's
``path_initial_model_for_weight_conversion`` turns them into plain LoRA, ``init_lora_weights: true``)."""


# --------------------------------------------------------------------------------------------------
# the result
# --------------------------------------------------------------------------------------------------


@dataclass
class ResizeResult(ResultView):
    """Result of :func:`resize`: the resized peft adapter in memory plus its report.

    Attributes:
        table: one row per LoRA module of the original (``resize.csv``, columns :data:`TABLE_COLUMNS`).
        tensors: ``adapter_model.safetensors`` content, key → torch tensor (new factors float32; copied tensors
            in their stored dtype).
        adapter_config: ``adapter_config.json`` content (a peft ``LoraConfig``).
        info: provenance, options, totals, warnings and timings (``run.json``).
    """

    table: pd.DataFrame
    tensors: dict[str, Any]
    adapter_config: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, out: str | os.PathLike, plots: bool = True, overwrite: bool = False) -> Path:
        """Write ``adapter_config.json``, ``adapter_model.safetensors``, ``resize.csv``, the model card ``README.md``,
        ``figures/error.png`` (unless ``plots`` is false) and ``run.json`` atomically."""
        from safetensors.torch import save_file

        from .model_card import resize_card

        t0 = time.perf_counter()
        with result_folder(out, self.info, overwrite) as tmp:
            write_json(tmp / "adapter_config.json", self.adapter_config)
            save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(tmp / "adapter_model.safetensors"),
                      metadata={"format": "pt"})
            self.table.to_csv(tmp / "resize.csv", index=False)
            if plots:
                self.info.setdefault("outputs", {})["figures"] = self.render_figures(tmp / "figures")
            (tmp / "README.md").write_text(resize_card(self.table, self.adapter_config, self.info))
            self.info.setdefault("seconds", {})["save"] = round(time.perf_counter() - t0, 3)
        return Path(out)

    def render_figures(self, folder: Path) -> list[str]:
        """``error.png`` (:mod:`rankscope.figures.adapters`): the error per module against the optimum."""
        from .figures.adapters import render_adapter_figures

        return render_adapter_figures(self, folder)

    @classmethod
    def load(cls, out: str | os.PathLike) -> ResizeResult:
        """Read a folder written by :meth:`save` (no recomputation); a missing or incomplete file is one
        :class:`RankscopeError` naming it."""
        from safetensors.torch import load_file

        from .io.checkpoints import open_checkpoint

        out = Path(out)
        info = read_json(out / "run.json")
        config = read_json(out / "adapter_config.json")
        table = read_table(out / "resize.csv", TABLE_COLUMNS, TABLE_NUMBERS)
        weights = out / "adapter_model.safetensors"
        if not weights.is_file():
            raise RankscopeError(f"{weights} not found: is this a rankscope resize folder?")
        with open_checkpoint(weights):  # validates the header before safetensors reads it
            pass
        return cls(table, load_file(str(weights)), config, info)

    def result_files(self) -> ResultFiles:
        """``resize.csv``, as the key figures read it."""
        return ResultFiles(tables={"resize.csv": self.table})

    def summary(self) -> pd.DataFrame:
        """Per module kind: ``n``, the median rank before, the ranks after (min, median, max) and the largest
        ``rel_error`` and ``ratio`` (error against the Eckart–Young optimum)."""
        return self.table.groupby("kind", sort=False).agg(
            n=("module", "count"), r_before=("r_before", "median"), r_min=("r_after", "min"),
            r_median=("r_after", "median"), r_max=("r_after", "max"), rel_error=("rel_error", "max"),
            ratio=("ratio", "max"))

    def summary_text(self) -> str:
        """One line per module kind (:meth:`summary`), then the totals."""
        t = self.table
        res, opts = self.info.get("results", {}), self.info.get("options", {})
        lines = [f"rule {opts.get('rule')} (gain {opts.get('gain')}), alpha {opts.get('alpha')}, {len(t)} LoRA modules"]
        lines.append(self.summary().to_string(float_format=lambda v: f"{v:.4g}"))
        budget = res.get("budget")
        lines.append(f"LoRA parameters {res.get('params_before', 0):,} -> {res.get('params_after', 0):,}"
                     + (f" (budget {budget:,})" if budget else "")
                     + f"; {100 * res.get('captured_energy', 0):.1f}% of ||ΔW||² kept "
                       f"({100 * res.get('mean_captured_energy', 0):.1f}% per module)")
        uni = res.get("uniform")
        if uni:
            lines.append(f"uniform r={uni['rank']} within the same budget: {uni['params']:,} parameters, "
                         f"{100 * uni['captured_energy']:.1f}% kept ({100 * uni['mean_captured_energy']:.1f}% per module)")
        lines.append(f"{res.get('resized', 0)} resized, {res.get('copied', 0)} copied unchanged, "
                     f"{res.get('dropped', 0)} dropped (rank 0), {res.get('capped', 0)} capped at the adapter's rank; "
                     f"worst error ratio to the Eckart–Young optimum {res.get('worst_ratio', 1.0):.6f}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------


def _check_adapter(ad: Adapter, raw_keys: list[str]) -> None:
    """Refuse what is not a plain ``s·B·A`` LoRA (module docstring), one line each."""
    cfg, where = ad.config, ad.path / "adapter_config.json"
    if ad.use_dora or any(m.magnitude is not None for m in ad.modules.values()):
        raise RankscopeError(f"{where}: a DoRA adapter (use_dora): its update is not s·B·A, resize supports plain "
                             f"LoRA only")
    if cfg.get("lora_bias") or any(re.search(r"\.lora_(?:embedding_)?B(?:\.[^.]+)?\.bias$", k) for k in raw_keys):
        raise RankscopeError(f"{where}: lora_bias (a bias on lora_B) is not supported: its update is not s·B·A")
    init = cfg.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(BASE_MODIFYING_INITS):
        raise RankscopeError(f"{where}: init_lora_weights '{init}' (saved without conversion, its update is relative "
                             f"to a modified base); save it with peft's path_initial_model_for_weight_conversion first")


def _raw_tensors(folder: Path) -> tuple[dict[str, Any], list[str]]:
    """Every tensor of the adapter file as stored (torch, dtype kept) and the names of non-tensor entries."""
    st, pt = folder / "adapter_model.safetensors", folder / "adapter_model.bin"
    if st.is_file():
        from safetensors.torch import load_file

        return dict(load_file(str(st))), []
    import torch

    from .io.checkpoints import load_torch_file

    state = load_torch_file(pt, "adapter weights")
    tensors = {str(k): v.detach().clone().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    return tensors, sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))


def _levels(module: str, rows: int, cols: int, min_rank: int, max_rank: int | None,
            snap: tuple[int, ...] | None) -> np.ndarray:
    dim = min(rows, cols)
    if min_rank > dim:
        raise RankscopeError(f"--min-rank {min_rank} exceeds min(m, n) = {dim} of module '{module}' ({rows}x{cols})")
    levels = rank_levels(dim, min_rank, max_rank, snap)
    if levels.size == 0:
        raise RankscopeError(f"--snap {','.join(map(str, snap or ()))}: no allowed rank for module '{module}' "
                             f"(min(m, n) = {dim}, --min-rank {min_rank}, --max-rank {max_rank or dim})")
    return levels


# --------------------------------------------------------------------------------------------------
# ranks and alphas
# --------------------------------------------------------------------------------------------------


@dataclass
class RankChoice:
    """The ranks a rule gives the modules of an adapter (:func:`plan_ranks`)."""

    planned: np.ndarray  # rank the rule gives after min/max/snap (or the allocation), before the cap at r
    rule_ranks: np.ndarray | None  # the per-module rule's own answer (None for global rules)
    budget: int | None
    allocation: Allocation | None


def plan_ranks(rule: Rule, spectra: list[np.ndarray], shapes: list[tuple[int, int]], names: list[str],
               min_rank: int, max_rank: int | None, snap: tuple[int, ...] | None, gain: str) -> RankChoice:
    """Ranks of every module under ``rule`` exactly as :func:`rankscope.ranks.recommend` gives them from spectra
    (``σ`` of length ``min(m, n)``); a module with ``σ = 0`` gets 0 and takes no part in a budget."""
    live = np.array([bool(np.any(s)) for s in spectra], dtype=bool)
    if not live.any():
        raise RankscopeError("every module's update s·B·A is exactly zero: nothing to resize")
    idx = np.flatnonzero(live)
    levels = {int(i): _levels(names[i], *shapes[i], min_rank, max_rank, snap) for i in idx}
    costs = np.array([m + n for m, n in shapes], dtype=np.int64)
    planned = np.zeros(len(spectra), dtype=np.int64)
    if not rule.is_global:
        rule_ranks = np.array([rule_rank(rule, s, m, n) for s, (m, n) in zip(spectra, shapes, strict=True)])
        planned[idx] = [snap_up(int(rule_ranks[i]), levels[int(i)]) for i in idx]
        return RankChoice(planned, rule_ranks, None, None)
    if rule.name == "avg-rank":
        for i in idx:
            if rule.value > min(shapes[i]):
                raise RankscopeError(f"--rule {rule}: rank {rule.value:g} exceeds min(m, n) = {min(shapes[i])} of "
                                     f"module '{names[i]}'")
        budget = int(math.floor(rule.value * int(costs[idx].sum()) + 1e-9))
    else:
        budget = int(rule.value)
    minimum = int(sum(int(levels[int(i)][0]) * int(costs[i]) for i in idx))
    if budget < minimum:
        raise RankscopeError(f"--rule {rule}: a budget of {budget:,} parameters is below the minimum {minimum:,} "
                             f"(the smallest allowed rank in each of the {len(idx)} modules with ΔW ≠ 0)")
    allocation = greedy_allocation([spectra[i] for i in idx], [shapes[i] for i in idx], budget, min_rank=min_rank,
                                   max_rank=max_rank, snap=snap, gain=gain)
    planned[idx] = allocation.ranks
    return RankChoice(planned, None, budget, allocation)


def new_alpha(module: LoraModule, rank: int, policy: AlphaPolicy | None, use_rslora: bool) -> float:
    """``α'`` of a module resized to ``rank`` (module docstring): ``policy``'s, else ``α`` with rsLoRA, else
    ``(α/r)·rank``; 0 for rank 0."""
    if rank == 0:
        return 0.0
    if policy is not None:
        return float(policy.alpha(rank))
    return float(module.alpha) if use_rslora else float(module.alpha) * rank / module.r


# --------------------------------------------------------------------------------------------------
# the analysis
# --------------------------------------------------------------------------------------------------


def _factor_key(module: str, which: str) -> str:
    """peft's current key of a LoRA factor (``lora_A.weight``; ``lora_embedding_A`` has no ``.weight``)."""
    return f"{PEFT_PREFIX}{module}.{which}" + ("" if "embedding" in which else ".weight")


def _stored_factors(raw: dict[str, Any]) -> dict[str, dict[str, tuple[str, Any]]]:
    """``module -> {which: (stored key, tensor)}`` for the LoRA factors of the raw file."""
    out: dict[str, dict[str, tuple[str, Any]]] = {}
    for key, value in raw.items():
        match = LORA_KEY.match(key.removeprefix(PEFT_PREFIX))
        if match:
            out.setdefault(match["module"], {})[match["which"]] = (key, value)
    return out


def _new_factors(lm: LoraModule, u: np.ndarray, s: np.ndarray, vt: np.ndarray, rank: int, scale: float,
                 stored: dict[str, tuple[str, Any]], dtype: str | None = None
                 ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The rank-``rank`` factors as peft stores them (float32 holding ``dtype``'s values, conv kernels reshaped as the
    original's) and ``(B', A')`` (float64 values of what is stored) for the error."""
    import torch

    from .extract import storage_rounded

    top = float(np.sum(s[:rank] ** 2))
    b, a = lora_factors(Truncation(u[:, :rank], s[:rank], vt[:rank], "factored", top), scale)
    b, a = storage_rounded(b, dtype, f"{lm.module}.lora_B"), storage_rounded(a, dtype, f"{lm.module}.lora_A")
    out = {}
    for key, value in lora_tensor_keys(lm.module, lm.embedding, b, a).items():
        which = "lora_A" if key.endswith("lora_A.weight") else "lora_B" if key.endswith("lora_B.weight") else None
        if which is not None:  # conv LoRA: lora_A (r, in, *kernel), lora_B (out, r, 1, ...)
            shape = tuple(stored[which][1].shape)
            value = value.reshape((rank, *shape[1:]) if which == "lora_A" else (shape[0], rank, *shape[2:]))
        out[key] = torch.from_numpy(np.ascontiguousarray(value))
    return out, b.astype(np.float64), a.astype(np.float64)


def _cast(tensors: dict[str, Any], dtype: str) -> dict[str, Any]:
    """Every floating tensor in ``dtype`` (torch tensors; values beyond fp16's range refused, naming the tensor)."""
    import torch

    target = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    out = {}
    for key, value in tensors.items():
        if value.is_floating_point():
            cast = value.to(target)
            if not torch.isfinite(cast).all() and torch.isfinite(value).all():
                raise RankscopeError(f"--dtype {dtype}: tensor '{key}' has values beyond the range of {dtype}; "
                                     f"use bf16 or fp32")
            value = cast
        out[key] = value
    return out


def _other_tensors(raw: dict[str, Any], dropped: set[str], warnings: list[str]) -> dict[str, Any]:
    """Every tensor that is not a LoRA factor, as stored, keyed as peft does (``base_model.model.`` prefix); the
    ``base_layer.bias`` of a dropped module under the plain layer's name ``<module>.bias``."""
    out, renamed = {}, []
    for key, value in raw.items():
        name = key.removeprefix(PEFT_PREFIX)
        if LORA_KEY.match(name):
            continue
        owner = name.removesuffix(".base_layer.bias") if name.endswith(".base_layer.bias") else None
        if owner in dropped:
            name = f"{owner}.bias"
            renamed.append(owner)
        out[PEFT_PREFIX + name] = value
    if renamed:
        warnings.append(f"the bias of {len(renamed)} dropped module(s) is kept as <module>.bias (no LoRA layer wraps "
                        f"it any more), e.g. {renamed[0]}")
    return out


def resize(
    adapter: str | os.PathLike,
    *,
    rule: str,
    min_rank: int = 1,
    max_rank: int | None = None,
    snap: str | Sequence[int] | None = None,
    alpha: str | float | None = None,
    gain: str = "absolute",
    dtype: str | None = None,
) -> ResizeResult:
    """Cut a peft LoRA adapter to per-module ranks under ``rule``, exactly from its factors (module docstring).

    Args:
        adapter: a peft LoRA adapter folder (or Hub id), as for :func:`rankscope.lora.lora_spectrum`.
        rule: ``energy:τ``, ``gd``, ``budget:N`` (``k``/``M``/``G`` suffixes), ``avg-rank:r``, ``kohya-fro:t``,
            ``kohya-ratio:t`` or ``kohya-cumulative:t`` (:func:`rankscope.ranks.recommend`).
        min_rank, max_rank, snap, gain: as for :func:`rankscope.ranks.recommend`; a rank above the module's
            adapter rank is capped at it (warning, ``capped``).
        alpha: ``None`` (keep ``α/r``, or ``α`` with rsLoRA), or recommend's policy ``"r"``, ``"2r"``, ``"<c>r"``,
            a number.
        dtype: ``fp32``, ``bf16`` or ``fp16``: every floating tensor of the written adapter in it (errors of the
            factors so rounded; a copied module's error is that of its cast); ``None``: new factors float32, every
            other tensor as stored.

    Returns:
        :class:`ResizeResult`; ``.save(OUT)`` writes the adapter, ``resize.csv`` and ``run.json``.
    """
    t_start = time.perf_counter()
    rule_ = parse_rule(rule)
    snap_ = parse_snap(snap)
    policy = parse_alpha(alpha) if alpha is not None else None
    validate_rank_options(min_rank, max_rank, gain)
    if dtype is not None and dtype not in STORAGE_DTYPES:
        raise RankscopeError(f"--dtype: '{dtype}' is not one of {', '.join(STORAGE_DTYPES)}")
    ad = read_adapter(adapter)  # refuses non-LoRA configs, NaN / Inf tensors, rank mismatches
    raw, not_tensors = _raw_tensors(ad.path)
    _check_adapter(ad, list(raw))
    use_rslora = bool(ad.config.get("use_rslora"))
    names = sorted(ad.modules)
    mods = [ad.modules[m] for m in names]
    svds = [lm.factored_svd() for lm in mods]
    spectra = []
    for lm, (_, s, _) in zip(mods, svds, strict=True):
        full = np.zeros(min(lm.shape))
        full[: min(s.size, full.size)] = s[: full.size]
        spectra.append(full)
    shapes = [lm.shape for lm in mods]
    t_svd = time.perf_counter()
    plan = plan_ranks(rule_, spectra, shapes, names, min_rank, max_rank, snap_, gain)
    r_before = np.array([lm.r for lm in mods], dtype=np.int64)
    r_after = np.minimum(plan.planned, r_before)
    warnings: list[str] = []
    stored = _stored_factors(raw)
    tensors: dict[str, Any] = {}
    rows = []
    kinds = assign_kinds(names)
    for i, (lm, (u, s, vt)) in enumerate(zip(mods, svds, strict=True)):
        rows_, cols = lm.shape
        k = int(r_after[i])
        a_new = new_alpha(lm, k, policy, use_rslora)
        s_new = lora_scale(a_new, k, use_rslora) if k else 0.0
        energy = float(np.sum(s**2))
        top = float(np.sum(s[:k] ** 2))
        if k == 0:
            action, rel = "dropped", (1.0 if energy > 0 else 0.0)
        elif k == lm.r and math.isclose(s_new, lm.scale, rel_tol=1e-12) and not ad.adalora:
            action, rel = "copied", 0.0
            a_new, s_new = float(lm.alpha), float(lm.scale)
            tensors.update({_factor_key(lm.module, which): value for which, (_, value) in stored[lm.module].items()})
            if dtype is not None:  # the copy is cast (_cast below): its error is that of the rounding
                b_cast, a_cast = stored_as(lm.B, dtype).astype(np.float64), stored_as(lm.A, dtype).astype(np.float64)
                if energy > 0 and not (np.array_equal(b_cast, lm.B) and np.array_equal(a_cast, lm.A)):
                    rel = difference_norm(lm.B, lm.A, lm.scale, b_cast, a_cast, lm.scale) / math.sqrt(energy)
        else:
            action = "resized"
            new, b, a = _new_factors(lm, u, s, vt, k, s_new, stored[lm.module], dtype)
            tensors.update(new)
            rel = difference_norm(lm.B, lm.A, lm.scale, b, a, s_new) / math.sqrt(energy) if energy > 0 else 0.0
        optimal = optimal_relative_error(top, energy)
        layer, kind = kinds[lm.module]
        rows.append({"module": lm.module, "layer": layer, "kind": kind, "rows": rows_, "cols": cols,
                     "embedding": lm.embedding, "action": action, "r_before": lm.r, "r_after": k,
                     "planned_rank": int(plan.planned[i]),
                     "rule_rank": None if plan.rule_ranks is None else int(plan.rule_ranks[i]),
                     "capped": bool(plan.planned[i] > lm.r), "alpha_before": float(lm.alpha), "alpha_after": a_new,
                     "scale_before": float(lm.scale), "scale_after": s_new, "params_before": lm.r * (rows_ + cols),
                     "params_after": k * (rows_ + cols), "delta_energy": energy,
                     "captured_energy": metrics.captured_energy(spectra[i], k), "rel_error": rel,
                     "optimal_rel_error": optimal, "ratio": error_ratio(rel, optimal)})
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    table["layer"] = table["layer"].astype("Int64")
    table["rule_rank"] = pd.array(table["rule_rank"], dtype="Int64")
    _notes(table, plan, rule_, warnings)
    dropped = set(table.loc[table["r_after"] == 0, "module"])
    tensors.update(_other_tensors(raw, dropped, warnings))
    if dtype is not None:
        tensors = _cast(tensors, dtype)
    if not_tensors:
        warnings.append(f"{len(not_tensors)} value(s) of adapter_model.bin that are not tensors not written, e.g. "
                        f"{not_tensors[0]}")
    config = _config(ad, table, raw)
    t_done = time.perf_counter()
    info = {
        "command": "resize",
        "signal": "adapter",
        "inputs": {"adapter": ad.describe()},
        "options": {"rule": str(rule_), "min_rank": min_rank, "max_rank": max_rank,
                    "snap": list(snap_) if snap_ else None,
                    "alpha": str(policy) if policy is not None else ("keep alpha (rsLoRA)" if use_rslora
                                                                     else "keep alpha/r"),
                    "gain": gain, "dtype": dtype},
        "results": _results(table, plan, spectra, min_rank, max_rank, snap_),
        "warnings": warnings,
        "seconds": {"svd": round(t_svd - t_start, 3), "analysis": round(t_done - t_start, 3)},
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "versions": versions(),
    }
    return ResizeResult(table, tensors, config, info)


def _notes(table: pd.DataFrame, plan: RankChoice, rule: Rule, warnings: list[str]) -> None:
    capped = table[table["capped"]]
    if len(capped):
        first = capped.iloc[0]
        warnings.append(f"{len(capped)} module(s) capped at the adapter's rank: --rule {rule} (with --min-rank/--snap) "
                        f"asks for more than the adapter holds, e.g. {first['module']} ({int(first['planned_rank'])} "
                        f"-> r = {int(first['r_before'])}, kept exactly)")
    if plan.rule_ranks is not None:
        short = table[(table["planned_rank"] < table["rule_rank"].fillna(0)) & (table["delta_energy"] > 0)]
        if len(short):
            warnings.append(f"{len(short)} module(s) capped below the rule's rank by --max-rank/--snap "
                            f"(e.g. {short.iloc[0]['module']})")
    zero = list(table.loc[table["delta_energy"] == 0, "module"])
    if zero:
        warnings.append(f"the update s·B·A is exactly zero in {len(zero)} module(s): dropped (rank 0, left out of "
                        f"target_modules): {', '.join(zero[:4])}" + (" …" if len(zero) > 4 else ""))
    cut = list(table.loc[(table["r_after"] == 0) & (table["delta_energy"] > 0), "module"])
    if cut:
        warnings.append(f"the rule gives rank 0 to {len(cut)} module(s) with a nonzero update: dropped from "
                        f"target_modules (their update is lost): {', '.join(cut[:4])}" + (" …" if len(cut) > 4 else ""))
    if plan.budget is not None and plan.budget >= int(table["params_before"].sum()):
        warnings.append(f"the budget {plan.budget:,} is not below the adapter's own {int(table['params_before'].sum()):,} "
                        f"LoRA parameters: nothing had to be cut")


def _config(ad: Adapter, table: pd.DataFrame, raw: dict[str, Any]) -> dict[str, Any]:
    """The original ``adapter_config.json`` with the new ``r`` / ``lora_alpha`` / ``target_modules`` / patterns,
    checked against every known module name under peft's rules."""
    kept = table[table["r_after"] > 0]
    if kept.empty:
        raise RankscopeError("the rule gives rank 0 to every module: nothing left to adapt (raise --min-rank)")
    part = lora_config_dict(list(kept["module"]), list(kept["r_after"]), list(kept["alpha_after"]),
                            task_type=ad.config.get("task_type"), modules_to_save=ad.config.get("modules_to_save"))
    config = dict(ad.config)
    if ad.adalora:  # written as plain LoRA
        config = {k: v for k, v in config.items() if k not in ADALORA_FIELDS}
        config["peft_type"] = "LORA"
    config.update(r=part["r"], lora_alpha=part["lora_alpha"], target_modules=sorted(part["target_modules"]),
                  rank_pattern=part["rank_pattern"], alpha_pattern=part["alpha_pattern"])
    intended = {m: (int(r), float(a)) for m, r, a in zip(kept["module"], kept["r_after"], kept["alpha_after"],
                                                          strict=True)}
    known = [*table["module"], *(n for k in raw if not LORA_KEY.match(n := k.removeprefix(PEFT_PREFIX)))]
    check_lora_config(config, intended, known)
    return config


ADALORA_FIELDS = ("target_r", "init_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight",
                  "total_step", "rank_pattern", "alpha_pattern")
"""The fields of an AdaLoRA config that a plain LoRA config has not (or means otherwise): dropped on resize."""


def _uniform(table: pd.DataFrame, spectra: list[np.ndarray], budget: int, min_rank: int, max_rank: int | None,
             snap: tuple[int, ...] | None) -> dict[str, Any] | None:
    """The uniform alternative within the same budget (as recommend reports it), capped at each adapter rank."""
    live = np.flatnonzero(table["delta_energy"].to_numpy() > 0)
    shapes = [(int(table["rows"].iloc[i]), int(table["cols"].iloc[i])) for i in live]
    try:
        u, ranks = uniform_rank_for_budget(shapes, budget, min_rank=min_rank, max_rank=max_rank, snap=snap)
    except ValueError:
        return None
    ranks = np.minimum(ranks, table["r_before"].to_numpy()[live])
    captured = np.array([metrics.captured_energy(spectra[i], int(r)) for i, r in zip(live, ranks, strict=True)])
    energy = table["delta_energy"].to_numpy()[live]
    return {"rank": int(u), "params": int(sum(int(r) * (m + n) for r, (m, n) in zip(ranks, shapes, strict=True))),
            "captured_energy": metrics.energy_weighted_mean(captured, energy),
            "mean_captured_energy": float(captured.mean()) if captured.size else 0.0}


def _results(table: pd.DataFrame, plan: RankChoice, spectra: list[np.ndarray], min_rank: int, max_rank: int | None,
             snap: tuple[int, ...] | None) -> dict[str, Any]:
    live = table[table["delta_energy"] > 0]
    res: dict[str, Any] = {
        "modules": len(table),
        "resized": int((table["action"] == "resized").sum()),
        "copied": int((table["action"] == "copied").sum()),
        "dropped": int((table["action"] == "dropped").sum()),
        "capped": int(table["capped"].sum()),
        "params_before": int(table["params_before"].sum()),
        "params_after": int(table["params_after"].sum()),
        "budget": plan.budget,
        "captured_energy": metrics.energy_weighted_mean(table["captured_energy"], table["delta_energy"]),
        "mean_captured_energy": float(live["captured_energy"].mean()) if len(live) else 0.0,
        "worst_rel_error": float(table["rel_error"].max()),
        "worst_ratio": float(table["ratio"].max()),
    }
    res["uniform"] = _uniform(table, spectra, plan.budget if plan.budget is not None else res["params_after"],
                              min_rank, max_rank, snap)
    if plan.allocation is not None:
        res.update(allocation_exact=bool(plan.allocation.exact), greedy_start=plan.allocation.start)
    return res

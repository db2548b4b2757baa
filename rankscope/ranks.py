"""Recommend a LoRA rank for every module from exact spectra: of a full fine-tune's ``ΔW``, a probe, or an adapter.

``recommend(source)`` reads a finished ``rankscope spectrum`` folder (or computes the spectra of a
``BASE FINETUNED`` pair on the fly; or a ``rankscope probe`` / ``rankscope lora`` folder), picks the target
modules, applies a rank rule, and returns a :class:`RankPlan`: a table (one row per target module) and a peft
``LoraConfig`` dictionary whose ``rank_pattern`` / ``alpha_pattern`` give each module exactly its recommended
rank under peft's matching rules.  Every plan states its **signal** (``run.json`` ``"signal"`` and the summary,
:func:`rankscope.plan_source.plan_signal`): ``full-FT ΔW`` (a spectrum result or a pair), ``probe gradient`` /
``probe update`` (a probe result, by its ``"signal"``), ``adapter`` (a ``lora`` result).  With ``init_from`` the
plan also carries a spectral-init adapter at its ranks (:mod:`rankscope.init_adapter`, written to ``OUT/init/``).

The scale ``s`` of every module is the same by default: ``--alpha 2r`` gives ``α = 2r`` per module (``α/r = 2``;
with ``use_rslora`` ``α = 2√r``, so ``α/√r = 2``), so a module given 4x the rank keeps the scale of the others.

Rules (``σ`` sorted descending, ``e_k = σ_k² / Σσ²``; a zero ``ΔW`` has rule rank 0 under every rule
except the kohya modes, which give it 1 as kohya does — the plan gives it rank 0 whatever the rule):

* ``energy:τ`` — smallest ``k`` with ``Σ_{i≤k} e_i ≥ τ`` (:func:`rankscope.numerics.metrics.energy_rank`);
* ``gd`` — Gavish & Donoho (2014) optimal hard threshold for unknown noise:
  ``#{σ_i > ω(β)·median(σ)}``, ``ω(β) ≈ 0.56β³ − 0.95β² + 1.82β + 1.43``, ``β = min/max`` dimension;
* ``budget:N`` / ``avg-rank:r`` — a global allocation of ``N`` trainable LoRA parameters (``avg-rank:r``:
  ``N = r·Σ(m_i + n_i)``, the cost of rank ``r`` everywhere) by :func:`rankscope.numerics.allocation.greedy_allocation`;
* ``kohya-fro:t``, ``kohya-ratio:t``, ``kohya-cumulative:t`` — kohya-ss sd-scripts
  ``networks/resize_lora.py`` dynamic methods ``sv_fro``, ``sv_ratio``, ``sv_cumulative``
  (:func:`rankscope.numerics.allocation.kohya_rank`); the rules are parsed by :mod:`rankscope.numerics.rank_rules`.

Every rank is then kept inside ``[min_rank, min(max_rank, min(m, n))]`` and, with ``snap``, moved
to an allowed value (threshold rules round *up* so the criterion still holds; the global rules
allocate directly over the allowed values).

A module whose ``ΔW`` is exactly zero (an untouched pooler) is never adapted: rank 0, left out of
``target_modules`` and of the budget rules' allocation (and of the uniform alternative), whatever
``min_rank`` and ``snap`` say, with a note.

peft task (:func:`rankscope.plan_source.plan_task`, :mod:`rankscope.pairing.model_layout`): ``task_type`` comes
from the ``architectures`` recorded for the inputs, the fine-tune's when it is a task model (a bare ``BertModel``
fine-tuned into ``BertForSequenceClassification`` gives ``SEQ_CLS``).  Modules that peft treats as heads under that
task type — ``classifier``/``score`` (``SEQ_CLS``, ``TOKEN_CLS``), ``qa_outputs`` (``QUESTION_ANS``),
``lm_head`` (``CAUSAL_LM``) — are never planned; the wrapped heads, and a head that only the fine-tune
has, go to ``modules_to_save`` (trained whole), so ``get_peft_model(AutoModelFor<task>.from_pretrained(BASE),
LoraConfig.from_pretrained(OUT))`` builds exactly the planned ranks.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .errors import RankscopeError
from .init_adapter import INIT_FOLDER, InitSource, check_init_source, spectral_init
from .io.peft import check_lora_config, head_owner, lora_config_dict
from .io.results import read_json, result_folder, versions, write_json
from .numerics import metrics
from .numerics.allocation import Allocation, greedy_allocation, rank_levels, snap_up, uniform_rank_for_budget
from .numerics.rank_rules import (
    ALL_LINEAR,
    AlphaPolicy,
    parse_alpha,
    parse_rule,
    parse_snap,
    parse_targets,
    rule_rank,
    validate_rank_options,
)
from .pairing.executors import executor_scope
from .pairing.experts import fused_expert_modules
from .pairing.model_layout import head_names, is_embedding_or_head
from .pairing.order import SWAP_WARNING
from .plan_source import check_spectra, heads_to_save, load_source, plan_signal, plan_task
from .protocol import ResultView
from .summaries import ResultFiles

if TYPE_CHECKING:
    from .spectrum import SpectrumResult


def select_targets(table: pd.DataFrame, targets: Sequence[str], exclude_embeddings: bool = True) -> np.ndarray:
    """Boolean mask of the target rows of a spectrum table.

    ``all-linear``: every 2-D module (embeddings and LM head excluded unless ``exclude_embeddings`` is
    false).  Otherwise each token selects the modules whose ``kind`` equals it (``query``,
    ``attention.output.dense``); a token that is no kind selects, as peft's ``target_modules`` list does,
    the modules named exactly so or ending with ``"." + token`` (``dense``, ``pooler.dense``).
    """
    modules = table["module"].astype(str)
    emb = modules.map(is_embedding_or_head).to_numpy(dtype=bool)
    keep = ~emb if exclude_embeddings else np.ones(len(table), dtype=bool)
    if tuple(targets) == (ALL_LINEAR,):
        if not keep.any():
            raise RankscopeError("--targets all-linear: no 2-D module other than embeddings / LM head")
        return keep
    kinds = table["kind"].astype(str).to_numpy()
    chosen = np.zeros(len(table), dtype=bool)
    for tok in targets:
        hit = kinds == tok
        if not hit.any():
            hit = ((modules == tok) | modules.str.endswith("." + tok)).to_numpy(dtype=bool)
        if not hit.any():
            known = list(dict.fromkeys(kinds))
            listed = ", ".join(known[:12]) + (" …" if len(known) > 12 else "")
            raise RankscopeError(f"--targets: '{tok}' matches no module (kinds: {listed})")
        if not (hit & keep).any():
            raise RankscopeError(f"--targets: '{tok}' matches only embeddings / LM head, which are excluded "
                                 f"(use --include-embeddings)")
        chosen |= hit & keep
    return chosen


# --------------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _energy_share(rows: pd.DataFrame, col: str) -> float:
    """The share of the rows' ``‖ΔW‖²`` that ``col`` (a per-module captured share) captures."""
    return metrics.energy_weighted_mean(rows[col], rows["delta_energy"])


def _mean_energy(table: pd.DataFrame, col: str) -> float:
    nonzero = table[table["delta_energy"] > 0]
    return float(nonzero[col].mean()) if len(nonzero) else 0.0


@dataclass
class RankPlan(ResultView):
    """Result of :func:`recommend`.

    Attributes:
        table: one row per target module: ``module, layer, kind, rows, cols, rank, alpha, params``
            (``rank·(rows + cols)``), ``captured_energy`` (``Σ_{k≤rank} σ_k² / ‖ΔW‖²``), ``rule_rank`` (the
            rule's own answer before ``min_rank``/``max_rank``/``snap``; empty for global rules),
            ``delta_energy`` (``‖ΔW‖_F²``), ``uniform_rank``, ``uniform_params``, ``uniform_captured_energy``
            (the uniform alternative with the same budget).
        config: the plan's ``LoraConfig`` keyword arguments (``lora_config.json``); :attr:`lora_config` builds the
            ``peft.LoraConfig`` itself.
        info: provenance, options, totals and timings, written as ``run.json``.
        spectrum: the spectra, when they were computed on the fly (saved under ``OUT/spectrum/``).

    Also :meth:`summary` (per kind), :meth:`figures`, :meth:`key_figures` and a Jupyter view (:mod:`rankscope.protocol`).
    """

    table: pd.DataFrame
    config: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    spectrum: Any = None
    init: Any = None
    """The spectral-init adapter (:class:`rankscope.init_adapter.InitAdapter`), when ``init_from`` was given."""
    budget_curve: pd.DataFrame | None = None  # budget_curve.csv: captured ‖ΔW‖² against LoRA parameters

    @property
    def lora_config(self) -> Any:
        """The plan as a ``peft.LoraConfig`` (``get_peft_model(model, plan.lora_config)`` adapts every module at
        its planned rank); built from :attr:`config`, peft imported on first use."""
        from peft import LoraConfig

        return LoraConfig(**self.config)

    def summary(self) -> pd.DataFrame:
        """One row per kind: ``n`` modules, ``rank_min``/``rank_median``/``rank_max``, LoRA ``params``, and the
        share of the kind's ``‖ΔW‖²`` the plan (``energy``) and the uniform alternative (``uniform``) capture at most."""
        t = self.table
        by_kind = t.groupby("kind", sort=False).agg(
            n=("module", "count"), rank_min=("rank", "min"), rank_median=("rank", "median"),
            rank_max=("rank", "max"), params=("params", "sum"))
        by_kind["energy"] = [_energy_share(g, "captured_energy") for _, g in t.groupby("kind", sort=False)]
        by_kind["uniform"] = [_energy_share(g, "uniform_captured_energy") for _, g in t.groupby("kind", sort=False)]
        return by_kind

    def summary_text(self) -> str:
        """Console summary: :meth:`summary` as text, then totals against the uniform alternative."""
        t = self.table
        res = self.info.get("results", {})
        opts = self.info.get("options", {})
        by_kind = self.summary()
        by_kind["energy"] = by_kind["energy"].map(_pct)
        by_kind["uniform"] = by_kind["uniform"].map(_pct)
        by_kind["params"] = by_kind["params"].map(lambda v: f"{int(v):,}")
        alpha = f"{opts.get('alpha')}" + (" with rsLoRA (scale alpha/sqrt(r))" if opts.get("use_rslora") else "")
        lines = [f"signal: {self.info.get('signal', 'full-FT ΔW')}",
                 f"rule {opts.get('rule')} (gain {opts.get('gain')}), alpha {alpha}, "
                 f"{len(t)} target modules ({opts.get('targets')})",
                 by_kind.to_string(float_format=lambda v: f"{v:g}")]
        budget = res.get("budget")
        lines.append(
            f"plan: {res['params']:,} LoRA parameters" + (f" (budget {budget:,})" if budget else "")
            + f", {_pct(res['captured_energy'])} of ||ΔW||² captured ({_pct(res['mean_captured_energy'])} per module)")
        uni = res["uniform"]
        lines.append(f"uniform r={uni['rank']} within the same budget: {uni['params']:,} parameters, "
                     f"{_pct(uni['captured_energy'])} captured ({_pct(uni['mean_captured_energy'])} per module)")
        if res.get("optimum_bound") is not None:
            status = "optimal" if res["exact"] else f"at least {100 * res['optimality']:.3f}% of the optimum"
            what = "of ||ΔW||²" if opts.get("gain") == "absolute" else "per module"
            lines.append(f"allocation: {status} (no allocation of this budget captures more than "
                         f"{_pct(res['optimum_bound'])} {what})")
        cfg = self.config
        lines.append(f"lora_config: r={cfg['r']}, lora_alpha={cfg['lora_alpha']}, "
                     f"{len(cfg['rank_pattern'])} rank_pattern and {len(cfg['alpha_pattern'])} alpha_pattern entries")
        lines.append(_peft_line(cfg, self.info.get("peft") or {}, str(self.info.get("signal", ""))))
        if self.init is not None:
            lines.append(self.init.summary())
        for w in self.info.get("warnings", []):
            lines.append(f"note: {w}")
        return "\n".join(lines)

    def save(self, out: str | os.PathLike, plots: bool = True, overwrite: bool = False) -> Path:
        """Write ``ranks.csv``, ``budget_curve.csv``, ``lora_config.json``, ``adapter_config.json`` (the same config,
        the file name ``LoraConfig.from_pretrained(OUT)`` reads), ``run.json``, ``figures/ranks.png`` and
        ``figures/budget_curve.png``, for spectra
        computed on the fly ``spectrum/`` (a spectrum result folder, reusable as SOURCE) and, with an init,
        ``init/`` (a peft adapter) — atomically."""
        with result_folder(out, self.info, overwrite) as tmp:
            self.table.to_csv(tmp / "ranks.csv", index=False)
            if self.budget_curve is not None:
                self.budget_curve.to_csv(tmp / "budget_curve.csv", index=False)
            write_json(tmp / "lora_config.json", self.config)
            write_json(tmp / "adapter_config.json", self.config)
            outputs = self.info.setdefault("outputs", {})
            if self.spectrum is not None:
                _save_spectrum(self.spectrum, tmp / "spectrum")
                outputs["spectrum"] = "spectrum/"
            if self.init is not None:
                self.init.write(tmp / INIT_FOLDER)
                outputs["init"] = f"{INIT_FOLDER}/"
            if plots:
                t0 = time.perf_counter()
                outputs["figures"] = self.render_figures(tmp / "figures")
                self.info.setdefault("seconds", {})["plots"] = round(time.perf_counter() - t0, 3)
        return Path(out)

    def render_figures(self, folder: Path) -> list[str]:
        """Draw the figures of :mod:`rankscope.figures.ranks` into ``folder``; returns the file names."""
        from .figures.ranks import render_plan_figures

        folder.mkdir(parents=True, exist_ok=True)
        return render_plan_figures(self, folder)

    def result_files(self) -> ResultFiles:
        """``ranks.csv``, as the key figures read it."""
        return ResultFiles(tables={"ranks.csv": self.table})

    @classmethod
    def load(cls, out: str | os.PathLike) -> RankPlan:
        """Read a folder written by :meth:`save` (no recomputation)."""
        from .io.results import read_table

        columns = ("module", "layer", "kind", "rows", "cols", "rank", "alpha", "params", "captured_energy",
                   "delta_energy", "uniform_rank", "uniform_params", "uniform_captured_energy")  # what plot/summary use
        out = Path(out)
        info = read_json(out / "run.json")
        table = read_table(out / "ranks.csv", columns, columns[3:])
        if "rule_rank" in table:
            try:
                table["rule_rank"] = table["rule_rank"].astype("Int64")
            except (TypeError, ValueError) as exc:
                raise RankscopeError(f"{out / 'ranks.csv'}: column 'rule_rank' must hold whole numbers") from exc
        p = out / "budget_curve.csv"  # absent in folders written before it
        curve = read_table(p, ("allocation", "rank", "params", "captured_energy"), ("params",)) if p.is_file() else None
        return cls(table, read_json(out / "lora_config.json"), info, budget_curve=curve)


def _peft_line(cfg: dict[str, Any], peft: dict[str, Any], signal: str = "") -> str:
    """The summary line on ``task_type`` and ``modules_to_save``."""
    task, saves = cfg.get("task_type"), cfg.get("modules_to_save") or []
    arch = peft.get("architecture")
    side = "fine-tune" if peft.get("from") == "finetuned" else "base"
    side = "probe" if signal.startswith("probe") else side
    where = f" (the {side}'s {arch})" if arch else ""
    line = f"peft: task_type {task}{where}" if task else "peft: task_type null (no architectures recorded for the inputs)"
    if saves:
        line += f"; modules_to_save {', '.join(saves)} (task heads, trained whole, not with LoRA)"
    if task == "FEATURE_EXTRACTION":
        line += "; for a task model set task_type (e.g. SEQ_CLS) so that peft trains its head"
    return line


def _save_spectrum(spec, folder: Path) -> None:
    """The spectra computed on the fly, as a spectrum result folder (reusable as SOURCE)."""
    from .io.results import MARKER, make_marker

    folder.mkdir()
    spec.write_data(folder)
    files = sorted([*(p.name for p in folder.iterdir()), "run.json"])
    write_json(folder / "run.json", {**spec.info, MARKER: make_marker("spectrum", files, folder)})


def _levels_or_error(row, min_rank: int, max_rank: int | None, snap: tuple[int, ...] | None) -> np.ndarray:
    dim = min(int(row.rows), int(row.cols))
    if min_rank > dim:
        raise RankscopeError(f"--min-rank {min_rank} exceeds min(m, n) = {dim} of module '{row.module}' "
                             f"({row.rows}x{row.cols})")
    levels = rank_levels(dim, min_rank, max_rank, snap)
    if levels.size == 0:
        raise RankscopeError(f"--snap {','.join(map(str, snap or ()))}: no allowed rank for module '{row.module}' "
                             f"(min(m, n) = {dim}, --min-rank {min_rank}, --max-rank {max_rank or dim})")
    return levels


def recommend(
    source: Any,
    finetuned: str | os.PathLike | None = None,
    *,
    rule: str = "energy:0.9",
    targets: str | Sequence[str] | None = None,
    min_rank: int = 1,
    max_rank: int | None = None,
    snap: str | Sequence[int] | None = None,
    alpha: str | float = "2r",
    gain: str = "absolute",
    use_rslora: bool = False,
    exclude_embeddings: bool = True,
    init_from: str | os.PathLike | None = None,
    init_scale: float | None = None,
    device: str = "cpu",
    workers: int | None = None,
    executor: str | None = None, ray_address: str | None = None,
    progress: bool = False,
) -> RankPlan:
    """Recommend a LoRA rank per module from the spectra of ``ΔW``: a :class:`RankPlan`.

    Args:
        source: a ``rankscope spectrum`` (or ``rankscope lora``) result folder, a :class:`SpectrumResult`,
            or the base checkpoint when ``finetuned`` is given (spectra computed on the fly).
        finetuned: the fine-tuned checkpoint, or ``None``.
        rule: ``energy:τ``, ``gd``, ``budget:N`` (``k``/``M``/``G`` suffixes allowed), ``avg-rank:r``,
            ``kohya-fro:t``, ``kohya-ratio:t`` or ``kohya-cumulative:t`` (module docstring).
        targets: ``"all-linear"`` (default) or module kinds / name suffixes, ``"query,value"``.
        min_rank, max_rank: bounds on every rank (``max_rank`` also capped at ``min(m, n)``); rank 0
            (allowed with ``min_rank=0``) leaves a module out of ``target_modules``.
        snap: allowed ranks, e.g. ``"8,16,32,64"``.
        alpha: ``"r"``, ``"2r"``, ``"<c>r"`` (``α = c·r``: the scale ``α/r = c`` in every module; with
            ``use_rslora`` ``α = c·√r``, scale ``α/√r = c``) or a number (the same ``α`` everywhere).
        gain: ``"absolute"`` or ``"relative"`` energy for the global rules (:func:`greedy_allocation`).
        use_rslora: rank-stabilised LoRA (``use_rslora`` in the config; scale ``α/√r``).
        exclude_embeddings: leave out input/output embeddings and the LM head.
        init_from: also build a spectral-init adapter at the planned ranks (``plan.init``, ``OUT/init/``): a
            ``rankscope probe`` folder, or ``"pair"`` for the ``source``/``finetuned`` pair (:mod:`rankscope.init_adapter`).
        init_scale: LoRA-One's ``γ`` for a gradient probe (default 128; an error for an update signal).
        device, workers, progress: passed to :func:`rankscope.spectrum.spectrum` when computing on the fly.
        executor, ray_address: where those spectra (and a ``"pair"`` init) run: ``"local"``, ``"ray"`` or the default.
    """
    with executor_scope(executor, ray_address):
        return _recommend(source, finetuned, rule, targets, min_rank, max_rank, snap, alpha, gain, use_rslora,
                          exclude_embeddings, init_from, init_scale, device, workers, progress)


def _recommend(source: Any, finetuned: str | os.PathLike | None, rule: str, targets: str | Sequence[str] | None,
               min_rank: int, max_rank: int | None, snap: str | Sequence[int] | None, alpha: str | float, gain: str,
               use_rslora: bool, exclude_embeddings: bool, init_from: str | os.PathLike | None,
               init_scale: float | None, device: str, workers: int | None, progress: bool) -> RankPlan:
    """:func:`recommend` under the executor in force."""
    t_start = time.perf_counter()
    rule_ = parse_rule(rule)
    snap_ = parse_snap(snap)
    alpha_ = parse_alpha(alpha)
    tokens = parse_targets(targets)
    validate_rank_options(min_rank, max_rank, gain)
    if init_scale is not None and init_from is None:
        raise RankscopeError("--init-scale only applies with --init-from")
    init_source = check_init_source(init_from, finetuned, init_scale) if init_from is not None else None
    spec, inputs, on_the_fly = load_source(source, finetuned, tokens, exclude_embeddings, device, workers, progress)
    signal = plan_signal(spec.info)
    t_loaded = time.perf_counter()
    table = spec.table
    warnings: list[str] = []
    task = plan_task(spec.info)
    warnings += task.notes
    if on_the_fly:  # the pair's order, as spectrum saw it
        warnings += [w for w in spec.info.get("warnings", []) if w.startswith(SWAP_WARNING)]
    heads = head_names(task.task)
    mask = select_targets(table, tokens, exclude_embeddings)
    fused = fused_expert_modules(spec.info)
    is_fused = table["module"].astype(str).isin(fused).to_numpy(dtype=bool)
    if (mask & is_fused).any():
        warnings.append(f"{int((mask & is_fused).sum())} experts of fused 3-D expert tensors are left out of the plan: "
                        f"peft adapts those through target_parameters, which this LoRA config does not write")
        mask &= ~is_fused
        if not mask.any():
            raise RankscopeError("--targets: selects only experts of fused 3-D expert tensors, which the LoRA config "
                                 "cannot target (peft target_parameters is not written)")
    is_head = table["module"].astype(str).map(lambda m: head_owner(m, heads) is not None).to_numpy(dtype=bool)
    dropped = list(table["module"][mask & is_head])
    mask &= ~is_head
    if not mask.any():
        raise RankscopeError(f"--targets {','.join(tokens)}: selects only the {task.task} task head(s) "
                             f"{', '.join(dropped)}, which peft trains whole (modules_to_save), not with LoRA")
    rows = table[mask].reset_index(drop=True)
    check_spectra(rows, spec.spectra)
    spectra = [spec.spectra[m] for m in rows["module"]]
    live = np.array([bool(np.any(s)) for s in spectra], dtype=bool)  # ΔW = 0 exactly: never adapted
    if not live.any():
        listed = ", ".join(rows["module"][:4]) + (" …" if len(rows) > 4 else "")
        raise RankscopeError(f"ΔW = 0 exactly in every target module ({listed}): the fine-tune did not change them, "
                             "nothing to adapt (choose other --targets)")
    idx = np.flatnonzero(live)
    levels = [_levels_or_error(r, min_rank, max_rank, snap_) if ok else np.zeros(1, dtype=np.int64)
              for r, ok in zip(rows.itertuples(), live, strict=True)]
    shapes = [(int(r), int(c)) for r, c in zip(rows["rows"], rows["cols"], strict=True)]
    costs = np.array([m + n for m, n in shapes], dtype=np.int64)
    live_shapes = [shapes[i] for i in idx]
    ranks = np.zeros(len(rows), dtype=np.int64)
    allocation, budget, rule_ranks = None, None, None
    if rule_.is_global:
        if rule_.name == "avg-rank":
            for (m, n), module in zip(live_shapes, rows["module"][idx], strict=True):
                if rule_.value > min(m, n):
                    raise RankscopeError(f"--rule {rule_}: rank {rule_.value:g} exceeds min(m, n) = "
                                         f"{min(m, n)} of module '{module}'")
            budget = int(math.floor(rule_.value * int(costs[idx].sum()) + 1e-9))
        else:
            budget = int(rule_.value)
        minimum = int(sum(int(levels[i][0]) * int(costs[i]) for i in idx))
        if budget < minimum:
            raise RankscopeError(f"--rule {rule_}: a budget of {budget:,} parameters is below the minimum {minimum:,} "
                                 f"(the smallest allowed rank in each of the {len(idx)} target modules with ΔW ≠ 0)")
        allocation = greedy_allocation([spectra[i] for i in idx], live_shapes, budget, min_rank=min_rank,
                                       max_rank=max_rank, snap=snap_, gain=gain)
        ranks[idx] = allocation.ranks
    else:
        rule_ranks = np.array([rule_rank(rule_, s, m, n) for s, (m, n) in zip(spectra, shapes, strict=True)])
        ranks[idx] = [snap_up(int(rule_ranks[i]), levels[i]) for i in idx]
        short = [rows["module"][i] for i in idx if ranks[i] < rule_ranks[i]]
        if short:
            warnings.append(f"{len(short)} module(s) capped below the rule's rank by --max-rank/--snap "
                            f"(e.g. {short[0]})")
    params = int(np.dot(costs, ranks))
    u, live_uniform = uniform_rank_for_budget(live_shapes, budget if budget is not None else params,
                                              min_rank=min_rank, max_rank=max_rank, snap=snap_)
    uniform = np.zeros(len(rows), dtype=np.int64)
    uniform[idx] = live_uniform
    zero = list(rows["module"][~live])
    if zero:
        warnings.append(f"ΔW = 0 exactly in {len(zero)} target module(s): not adapted (rank 0, left out of "
                        f"target_modules, whatever --min-rank/--snap): {', '.join(zero[:4])}"
                        + (" …" if len(zero) > 4 else ""))
    saves = heads_to_save(spec, task.task)
    if dropped:
        warnings.append(f"task head(s) {', '.join(dropped)} not planned: under task_type {task.task} peft "
                        + ("trains them whole (modules_to_save)" if set(dropped) <= set(saves) else
                           "leaves them out of all-linear") + ", not with LoRA")
    out = _plan_table(rows, spectra, ranks, rule_ranks, uniform, alpha_, use_rslora)
    intended = {m: (int(r), float(a)) for m, r, a in zip(out["module"], out["rank"], out["alpha"], strict=True)
                if r > 0}
    config = lora_config_dict(list(out["module"]), list(out["rank"]), list(out["alpha"]), task_type=task.task,
                              modules_to_save=saves)
    if use_rslora:
        config["use_rslora"] = True
    names = list(table["module"]) + (list(spec.vectors["module"]) if len(getattr(spec, "vectors", [])) else [])
    names += saves
    align_info = spec.info.get("alignment", {})
    prefixes = ["", *(p for p in (align_info.get("base_prefix"), align_info.get("finetuned_prefix")) if p)]
    check_lora_config(config, intended, names, prefixes)
    t_done = time.perf_counter()
    init = _init(init_source, out, config, source, finetuned, spec, device, workers, progress, warnings)
    results = _results(out, params, budget, u, allocation, gain)
    info = {
        "command": "recommend",
        "inputs": inputs,
        "signal": signal,
        "options": {"rule": str(rule_), "targets": ",".join(tokens), "min_rank": min_rank, "max_rank": max_rank,
                    "snap": list(snap_) if snap_ else None, "alpha": str(alpha_), "gain": gain, "use_rslora": use_rslora,
                    "exclude_embeddings": exclude_embeddings, "init_from": None if init_from is None else str(init_from),
                    "init_scale": init_scale, "device": device},
        "peft": {**task.describe(), "modules_to_save": saves},
        "skipped_tensors": list(spec.info.get("skipped_tensors", [])),
        "results": results,
        "warnings": warnings,
        "seconds": {"spectrum": round(t_loaded - t_start, 3), "allocation": round(t_done - t_loaded, 3),
                    "analysis": round(time.perf_counter() - t_start, 3)},
        "versions": versions(),
    }
    if init is not None:
        info["init"] = {k: v for k, v in init.info.items() if k != "warnings"}
        info["seconds"]["init"] = init.info["seconds"]
    from .numerics.allocation import budget_curve  # (the import line above is full)
    curve = pd.DataFrame(budget_curve([spectra[i] for i in idx], live_shapes).columns()).astype({"rank": "Int64"})
    return RankPlan(out, config, info, spec if on_the_fly else None, init, curve)


def _init(source: InitSource | None, table: pd.DataFrame, config: dict[str, Any], base: Any, finetuned: Any,
          spec: SpectrumResult, device: str, workers: int | None, progress: bool, warnings: list[str]) -> Any:
    """The spectral-init adapter of the plan (``None`` without ``init_from``); its notes join ``warnings``."""
    if source is None:
        return None
    init = spectral_init(source, table, config, base=base, finetuned=finetuned, spectra=spec.spectra, device=device,
                         workers=workers, progress=progress)
    warnings += init.info["warnings"]
    return init


def plan_alpha(alpha: AlphaPolicy, rank: int, use_rslora: bool = False) -> float:
    """``lora_alpha`` of a module at ``rank``: a proportional policy ``c·r`` keeps the scale ``α/r = c`` (with rsLoRA
    ``α = c·√r``, so ``α/√r = c``); a fixed number is the same ``α`` everywhere; 0 for rank 0."""
    if rank <= 0:
        return 0.0
    if alpha.proportional and use_rslora:
        return alpha.coef * math.sqrt(rank)
    return alpha.alpha(rank)


def _plan_table(rows: pd.DataFrame, spectra: list[np.ndarray], ranks: np.ndarray, rule_ranks: np.ndarray | None,
                uniform: np.ndarray, alpha: AlphaPolicy, use_rslora: bool = False) -> pd.DataFrame:
    out = rows[["module", "layer", "kind", *(["expert"] if "expert" in rows else []), "rows", "cols"]].copy()
    out["layer"] = out["layer"].astype("Int64")
    out["rank"] = ranks.astype(int)
    out["alpha"] = [plan_alpha(alpha, int(r), use_rslora) for r in ranks]
    out["params"] = out["rank"] * (out["rows"] + out["cols"])
    out["captured_energy"] = [metrics.captured_energy(s, int(r)) for s, r in zip(spectra, ranks, strict=True)]
    out["rule_rank"] = pd.array(rule_ranks if rule_ranks is not None else [None] * len(out), dtype="Int64")
    out["delta_energy"] = [float(np.sum(np.asarray(s, dtype=np.float64) ** 2)) for s in spectra]
    out["uniform_rank"] = uniform.astype(int)
    out["uniform_params"] = out["uniform_rank"] * (out["rows"] + out["cols"])
    out["uniform_captured_energy"] = [metrics.captured_energy(s, int(r)) for s, r in zip(spectra, uniform, strict=True)]
    return out


def _results(t: pd.DataFrame, params: int, budget: int | None, u: int, allocation: Allocation | None,
             gain: str) -> dict[str, Any]:
    res: dict[str, Any] = {
        "modules": len(t),
        "params": params,
        "budget": budget,
        "captured_energy": _energy_share(t, "captured_energy"),
        "mean_captured_energy": _mean_energy(t, "captured_energy"),
        "uniform": {"rank": u, "params": int(t["uniform_params"].sum()),
                    "captured_energy": _energy_share(t, "uniform_captured_energy"),
                    "mean_captured_energy": _mean_energy(t, "uniform_captured_energy")},
        "optimum_bound": None,
    }
    if allocation is not None:
        n_nonzero = max(1, int((t["delta_energy"] > 0).sum()))
        total = float(t["delta_energy"].sum())
        scale = (1.0 / total if total > 0 else 0.0) if gain == "absolute" else 1.0 / n_nonzero
        res.update(optimum_bound=allocation.bound * scale, exact=bool(allocation.exact),
                   optimality=allocation.value / allocation.bound if allocation.bound > 0 else 1.0,
                   greedy_start=allocation.start)
    return res

"""The answer of a result folder in numbers and sentences: ``summary.json`` of every command.

:func:`key_figures` reads a finished (or just written) result folder — its ``run.json`` and tables, nothing
recomputed beyond sums over the stored spectra — and returns the command's key figures as plain JSON
values, with ``answer``: the sentences that answer the command's question with those numbers.
:func:`key_figures_of` does the same for a result still in memory (its :class:`ResultFiles` hold the tables
that would be written, read back through CSV text exactly as from the folder, so both give the same figures).  Every
command writes them as ``summary.json`` (through :func:`rankscope.io.results.register_summary`), prints
them with ``--json``, and ``rankscope report`` puts the sentences on its first screen.

The figures per command (``None`` where the folder lacks the input):

* ``spectrum`` / ``probe`` — ``rank_90`` over changed modules (min, median, max; the rank holding 90 % of
  ``‖ΔW‖²``), the share of the update's energy a uniform rank-r LoRA could hold at most (Eckart–Young:
  ``Σ_modules Σ_{i≤r} σ_i² / Σ_modules Σ σ_i²``, r = 4, 8, 16, 32, 64), ``‖ΔW‖/‖W‖`` over all matrices.
* ``lora`` — ranks, LoRA parameters, effective rank of ``s·B·A`` against ``r`` (utilisation).
* ``compare`` — energy of ``ΔW_full`` inside the LoRA's subspaces against the optimum for its rank,
  ``φ`` at ``r``, intruder dimensions, cosine.
* ``compare-adapters`` — ``φ`` between the two adapters' subspaces.
* ``recommend`` — the plan's ranks and parameters, energy held by the plan and by uniform rank at that budget.
* ``extract`` / ``resize`` — relative error of the written adapter against the float64 optimum.
* ``train`` — the final metrics; ``intrinsic-dim`` — the d90 found.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import RankscopeError
from .io.results import read_json, register_summary

LORA_RANKS = (4, 8, 16, 32, 64)
"""The usual LoRA ranks at which captured energy is reported."""
SUMMARY_FILE = "summary.json"
TITLES: dict[str, str] = {
    "spectrum": "How low-rank is this fine-tune?",
    "probe": "How low-rank is the update this task asks for (probe)?",
    "lora": "How much of its rank does this LoRA use?",
    "compare": "Did the LoRA learn what full fine-tuning learnt?",
    "compare-adapters": "Do the two adapters learn the same subspaces?",
    "recommend": "Which LoRA rank per module?",
    "extract": "How well does the extracted LoRA reproduce the fine-tune?",
    "resize": "How well does the resized LoRA reproduce the original?",
    "train": "How did training go?",
    "intrinsic-dim": "How many dimensions does the task need?",
}
"""The question each command answers (the heading of its report page and of its notebook view)."""


def _num(value: Any, digits: int = 6) -> Any:
    """A JSON-safe number: ints stay ints, floats rounded to ``digits`` significant digits, NaN → None."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    v = float(value)
    if not math.isfinite(v):
        return None
    return float(f"{v:.{digits}g}")


def _pct(v: float | None, digits: int = 0) -> str:
    return "n/a" if v is None else f"{100 * v:.{digits}f} %"


def _int(v: Any) -> str:
    return f"{int(v):,}"


def _range(spread: dict[str, Any]) -> str:
    """``a–b`` of a min/max spread, or ``a`` when they are equal."""
    lo, hi = spread["min"], spread["max"]
    return "n/a" if lo is None else _int(lo) if lo == hi else f"{_int(lo)}–{_int(hi)}"


@dataclass
class ResultFiles:
    """What the key figures read from a result: its tables (by CSV name), spectra and JSON documents.

    From ``folder`` when given (the files on disk), else from memory: ``tables`` are read back through their CSV
    text, so an in-memory result and its saved folder give the same figures.
    """

    folder: Path | None = None
    tables: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    spectra: Mapping[str, np.ndarray] = field(default_factory=dict)
    documents: Mapping[str, Any] = field(default_factory=dict)

    def where(self, name: str) -> str:
        """The file ``name`` as an error message names it."""
        return str(self.folder / name) if self.folder is not None else f"<in-memory result>/{name}"

    def table(self, name: str) -> pd.DataFrame | None:
        """The table ``name`` (``modules.csv``) with ``module``/``kind`` as text, or None when there is none."""
        if self.folder is None:
            frame = self.tables.get(name)
            if frame is None or len(frame.columns) == 0:
                return None if frame is None else frame.copy()
            return pd.read_csv(io.StringIO(frame.to_csv(index=False)), dtype={"module": str, "kind": str})
        path = self.folder / name
        if not path.is_file():
            return None
        try:
            return pd.read_csv(path, dtype={"module": str, "kind": str})
        except (OSError, ValueError) as exc:
            raise RankscopeError(f"{path}: unreadable result table ({exc})") from exc

    def singular_values(self) -> dict[str, np.ndarray]:
        """``spectra.npz`` (float64), empty when there is none."""
        if self.folder is None:
            return {k: np.asarray(v, dtype=np.float64) for k, v in self.spectra.items()}
        path = self.folder / "spectra.npz"
        if not path.is_file():
            return {}
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k], dtype=np.float64) for k in data.files}

    def document(self, name: str) -> Any:
        """The JSON document ``name`` (``metrics.json``), ``{}`` when there is none."""
        if self.folder is None:
            return json.loads(json.dumps(self.documents.get(name, {}), default=str))  # as written, then read
        path = self.folder / name
        return json.loads(path.read_text()) if path.is_file() else {}


def _spread(values: pd.Series) -> dict[str, Any]:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return {"min": None, "median": None, "max": None}
    return {"min": _num(v.min()), "median": _num(v.median()), "max": _num(v.max())}


def uniform_energy(spectra: list[np.ndarray], ranks: tuple[int, ...] = LORA_RANKS) -> dict[str, Any]:
    """``{r: Σ_modules Σ_{i≤r} σ_i² / Σ_modules Σ σ_i²}``: the most of the update a uniform rank-r LoRA can hold."""
    total = sum(float(np.sum(s ** 2)) for s in spectra)
    if total == 0:
        return {str(r): None for r in ranks}
    return {str(r): _num(sum(float(np.sum(s[:r] ** 2)) for s in spectra) / total) for r in ranks}


def _spectrum_figures(files: ResultFiles, info: dict[str, Any]) -> dict[str, Any]:
    t = files.table("modules.csv")
    if t is None or t.empty:
        return {"modules": 0, "answer": ["The result holds no 2-D module."]}
    spectra = files.singular_values()
    changed = t[t["delta_norm"] > 0] if "delta_norm" in t else t
    r90 = _spread(changed["rank_90"]) if "rank_90" in changed else _spread(pd.Series(dtype=float))
    dims = np.minimum(changed["rows"], changed["cols"])
    energy = uniform_energy([spectra[m] for m in changed["module"] if m in spectra])
    base_sq = float((t["base_norm"] ** 2).sum()) if "base_norm" in t else 0.0
    rel = math.sqrt(float((t["delta_norm"] ** 2).sum()) / base_sq) if base_sq > 0 else None
    by_kind = (changed.groupby("kind", sort=False)["rel_delta"].median() if "rel_delta" in changed
               else pd.Series(dtype=float))
    top_kind = str(by_kind.idxmax()) if not by_kind.empty else None
    figures: dict[str, Any] = {
        "modules": int(len(t)), "changed_modules": int(len(changed)), "parameters": int(t["params"].sum()),
        "rank_90": r90, "min_dim_median": _num(dims.median()) if len(dims) else None,
        "uniform_lora_energy": energy, "rel_delta": _num(rel),
        "largest_change_kind": top_kind, "largest_change_rel_delta": _num(by_kind.max()) if top_kind else None,
        "experts": int(t["expert"].nunique()) if "expert" in t else None,
    }
    answer = []
    noun = ("the gradient" if info.get("signal") == "gradient" else "the probe's update") \
        if info.get("command") == "probe" else "the update"
    if r90["median"] is not None:
        answer.append(f"90 % of {noun}'s energy needs rank {_range(r90)} "
                      f"(median {r90['median']:g}) per module, of at most {figures['min_dim_median']:g} (median "
                      f"min(m, n)).")
    if energy.get("8") is not None:
        answer.append(f"A uniform rank-8 LoRA could hold at most {_pct(energy['8'])} of {noun}'s energy "
                      f"(rank 4: {_pct(energy['4'])}, 16: {_pct(energy['16'])}, 64: {_pct(energy['64'])}).")
    if rel is not None:
        kind = f"; the largest relative change is in `{top_kind}` (median {_pct(figures['largest_change_rel_delta'], 2)})" \
            if top_kind else ""
        answer.append(f"‖ΔW‖/‖W‖ = {_pct(rel, 2)} over all {len(t)} matrices{kind}.")
    unchanged = len(t) - len(changed)
    if unchanged:
        answer.append(f"{unchanged} module(s) did not change at all (ΔW = 0).")
    if info.get("command") == "probe":
        cost = (info.get("seconds") or {}).get("signal") or (info.get("seconds") or {}).get("analysis")
        answer.insert(0, f"From the probe's {info.get('signal', '?')} signal (no full fine-tune needed"
                         + (f"; it cost {cost:.0f} s" if isinstance(cost, (int, float)) else "") + "):")
    figures["answer"] = answer
    return figures


def _lora_figures(files: ResultFiles, info: dict[str, Any]) -> dict[str, Any]:
    t = files.table("modules.csv")
    if t is None or t.empty:
        return {"modules": 0, "answer": ["The adapter holds no LoRA module."]}
    lora = t[t["r"].notna()] if "r" in t else t
    ranks = sorted({int(r) for r in lora["r"].dropna()}) if "r" in lora else []
    util = _spread(lora["utilization_effective"]) if "utilization_effective" in lora else _spread(pd.Series())
    figures = {"modules": int(len(lora)), "ranks": ranks,
               "lora_parameters": int(lora["lora_params"].sum()) if "lora_params" in lora else None,
               "effective_rank": _spread(lora["effective_rank"]), "utilization_effective": util,
               "rank_90": _spread(lora["rank_90"]) if "rank_90" in lora else None}
    rank_text = f"r = {ranks[0]}" if len(ranks) == 1 else f"r = {ranks[0]}–{ranks[-1]}" if ranks else "its ranks"
    answer = [f"The adapter ({rank_text} in {len(lora)} modules"
              + (f", {_int(figures['lora_parameters'])} parameters" if figures["lora_parameters"] else "")
              + f") uses a median effective rank of {figures['effective_rank']['median']:.3g}"
              + (f", {_pct(util['median'])} of its rank" if util["median"] is not None else "") + "."]
    if figures["rank_90"] and figures["rank_90"]["median"] is not None:
        answer.append(f"90 % of the energy of s·B·A lies in its top {figures['rank_90']['median']:g} directions "
                      f"(median over modules).")
    figures["answer"] = answer
    return figures


def _energy_weighted(t: pd.DataFrame, col: str, weight: str) -> float | None:
    w = pd.to_numeric(t[weight], errors="coerce") if weight in t else None
    if w is None or col not in t or w.sum() <= 0:
        return None
    return float((pd.to_numeric(t[col], errors="coerce") * w).sum() / w.sum())


def _compare_figures(files: ResultFiles, info: dict[str, Any]) -> dict[str, Any]:
    t = files.table("compare.csv")
    if t is None or t.empty:
        return {"modules": 0, "answer": ["No module was compared."]}
    if "energy_both" not in t:  # compare-adapters
        figures = {"modules": int(len(t)), "phi_A_min_r": _spread(t.get("phi_A_min_r", pd.Series())),
                   "phi_B_min_r": _spread(t.get("phi_B_min_r", pd.Series())),
                   "cosine_BA": _spread(t.get("cosine_BA", pd.Series()))}
        a, b = figures["phi_A_min_r"]["median"], figures["phi_B_min_r"]["median"]
        answer = [f"Over {len(t)} common modules, the two adapters' row spaces overlap by φ = "
                  f"{a if a is None else f'{a:.2f}'} and their column spaces by φ = "
                  f"{b if b is None else f'{b:.2f}'} at the smaller rank (median; 1 = same subspace, random ≈ "
                  f"{_num(t['phi_random_A_min_r'].median(), 2) if 'phi_random_A_min_r' in t else 'r/n'})."]
        if figures["cosine_BA"]["median"] is not None:
            answer.append(f"Their updates have a median cosine of {figures['cosine_BA']['median']:.2f}.")
        figures["answer"] = answer
        return figures
    weight = t["full_norm"] ** 2 if "full_norm" in t else None
    t = t.assign(_w=weight) if weight is not None else t
    held = _energy_weighted(t, "energy_both", "_w")
    optimal = _energy_weighted(t, "energy_optimal", "_w")
    figures = {"modules": int(len(t)), "ranks": sorted({int(r) for r in t["r"].dropna()}) if "r" in t else [],
               "energy_held": _num(held), "energy_optimal": _num(optimal),
               "energy_vs_optimal": _num(held / optimal) if held is not None and optimal else None,
               "cosine": _spread(t["cosine"]) if "cosine" in t else None,
               "phi_left_r": _spread(t["phi_left_r"]) if "phi_left_r" in t else None,
               "intruders_full": int(t["intruders_full"].sum()) if "intruders_full" in t else None,
               "intruders_lora": int(t["intruders_lora"].sum()) if "intruders_lora" in t else None}
    answer = []
    if held is not None and optimal:
        answer.append(f"LoRA's subspaces hold {_pct(held)} of the full fine-tune's update, of the {_pct(optimal)} "
                      f"its rank could hold at best: {_pct(held / optimal)} of the optimum (energy-weighted over "
                      f"{len(t)} modules).")
    if figures["cosine"]:
        answer.append(f"The two updates have a median cosine of {figures['cosine']['median']:.2f}"
                      + (f" and median subspace similarity φ = {figures['phi_left_r']['median']:.2f} at rank r"
                         if figures["phi_left_r"] else "") + ".")
    if figures["intruders_lora"] is not None:
        answer.append(f"Intruder dimensions: {figures['intruders_lora']} in LoRA against "
                      f"{figures['intruders_full']} in full fine-tuning (summed over modules).")
    figures["answer"] = answer
    return figures


def _recommend_figures(files: ResultFiles, info: dict[str, Any]) -> dict[str, Any]:
    t = files.table("ranks.csv")
    if t is None or t.empty:
        return {"modules": 0, "answer": ["The plan holds no module."]}
    plan_e = _energy_weighted(t, "captured_energy", "delta_energy")
    uni_e = _energy_weighted(t, "uniform_captured_energy", "delta_energy")
    ranks = _spread(t["rank"])
    uniform = sorted({int(r) for r in t["uniform_rank"].dropna() if r > 0}) if "uniform_rank" in t else []
    figures = {"modules": int(len(t)), "rank": ranks, "parameters": int(t["params"].sum()),
               "uniform_rank": uniform[0] if len(uniform) == 1 else uniform,
               "uniform_parameters": int(t["uniform_params"].sum()) if "uniform_params" in t else None,
               "energy_plan": _num(plan_e), "energy_uniform": _num(uni_e),
               "rule": (info.get("options") or {}).get("rule"), "signal": info.get("signal")}
    answer = [f"The plan ({figures['rule'] or 'rule'}) gives ranks {_range(ranks)} "
              f"(median {ranks['median']:g}) to {len(t)} modules, {_int(figures['parameters'])} LoRA parameters."]
    if plan_e is not None and uni_e is not None:
        answer.append(f"It holds at most {_pct(plan_e)} of the update's energy, against {_pct(uni_e)} for uniform "
                      f"rank {figures['uniform_rank']} ({_int(figures['uniform_parameters'] or 0)} parameters).")
    answer.append("Energy held is an upper bound on what training can reach, not a measured accuracy.")
    figures["answer"] = answer
    return figures


def _error_figures(files: ResultFiles, info: dict[str, Any], table: str) -> dict[str, Any]:
    t = files.table(table)
    if t is None or t.empty:
        return {"modules": 0, "answer": ["No module was written."]}
    rank_col = next((c for c in ("rank", "r_after") if c in t), None)
    lora = t[t["role"] == "lora"] if "role" in t else t[t[rank_col] > 0] if rank_col else t
    weights = (lora["delta_energy"] if "delta_energy" in lora
               else lora["delta_norm"] ** 2 if "delta_norm" in lora else None)
    err = opt = None
    if weights is not None and weights.sum() > 0 and "rel_error" in lora:
        err = math.sqrt(float((weights * lora["rel_error"] ** 2).sum() / weights.sum()))
        if "optimal_rel_error" in lora:
            opt = math.sqrt(float((weights * lora["optimal_rel_error"] ** 2).sum() / weights.sum()))
    figures = {"modules": int(len(lora)), "rank": _spread(lora[rank_col]) if rank_col else None,
               "rel_error": _num(err), "optimal_rel_error": _num(opt),
               "ratio_to_optimum": _spread(lora["ratio"]) if "ratio" in lora else None}
    what = "resized adapter" if table == "resize.csv" else "extracted adapter"
    answer = [f"The {what} has {len(lora)} LoRA modules"
              + (f" of rank {_range(figures['rank'])}" if figures["rank"] else "") + "."]
    if err is not None:
        whose = "the original adapter's update" if table == "resize.csv" else "the fine-tuning update"
        answer.append(f"It reproduces {whose} with relative error {err:.3f} (energy held {_pct(1 - err ** 2)})"
                      + (f"; the best possible at these ranks is {opt:.3f}" if opt is not None else "") + ".")
    figures["answer"] = answer
    return figures


def _train_figures(files: ResultFiles, info: dict[str, Any]) -> dict[str, Any]:
    metrics = files.document("metrics.json")
    if not isinstance(metrics, dict):
        raise RankscopeError(f"{files.where('metrics.json')}: not a JSON object")
    final = {k: _num(v) for k, v in metrics.items()
             if k.startswith(("validation_", "test_")) and not k.endswith("_examples")
             and isinstance(v, (int, float)) and not isinstance(v, bool)}
    method = metrics.get("method") or (info.get("options") or {}).get("method")
    figures = {"method": method, "task": metrics.get("task"), "final": final,
               "trainable_params": metrics.get("trainable_params"), "steps": metrics.get("steps"),
               "best_step": metrics.get("best_step"), "seconds": _num(metrics.get("seconds"))}
    shown = {k: v for k, v in final.items() if k.startswith("test_")} or final
    parts = ", ".join(f"{k.replace('_', ' ')} {v:.4g}" for k, v in shown.items() if v is not None)
    trainable = figures["trainable_params"]
    answer = [f"{method or 'Training'} on {figures['task'] or 'the data'}"
              + (f" ({_int(trainable)} trainable parameters, {figures['steps']} steps)" if trainable else "")
              + f": {parts or 'no metric recorded'}."]
    if metrics.get("weights") == "best" and figures["best_step"] is not None:
        answer.append(f"The weights written are those of step {figures['best_step']}, the best on validation.")
    figures["answer"] = answer
    return figures


def _intrinsic_figures(files: ResultFiles, info: dict[str, Any]) -> dict[str, Any]:
    found = files.document("result.json")
    if not isinstance(found, dict):
        raise RankscopeError(f"{files.where('result.json')}: not a JSON object")
    total = found.get("D")
    modes = found.get("modes") if isinstance(found.get("modes"), dict) else {}
    figures: dict[str, Any] = {"task": found.get("task"), "D": total, "target": _num(found.get("target")),
                               "convention": found.get("convention"), "projection": found.get("projection"),
                               "d90": {m: v.get("d90") for m, v in modes.items() if isinstance(v, dict)}}
    answer = []
    for mode, d90 in figures["d90"].items():
        label = mode.upper()
        if isinstance(d90, (int, float)):
            share = f", {100 * d90 / total:.2g} % of D = {_int(total)}" if isinstance(total, (int, float)) and total \
                else ""
            answer.append(f"{label}: d90 = {_int(d90)}{share} (the smallest subspace reaching the target).")
        else:
            answer.append(f"{label}: no d90 in the searched range (the target was not reached).")
    figures["answer"] = answer or ["The study holds no finished search."]
    return figures


FIGURES: dict[str, Callable[[ResultFiles, dict[str, Any]], dict[str, Any]]] = {
    "spectrum": _spectrum_figures,
    "probe": _spectrum_figures,
    "lora": _lora_figures,
    "compare": _compare_figures,
    "compare-adapters": _compare_figures,
    "recommend": _recommend_figures,
    "extract": lambda f, i: _error_figures(f, i, "extract.csv"),
    "resize": lambda f, i: _error_figures(f, i, "resize.csv"),
    "train": _train_figures,
    "intrinsic-dim": _intrinsic_figures,
}
"""Key figures by command (``run.json``'s ``command``)."""


def key_figures(folder: str | Path, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The key figures and answer sentences of a result folder (``info``: its run.json, read when not given)."""
    folder = Path(folder)
    if info is None:
        info = read_json(folder / "run.json")
    return key_figures_of(ResultFiles(folder), info)


def key_figures_of(files: ResultFiles, info: dict[str, Any]) -> dict[str, Any]:
    """The key figures and answer sentences of a result's ``files`` (a folder's, or an in-memory result's)."""
    command = str(info.get("command"))
    make = FIGURES.get(command)
    if make is None:
        return {"command": command, "answer": []}
    return {"command": command, **make(files, info)}


def _summary_maker(folder: Path, info: dict[str, Any]) -> dict[str, Any] | None:
    return key_figures(folder, info) if str(info.get("command")) in FIGURES else None


register_summary(_summary_maker)

"""How low-rank is a full fine-tune? Exact singular-value spectra of every ``ΔW = W_ft - W_base``.

``spectrum(base, finetuned)`` streams both checkpoints tensor by tensor (blocks of rows, never a
whole model in memory, :mod:`rankscope.pairing.deltas`), forms ``ΔW`` in float64, computes all ``min(m, n)`` singular values with
the fastest exact method for the shape (:mod:`rankscope.numerics.linalg`), and summarises each module with
the metrics of :mod:`rankscope.numerics.metrics`.  Matrices are processed in parallel threads, each with a
single-threaded BLAS, which on 2 cores is ~1.6x faster than one multi-threaded BLAS call at a time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import RankscopeError
from .io.checkpoints import Checkpoint, open_checkpoint
from .io.results import peak_rss_mb, read_arrays, read_json, read_table, result_folder, versions
from .io.skipped import skipped_notes
from .numerics import linalg, metrics
from .options import compile_regexes
from .pairing.align import TensorPair, align
from .pairing.align import module_name as module_of_tensor
from .pairing.deltas import DeltaNorms, delta_blocks, delta_norms, select_pairs
from .pairing.executors import Executor, make_executor
from .pairing.order import checkpoint_swap_warning
from .protocol import ResultView
from .summaries import ResultFiles

DEFAULT_TAUS = (0.5, 0.9, 0.99)
TABLE_COLUMNS = ("module", "layer", "kind", "rows", "cols")
"""Columns every ``modules.csv`` (spectrum and lora results) must have."""
TABLE_NUMBERS = ("rows", "cols", "params", "base_norm", "delta_norm", "rel_delta", "effective_rank", "stable_rank",
                 "rank_90")
"""Columns of ``modules.csv`` that, where present, hold a number in every row."""
VECTOR_NUMBERS = ("numel", "base_norm", "delta_norm", "rel_delta")
LORA_SUMMARY_COLUMNS = ("r", "effective_rank", "stable_rank", "utilization_effective", "rank_90")
"""Columns of a LoRA result's :meth:`SpectrumResult.summary` (medians per kind; what ``rankscope lora`` prints)."""


@dataclass
class SpectrumResult(ResultView):
    """Result of :func:`spectrum`.

    Attributes:
        table: one row per 2-D module (columns documented in the README).
        spectra: ``module -> all singular values of ΔW``, descending, float64.
        vectors: one row per 1-D tensor (bias, norm): ``base_norm``, ``delta_norm``, ``rel_delta``.
        info: provenance and timings, written as ``run.json``.

    Also :meth:`summary` (per module kind), :meth:`figures`, :meth:`key_figures` and a Jupyter view
    (:mod:`rankscope.protocol`).
    """

    table: pd.DataFrame
    spectra: dict[str, np.ndarray]
    vectors: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, out: str | os.PathLike, plots: bool = True, overwrite: bool = False) -> Path:
        """Write ``modules.csv``, ``vectors.csv``, ``spectra.npz``, ``run.json`` (and figures) atomically."""
        with result_folder(out, self.info, overwrite) as tmp:
            self.write_data(tmp)
            if plots:
                t0 = time.perf_counter()
                self.info.setdefault("outputs", {})["figures"] = self.render_figures(tmp / "figures")
                self.info.setdefault("seconds", {})["plots"] = round(time.perf_counter() - t0, 3)
        return Path(out)

    def render_figures(self, folder: Path) -> list[str]:
        """Draw the figures of :mod:`rankscope.figures.spectrum` into ``folder``; returns the file names."""
        from .figures.spectrum import render_spectrum_figures

        return render_spectrum_figures(self, folder)

    def result_files(self) -> ResultFiles:
        """``modules.csv`` and ``spectra.npz``, as the key figures read them."""
        return ResultFiles(tables={"modules.csv": self.table}, spectra=self.spectra)

    def write_data(self, folder: Path) -> None:
        """The data files of a result: ``modules.csv``, ``vectors.csv``, ``spectra.npz`` and (not for LoRA
        results) ``lora_energy.csv``, the most of each module's update a rank-r LoRA could hold, r = 4 … 64."""
        from .figures.spectrum import lora_energy_table

        self.table.to_csv(folder / "modules.csv", index=False)
        self.vectors.to_csv(folder / "vectors.csv", index=False)
        np.savez(folder / "spectra.npz", **self.spectra)
        if self.info.get("command") != "lora":
            lora_energy_table(self).to_csv(folder / "lora_energy.csv", index=False)

    @classmethod
    def load(cls, out: str | os.PathLike) -> SpectrumResult:
        """Read a result folder written by :meth:`save` (no recomputation).

        A missing column, a value that is not a number, or a module without a 1-D numeric spectrum of
        ``min(rows, cols)`` values in ``spectra.npz`` is a :class:`RankscopeError` naming the file.
        """
        out = Path(out)
        info = read_json(out / "run.json")
        vectors = (read_table(out / "vectors.csv", ("module",), VECTOR_NUMBERS) if (out / "vectors.csv").is_file()
                   else pd.DataFrame())
        table = expert_column(read_table(out / "modules.csv", TABLE_COLUMNS, TABLE_NUMBERS))
        spectra = read_arrays(out / "spectra.npz", ndim=1)
        for row in table.itertuples():
            if row.module not in spectra:
                raise RankscopeError(f"{out / 'spectra.npz'}: no spectrum for module '{row.module}' of modules.csv")
            size, expected = spectra[row.module].size, min(int(row.rows), int(row.cols))
            if size != expected:
                raise RankscopeError(f"{out / 'spectra.npz'}: spectrum of '{row.module}' has {size} values, "
                                     f"expected min(rows, cols) = {expected}")
        return cls(table, spectra, vectors, info)

    def summary(self) -> pd.DataFrame:
        """One row per module kind: ``n`` modules, the first one's ``rows`` × ``cols``, and the medians of
        ``rel_delta`` (‖ΔW‖/‖W‖), ``effective_rank``, ``gd_rank``, ``rank_90`` and ``rank_90_pct`` (% of min(m, n)).

        A LoRA result (``lora_spectrum``): the medians of :data:`LORA_SUMMARY_COLUMNS` per kind."""
        t = self.table
        if t.empty:
            return pd.DataFrame()
        if self.info.get("command") == "lora":
            return t.groupby("kind", sort=False)[[c for c in LORA_SUMMARY_COLUMNS if c in t]].median()
        t = t.assign(min_dim=np.minimum(t["rows"], t["cols"]))
        t = t.assign(rank_90_pct=100 * t["rank_90"] / t["min_dim"]) if "rank_90" in t else t
        agg = {"module": "count", "rows": "first", "cols": "first", "rel_delta": "median", "effective_rank": "median",
               "gd_rank": "median"}
        if "rank_90" in t:
            agg.update(rank_90="median", rank_90_pct="median")
        return t.groupby("kind", sort=False).agg(agg).rename(columns={"module": "n"})

    def summary_text(self) -> str:
        """The console summary: :meth:`summary` as text, then the totals and the unchanged modules."""
        t = self.table
        if t.empty:
            return "no 2-D modules"
        if self.info.get("command") == "lora":
            return self.summary().to_string(float_format=lambda v: f"{v:.2f}")
        by_kind = self.summary()
        by_kind["rel_delta"] = by_kind["rel_delta"].map(lambda v: f"{100 * v:.2f}%")
        if "rank_90_pct" in by_kind:
            by_kind["rank_90_pct"] = by_kind["rank_90_pct"].map(lambda v: f"{v:.0f}%")
        lines = [by_kind.to_string(float_format=lambda v: f"{v:.1f}")]
        zero = t.loc[t["delta_norm"] == 0, "module"].tolist()
        total_delta = float(np.sqrt((t["delta_norm"] ** 2).sum()))
        total_base = float(np.sqrt((t["base_norm"] ** 2).sum()))
        lines.append(
            f"{len(t)} matrices, {int(t['params'].sum()):,} parameters; "
            f"||ΔW||/||W|| over all matrices = {100 * total_delta / max(total_base, 1e-300):.2f}%"
        )
        if zero:
            lines.append(f"unchanged (ΔW = 0): {', '.join(zero[:8])}{' …' if len(zero) > 8 else ''}")
        return "\n".join(lines)


def fused_experts(pairs: Sequence[TensorPair]) -> dict[str, dict[str, Any]]:
    """``{fused tensor: {"experts": E, "layout": "[E, in, out]" | "[E, out, in]"}}`` for ``run.json``."""
    out: dict[str, dict[str, Any]] = {}
    for p in pairs:
        if p.fused:
            entry = out.setdefault(module_of_tensor(p.base.name), {"experts": 0})
            entry["experts"] += 1
            entry["layout"] = "[E, in, out]" if p.transpose else "[E, out, in]"
    return out


def expert_column(table: pd.DataFrame) -> pd.DataFrame:
    """``expert`` as a nullable integer column, kept only when some module is an MoE expert."""
    if "expert" not in table:
        return table
    if table["expert"].isna().all():
        return table.drop(columns="expert")
    return table.assign(expert=table["expert"].astype("Int64"))


def analyse_matrix(
    pair: TensorPair, base: Checkpoint, ft: Checkpoint, taus: Sequence[float], method: str, device: str
) -> tuple[dict[str, Any], np.ndarray]:
    """One row of the table and the spectrum for one 2-D module."""
    norms = DeltaNorms()
    stored_rows = pair.stored_rows
    stored_cols = pair.rows if pair.transpose else pair.cols
    chosen = linalg.choose_method(pair.rows, pair.cols, device, method)
    t0 = time.perf_counter()
    sigma = linalg.spectrum_of_blocks(delta_blocks(pair, base, ft, norms), stored_rows, stored_cols, chosen, device)
    base_norm, delta_norm = np.sqrt(norms.base_sq), np.sqrt(norms.delta_sq)
    if delta_norm == 0:
        sigma = np.zeros_like(sigma)  # exact zero, not LAPACK round-off
    row: dict[str, Any] = {
        "module": pair.module,
        "layer": pair.layer,
        "kind": pair.kind,
        "expert": pair.expert,
        "rows": pair.rows,
        "cols": pair.cols,
        "params": pair.rows * pair.cols,
        "dtype": pair.base.dtype,
        "base_norm": base_norm,
        "delta_norm": delta_norm,
        "rel_delta": _ratio(delta_norm, base_norm),
    }
    row.update(metrics.summarize(sigma, pair.rows, pair.cols, tuple(taus)))
    row["method"] = chosen
    row["seconds"] = round(time.perf_counter() - t0, 4)
    return row, sigma


def analyse_vector(pair: TensorPair, base: Checkpoint, ft: Checkpoint) -> dict[str, Any]:
    """Delta norm of a 1-D parameter (bias, norm scale)."""
    norms = delta_norms(pair, base, ft)
    base_norm, delta_norm = np.sqrt(norms.base_sq), np.sqrt(norms.delta_sq)
    return {"module": pair.module, "layer": pair.layer, "numel": pair.base.numel, "base_norm": base_norm,
            "delta_norm": delta_norm, "rel_delta": _ratio(delta_norm, base_norm)}


def _ratio(num: float, den: float) -> float:
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return float(num / den)


def spectrum(
    base: str | os.PathLike,
    finetuned: str | os.PathLike,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    taus: Sequence[float] = DEFAULT_TAUS,
    device: str = "cpu",
    method: str = "auto",
    workers: int | None = None,
    progress: bool = False,
    executor: str | Executor | None = None,
    ray_address: str | None = None,
) -> SpectrumResult:
    """Exact singular-value spectra of every ``ΔW = W_finetuned - W_base``.

    Args:
        base, finetuned: local folder, ``.safetensors``/``.bin`` file, Hub id, or in memory: a ``torch.nn.Module``
            or a state dict (name → tensor), as :func:`rankscope.io.checkpoints.open_in_memory` reads it.
        include, exclude: regular expressions on module names (``re.search``).
        taus: energy thresholds for the ``rank_XX`` columns.
        device: ``cpu``, ``cuda`` (``cuda:N``) or ``auto``.
        method: ``auto`` (fastest exact per shape), ``gram``, ``svd`` or ``torch``.
        workers: parallel matrices (default: CPU count on CPU, one per GPU).
        progress: show a progress bar on stderr.
        executor, ray_address: ``local`` (threads; ``cuda`` uses every GPU visible) or ``ray`` (one task per
            matrix on the cluster at ``ray_address``), see :mod:`rankscope.pairing.executors`.

    Returns:
        :class:`SpectrumResult` with ``.table``, ``.spectra``, ``.vectors`` and ``.info``.
    """
    t_start = time.perf_counter()
    taus = tuple(sorted(float(t) for t in taus))
    for tau in taus:
        if not 0 < tau <= 1:
            raise RankscopeError(f"--tau: {tau} is not in (0, 1]")
    if method not in linalg.METHODS:
        raise RankscopeError(f"--method: unknown method '{method}' (choose from {', '.join(linalg.METHODS)})")
    runner = make_executor(executor, device, workers, ray_address)
    device = runner.device
    include, exclude = tuple(include), tuple(exclude)
    compile_regexes(include, "--include"), compile_regexes(exclude, "--exclude")  # bad patterns fail before any work
    with open_checkpoint(base) as b_ckpt, open_checkpoint(finetuned) as f_ckpt:
        alignment = align(b_ckpt, f_ckpt)
        swap = checkpoint_swap_warning(b_ckpt, f_ckpt)
        selected = select_pairs(alignment, include, exclude)
        matrices = [p for p in selected if p.is_matrix]
        vectors = [p for p in selected if not p.is_matrix]
        if not any(p.is_matrix for p in alignment.pairs):
            b_names, f_names = list(b_ckpt.tensors)[:1], list(f_ckpt.tensors)[:1]
            raise RankscopeError(
                f"{b_ckpt.given} and {f_ckpt.given} share no 2-D tensor (e.g. '{b_names[0] if b_names else '-'}' vs "
                f"'{f_names[0] if f_names else '-'}'): are they the same architecture?"
            )
        if not matrices:
            raise RankscopeError("--include/--exclude leave no 2-D tensor to analyse")
        t_open = time.perf_counter()
        results = runner.run(matrices + vectors, analyse_pair, (b_ckpt, f_ckpt), (taus, method), progress)
        t_done = time.perf_counter()
        inputs = {"base": b_ckpt.describe(), "finetuned": f_ckpt.describe()}
    rows = [results[p.module][0] for p in matrices]
    table = expert_column(pd.DataFrame(rows))
    table["layer"] = table["layer"].astype("Int64")
    spectra = {p.module: results[p.module][1] for p in matrices}
    vec_table = pd.DataFrame([results[p.module] for p in vectors],
                             columns=["module", "layer", "numel", "base_norm", "delta_norm", "rel_delta"])
    vec_table["layer"] = vec_table["layer"].astype("Int64")
    methods = {f"{r['rows']}x{r['cols']}": r["method"] for r in rows}
    info = {
        "command": "spectrum",
        "inputs": inputs,
        "options": {"include": list(include), "exclude": list(exclude), "taus": list(taus), "method": method,
                    "workers": runner.workers},
        "seed": None,
        "device": device,
        "executor": runner.describe(),
        "methods_by_shape": methods,
        "alignment": {
            "base_prefix": alignment.base_prefix,
            "finetuned_prefix": alignment.finetuned_prefix,
            "matrices": len(matrices),
            "vectors": len(vectors),
            "only_in_base": alignment.only_in_base,
            "only_in_finetuned": alignment.only_in_finetuned,
            "skipped": alignment.skipped,
            "transposed_conv1d": [p.module for p in matrices if p.transpose and p.expert is None],
            **({"fused_experts": fused_experts(matrices)} if any(p.fused for p in matrices) else {}),
            **({"tied": alignment.tied} if alignment.tied else {}),
        },
        "warnings": ([swap] if swap else []) + alignment.warnings,
        "skipped_tensors": alignment.skipped_tensors,
        "notes": skipped_notes(alignment.skipped_tensors),
        "seconds": {"open": round(t_open - t_start, 3), "compute": round(t_done - t_open, 3),
                    "analysis": round(t_done - t_start, 3)},
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "versions": versions(),
    }
    return SpectrumResult(table, spectra, vec_table, info)


def analyse_pair(pair: TensorPair, base: Checkpoint, ft: Checkpoint, device: str, taus: Sequence[float],
                 method: str) -> Any:
    """The job of one pair on ``device`` (an executor's work function): :func:`analyse_matrix` or :func:`analyse_vector`."""
    if pair.is_matrix:
        return analyse_matrix(pair, base, ft, taus, method, device)
    return analyse_vector(pair, base, ft)

"""Did LoRA learn the same update as full fine-tuning? Layer-by-layer comparison.

``compare(base, finetuned, adapter)`` takes, for every module adapted by the LoRA adapter and
changed by the full fine-tune, ``ΔW_full = W_ft − W_base`` and ``ΔW_lora = s·B·A`` (or the DoRA
update) and reports (formulas in :mod:`rankscope.numerics.similarity`):

* captured energy: the share of ``||ΔW_full||²`` inside LoRA's column space, row space and both,
  next to the Eckart–Young optimum for the same rank (top-``r`` energy of ``ΔW_full``);
* subspace similarity ``φ(i, j)`` (LoRA paper eq. 4) between the top singular subspaces of
  ``ΔW_full`` (``i ≤ phi_max``) and ``ΔW_lora`` (``j ≤ r``), left and right, with the random
  baseline ``max(i, j)/n``; principal angles between the two top-``r`` subspaces;
* Frobenius cosine of the two updates and their norm ratio;
* intruder dimensions (Shuttleworth et al. 2024) of ``W_base + ΔW_full`` and ``W_base + ΔW_lora``:
  top-``k`` left singular vectors whose best ``|cos|`` with every left singular vector of
  ``W_base`` is below ``ε``; counts over an ``ε`` grid too;
* amplification factor ``||ΔW||_F / ||Uᵀ W_base Vᵀ||_F`` (LoRA paper §7.3) for both updates at
  ``r`` and at smaller ranks.

``compare_adapters(adapter_1, adapter_2)`` compares two adapters (different ranks or seeds) as in
LoRA paper §7.2: ``φ(i, j)`` between the right singular vectors of ``A₁`` and ``A₂`` (row space)
and between the left singular vectors of ``B₁`` and ``B₂`` (column space).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import RankscopeError
from .io.adapters import read_adapter
from .io.checkpoints import Checkpoint, open_checkpoint, read_matrix
from .io.results import read_arrays, read_json, read_table, result_folder, versions
from .io.skipped import skipped_notes
from .numerics import similarity as sim
from .options import compile_regex, compile_regexes
from .pairing.align import TensorPair, align, assign_kinds, common_prefixes
from .pairing.bind import BoundModule, bind_to_base
from .pairing.executors import Executor, make_executor, node_name
from .pairing.order import checkpoint_swap_warning
from .protocol import ResultView
from .summaries import ResultFiles

DEFAULT_EPSILONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
COMPARE_COLUMNS = ("module", "layer", "kind", "rows", "cols", "r", "energy_both", "energy_col", "energy_optimal",
                   "intruders_full", "intruders_lora")
"""Columns of a ``compare`` result's ``compare.csv`` that its figures need."""
ADAPTER_COLUMNS = ("module", "layer", "kind", "rows", "cols", "r_1", "r_2")
"""Columns of a ``compare-adapters`` result's ``compare.csv``."""
AMPLIFICATION_RANKS = (1, 2, 4, 8, 16, 32, 64)
SUMMARY_COLUMNS = ("r", "energy_both", "energy_optimal", "phi_left_1", "phi_right_1", "cosine", "norm_ratio",
                   "intruders_full", "intruders_lora", "amp_full_r", "amp_lora_r")
"""Columns of a ``compare`` result's :meth:`CompareResult.summary` (medians per kind)."""
ADAPTER_SUMMARY_COLUMNS = ("r_1", "r_2", "phi_A_1", "phi_A_min_r", "phi_B_1", "phi_B_min_r", "phi_random_A")
"""Columns of a ``compare-adapters`` result's :meth:`CompareResult.summary`."""


@dataclass
class CompareResult(ResultView):
    """Result of :func:`compare` or :func:`compare_adapters`.

    Attributes:
        table: one row per module (``compare.csv``).
        phi: ``"<module>:left"`` / ``"<module>:right"`` → ``φ(i, j)`` grid (``phi.npz``).
        details: long tables (``amplification``, ``intruders``) written as ``<name>.csv``.
        info: provenance and timings (``run.json``).

    Also :meth:`summary` (medians per kind), :meth:`figures`, :meth:`key_figures` and a Jupyter view
    (:mod:`rankscope.protocol`).
    """

    table: pd.DataFrame
    phi: dict[str, np.ndarray]
    details: dict[str, pd.DataFrame] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, out: str | os.PathLike, plots: bool = True, overwrite: bool = False) -> Path:
        """Write ``compare.csv``, the detail CSVs, ``phi.npz``, ``run.json`` (and figures) atomically."""
        with result_folder(out, self.info, overwrite) as tmp:
            self.table.to_csv(tmp / "compare.csv", index=False)
            for name, frame in self.details.items():
                frame.to_csv(tmp / f"{name}.csv", index=False)
            np.savez(tmp / "phi.npz", **self.phi)
            if plots:
                self.info.setdefault("outputs", {})["figures"] = self.render_figures(tmp / "figures")
        return Path(out)

    def render_figures(self, folder: Path) -> list[str]:
        """Draw the figures of :mod:`rankscope.figures.compare` into ``folder``; returns the file names."""
        from .figures.compare import render_compare_figures

        return render_compare_figures(self, folder)

    def result_files(self) -> ResultFiles:
        """``compare.csv``, as the key figures read it."""
        return ResultFiles(tables={"compare.csv": self.table})

    def summary(self) -> pd.DataFrame:
        """Per module kind, the median of the main measurements (:data:`SUMMARY_COLUMNS`, or
        :data:`ADAPTER_SUMMARY_COLUMNS` for ``compare-adapters``)."""
        adapters = self.info.get("command") == "compare-adapters"
        cols = list(ADAPTER_SUMMARY_COLUMNS if adapters else SUMMARY_COLUMNS)
        return self.table.groupby("kind", sort=False)[cols].median()

    def summary_text(self) -> str:
        """The console summary: :meth:`summary` as text."""
        return self.summary().to_string(float_format=lambda v: f"{v:.3f}")

    @classmethod
    def load(cls, out: str | os.PathLike) -> CompareResult:
        """Read a result folder written by :meth:`save` (no recomputation)."""
        out = Path(out)
        info = read_json(out / "run.json")
        adapters = info.get("command") == "compare-adapters"
        columns = ADAPTER_COLUMNS if adapters else COMPARE_COLUMNS
        table = read_table(out / "compare.csv", columns, columns[3:])  # after module, layer, kind: numbers
        details = {p.stem: read_table(p) for p in out.glob("*.csv") if p.name != "compare.csv"}
        sides = ("A", "B") if adapters else ("left", "right")
        phi = read_arrays(out / "phi.npz", tuple(f"{m}:{side}" for m in table["module"] for side in sides), ndim=2)
        options = info.get("options")
        pattern = options.get("phi_modules") if isinstance(options, dict) else None
        if pattern is not None:
            compile_regex(pattern, f"{out / 'run.json'}: options.phi_modules")
        return cls(table, phi, details, info)


def _top_svd(matrix: np.ndarray, device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD in float64: LAPACK on the CPU, ``torch.linalg.svd`` on another device (a GPU)."""
    if device == "cpu":
        return np.linalg.svd(matrix, full_matrices=False)
    import torch

    u, s, vt = torch.linalg.svd(torch.from_numpy(np.ascontiguousarray(matrix)).to(device), full_matrices=False)
    return u.cpu().numpy(), s.cpu().numpy(), vt.cpu().numpy()


def compare_module(
    w: np.ndarray,
    delta_full: np.ndarray,
    bound: BoundModule,
    *,
    phi_max: int = 64,
    k: int = 10,
    epsilon: float = 0.5,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    device: str = "cpu",
) -> tuple[dict[str, Any], dict[str, np.ndarray], list[dict], list[dict]]:
    """All comparison measurements for one module (see module docstring); the dense SVDs run on ``device``."""
    lm = bound.lora
    r = lm.r
    delta_lora = lm.delta(w)
    u_f, s_f, vt_f = _top_svd(delta_full, device)
    if lm.magnitude is None:
        u_l, s_l, vt_l = lm.factored_svd()
    else:
        u_l, s_l, vt_l = _top_svd(delta_lora, device)
    r_eff = min(r, u_l.shape[1])
    u_l, s_l, vt_l = u_l[:, :r_eff], s_l[:r_eff], vt_l[:r_eff]
    i_max = min(phi_max, u_f.shape[1])
    phi_left = sim.phi_grid(u_f[:, :i_max], u_l)
    phi_right = sim.phi_grid(vt_f[:i_max].T, vt_l.T)
    rr = min(r_eff, i_max)
    angles_left = np.degrees(sim.principal_angles(u_f[:, :rr], u_l[:, :rr]))
    angles_right = np.degrees(sim.principal_angles(vt_f[:rr].T, vt_l[:rr].T))
    energy = s_f**2
    optimum = float(energy[:r_eff].sum() / energy.sum()) if energy.sum() else 0.0
    e_both = sim.captured_energy(delta_full, u_l, vt_l.T)

    u_base = _top_svd(w, device)[0]
    scores_full = sim.intruder_scores(_top_svd(w + delta_full, device)[0][:, :k], u_base)
    scores_lora = sim.intruder_scores(_top_svd(w + delta_lora, device)[0][:, :k], u_base)
    amp_rows = []
    for rank in sorted({q for q in AMPLIFICATION_RANKS if q < r_eff} | {r_eff}):
        amp_rows.append({"module": bound.module, "rank": rank,
                         "full": sim.amplification_factor(delta_full, w, rank, (u_f, s_f, vt_f)),
                         "lora": sim.amplification_factor(delta_lora, w, rank, (u_l, s_l, vt_l))})
    intruder_rows = [{"module": bound.module, "epsilon": eps, "full": sim.intruder_count(scores_full, eps),
                      "lora": sim.intruder_count(scores_lora, eps)} for eps in epsilons]
    n_out, n_in = delta_full.shape
    full_norm, lora_norm = float(np.linalg.norm(delta_full)), float(np.linalg.norm(delta_lora))
    row = {
        "module": bound.module, "rows": n_out, "cols": n_in, "r": r,
        "full_norm": full_norm, "lora_norm": lora_norm,
        "norm_ratio": lora_norm / full_norm if full_norm else 0.0,
        "cosine": sim.cosine_similarity(delta_full, delta_lora),
        "energy_optimal": optimum,
        "energy_col": sim.captured_energy(delta_full, u=u_l),
        "energy_row": sim.captured_energy(delta_full, v=vt_l.T),
        "energy_both": e_both,
        "energy_vs_optimal": e_both / optimum if optimum else 0.0,
        "phi_left_1": float(phi_left[0, 0]), "phi_left_r": float(phi_left[rr - 1, rr - 1]),
        "phi_right_1": float(phi_right[0, 0]), "phi_right_r": float(phi_right[rr - 1, rr - 1]),
        "phi_random_left_r": rr / n_out, "phi_random_right_r": rr / n_in,
        "angle_left_min_deg": float(angles_left.min()), "angle_left_max_deg": float(angles_left.max()),
        "angle_right_min_deg": float(angles_right.min()), "angle_right_max_deg": float(angles_right.max()),
        "intruders_full": sim.intruder_count(scores_full, epsilon),
        "intruders_lora": sim.intruder_count(scores_lora, epsilon),
        "amp_full_r": amp_rows[-1]["full"], "amp_lora_r": amp_rows[-1]["lora"],
        "amp_full_1": amp_rows[0]["full"], "amp_lora_1": amp_rows[0]["lora"],
    }
    return row, {f"{bound.module}:left": phi_left, f"{bound.module}:right": phi_right}, amp_rows, intruder_rows


def compare(
    base: str | os.PathLike,
    finetuned: str | os.PathLike,
    adapter: str | os.PathLike,
    *,
    include: Sequence[str] = (),
    phi_max: int = 64,
    k: int = 10,
    epsilon: float = 0.5,
    progress: bool = False,
    device: str = "cpu",
    workers: int | None = None,
    executor: str | Executor | None = None,
    ray_address: str | None = None,
) -> CompareResult:
    """Compare a LoRA adapter with a full fine-tune of the same base (see module docstring).

    ``device`` runs the dense float64 SVDs (``ΔW_full``, ``W_base``, ``W_base + ΔW``) with torch there;
    ``workers`` modules at a time (default 1: each holds several dense copies of its matrix); ``executor``
    and ``ray_address`` as for :func:`rankscope.spectrum` (a Ray task re-reads the adapter by path).
    """
    include_re = compile_regexes(include, "--include")
    if k < 1:
        raise RankscopeError(f"--k: must be at least 1, got {k}")
    if not 0 < epsilon < 1:
        raise RankscopeError(f"--epsilon: must be in (0, 1), got {epsilon}")
    runner = make_executor(executor, device, workers or 1, ray_address)
    t0 = time.perf_counter()
    ad = read_adapter(adapter)
    with open_checkpoint(base) as b_ckpt, open_checkpoint(finetuned) as f_ckpt:
        bound = bind_to_base(ad, b_ckpt)
        alignment = align(b_ckpt, f_ckpt)
        swap = checkpoint_swap_warning(b_ckpt, f_ckpt)
        pairs = {p.base.name: p for p in alignment.pairs if p.is_matrix and not p.fused}  # LoRA adapts 2-D weights
        selected = [b for b in bound if b.base_tensor in pairs and (not include_re or any(p.search(b.module)
                                                                                         for p in include_re))]
        if not selected:
            raise RankscopeError(f"no module of adapter {adapter} is also a 2-D tensor of both {b_ckpt.given} and {f_ckpt.given}")
        kinds = assign_kinds([b.module for b in selected])
        source = AdapterSource(str(Path(ad.path).resolve()), uuid.uuid4().hex, {b.base_tensor: b for b in selected})
        results = runner.run([pairs[b.base_tensor] for b in selected], compare_pair, (b_ckpt, f_ckpt),
                             (source, phi_max, k, epsilon), progress, desc="compare")
        rows, phi, amps, intruders = [], {}, [], []
        for b in selected:
            row, grids, amp, intr = results[pairs[b.base_tensor].module]
            layer, kind = kinds[b.module]
            rows.append({"module": row.pop("module"), "layer": layer, "kind": kind, **row})
            phi.update(grids)
            amps += amp
            intruders += intr
        inputs = {"base": b_ckpt.describe(), "finetuned": f_ckpt.describe(), "adapter": ad.describe()}
    table = pd.DataFrame(rows)
    table["layer"] = table["layer"].astype("Int64")
    skipped = alignment.skipped_tensors + ad.skipped_tensors
    info = {"command": "compare", "inputs": inputs, "seed": None, "device": runner.device,
            "executor": runner.describe(),
            "options": {"include": list(include), "phi_max": phi_max, "k": k, "epsilon": epsilon,
                        "epsilons": list(DEFAULT_EPSILONS)},
            "skipped_tensors": skipped, "notes": skipped_notes(skipped), "warnings": [swap] if swap else [],
            "seconds": {"analysis": round(time.perf_counter() - t0, 3)}, "versions": versions()}
    return CompareResult(table, phi, {"amplification": pd.DataFrame(amps), "intruders": pd.DataFrame(intruders)}, info)


_ADAPTERS: dict[str, Any] = {"key": None, "bound": None}
_ADAPTERS_LOCK = threading.Lock()


@dataclass
class AdapterSource:
    """The adapter of a :func:`compare` run as its jobs need it: the bound modules (by base tensor) in memory
    where it was read, re-read by ``path`` (once per worker process and run) where a pickled copy lands (Ray),
    so no factor travels through the executor."""

    path: str
    run: str
    bound: dict[str, BoundModule] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "bound": None}

    def modules(self, base: Checkpoint) -> dict[str, BoundModule]:
        """Base tensor name → bound module."""
        if self.bound is None:
            with _ADAPTERS_LOCK:
                if _ADAPTERS["key"] != (self.path, self.run):
                    if not Path(self.path).exists():
                        raise RankscopeError(f"{self.path}: not found on {node_name()}; every Ray node must see the "
                                             f"adapter at the same path (a shared filesystem)")
                    bound = bind_to_base(read_adapter(self.path), base)
                    _ADAPTERS.update(key=(self.path, self.run), bound={b.base_tensor: b for b in bound})
                self.bound = _ADAPTERS["bound"]
        return self.bound


def compare_pair(pair: TensorPair, base: Checkpoint, ft: Checkpoint, device: str, adapter: AdapterSource,
                 phi_max: int, k: int, epsilon: float) -> tuple[dict[str, Any], dict[str, np.ndarray], list, list]:
    """The job of one module on ``device`` (an executor's work function): read ``W``, ``ΔW_full``, then
    :func:`compare_module`."""
    w = read_matrix(base, pair.base.name, pair.stored_rows, pair.transpose)
    delta_full = read_matrix(ft, pair.finetuned.name, pair.stored_rows, pair.transpose) - w
    for stored, values in ((pair.base, w), (pair.finetuned, delta_full)):
        if not np.isfinite(values).all():
            raise RankscopeError(f"{stored.file}: tensor '{stored.name}' contains NaN or Inf")
    return compare_module(w, delta_full, adapter.modules(base)[pair.base.name], phi_max=phi_max, k=k,
                          epsilon=epsilon, device=device)


def _row_space(a: np.ndarray) -> np.ndarray:
    """Right singular vectors of ``A`` (``in x r``), ordered by singular value."""
    return np.linalg.svd(a, full_matrices=False)[2].T


def _column_space(b: np.ndarray) -> np.ndarray:
    """Left singular vectors of ``B`` (``out x r``), ordered by singular value."""
    return np.linalg.svd(b, full_matrices=False)[0]


def compare_adapters(adapter_1: str | os.PathLike, adapter_2: str | os.PathLike) -> CompareResult:
    """φ(i, j) between two adapters' ``A`` row spaces and ``B`` column spaces, per common module.

    Module names are aligned as :func:`rankscope.spectrum.spectrum` aligns checkpoints
    (:func:`rankscope.pairing.align.common_prefixes`): an adapter for ``BertForSequenceClassification``
    (``bert.encoder…``) and one for ``BertModel`` (``encoder…``) share their modules, reported without
    the prefix (``run.json`` ``alignment`` records both prefixes).
    """
    t0 = time.perf_counter()
    a1, a2 = read_adapter(adapter_1), read_adapter(adapter_2)
    p1, p2 = common_prefixes(list(a1.modules), list(a2.modules))
    core_1 = {m[len(p1):] if p1 and m.startswith(p1) else m: m for m in a1.modules}
    core_2 = {m[len(p2):] if p2 and m.startswith(p2) else m: m for m in a2.modules}
    common = sorted(set(core_1) & set(core_2))
    if not common:
        raise RankscopeError(f"adapters {adapter_1} and {adapter_2} share no LoRA module")
    kinds = assign_kinds(common)
    rows, phi = [], {}
    for m in common:
        l1, l2 = a1.modules[core_1[m]], a2.modules[core_2[m]]
        if l1.shape != l2.shape:
            raise RankscopeError(f"module '{m}' is {l1.shape} in {adapter_1} but {l2.shape} in {adapter_2}")
        phi_a = sim.phi_grid(_row_space(l1.A), _row_space(l2.A))
        phi_b = sim.phi_grid(_column_space(l1.B), _column_space(l2.B))
        phi[f"{m}:A"], phi[f"{m}:B"] = phi_a, phi_b
        rr = min(l1.r, l2.r)
        layer, kind = kinds[m]
        rows.append({"module": m, "layer": layer, "kind": kind, "rows": l1.shape[0], "cols": l1.shape[1],
                     "r_1": l1.r, "r_2": l2.r,
                     "phi_A_1": float(phi_a[0, 0]), "phi_A_min_r": float(phi_a[rr - 1, rr - 1]),
                     "phi_B_1": float(phi_b[0, 0]), "phi_B_min_r": float(phi_b[rr - 1, rr - 1]),
                     "phi_random_A": max(l1.r, l2.r) / l1.shape[1], "phi_random_B": max(l1.r, l2.r) / l1.shape[0],
                     "cosine_BA": sim.factored_cosine(l1.B, l1.A, l2.B, l2.A)})
    table = pd.DataFrame(rows)
    table["layer"] = table["layer"].astype("Int64")
    skipped = ([{**s, "checkpoint": "adapter_1"} for s in a1.skipped_tensors]
               + [{**s, "checkpoint": "adapter_2"} for s in a2.skipped_tensors])
    info = {"command": "compare-adapters", "inputs": {"adapter_1": a1.describe(), "adapter_2": a2.describe()},
            "skipped_tensors": skipped, "notes": skipped_notes(skipped),
            "seed": None, "seconds": {"analysis": round(time.perf_counter() - t0, 3)}, "versions": versions()}
    info["alignment"] = {"prefix_1": p1, "prefix_2": p2, "modules": len(common),
                         "only_in_1": sorted(set(core_1) - set(core_2)), "only_in_2": sorted(set(core_2) - set(core_1))}
    return CompareResult(table, phi, {}, info)

"""Spectra of a LoRA adapter, exactly from its factors (never an ``out x in`` product).

``lora_spectrum(adapter, base=None)`` gives the same table, spectra and figures as
:func:`rankscope.spectrum.spectrum` for ``ΔW = s·B·A`` of every adapted module, plus ``r``,
``alpha``, ``scale`` and the utilisation of the rank budget: ``effective_rank / r`` and
``stable_rank / r``.  Singular values come from the QR factors of ``B`` and ``Aᵀ`` and the SVD
of an ``r x r`` core (:meth:`LoraModule.factored_svd`); DoRA updates are dense and use the exact
Gram/LAPACK path of :mod:`rankscope.numerics.linalg`.  With ``base`` the modules are named and oriented as
the base checkpoint's tensors and ``base_norm`` / ``rel_delta`` are reported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .errors import RankscopeError
from .io.adapters import Adapter, read_adapter
from .io.checkpoints import Checkpoint, open_checkpoint, read_matrix
from .io.results import peak_rss_mb, versions
from .io.skipped import dtype_reason, skipped_entry, skipped_notes
from .numerics import linalg, metrics
from .pairing.align import assign_kinds, common_prefixes, module_name
from .pairing.bind import BoundModule, bind_to_base
from .spectrum import DEFAULT_TAUS, SpectrumResult


def module_spectrum(bm: BoundModule, base: Checkpoint | None) -> tuple[np.ndarray, float, float | None, str]:
    """(σ of ΔW, ‖ΔW‖_F, ‖W_base‖_F or None, method) for one module."""
    w = bm.base_weight(base) if base is not None else None
    if bm.lora.magnitude is not None:
        if w is None:
            raise RankscopeError(f"module '{bm.lora.module}' uses DoRA: its update needs the base model (--base)")
        delta = bm.lora.delta(w)
        sigma = linalg.spectrum_of_blocks([delta], *delta.shape, linalg.choose_method(*delta.shape))
        return sigma, float(np.linalg.norm(delta)), float(np.linalg.norm(w)), "dense-dora"
    sigma = bm.lora.singular_values()
    return sigma, float(np.sqrt(np.sum(sigma**2))), (float(np.linalg.norm(w)) if w is not None else None), "factored"


def modules_to_save_rows(ad: Adapter, base: Checkpoint | None, taus: Sequence[float]) -> list[tuple[dict, np.ndarray]]:
    """Dense ΔW rows for 2-D ``modules_to_save`` tensors that the base also has (e.g. a trained head)."""
    if base is None:
        return []
    names = list(ad.modules_to_save)
    base_prefix, saved_prefix = common_prefixes(list(base.tensors), names)
    out = []
    for name in names:
        value = ad.modules_to_save[name]
        tensor = base_prefix + (name[len(saved_prefix):] if name.startswith(saved_prefix) else name)
        info = base.tensors.get(tensor)
        if value.ndim != 2 or info is None or not info.is_float or tuple(info.shape) != value.shape:
            why = ("not a matrix (only 2-D modules_to_save tensors are diffed)" if value.ndim != 2
                   else "modules_to_save tensor not in the base" if info is None
                   else dtype_reason(info.dtype) if not info.is_float
                   else f"modules_to_save shape {value.shape} vs {tuple(info.shape)} in the base")
            ad.skipped_tensors.append(skipped_entry(name, "adapter", info.dtype if info else "", why))
            continue
        w = read_matrix(base, tensor)
        delta = value - w
        sigma = linalg.spectrum_of_blocks([delta], *delta.shape, linalg.choose_method(*delta.shape))
        row = {"module": module_name(tensor), "layer": None, "kind": module_name(tensor), "rows": delta.shape[0],
               "cols": delta.shape[1], "params": delta.size, "lora_params": delta.size,
               "base_norm": float(np.linalg.norm(w)), "delta_norm": float(np.linalg.norm(delta))}
        row["rel_delta"] = row["delta_norm"] / row["base_norm"] if row["base_norm"] else 0.0
        row.update(metrics.summarize(sigma, *delta.shape, tuple(taus)))
        row["method"] = "modules_to_save"
        out.append((row, sigma))
    return out


def lora_spectrum(
    adapter: str | os.PathLike,
    base: str | os.PathLike | None = None,
    *,
    taus: Sequence[float] = DEFAULT_TAUS,
    progress: bool = False,
) -> SpectrumResult:
    """Exact spectra of every LoRA update of ``adapter`` (see module docstring)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    taus = tuple(sorted(float(t) for t in taus))
    ad = read_adapter(adapter)
    base_ckpt = open_checkpoint(base) if base is not None else None
    try:
        bound = bind_to_base(ad, base_ckpt)
        kinds = assign_kinds([b.module for b in bound])
        rows, spectra = [], {}
        for bm in tqdm(bound, desc="lora spectra", unit="module", disable=None if progress else True, leave=False):
            sigma, delta_norm, base_norm, method = module_spectrum(bm, base_ckpt)
            out_dim, in_dim = bm.lora.shape
            layer, kind = kinds[bm.module]
            row = {"module": bm.module, "layer": layer, "kind": kind, "rows": out_dim, "cols": in_dim,
                   "params": out_dim * in_dim, "r": bm.lora.r, "alpha": bm.lora.alpha, "scale": bm.lora.scale,
                   "lora_params": bm.lora.r * (out_dim + in_dim)}
            if base_norm is not None:
                row.update(base_norm=base_norm, rel_delta=delta_norm / base_norm if base_norm else 0.0)
            row["delta_norm"] = delta_norm
            row.update(metrics.summarize(sigma, out_dim, in_dim, taus))
            row["utilization_effective"] = row["effective_rank"] / bm.lora.r
            row["utilization_stable"] = row["stable_rank"] / bm.lora.r
            row["method"] = method
            rows.append(row)
            spectra[bm.module] = sigma
        saved = modules_to_save_rows(ad, base_ckpt, taus)
        for row, sigma in saved:
            rows.append(row)
            spectra[row["module"]] = sigma
        inputs = {"adapter": ad.describe(), "base": base_ckpt.describe() if base_ckpt else None}
    finally:
        if base_ckpt is not None:
            base_ckpt.close()
    table = pd.DataFrame(rows)
    table["layer"] = table["layer"].astype("Int64")
    info = {
        "command": "lora",
        "inputs": inputs,
        "options": {"taus": list(taus)},
        "seed": None,
        "device": "cpu",
        "modules_to_save": sorted(ad.modules_to_save),
        "skipped_tensors": ad.skipped_tensors,
        "notes": skipped_notes(ad.skipped_tensors),
        "seconds": {"analysis": round(time.perf_counter() - t0, 3)},
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "versions": versions(),
        "warnings": [],
    }
    vectors = pd.DataFrame(columns=["module", "layer", "numel", "base_norm", "delta_norm", "rel_delta"])
    return SpectrumResult(table, spectra, vectors, info)

"""Pure functions of a singular-value spectrum.

Conventions: ``sigma`` is sorted descending, ``p_i = sigma_i / sum(sigma)`` and
``e_i = sigma_i**2 / sum(sigma**2)``.  A zero matrix (all ``sigma = 0``) has every rank equal to 0
and never produces NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def stable_rank(sigma: np.ndarray) -> float:
    """Stable rank ``||A||_F^2 / ||A||_2^2 = sum(sigma**2) / sigma_1**2`` (Rudelson & Vershynin 2007)."""
    if sigma.size == 0 or sigma[0] == 0:
        return 0.0
    return float(np.sum(sigma**2) / sigma[0] ** 2)


def effective_rank(sigma: np.ndarray) -> float:
    """Entropy effective rank ``exp(-sum p_i ln p_i)`` with ``p_i = sigma_i / sum(sigma)``.

    Roy & Vetterli (2007), "The effective rank: a measure of effective dimensionality".  Note the
    convention: ``p`` normalises singular values, not their squares (energies).
    """
    total = float(np.sum(sigma))
    if total == 0:
        return 0.0
    p = sigma[sigma > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def energy_fraction(sigma: np.ndarray) -> np.ndarray:
    """Cumulative captured energy ``c_k = sum_{i<=k} e_i`` for k = 1..n (zeros for a zero matrix)."""
    energy = sigma.astype(np.float64) ** 2
    total = energy.sum()
    if total == 0:
        return np.zeros_like(energy)
    return np.cumsum(energy) / total


def energy_rank(sigma: np.ndarray, tau: float) -> int:
    """Smallest ``k`` with ``sum_{i<=k} e_i >= tau`` (0 for a zero matrix)."""
    if not 0 < tau <= 1:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    cumulative = energy_fraction(sigma)
    if cumulative.size == 0 or cumulative[-1] == 0:
        return 0
    hit = np.flatnonzero(cumulative >= tau)
    # No hit only when tau = 1 meets round-off in the cumulative sum: all n values are needed.
    return int(hit[0]) + 1 if hit.size else int(cumulative.size)


def captured_energy(sigma: np.ndarray, r: int) -> float:
    """Energy of the best rank-``r`` approximation: ``sum_{i<=r} e_i`` (Eckart–Young)."""
    cumulative = energy_fraction(sigma)
    if r <= 0 or cumulative.size == 0:
        return 0.0
    return float(cumulative[min(r, cumulative.size) - 1])


def truncation_error(sigma: np.ndarray, r: int) -> float:
    """Relative Frobenius error of the best rank-``r`` approximation, ``sqrt(1 - captured_energy)``."""
    if sigma.size == 0 or sigma[0] == 0:
        return 0.0
    return float(np.sqrt(max(0.0, 1.0 - captured_energy(sigma, r))))


def gavish_donoho_omega(beta: float) -> float:
    """Approximate optimal hard-threshold coefficient for unknown noise, Gavish & Donoho (2014), eq. (5).

    ``omega(beta) ~ 0.56 beta^3 - 0.95 beta^2 + 1.82 beta + 1.43`` with ``beta = min(m, n) / max(m, n)``.
    """
    return 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43


def gavish_donoho_rank(sigma: np.ndarray, rows: int, cols: int) -> int:
    """Number of singular values above ``omega(beta) * median(sigma)`` (Gavish & Donoho 2014)."""
    if sigma.size == 0 or sigma[0] == 0:
        return 0
    beta = min(rows, cols) / max(rows, cols)
    threshold = gavish_donoho_omega(beta) * float(np.median(sigma))
    return int(np.count_nonzero(sigma > threshold))


def summarize(sigma: np.ndarray, rows: int, cols: int, taus: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[str, float]:
    """Every per-module spectral metric of the ``spectrum`` table, keyed by column name."""
    out: dict[str, float] = {
        "sigma_max": float(sigma[0]) if sigma.size else 0.0,
        "stable_rank": stable_rank(sigma),
        "effective_rank": effective_rank(sigma),
    }
    for tau in taus:
        out[tau_column(tau)] = energy_rank(sigma, tau)
    out["gd_rank"] = gavish_donoho_rank(sigma, rows, cols)
    return out


def tau_column(tau: float) -> str:
    """Column name for an energy threshold: 0.9 -> ``rank_90``, 0.995 -> ``rank_99.5``."""
    return f"rank_{round(tau * 100, 6):g}"


def energy_weighted_mean(values: Any, energy: Any) -> float:
    """``Σ_i values_i · energy_i / Σ_i energy_i``: the share of the total energy that per-module shares capture.

    ``values``: per-module captured shares (``captured_energy``); ``energy``: each module's ``‖ΔW‖_F²``.  Both are
    arrays or pandas Series of the same length, summed with their own ``.sum()`` (a Series skips NaN as pandas
    does); 0 when the total energy is 0 (every ``ΔW`` zero).
    """
    total = float(energy.sum())
    return float((values * energy).sum() / total) if total > 0 else 0.0

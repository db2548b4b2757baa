"""The best rank-``r`` approximation of a matrix ``ΔW``: top-``r`` singular triplets, LoRA factors and their error.

By Eckart–Young–Mirsky (1936) the rank-``r`` truncated SVD ``ΔW_r = U_r Σ_r V_rᵀ`` is the best rank-``r``
approximation in the Frobenius and spectral norms.  Everything here works on the "tall" orientation ``T``
of ``ΔW`` (``m x n`` with ``m >= n``), in float64, on numpy/LAPACK (:class:`NumpyOps`) or torch on any
device (:class:`TorchOps`).  Solvers:

``exact``
    ``min(m, n) <= 64``: LAPACK ``gesdd`` of ``ΔW``.  Otherwise the float64 Gram matrix
    ``G = TᵀT`` (n x n) and its top-``r`` eigenpairs (LAPACK ``syevr`` restricted to the top ``r``;
    one tridiagonalisation, no full eigendecomposition): ``V_r``, then ``W = T V_r``,
    ``σ_i = ‖W e_i‖`` and ``U_r = W Σ_r⁻¹``.  Because ``B·A = T V_r V_rᵀ`` is an orthogonal
    projection of ``ΔW``, the reconstruction is the optimum up to the subspace error of ``G``'s
    eigenvectors, whose effect on the error is second order (float64 Gram: ``√(n ε₆₄)·σ₁``).
``randomized``
    Randomized block Krylov iteration (Halko, Martinsson & Tropp 2011, §4 — Gaussian test matrix
    with oversampling ``p``, ``q`` power iterations re-orthonormalised by QR after every product —
    keeping every iterate, as in Rokhlin, Szlam & Tygert 2009 and Musco & Musco 2015):
    ``K = orth[TᵀΩ, (TᵀT)TᵀΩ, …, (TᵀT)^q TᵀΩ]`` with ``Ω`` an ``m x (r + p)`` Gaussian matrix seeded
    by ``(seed, module name)``; Rayleigh–Ritz on ``K`` (top-``r`` eigenvectors ``Z`` of
    ``(TK)ᵀ(TK)``) gives ``V_r = K Z``.  Keeping the whole Krylov block reaches a given accuracy in
    far fewer passes than plain subspace iteration when the spectrum has no gap at ``r``: on the
    benchmark pair (σ_i ∝ 1/i plus a noise floor, no gap at r = 64) ``q = 3`` gives an error within
    1.0004x of the optimum, plain subspace iteration needs ``q = 7`` for 1.001x.

``auto`` (:func:`choose_method`) uses ``exact`` whenever the Eckart–Young optimum is reported
(``optimum=True``): the optimum needs the exact spectrum, and the Gram + tridiagonalisation that gives it
yields the exact top-``r`` vectors for ~20 % more, less than any randomized pass would add (measured,
see :data:`COST_PER_MAC`).  With ``optimum=False`` it picks the cheaper of the two by the measured
cost model: randomized where ``r ≪ min(m, n)`` (square matrices: ``min(m, n) ≳ 6 (r + p)``), exact
otherwise.

LoRA factors (:func:`lora_factors`) split ``√Σ`` evenly, ``B = U_r Σ_r^{1/2} / √s``,
``A = Σ_r^{1/2} V_rᵀ / √s``, so that ``s·B·A = ΔW_r`` exactly.  Errors: ``rel_error = ‖ΔW − s·B·A‖_F / ‖ΔW‖_F``
(:func:`relative_error`), ``optimal_rel_error = √(Σ_{i>r} σ_i² / Σ σ_i²)`` from the exact spectrum
(:func:`optimal_relative_error`), and ``ratio = max(rel_error, 1e-6) / max(optimal_rel_error, 1e-6)``
(:func:`error_ratio`: errors below float32 storage resolution count as 1e-6, so a ``ΔW`` of rank ``<= r``
recovered exactly has ratio 1, never NaN).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg  # eager: its OpenBLAS must be loaded before thread limits are applied (see linalg.py)

from . import linalg

OVERSAMPLE = 10
"""Oversampling ``p`` of the randomized sketch (Halko et al. 2011 recommend 5–10)."""
POWER_ITERATIONS = 3
"""Block Krylov power iterations ``q``: ≤ 1.0004x the optimal error on the benchmark pair (q = 2: 1.002x)."""
STORAGE_FLOOR = 1e-6
"""Relative errors below this (float32 storage resolution) count as this much in ``ratio``."""
ERROR_BLOCK_ROWS = 4096
"""Rows of ``ΔW − s·L·R`` formed at a time by :func:`relative_error`."""

COST_PER_MAC = {"gram": 2.4e-11, "tridiagonal": 1.44e-10, "skinny": 4.9e-11, "krylov": 9.5e-11}
"""Seconds per multiply-add, measured on the development machine (2 vCPUs, AMD EPYC, float64 OpenBLAS)
with two workers running at once as ``extract`` does (the memory-bound tridiagonalisation suffers
more from the shared core than the matrix products): ``gram`` for ``TᵀT`` (per ``m n²``),
``tridiagonal`` for the top-``r`` ``syevr`` of an ``n x n`` Gram (per ``n³``), ``skinny`` for
``T @ X`` with ``X`` of ``r`` columns, ``krylov`` for the randomized products with ``r + p`` columns
including their QR re-orthonormalisations.  Only the ratios matter.  Measured at r = 64:
1024 x 1024 exact 180 ms, randomized 85 ms; 2816 x 1024 exact 225 ms, randomized 215 ms; for square
matrices the two cost the same at ``min(m, n) ≈ 6 (r + p)``."""


# --------------------------------------------------------------------------------------------------
# the operations, on numpy (CPU) or torch (any device)
# --------------------------------------------------------------------------------------------------


class NumpyOps:
    """float64 numpy / LAPACK operations used by the solvers."""

    def asarray(self, x: np.ndarray) -> np.ndarray:
        return x

    def numpy(self, x: np.ndarray) -> np.ndarray:
        return x

    def qr(self, x: np.ndarray) -> np.ndarray:
        return scipy.linalg.qr(x, mode="economic", overwrite_a=True, check_finite=False)[0]

    def eigh_top(self, g: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` eigenpairs of a symmetric matrix, descending (``syevr``, only those ``k`` computed)."""
        n = g.shape[0]
        w, v = scipy.linalg.eigh(g, subset_by_index=[n - k, n - 1], driver="evr", overwrite_a=True,
                                 check_finite=False)
        return w[::-1], v[:, ::-1]

    def eigvalsh(self, g: np.ndarray) -> np.ndarray:
        return scipy.linalg.eigvalsh(g, driver="ev", overwrite_a=True, check_finite=False)

    def gaussian(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        return rng.standard_normal(shape)

    def hstack(self, blocks: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(blocks, axis=1)


class TorchOps:
    """The same operations with torch (float64) on ``device``, e.g. ``cuda``; results come back as numpy."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch, self.device = torch, device

    def asarray(self, x: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def numpy(self, x: Any) -> np.ndarray:
        return x.cpu().numpy()

    def qr(self, x: Any) -> Any:
        return self.torch.linalg.qr(x).Q

    def eigh_top(self, g: Any, k: int) -> tuple[Any, Any]:
        w, v = self.torch.linalg.eigh(g)
        return w.flip(0)[:k], v.flip(1)[:, :k]

    def eigvalsh(self, g: Any) -> Any:
        return self.torch.linalg.eigvalsh(g)

    def gaussian(self, rng: np.random.Generator, shape: tuple[int, int]) -> Any:
        return self.asarray(rng.standard_normal(shape))  # same Ω on every device

    def hstack(self, blocks: list) -> Any:
        return self.torch.cat(blocks, dim=1)


Ops = NumpyOps | TorchOps


@dataclass
class Truncation:
    """``ΔW ≈ U diag(s) Vt`` (rank ``r``, float64) of a matrix, plus what the optimum needs.

    ``top_energy`` is ``Σ_{i<=r} σ_i²`` of the *exact* spectrum (``None`` if not computed);
    ``method`` names the solver (``exact-svd``, ``exact-gram``, ``randomized``).
    """

    U: np.ndarray
    s: np.ndarray
    Vt: np.ndarray
    method: str
    top_energy: float | None = None


def module_rng(seed: int, module: str) -> np.random.Generator:
    """A generator seeded by ``(seed, module name)`` only: results do not depend on thread order."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(module.encode())]))


# --------------------------------------------------------------------------------------------------
# the solvers
# --------------------------------------------------------------------------------------------------


def _finish(t: Any, v: Any, ops: Ops, w: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From an orthonormal (approximate) top-r right subspace ``V`` of ``T``: ``U, σ, Vᵀ`` with ``T V = U Σ``.

    ``W = T V`` (or the given ``w``, already equal to it); ``σ_i = ‖W e_i‖`` (float64 relative accuracy
    in every column, unlike ``√λ_i``); columns with ``σ_i = 0`` get ``u_i = 0`` (then ``T v_i = 0`` too,
    so ``U Σ Vᵀ = T V Vᵀ`` still holds).
    """
    w = ops.numpy(t @ v if w is None else w)
    v = ops.numpy(v)
    s = np.sqrt(np.einsum("ij,ij->j", w, w))
    order = np.argsort(-s, kind="stable")
    s, w, v = s[order], w[:, order], v[:, order]
    u = np.divide(w, s, out=np.zeros_like(w), where=s > 0)
    return u, s, np.ascontiguousarray(v.T)


def exact_truncation(delta: np.ndarray, r: int, ops: Ops | None = None, optimum: bool = True) -> Truncation:
    """Exact rank-``r`` truncated SVD of ``delta`` (see module docstring, ``exact``)."""
    ops = ops or NumpyOps()
    m, n = delta.shape
    if min(m, n) <= linalg.SMALL:
        u, s, vt = scipy.linalg.svd(delta, full_matrices=False, check_finite=False)
        return Truncation(u[:, :r], s[:r], vt[:r], "exact-svd", float(np.sum(s[:r] ** 2)))
    wide = m < n
    t = ops.asarray(delta.T if wide else delta)
    _, v = ops.eigh_top(t.T @ t, r)
    u, s, vt = _finish(t, v, ops)
    top = float(np.sum(s**2)) if optimum else None
    return Truncation(vt.T, s, u.T, "exact-gram", top) if wide else Truncation(u, s, vt, "exact-gram", top)


def krylov_basis(t: Any, rank: int, rng: np.random.Generator, power_iterations: int, oversample: int,
                 ops: Ops) -> Any:
    """Orthonormal basis ``K`` (n x (q+1)(r+p)) of the block Krylov space of ``TᵀT`` started at ``TᵀΩ``.

    Every product is followed by a QR re-orthonormalisation (Halko et al. 2011, Algorithm 4.4), so
    the powers never lose the small directions to round-off; all iterates are kept (block Krylov).
    """
    m, _ = t.shape
    y = ops.qr(t.T @ ops.gaussian(rng, (m, rank + oversample)))
    blocks = [y]
    for _ in range(power_iterations):
        y = ops.qr(t.T @ ops.qr(t @ y))
        blocks.append(y)
    return ops.qr(blocks[0] if len(blocks) == 1 else ops.hstack(blocks))


def randomized_truncation(delta: np.ndarray, r: int, rng: np.random.Generator,
                          power_iterations: int = POWER_ITERATIONS, oversample: int = OVERSAMPLE,
                          ops: Ops | None = None) -> Truncation:
    """Rank-``r`` truncated SVD by randomized block Krylov iteration (see module docstring)."""
    ops = ops or NumpyOps()
    wide = delta.shape[0] < delta.shape[1]
    if (power_iterations + 1) * (r + oversample) >= min(delta.shape):  # the Krylov space would span everything
        return exact_truncation(delta, r, ops, optimum=False)
    t = ops.asarray(delta.T if wide else delta)
    k = krylov_basis(t, r, rng, power_iterations, oversample, ops)
    c = t @ k  # m x (q+1)(r+p)
    _, z = ops.eigh_top(c.T @ c, r)  # Rayleigh–Ritz: top-r right singular vectors within span(K)
    u, s, vt = _finish(t, k @ z, ops, w=c @ z)  # T (K Z) = C Z
    return Truncation(vt.T, s, u.T, "randomized") if wide else Truncation(u, s, vt, "randomized")


def exact_top_energy(delta: np.ndarray, r: int, ops: Ops | None = None) -> float:
    """``Σ_{i<=r} σ_i²`` of the exact spectrum (float64 Gram eigenvalues, or LAPACK for small matrices)."""
    ops = ops or NumpyOps()
    m, n = delta.shape
    if min(m, n) <= linalg.SMALL:
        s = scipy.linalg.svdvals(delta, check_finite=False)
        return float(np.sum(s[:r] ** 2))
    t = ops.asarray(delta.T if m < n else delta)
    lam = np.clip(ops.numpy(ops.eigvalsh(t.T @ t)), 0.0, None)
    return float(np.sum(np.sort(lam)[::-1][:r]))


# --------------------------------------------------------------------------------------------------
# which solver
# --------------------------------------------------------------------------------------------------


def estimated_seconds(rows: int, cols: int, r: int, method: str, power_iterations: int = POWER_ITERATIONS,
                      oversample: int = OVERSAMPLE) -> float:
    """Cost model of one module on one core (:data:`COST_PER_MAC`), used by ``method='auto'``.

    exact: ``m n²`` (Gram) + ``n³`` (top-r ``syevr``) + ``m n r`` (``T V``);
    randomized: ``(3q + 2) m n (r + p)`` (products and QRs) + ``m k²`` (Ritz Gram, ``k = (q+1)(r+p)``).
    """
    m, n = max(rows, cols), min(rows, cols)
    c = COST_PER_MAC
    if method == "exact":
        return c["gram"] * m * n * n + c["tridiagonal"] * n**3 + c["skinny"] * m * n * r
    width = r + oversample
    k = (power_iterations + 1) * width
    return c["krylov"] * (3 * power_iterations + 2) * m * n * width + c["gram"] * (m * k * k + n * k * r)


def choose_method(rows: int, cols: int, r: int, method: str = "auto", optimum: bool = True,
                  power_iterations: int = POWER_ITERATIONS, oversample: int = OVERSAMPLE) -> str:
    """``exact`` or ``randomized`` for an ``rows x cols`` ΔW at rank ``r`` (see module docstring)."""
    if method != "auto":
        return method
    n = min(rows, cols)
    if optimum or n <= linalg.SMALL or (power_iterations + 1) * (r + oversample) >= n:
        return "exact"
    cheaper = estimated_seconds(rows, cols, r, "randomized", power_iterations, oversample) < estimated_seconds(
        rows, cols, r, "exact")
    return "randomized" if cheaper else "exact"


# --------------------------------------------------------------------------------------------------
# LoRA factors and their error
# --------------------------------------------------------------------------------------------------


def lora_factors(trunc: Truncation, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``B = U √Σ / √s`` (out x r) and ``A = √Σ Vᵀ / √s`` (r x in) in float32, so ``s·B·A = U Σ Vᵀ``."""
    root = np.sqrt(trunc.s / scale)
    b = (trunc.U * root).astype(np.float32)
    a = (root[:, None] * trunc.Vt).astype(np.float32)
    return b, a


def relative_error(delta: np.ndarray, left: np.ndarray, right: np.ndarray, scale: float, delta_sq: float) -> float:
    """``‖ΔW − s·L·R‖_F / ‖ΔW‖_F`` in float64, by row blocks (no second full-size matrix); 0 for ``ΔW = 0``."""
    if delta_sq == 0:
        return 0.0  # the factors of a zero ΔW are zero
    left, right = left.astype(np.float64), right.astype(np.float64)
    err = 0.0
    for start in range(0, delta.shape[0], ERROR_BLOCK_ROWS):
        stop = start + ERROR_BLOCK_ROWS
        e = left[start:stop] @ right
        e *= -scale
        e += delta[start:stop]
        err += float(np.vdot(e, e))
    return float(np.sqrt(err / delta_sq))


def optimal_relative_error(top_energy: float, delta_sq: float) -> float:
    """Eckart–Young: ``√(Σ_{i>r} σ_i² / Σ σ_i²) = √(1 − Σ_{i<=r} σ_i² / ‖ΔW‖_F²)`` (0 for ``ΔW = 0``)."""
    if delta_sq == 0:
        return 0.0
    return float(np.sqrt(max(delta_sq - top_energy, 0.0) / delta_sq))


def error_ratio(rel_error: float, optimal: float) -> float:
    """``max(rel_error, floor) / max(optimal, floor)`` with the float32 storage floor :data:`STORAGE_FLOOR`."""
    return max(rel_error, STORAGE_FLOOR) / max(optimal, STORAGE_FLOOR)


STORAGE_DTYPES = ("fp32", "bf16", "fp16")
"""The floating-point formats an adapter's tensors can be written in (``--dtype``)."""


def stored_as(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` rounded (to nearest, ties to even) to what ``dtype`` stores, returned as float32.

    ``fp32``: float32 itself; ``fp16``: IEEE half precision (finite values beyond ±65504 become ±Inf, which the
    caller refuses); ``bf16``: bfloat16 (8 exponent bits, 8 significand bits: float32's range, relative spacing
    2⁻⁸), rounded by torch as ``tensor.to(torch.bfloat16)`` does when an adapter is saved in bf16.
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
    as32 = np.asarray(values, dtype=np.float32)
    if dtype == "fp32":
        return as32
    if dtype == "fp16":
        with np.errstate(over="ignore"):
            return as32.astype(np.float16).astype(np.float32)
    import torch

    return torch.from_numpy(np.ascontiguousarray(as32)).to(torch.bfloat16).to(torch.float32).numpy()

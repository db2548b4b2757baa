"""Extract a LoRA adapter from a full fine-tune: the best rank-``r`` approximation of every ``ΔW``.

For every targeted module, ``ΔW = W_finetuned - W_base`` (``out x in``, float64) is replaced by its
rank-``r`` truncated SVD ``ΔW_r = U_r Σ_r V_rᵀ`` — by Eckart–Young–Mirsky (1936) the best rank-``r``
approximation in the Frobenius and spectral norms — and written as a peft LoRA adapter::

    B = U_r Σ_r^{1/2} / √s,     A = Σ_r^{1/2} V_rᵀ / √s,     s = α / r   (α / √r with rsLoRA),

so that peft's merge ``W_base + s·B·A`` equals ``W_base + ΔW_r`` exactly: nothing is clamped, and
``√Σ`` is split evenly between the factors (as in LoRD and mergekit's ``extract_lora``).  ``r`` and
``α`` come from ``--rank``/``--alpha`` or, per module, from a peft ``lora_config.json`` with peft's
``rank_pattern``/``alpha_pattern`` rule (:func:`rankscope.io.adapters.pattern_value`).

How the top-``r`` singular subspace is computed (``method=``, per module, on the "tall" orientation
``T`` of ``ΔW``: ``m x n`` with ``m >= n``):

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

``auto`` (default) uses ``exact`` whenever the Eckart–Young optimum is reported (``optimum=True``,
the default): the optimum needs the exact spectrum, and the Gram + tridiagonalisation that gives it
yields the exact top-``r`` vectors for ~20 % more, less than any randomized pass would add (measured,
see :data:`COST_PER_MAC`).  With ``optimum=False`` it picks the cheaper of the two by the measured
cost model: randomized where ``r ≪ min(m, n)`` (square matrices: ``min(m, n) ≳ 6 (r + p)``), exact
otherwise.

Reported per module (``extract.csv``): ``rel_error = ‖ΔW − s·B·A‖_F / ‖ΔW‖_F`` with ``B, A`` as stored
(float32), ``optimal_rel_error = √(Σ_{i>r} σ_i² / Σ σ_i²)`` from the exact spectrum (Eckart–Young),
and ``ratio = max(rel_error, 1e-6) / max(optimal_rel_error, 1e-6)`` (errors below float32 storage
resolution count as 1e-6, so a ``ΔW`` of rank ``<= r`` recovered exactly has ratio 1, never NaN).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.linalg  # eager: its OpenBLAS must be loaded before thread limits are applied (see linalg.py)

from .errors import RankscopeError
from .io.adapters import compile_pattern_key, lora_scale, pattern_value
from .io.checkpoints import Checkpoint, open_checkpoint
from .io.results import peak_rss_mb, result_folder, versions, write_json
from .numerics import linalg
from .options import compile_regexes
from .pairing.align import TensorPair, align, module_name, skipped_notes
from .pairing.model_layout import OUTPUT_HEADS, WRAPPED_HEADS, choose_task, task_type  # noqa: F401 (task_type: API)
from .pairing.model_layout import is_bare as _is_bare
from .spectrum import _delta_blocks, _Norms, _run_parallel, resolve_device

METHODS = ("auto", "exact", "randomized")
EMBEDDINGS = ("auto", "skip", "lora", "save")
BIAS = ("none", "lora_only", "all")
OVERSAMPLE = 10
"""Oversampling ``p`` of the randomized sketch (Halko et al. 2011 recommend 5–10)."""
POWER_ITERATIONS = 3
"""Block Krylov power iterations ``q``: ≤ 1.0004x the optimal error on the benchmark pair (q = 2: 1.002x)."""
STORAGE_FLOOR = 1e-6
"""Relative errors below this (float32 storage resolution) count as this much in ``ratio``."""
ERROR_BLOCK_ROWS = 4096

COST_PER_MAC = {"gram": 2.4e-11, "tridiagonal": 1.44e-10, "skinny": 4.9e-11, "krylov": 9.5e-11}
"""Seconds per multiply-add, measured on the development machine (2 vCPUs, AMD EPYC, float64 OpenBLAS)
with two workers running at once as ``extract`` does (the memory-bound tridiagonalisation suffers
more from the shared core than the matrix products): ``gram`` for ``TᵀT`` (per ``m n²``),
``tridiagonal`` for the top-``r`` ``syevr`` of an ``n x n`` Gram (per ``n³``), ``skinny`` for
``T @ X`` with ``X`` of ``r`` columns, ``krylov`` for the randomized products with ``r + p`` columns
including their QR re-orthonormalisations.  Only the ratios matter.  Measured at r = 64:
1024 x 1024 exact 180 ms, randomized 85 ms; 2816 x 1024 exact 225 ms, randomized 215 ms; for square
matrices the two cost the same at ``min(m, n) ≈ 6 (r + p)``."""

_INPUT_EMBEDDING = re.compile(
    r"(?:^|\.)(?:embed_tokens|word_embeddings|position_embeddings|token_type_embeddings|wte|wpe|embed_positions|"
    r"embed_in|tok_embeddings|shared|relative_attention_bias|\w*embeddings?)$"
)
_OUTPUT_HEAD = re.compile(r"(?:^|\.)(?:lm_head|embed_out|output_layer)$")


# --------------------------------------------------------------------------------------------------
# numerics: the top-r singular subspace, on numpy (CPU) or torch (any device)
# --------------------------------------------------------------------------------------------------


class _NumpyOps:
    """float64 numpy / LAPACK operations used by the solvers."""

    def asarray(self, x: np.ndarray) -> np.ndarray:
        return x

    def numpy(self, x) -> np.ndarray:
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


class _TorchOps:
    """The same operations with torch (float64) on ``device``, e.g. ``cuda``; results come back as numpy."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch, self.device = torch, device

    def asarray(self, x: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def numpy(self, x) -> np.ndarray:
        return x.cpu().numpy()

    def qr(self, x):
        return self.torch.linalg.qr(x).Q

    def eigh_top(self, g, k: int):
        w, v = self.torch.linalg.eigh(g)
        return w.flip(0)[:k], v.flip(1)[:, :k]

    def eigvalsh(self, g):
        return self.torch.linalg.eigvalsh(g)

    def gaussian(self, rng: np.random.Generator, shape: tuple[int, int]):
        return self.asarray(rng.standard_normal(shape))  # same Ω on every device

    def hstack(self, blocks: list):
        return self.torch.cat(blocks, dim=1)


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


def _finish(t, v, ops, w=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def exact_truncation(delta: np.ndarray, r: int, ops=None, optimum: bool = True) -> Truncation:
    """Exact rank-``r`` truncated SVD of ``delta`` (see module docstring, ``exact``)."""
    ops = ops or _NumpyOps()
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


def krylov_basis(t, rank: int, rng: np.random.Generator, power_iterations: int, oversample: int, ops):
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
                          ops=None) -> Truncation:
    """Rank-``r`` truncated SVD by randomized block Krylov iteration (see module docstring)."""
    ops = ops or _NumpyOps()
    wide = delta.shape[0] < delta.shape[1]
    if (power_iterations + 1) * (r + oversample) >= min(delta.shape):  # the Krylov space would span everything
        return exact_truncation(delta, r, ops, optimum=False)
    t = ops.asarray(delta.T if wide else delta)
    k = krylov_basis(t, r, rng, power_iterations, oversample, ops)
    c = t @ k  # m x (q+1)(r+p)
    _, z = ops.eigh_top(c.T @ c, r)  # Rayleigh–Ritz: top-r right singular vectors within span(K)
    u, s, vt = _finish(t, k @ z, ops, w=c @ z)  # T (K Z) = C Z
    return Truncation(vt.T, s, u.T, "randomized") if wide else Truncation(u, s, vt, "randomized")


def exact_top_energy(delta: np.ndarray, r: int, ops=None) -> float:
    """``Σ_{i<=r} σ_i²`` of the exact spectrum (float64 Gram eigenvalues, or LAPACK for small matrices)."""
    ops = ops or _NumpyOps()
    m, n = delta.shape
    if min(m, n) <= linalg.SMALL:
        s = scipy.linalg.svdvals(delta, check_finite=False)
        return float(np.sum(s[:r] ** 2))
    t = ops.asarray(delta.T if m < n else delta)
    lam = np.clip(ops.numpy(ops.eigvalsh(t.T @ t)), 0.0, None)
    return float(np.sum(np.sort(lam)[::-1][:r]))


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


# --------------------------------------------------------------------------------------------------
# what to extract: LoRA spec (rank / config), module classification, naming
# --------------------------------------------------------------------------------------------------


@dataclass
class LoraSpec:
    """Ranks, alphas and targets, from ``--rank`` or from a peft ``lora_config.json``.

    ``target_modules`` follows peft: a list matches a module named exactly so or ending in
    ``"." + item``; a string is a regular expression that must match the whole name (``re.fullmatch``);
    ``"all-linear"`` is every linear layer except embeddings, output heads and task heads.
    """

    r: int
    alpha: float
    target_modules: list[str] | str = "all-linear"
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    use_rslora: bool = False
    exclude_modules: list[str] | str | None = None
    modules_to_save: list[str] = field(default_factory=list)
    bias: str = "none"
    source: str = "rank"

    @classmethod
    def from_rank(cls, rank: int, alpha: float | None = None, targets: str | Sequence[str] = "all-linear",
                  use_rslora: bool = False) -> LoraSpec:
        """``--rank R`` (+ ``--alpha``, default ``α = R`` so that ``s = 1`` and ``B·A = ΔW_r`` as is)."""
        if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or rank < 1:
            raise RankscopeError(f"--rank: must be a positive integer, got {rank!r}")
        if alpha is not None and not alpha > 0:
            raise RankscopeError(f"--alpha: must be positive, got {alpha!r}")
        if isinstance(targets, str):
            targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
        if not targets:
            raise RankscopeError("--targets: no module names given")
        return cls(int(rank), float(alpha if alpha is not None else rank), targets if isinstance(targets, str)
                   else list(targets), use_rslora=use_rslora)

    @classmethod
    def from_config(cls, config: str | os.PathLike | dict[str, Any]) -> LoraSpec:
        """Read a peft ``LoraConfig`` (``adapter_config.json`` / ``lora_config.json``) or its dict."""
        where = "--config"
        if not isinstance(config, dict):
            path = Path(config)
            where = str(path / "adapter_config.json") if path.is_dir() else str(path)
            try:
                config = json.loads(Path(where).read_text())
            except FileNotFoundError as exc:
                raise RankscopeError(f"--config: no such file: {where}") from exc
            except (OSError, ValueError) as exc:
                raise RankscopeError(f"--config: {where} is not readable JSON ({exc})") from exc
        if not isinstance(config, dict):
            raise RankscopeError(f"{where}: a LoRA config must be a JSON object")
        return cls._parse(config, where)

    @classmethod
    def _parse(cls, config: dict[str, Any], where: str) -> LoraSpec:
        peft_type = str(config.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise RankscopeError(f"{where}: peft_type {peft_type} is not supported (only LORA)")
        if config.get("use_dora"):
            raise RankscopeError(f"{where}: use_dora is not supported (extract writes plain LoRA)")
        if config.get("layers_to_transform") not in (None, []):
            raise RankscopeError(f"{where}: layers_to_transform is not supported; list the modules in target_modules")
        r = config.get("r", 8)
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise RankscopeError(f"{where}: 'r' must be a positive integer, got {r!r}")
        alpha = config.get("lora_alpha", 8)
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
            raise RankscopeError(f"{where}: 'lora_alpha' must be a positive number, got {alpha!r}")
        targets = config.get("target_modules")
        if targets is None or (not isinstance(targets, str) and not targets):
            raise RankscopeError(f"{where}: 'target_modules' is missing or empty")
        if isinstance(targets, str):
            if targets != "all-linear":
                compile_regexes([targets], f"{where}: target_modules")
        elif not all(isinstance(t, str) for t in targets):
            raise RankscopeError(f"{where}: 'target_modules' must be a string or a list of strings")
        patterns = {}
        for key in ("rank_pattern", "alpha_pattern"):
            value = config.get(key) or {}
            if not isinstance(value, dict):
                raise RankscopeError(f"{where}: '{key}' must be an object {{module pattern: value}}")
            for pattern, v in value.items():
                compile_pattern_key(pattern, f"{where}: {key}")
                ok = isinstance(v, int) and v >= 0 if key == "rank_pattern" else isinstance(v, (int, float)) and v > 0
                if isinstance(v, bool) or not ok:
                    raise RankscopeError(f"{where}: {key}['{pattern}'] = {v!r} is not a valid "
                                         f"{'rank (integer >= 0)' if key == 'rank_pattern' else 'alpha (> 0)'}")
            patterns[key] = dict(value)
        bias = config.get("bias", "none") or "none"
        if bias not in BIAS:
            raise RankscopeError(f"{where}: 'bias' must be one of {', '.join(BIAS)}, got {bias!r}")
        return cls(r, float(alpha), targets if isinstance(targets, str) else list(targets),
                   patterns["rank_pattern"], patterns["alpha_pattern"], bool(config.get("use_rslora")),
                   config.get("exclude_modules"), list(config.get("modules_to_save") or []), bias, where)

    def targets(self, module: str, is_linear: bool) -> bool:
        """peft's ``target_modules`` / ``exclude_modules`` rule (``check_target_module_exists``)."""
        ex = self.exclude_modules
        if ex and (re.fullmatch(ex, module) if isinstance(ex, str) else _listed(ex, module)):
            return False
        t = self.target_modules
        if t == "all-linear":
            return is_linear
        return bool(re.fullmatch(t, module)) if isinstance(t, str) else _listed(t, module)

    def __post_init__(self) -> None:
        if isinstance(self.exclude_modules, str):
            compile_regexes([self.exclude_modules], f"{self.source}: exclude_modules")

    def explicitly_targets(self, module: str) -> bool:
        """Whether ``target_modules`` names this module itself (not via ``all-linear``)."""
        return self.target_modules != "all-linear" and self.targets(module, False)

    def rank_alpha(self, module: str) -> tuple[int, float]:
        return (int(pattern_value(self.rank_pattern, module, self.r)),
                float(pattern_value(self.alpha_pattern, module, self.alpha)))

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "r": self.r, "lora_alpha": self.alpha, "target_modules": self.target_modules,
                "rank_pattern": self.rank_pattern, "alpha_pattern": self.alpha_pattern, "use_rslora": self.use_rslora,
                "exclude_modules": self.exclude_modules, "modules_to_save": self.modules_to_save, "bias": self.bias}


def _listed(names: Sequence[str], module: str) -> bool:
    return any(module == n or module.endswith("." + n) for n in names)


def layer_type_guess(pair: TensorPair, name: str) -> str:
    """``linear``, ``conv1d`` or ``embedding`` from the name and orientation (refined by :class:`ModelLayout`)."""
    if pair.transpose:
        return "conv1d"
    if _INPUT_EMBEDDING.search(name) and not _OUTPUT_HEAD.search(name):
        return "embedding"
    return "linear"


def is_vocab_module(name: str, layer_type: str) -> bool:
    """Embeddings and output heads (``lm_head``): handled by ``embeddings=``, never by ``all-linear``."""
    return layer_type == "embedding" or bool(_OUTPUT_HEAD.search(name))


_HEAD_FIRSTS = {"lm_head", "classifier", "score", "qa_outputs", "cls", "embed_out", "output"}
MODEL_CHECKS = ("auto", "always", "never")


def naming_suspicion(config: dict[str, Any] | None, tensor_names: Sequence[str]) -> str | None:
    """Why a checkpoint's tensor names (the task model's, :func:`rankscope.pairing.model_layout.choose_task`) might not be the
    module names of its architecture, or ``None``.

    ``save_pretrained`` of a head class (``…ForCausalLM``, ``…ForSequenceClassification``, …) nests the
    base model under one prefix (``model.``, ``transformer.``, ``bert.``) next to the heads; a bare
    ``…Model`` has no such prefix.  Checkpoints that break this (legacy Hub files such as GPT-2's
    ``h.0.attn…`` under ``GPT2LMHeadModel``, encoder–decoders such as T5) get the model cross-check.
    """
    archs = (config or {}).get("architectures") or []
    if not archs or not isinstance(archs[0], str):
        return None
    arch = archs[0]
    firsts = {n.split(".", 1)[0] for n in tensor_names if "." in n}
    body = firsts - _HEAD_FIRSTS
    if _is_bare(arch):
        if len(firsts) == 1:
            return f"every tensor of the bare {arch} sits under '{next(iter(firsts))}.'"
        return None
    if len(body) != 1:
        return f"the {arch} checkpoint's tensors do not share one base-model prefix ({', '.join(sorted(body)[:4])})"
    return None


class ModelLayout:
    """Module names and layer types of the model peft will wrap, built on torch's meta device.

    The class is ``transformers.<architectures[0]>`` of the task model's ``config.json`` (the fine-tune's
    when it has heads, :func:`rankscope.pairing.model_layout.choose_task`) — what ``AutoModelFor<task>.from_pretrained(BASE)``
    builds — instantiated without memory or weights.  Built
    in a background thread (importing transformers takes seconds) while the SVDs run; ``result()``
    returns ``{module name: 'linear' | 'conv1d' | 'embedding' | class name}`` or ``None`` with a reason.
    """

    def __init__(self, config: dict[str, Any] | None, background: bool = True) -> None:
        self.config, self.layout, self.reason = config, None, None
        self._thread = threading.Thread(target=self._build, daemon=True, name="rankscope-model-layout")
        if background:
            self._thread.start()
        else:
            self._build()

    def _build(self) -> None:
        arch = ((self.config or {}).get("architectures") or [None])[0]
        if not arch:
            self.reason = "the base has no config.json with 'architectures'"
            return
        try:
            import torch
            import transformers

            cls = getattr(transformers, arch, None)
            if cls is None:
                self.reason = f"transformers {transformers.__version__} has no class {arch}"
                return
            verbosity = transformers.logging.get_verbosity()
            transformers.logging.set_verbosity_error()
            try:
                cfg = cls.config_class.from_dict(dict(self.config))
                with torch.device("meta"):
                    model = cls(cfg)
            finally:
                transformers.logging.set_verbosity(verbosity)
            kinds = {"Linear": "linear", "Conv1D": "conv1d", "Embedding": "embedding"}
            self.layout = {n: kinds.get(type(mod).__name__, type(mod).__name__) for n, mod in model.named_modules()}
        except Exception as exc:  # any failure only means names and types are not cross-checked
            self.reason = f"could not build {arch} on the meta device ({type(exc).__name__}: {str(exc)[:160]})"

    def result(self, timeout: float = 300.0) -> dict[str, str] | None:
        if self._thread.is_alive() or self._thread.ident is not None:
            self._thread.join(timeout)
        return self.layout


# --------------------------------------------------------------------------------------------------
# the plan and the per-module work
# --------------------------------------------------------------------------------------------------


@dataclass
class ModulePlan:
    """What happens to one 2-D tensor: ``lora`` (rank ``r``), ``save`` (modules_to_save) or ``skip``."""

    pair: TensorPair
    name: str  # module name in the model peft wraps (the task model's checkpoint naming, no ``.weight``)
    role: str
    layer_type: str
    r: int = 0
    alpha: float = 0.0
    scale: float = 0.0


@dataclass
class Options:
    method: str = "auto"
    power_iterations: int = POWER_ITERATIONS
    oversample: int = OVERSAMPLE
    seed: int = 0
    optimum: bool = True
    device: str = "cpu"


def _read_delta(pair: TensorPair, base: Checkpoint, ft: Checkpoint) -> tuple[np.ndarray, _Norms]:
    """``ΔW`` as stored (float64, rows as stored) and its squared norms, streamed in row blocks."""
    norms = _Norms()
    info = pair.base
    cols = info.numel // info.shape[0]
    delta = np.empty((pair.stored_rows, cols))
    row = 0
    for block in _delta_blocks(pair, base, ft, norms):
        delta[row:row + block.shape[0]] = block
        row += block.shape[0]
    return delta, norms


def _base_row(plan: ModulePlan, norms: _Norms) -> dict[str, Any]:
    p = plan.pair
    base_norm, delta_norm = float(np.sqrt(norms.base_sq)), float(np.sqrt(norms.delta_sq))
    return {"module": plan.name, "layer": p.layer, "kind": p.kind, "rows": p.rows, "cols": p.cols,
            "layer_type": plan.layer_type, "role": plan.role, "rank": plan.r, "alpha": plan.alpha, "scale": plan.scale,
            "lora_params": plan.r * (p.rows + p.cols), "base_norm": base_norm, "delta_norm": delta_norm,
            "rel_delta": delta_norm / base_norm if base_norm else (0.0 if delta_norm == 0 else float("inf"))}


def extract_module(plan: ModulePlan, base: Checkpoint, ft: Checkpoint, opts: Options,
                   ops=None) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
    """One row of ``extract.csv`` and, for ``lora``, the factors ``(B, A)`` (float32, ``out x r``, ``r x in``)."""
    t0 = time.perf_counter()
    if plan.role != "lora":
        norms = _Norms()
        for _ in _delta_blocks(plan.pair, base, ft, norms):
            pass
        row = _base_row(plan, norms)
        captured = plan.role == "save"
        row.update(method="modules_to_save" if captured else "skipped",
                   rel_error=0.0 if captured or norms.delta_sq == 0 else 1.0)
        if opts.optimum:
            row.update(optimal_rel_error=row["rel_error"], ratio=1.0)
        row["seconds"] = round(time.perf_counter() - t0, 4)
        return row, None
    delta, norms = _read_delta(plan.pair, base, ft)
    row = _base_row(plan, norms)
    if norms.delta_sq == 0:  # ΔW = 0 exactly: nothing to adapt, decided once ΔW is read (see _drop_zero_updates)
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
class ExtractResult:
    """Result of :func:`extract`: a peft adapter in memory plus its report.

    Attributes:
        table: one row per 2-D tensor of the pair (``extract.csv``; columns in the README).
        tensors: ``adapter_model.safetensors`` content, key → array (float32 LoRA factors,
            fine-tuned values of modules_to_save and biases).
        adapter_config: ``adapter_config.json`` content (a peft ``LoraConfig``).
        info: provenance, options, timings and warnings (``run.json``).
    """

    table: pd.DataFrame
    tensors: dict[str, np.ndarray]
    adapter_config: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, out: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write ``adapter_config.json``, ``adapter_model.safetensors``, ``extract.csv`` and ``run.json`` atomically."""
        from safetensors.numpy import save_file

        t0 = time.perf_counter()
        with result_folder(out, self.info, overwrite) as tmp:
            write_json(tmp / "adapter_config.json", self.adapter_config)
            save_file({k: np.ascontiguousarray(v) for k, v in self.tensors.items()},
                      str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
            self.table.to_csv(tmp / "extract.csv", index=False)
            self.info.setdefault("seconds", {})["save"] = round(time.perf_counter() - t0, 3)
        return Path(out)

    def summary(self) -> str:
        """One line per module kind: rank, captured error vs optimum."""
        t = self.table[self.table["role"] == "lora"]
        lines = []
        if not t.empty:
            cols = [c for c in ("rank", "rel_delta", "rel_error", "optimal_rel_error", "ratio") if c in t]
            agg = t.groupby("kind", sort=False).agg(n=("module", "count"), **{c: (c, "median") for c in cols})
            lines.append(agg.to_string(float_format=lambda v: f"{v:.4g}"))
        a = self.info.get("adapter", {})
        lines.append(f"{a.get('lora_modules', 0)} LoRA modules ({a.get('lora_parameters', 0):,} parameters), "
                     f"{len(a.get('modules_to_save') or [])} modules_to_save, "
                     f"{a.get('bytes', 0) / 1e6:.1f} MB; methods {a.get('methods', {})}"
                     + (f"; worst ratio to optimum {t['ratio'].max():.6f}" if "ratio" in t and not t.empty else ""))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# the analysis
# --------------------------------------------------------------------------------------------------


def _model_tensor(pair: TensorPair, side: str) -> str:
    """The tensor's name in the model peft wraps: the stored name on the task model's ``side``
    (:func:`rankscope.pairing.model_layout.choose_task`; ``bert.encoder…`` for a ``BertModel`` → ``…ForSequenceClassification`` pair)."""
    return pair.finetuned.name if side == "finetuned" else pair.base.name


def _plan(pairs: list[TensorPair], spec: LoraSpec, embeddings: str, save_names: tuple[str, ...],
          save_patterns: list[re.Pattern[str]], exclude: list[re.Pattern[str]],
          side: str = "base") -> tuple[list[ModulePlan], list[str]]:
    """Decide the role of every 2-D tensor; returns the plans and the modules_to_save names.

    Module names are those of the task model's checkpoint (``side``, :func:`_model_tensor`), so targets,
    patterns and the adapter's keys follow the model peft wraps.  A tensor belongs to a saved module when
    one of its enclosing modules (outermost first) is named by ``save_names`` (peft's rule: equal to the
    name or ending in ``"." + name``) or matched by a ``save_patterns`` regex (``re.search``); all of that
    module's tensors are then copied whole.
    """
    plans: list[ModulePlan] = []
    saved: set[str] = set()
    for p in pairs:
        tensor = _model_tensor(p, side)
        name = module_name(tensor)
        owner = _saved_owner(tensor, save_names, save_patterns)
        if owner is not None:
            saved.add(owner)
            continue
        if not p.is_matrix:
            continue
        if len(p.base.shape) != 2 or not tensor.endswith(".weight"):
            plans.append(ModulePlan(p, name, "skip", "other"))
            continue
        ltype = layer_type_guess(p, name)
        excluded = any(r.search(name) for r in exclude)
        role = "skip"
        if is_vocab_module(name, ltype):
            mode = embeddings if embeddings != "auto" else ("lora" if spec.explicitly_targets(name) else "skip")
            role = "skip" if excluded else mode
        elif not excluded and spec.targets(name, is_linear=True):
            role = "lora"
        if role == "save":
            saved.add(name)
        plan = ModulePlan(p, name, role, ltype)
        if role == "lora":
            plan.r, plan.alpha = spec.rank_alpha(name)
            if plan.r == 0:  # a pattern rank of 0 means: leave this module out
                plan.role, plan.alpha = "skip", 0.0
            else:
                plan.scale = float(lora_scale(plan.alpha, plan.r, spec.use_rslora))
        plans.append(plan)
    return plans, sorted(saved)


def _saved_owner(tensor: str, names: tuple[str, ...], patterns: list[re.Pattern[str]]) -> str | None:
    """The outermost module enclosing ``tensor`` that is to be saved whole, if any (see :func:`_plan`)."""
    parts = tensor.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if _listed(names, prefix) or any(r.search(prefix) for r in patterns):
            return prefix
    return None


def _fine_tune_only_saves(alignment, f_ckpt: Checkpoint, save_names: tuple[str, ...],
                          save_patterns: list[re.Pattern[str]], side: str = "base", task: str | None = None,
                          warnings: list[str] | None = None) -> list[tuple[str, str, str, np.ndarray]]:
    """(owner, model name, core name, fine-tuned values) of fine-tuned tensors that the base cannot give.

    Tensors the base lacks but ``save_names`` / ``--save-modules`` name: a classification head trained on top
    of a bare encoder (``BertModel`` base, ``...ForSequenceClassification`` fine-tune), or a fresh ``lm_head``
    on a bare ``LlamaModel``, exists only in the fine-tune; saved whole in ``modules_to_save`` it travels with
    the adapter.  So does a peft task head (:data:`rankscope.pairing.model_layout.WRAPPED_HEADS`) whose shape differs
    from the base's (another number of labels), with a note on how to load the base.
    """
    heads = WRAPPED_HEADS.get(task or "", ())
    changed = [c for c in alignment.skipped if _saved_owner(c, heads, []) is not None]
    out, notes = [], {}
    for core in [*alignment.only_in_finetuned, *changed]:
        stored = alignment.finetuned_prefix + core
        name = stored if stored in f_ckpt.tensors else core
        model = name if side == "finetuned" else (alignment.base_prefix + core if name != core else core)
        owner = _saved_owner(model, save_names, save_patterns)
        if owner is None:
            continue
        info = f_ckpt.tensors[name]
        out.append((owner, model, core, f_ckpt.read_rows(name).reshape(info.shape)))
        if owner.rsplit(".", 1)[-1] in heads and len(info.shape) == 2:
            notes[owner] = (info.shape[0], core in changed or notes.get(owner, (0, False))[1])
    labels = (f_ckpt.config or {}).get("id2label")
    for owner, (rows, resized) in sorted(notes.items()):
        n = len(labels) if isinstance(labels, dict) and labels else rows
        how = f"num_labels={n}" + (", ignore_mismatched_sizes=True" if resized else "")
        what = "has another shape in the base" if resized else "exists only in the fine-tune"
        if warnings is not None and task != "QUESTION_ANS":
            warnings.append(f"the task head '{owner}' {what}: the fine-tune's travels whole in modules_to_save; "
                            f"load the base with {how}")
    return out


def _drop_zero_updates(plans: list[ModulePlan], results: dict[str, Any], warnings: list[str]) -> None:
    """Targeted modules whose ``ΔW`` is exactly zero become ``skip`` (rank 0: not in ``target_modules`` nor the
    tensors, a LoRA of rank ``r`` would only add zero factors); raises when no targeted module is left."""
    zero = [p for p in plans if p.role == "lora" and results[p.pair.module][1] is None]
    for plan in zero:
        plan.role, plan.r, plan.alpha, plan.scale = "skip", 0, 0.0, 0.0
    if not zero:
        return
    listed = ", ".join(p.name for p in zero[:4]) + (" …" if len(zero) > 4 else "")
    if not any(p.role == "lora" for p in plans):
        raise RankscopeError(f"ΔW = 0 exactly in every targeted module ({listed}): the fine-tune did not change "
                             "them, nothing to extract (choose other --targets)")
    warnings.append(f"ΔW = 0 exactly in {len(zero)} targeted module(s), not adapted (rank 0, left out of "
                    f"target_modules): {listed}")


def _check_ranks(plans: list[ModulePlan]) -> None:
    for plan in plans:
        if plan.role == "lora" and plan.r > min(plan.pair.rows, plan.pair.cols):
            raise RankscopeError(f"rank {plan.r} for module '{plan.name}' exceeds min(m, n) = "
                                 f"{min(plan.pair.rows, plan.pair.cols)} of its {plan.pair.rows}x{plan.pair.cols} ΔW: lower the rank, "
                                 "give the module its own rank (--config rank_pattern) or --exclude it")


def _apply_layout(plans: list[ModulePlan], saved: list[str], layout: dict[str, str] | None,
                  warnings: list[str]) -> dict[str, str]:
    """Cross-check names and layer types with the model peft will build; returns ``checkpoint name → model name``."""
    names = [p.name for p in plans if p.role == "lora"] + saved
    if layout is None:
        return {n: n for n in names}
    from .pairing.align import common_prefixes

    model_prefix, ckpt_prefix = common_prefixes(list(layout), names)
    mapping = {}
    for n in names:
        core = n[len(ckpt_prefix):] if ckpt_prefix and n.startswith(ckpt_prefix) else n
        mapping[n] = model_prefix + core if model_prefix + core in layout else n
    if model_prefix or ckpt_prefix:
        warnings.append(f"module names renamed to the model's: checkpoint prefix '{ckpt_prefix}' -> '{model_prefix}'")
    missing = [n for n in names if mapping[n] not in layout]
    if missing:
        raise RankscopeError(f"module '{missing[0]}' of the checkpoints does not exist in the model built from the task "
                             f"model's config.json ({len(missing)} such modules): cannot name the adapter's keys")
    for plan in plans:
        if plan.role != "lora":
            continue
        true_type = layout[mapping[plan.name]]
        if true_type == plan.layer_type:
            continue
        if true_type not in ("linear", "conv1d", "embedding") or {true_type, plan.layer_type} == {"linear", "conv1d"}:
            raise RankscopeError(f"module '{plan.name}' is a {true_type} layer (expected {plan.layer_type}): peft LoRA "
                                 f"cannot target it as extracted; exclude it with --exclude")
        plan.layer_type = true_type
    return mapping


def _vector_tensors(pairs: list[TensorPair], bias: str, lora_names: set[str], saved: list[str],
                    side: str = "base") -> tuple[list, list]:
    """1-D tensors: (those written because of ``bias``, the rest); tensors under modules_to_save are excluded."""
    written, rest = [], []
    for p in pairs:
        if p.is_matrix and len(p.base.shape) == 2:
            continue
        name = _model_tensor(p, side)
        if any(name.startswith(s + ".") for s in saved):
            continue
        owner = name.rsplit(".", 1)[0]
        is_bias = name.endswith(".bias")
        if is_bias and (bias == "all" or (bias == "lora_only" and owner in lora_names)):
            written.append(p)
        else:
            rest.append(p)
    return written, rest


def _delta_norm(pair: TensorPair, base: Checkpoint, ft: Checkpoint) -> tuple[float, float]:
    norms = _Norms()
    for _ in _delta_blocks(pair, base, ft, norms):
        pass
    return float(np.sqrt(norms.base_sq)), float(np.sqrt(norms.delta_sq))


def _read_ft(pair: TensorPair, ft: Checkpoint) -> np.ndarray:
    """The fine-tuned tensor as stored (shape and orientation), float32 (float64 for F64 data)."""
    info = pair.finetuned
    return ft.read_rows(info.name).reshape(info.shape)


def _compact_patterns(values: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The most common value as the default and the exceptions as a pattern dict keyed by the escaped full
    module name (:func:`rankscope.io.peft.pattern_key`: matches that module and nothing else)."""
    from .io.peft import pattern_key

    if not values:
        return None, {}
    common = Counter(values.values()).most_common(1)[0][0]
    return common, {pattern_key(k): v for k, v in sorted(values.items()) if v != common}


def _base_model_path(ckpt: Checkpoint) -> str:
    given = ckpt.given
    if given.startswith("bundled:") or Path(given).expanduser().exists():
        path = Path(ckpt.path).resolve()
        return str(path.parent if path.is_file() else path)
    return given


def _peft_version() -> str | None:
    try:
        return metadata.version("peft")
    except metadata.PackageNotFoundError:
        return None


def build_adapter_config(plans: list[ModulePlan], names: dict[str, str], saved: list[str], spec: LoraSpec,
                         task: str | None, base_path: str, bias: str) -> dict[str, Any]:
    """A peft ``LoraConfig`` dict naming every extracted module exactly (full names, peft's list rule)."""
    lora = [p for p in plans if p.role == "lora"]
    r, rank_pattern = _compact_patterns({names[p.name]: p.r for p in lora})
    alpha, alpha_pattern = _compact_patterns({names[p.name]: p.alpha for p in lora})
    alpha = alpha if alpha is not None else spec.alpha
    return {
        "peft_type": "LORA",
        "task_type": task,
        "base_model_name_or_path": base_path,
        "r": int(r if r is not None else spec.r),
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "target_modules": sorted(names[p.name] for p in lora),
        "rank_pattern": rank_pattern,
        "alpha_pattern": {k: int(v) if float(v).is_integer() else v for k, v in alpha_pattern.items()},
        "use_rslora": spec.use_rslora,
        "fan_in_fan_out": any(p.layer_type == "conv1d" for p in lora),
        "modules_to_save": [names.get(s, s) for s in saved] or None,
        "bias": bias,
        "lora_dropout": 0.0,
        "init_lora_weights": True,
        "inference_mode": True,
        "use_dora": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": None,
        "peft_version": _peft_version(),
    }


def _lora_keys(plan: ModulePlan, name: str, b: np.ndarray, a: np.ndarray) -> dict[str, np.ndarray]:
    """peft's keys: ``lora_A.weight`` (r x in) / ``lora_B.weight`` (out x r); embeddings
    ``lora_embedding_A`` (r x num_embeddings) = Bᵀ and ``lora_embedding_B`` (dim x r) = Aᵀ."""
    prefix = f"base_model.model.{name}"
    if plan.layer_type == "embedding":
        return {f"{prefix}.lora_embedding_A": np.ascontiguousarray(b.T),
                f"{prefix}.lora_embedding_B": np.ascontiguousarray(a.T)}
    return {f"{prefix}.lora_A.weight": a, f"{prefix}.lora_B.weight": b}


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
    workers: int | None = None,
    check_model: str | bool = "auto",
    progress: bool = False,
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

    The task type and the module names come from the task model of the pair
    (:func:`rankscope.pairing.model_layout.choose_task`): for a bare ``BertModel`` base and a
    ``BertForSequenceClassification`` fine-tune, ``SEQ_CLS`` and ``bert.encoder…``, so that
    ``PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=N), OUT)``
    loads it.  A targeted module whose ``ΔW`` is exactly zero is left out (rank 0, with a note); when
    every targeted module is, :class:`RankscopeError`.
        bias: peft's ``bias``: ``none``, ``lora_only`` (fine-tuned biases of the LoRA layers) or ``all``.
        method: ``auto``, ``exact`` or ``randomized`` (module docstring); ``power_iterations``,
            ``oversample`` and ``seed`` drive the randomized solver.
        optimum: compute the Eckart–Young optimum of every module (exact spectrum).
        device: ``cpu``, ``cuda`` (``cuda:N``) or ``auto``: where the SVDs run (torch on GPUs).
        workers: modules in parallel (default: CPU count on CPU, 1 on a GPU).
        check_model: cross-check module names and layer types against the model class built on
            the meta device (imports transformers: ~2–3 s): ``always``, ``never`` or ``auto`` (only
            when :func:`naming_suspicion` finds the names unusual).  ``True``/``False`` mean
            always/never.  If the model cannot be built the names are used as they are, with a warning.
        progress: progress bar on stderr.
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
    check_model = {True: "always", False: "never"}.get(check_model, check_model)
    _check_choice(check_model, MODEL_CHECKS, "--model-check")
    if power_iterations < 0 or oversample < 0:
        raise RankscopeError("--power-iterations and --oversample must be >= 0")
    exclude_re = compile_regexes(list(exclude), "--exclude")
    save_re = compile_regexes(list(save_modules), "--save-modules")
    device = resolve_device(device)
    opts = Options(method, power_iterations, oversample, seed, optimum, device)
    warnings: list[str] = []
    with open_checkpoint(base) as b_ckpt, open_checkpoint(finetuned) as f_ckpt:
        choice = choose_task(b_ckpt.config, f_ckpt.config, str(base), str(finetuned))
        task, side = choice.task, choice.side  # names follow the task model's checkpoint (peft_tasks.choose_task)
        model_ckpt = f_ckpt if side == "finetuned" else b_ckpt
        warnings += choice.notes
        suspicion = naming_suspicion(model_ckpt.config, list(model_ckpt.tensors))
        checking = check_model == "always" or (check_model == "auto" and suspicion is not None)
        layout_probe = ModelLayout(model_ckpt.config) if checking else None
        alignment = align(b_ckpt, f_ckpt)
        if not any(p.is_matrix for p in alignment.pairs):
            raise RankscopeError(f"{base} and {finetuned} share no 2-D tensor: are they the same architecture?")
        warnings += alignment.warnings
        save_names = WRAPPED_HEADS.get(task, ()) + tuple(spec.modules_to_save)
        plans, saved = _plan(alignment.pairs, spec, embeddings, save_names, save_re, exclude_re, side)
        lora_plans = [p for p in plans if p.role == "lora"]
        if not lora_plans:
            raise RankscopeError(f"{spec.source}: the targets select no 2-D module of {base} "
                                 f"(target_modules={spec.target_modules!r}); nothing to extract")
        _check_ranks(plans)
        _check_vocab(plans, warnings)
        t_open = time.perf_counter()
        results, n_workers = _compute(plans, b_ckpt, f_ckpt, opts, workers, progress)
        _drop_zero_updates(plans, results, warnings)
        t_done = time.perf_counter()
        layout = layout_probe.result() if layout_probe else None
        if not choice.architecture:
            warnings.append("no config.json with 'architectures' on either side: task_type is null and module names "
                            "are used as stored (not cross-checked)")
        elif checking and layout is None:
            warnings.append(f"module names and layer types not cross-checked: {layout_probe.reason}"
                            + (f" (and {suspicion})" if suspicion else ""))
        ft_only = _fine_tune_only_saves(alignment, f_ckpt, save_names + OUTPUT_HEADS.get(task, ()), save_re, side,
                                        task, warnings)
        saved = sorted(set(saved) | {owner for owner, _, _, _ in ft_only})
        names = _apply_layout(plans, saved, layout, warnings)
        tensors, vec_summary = _collect_tensors(plans, results, names, saved, bias, alignment.pairs, b_ckpt, f_ckpt,
                                                side)
        tensors.update({f"base_model.model.{names.get(owner, owner)}{name[len(owner):]}": value
                        for owner, name, _, value in ft_only})
        taken = {core for _, _, core, _ in ft_only}
        _note_uncaptured(plans, results, vec_summary, [n for n in alignment.only_in_finetuned if n not in taken],
                         warnings)
        adapter_config = build_adapter_config(plans, names, saved, spec, task, _base_model_path(b_ckpt), bias)
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
                    "optimum": optimum, "workers": n_workers, "check_model": check_model},
        "seed": seed,
        "device": device,
        "task_type": task,
        "adapter": {"lora_modules": len(lora_table), "lora_parameters": int(lora_table["lora_params"].sum()),
                    "modules_to_save": saved, "bias_tensors": vec_summary["written"],
                    "methods": dict(Counter(lora_table["method"])),
                    "bytes": int(sum(v.nbytes for v in tensors.values()))},
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
    return ExtractResult(table, tensors, adapter_config, info)


def _check_choice(value: str, choices: Sequence[str], option: str) -> None:
    if value not in choices:
        raise RankscopeError(f"{option}: '{value}' is not one of {', '.join(choices)}")


def _check_vocab(plans: list[ModulePlan], warnings: list[str]) -> None:
    """Modules_to_save copies must have the base's shape; LoRA covers the common rows only."""
    for p in plans:
        if p.pair.base.shape == p.pair.finetuned.shape or p.role == "skip":
            continue
        if p.role == "save":
            raise RankscopeError(f"module '{p.name}' has {p.pair.finetuned.shape[0]} rows in the fine-tune but "
                                 f"{p.pair.base.shape[0]} in the base (vocabulary changed): a modules_to_save copy "
                                 "would not fit the base model; use --embeddings lora or skip")
        warnings.append(f"module '{p.name}': vocabulary changed; the LoRA covers the {p.pair.rows} rows of the base, "
                        "the new tokens' rows are not in the adapter")


def _compute(plans: list[ModulePlan], b_ckpt: Checkpoint, f_ckpt: Checkpoint, opts: Options, workers: int | None,
             progress: bool) -> tuple[dict[str, Any], int]:
    """Run :func:`extract_module` for every plan, in threads with a single-threaded BLAS each (as spectrum)."""
    ops = _TorchOps(opts.device) if opts.device != "cpu" else None
    by_module = {p.pair.module: p for p in plans}
    n_workers = workers or ((os.cpu_count() or 1) if opts.device == "cpu" else 1)

    def work(pair: TensorPair):
        return extract_module(by_module[pair.module], b_ckpt, f_ckpt, opts, ops)

    jobs = [p.pair for p in plans]
    if n_workers > 1:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            results = _run_parallel(jobs, work, n_workers, progress)
    else:
        results = _run_parallel(jobs, work, 1, progress)
    return results, n_workers


def _collect_tensors(plans, results, names, saved, bias, pairs, b_ckpt, f_ckpt, side: str = "base") -> tuple[dict, dict]:
    """The adapter's tensors: LoRA factors, modules_to_save copies and biases (fine-tuned values), named
    as in the task model's checkpoint (``side``, :func:`_model_tensor`)."""
    tensors: dict[str, np.ndarray] = {}
    for plan in plans:
        factors = results[plan.pair.module][1]
        if factors is not None:
            tensors.update(_lora_keys(plan, names[plan.name], *factors))
    saved_set = set(saved)
    for p in pairs:
        tensor = _model_tensor(p, side)
        owner = next((s for s in saved_set if tensor.startswith(s + ".")), None)
        if owner is not None:
            core = tensor[len(owner):]
            tensors[f"base_model.model.{names.get(owner, owner)}{core}"] = _read_ft(p, f_ckpt)
    lora_names = {p.name for p in plans if p.role == "lora"}
    written, rest = _vector_tensors(pairs, bias, lora_names, saved, side)
    for p in written:
        tensor = _model_tensor(p, side)
        owner = tensor.rsplit(".", 1)[0]
        model_owner = names.get(owner, owner)
        key = f"{model_owner}.base_layer.bias" if owner in lora_names else tensor
        tensors[f"base_model.model.{key}"] = _read_ft(p, f_ckpt)
    uncaptured = []
    for p in rest:
        base_norm, delta_norm = _delta_norm(p, b_ckpt, f_ckpt)
        if delta_norm > 0:
            uncaptured.append({"tensor": _model_tensor(p, side), "delta_norm": delta_norm,
                               "rel_delta": delta_norm / base_norm if base_norm else float("inf")})
    return tensors, {"written": [_model_tensor(p, side) for p in written], "uncaptured": uncaptured}


def _note_uncaptured(plans, results, vec_summary, only_in_ft, warnings) -> None:
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

"""Spectral initialisation of LoRA factors from a signal's top singular triplets: a warm start or LoRA-One.

A LoRA module adds ``s·B·A`` to its frozen weight ``W₀`` (``B``: out x r, ``A``: r x in; ``s = α/r``, or
``α/√r`` with rsLoRA).  Given the top-``r`` singular triplets ``U_r Σ_r V_rᵀ`` of a signal matrix ``M``
(rows = the output dimension, as ``rankscope spectrum`` orients every matrix), the factors start in ``M``'s
top-``r`` singular subspaces: ``span(B) = span(U_r)`` and ``span(Aᵀ) = span(V_r)``, with ``√Σ_r`` split evenly
between them.

``update`` (:func:`update_factors`) — ``M = ΔW``, a weight update (a short probe run, or a full fine-tune):
    ``B = U_r Σ_r^{1/2} / √s``,  ``A = Σ_r^{1/2} V_rᵀ / √s``,  so  ``s·B·A = U_r Σ_r V_rᵀ = ΔW_r``,
    the best rank-``r`` approximation of ``ΔW`` (Eckart–Young), exactly as ``rankscope extract`` writes it
    (:func:`rankscope.numerics.truncation.lora_factors`).

``gradient`` (:func:`gradient_factors`) — ``M = G = ∂L/∂W`` at ``W₀``, the gradient of the mean training loss:
    LoRA-One (Zhang, Liu & Chen, "LoRA-One: One-Step Full Gradient Could Suffice for Fine-Tuning Large Language
    Models, Provably and Efficiently", ICML 2025, arXiv:2502.01235), as its reference implementation computes it
    (github.com/YuanheZ/LoRA-One, ``run_exp.py``, ``init.direction: LoRA-One`` with ``init.scale: stable``).  With
    the SVD of the descent direction ``−G = U' Σ V'ᵀ`` (``U' = −U``: the same singular values, the left vectors
    negated) and ``σ₁`` its largest singular value,
    ``B₀ = U'_r Σ_r^{1/2} / √(γ σ₁)``,  ``A₀ = Σ_r^{1/2} V_rᵀ / √(γ σ₁)``,  so  ``s·B₀·A₀ = −(s/γ)·G_r/σ₁``:
    the initial model ``W₀ + s·B₀A₀`` is one step of full-batch gradient descent, truncated to its best
    rank-``r`` part, whose spectral norm is ``s/γ`` in every module (a learning rate ``s/(γ σ₁)``), whatever the
    scale of the loss.  (The paper's ``A`` is our ``B``: ``W = W₀ + (α/√r)·A₀B₀`` with rsLoRA.  Its README
    states the formula before the per-module normalisation, ``A₀ = U'_r √Σ_r/√γ``, ``B₀ = √Σ_r V'_rᵀ/√γ``
    — "one best rank-r full-batch gradient step with learning rate α/(γ√r)" — and the code divides both
    factors by ``√σ₁``: the variant it calls ``LoRA-One`` was first named ``OS-LoRA-Full-N``, N for normalised.)
    ``γ`` (``--init-scale``) is the paper's "stable" scale ``stable_gamma``, default :data:`LORA_ONE_GAMMA` = 128
    (``conf/init/gradient.yaml`` and the README's configuration).
    **Base weights.** LoRA-One keeps ``W₀`` as it is: the model starts at ``W₀ + s·B₀A₀``, one descent step
    away from the pre-trained model, by design.  LoRA-GA (Wang et al. 2024, arXiv:2407.05000; peft's
    ``init_lora_weights="lora_ga"``) instead takes ``B`` and ``A`` from *different* singular vectors of ``G``
    (``A`` from ``V_{1..r}``, ``B`` from ``U_{r+1..2r}``: not the top subspace) and subtracts ``s·B₀A₀`` from
    ``W₀`` so that the initial model is unchanged — which a pure adapter cannot express (``adapter_model
    .safetensors`` holds ``A``, ``B`` and saved heads; the base weights load from the base checkpoint).  rankscope
    therefore follows LoRA-One: no base-weight change is needed, and the adapter alone is the whole init.

Both return float32 factors (peft's storage type) computed in float64; :func:`init_product` gives the float64
matrix ``s·B·A`` that the factors represent, for reports and tests.
"""

from __future__ import annotations

import numpy as np

from .truncation import Truncation, lora_factors

SIGNALS = ("gradient", "update")
"""The signals a spectral init starts from: the loss gradient at ``W₀`` (LoRA-One) or a weight update ``ΔW``."""
LORA_ONE_GAMMA = 128.0
"""LoRA-One's default scale ``γ`` (the reference implementation's ``stable_gamma``)."""


def check_triplets(u: np.ndarray, s: np.ndarray, vt: np.ndarray, r: int) -> None:
    """``u`` (m x R), ``s`` (R, descending, ``>= 0``), ``vt`` (R x n), finite, with ``1 <= r <= R``; ValueError otherwise."""
    if u.ndim != 2 or s.ndim != 1 or vt.ndim != 2 or u.shape[1] != s.size or vt.shape[0] != s.size:
        raise ValueError(f"singular triplets of inconsistent shapes: U {u.shape}, S {s.shape}, Vt {vt.shape}")
    if not 1 <= r <= s.size:
        raise ValueError(f"rank {r} outside 1..{s.size} (the number of singular triplets kept)")
    if not (np.all(np.isfinite(u)) and np.all(np.isfinite(s)) and np.all(np.isfinite(vt))):
        raise ValueError("singular triplets contain NaN or Inf")
    if np.any(s < 0) or np.any(np.diff(s) > 1e-12 * max(float(s[0]), 1e-300)):
        raise ValueError("singular values must be non-negative and sorted in descending order")


def update_factors(u: np.ndarray, s: np.ndarray, vt: np.ndarray, r: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Warm start from an update ``ΔW = U Σ Vᵀ``: ``B = U_r √Σ_r/√s``, ``A = √Σ_r V_rᵀ/√s`` (``s·B·A = ΔW_r``)."""
    check_triplets(u, s, vt, r)
    trunc = Truncation(np.asarray(u[:, :r], dtype=np.float64), np.asarray(s[:r], dtype=np.float64),
                       np.asarray(vt[:r], dtype=np.float64), "given")
    return lora_factors(trunc, scale)


def gradient_factors(u: np.ndarray, s: np.ndarray, vt: np.ndarray, r: int,
                     gamma: float = LORA_ONE_GAMMA) -> tuple[np.ndarray, np.ndarray]:
    """LoRA-One from a gradient ``G = U Σ Vᵀ``: ``B = −U_r √Σ_r/√(γσ₁)``, ``A = √Σ_r V_rᵀ/√(γσ₁)``
    (``s·B·A = −(s/γ)·G_r/σ₁``; zero factors for ``G = 0``)."""
    check_triplets(u, s, vt, r)
    if not (np.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a positive number, got {gamma!r}")
    top = float(s[0])
    root = np.sqrt(np.asarray(s[:r], dtype=np.float64) / (gamma * top)) if top > 0 else np.zeros(r)
    b = -(np.asarray(u[:, :r], dtype=np.float64) * root)
    a = root[:, None] * np.asarray(vt[:r], dtype=np.float64)
    return b.astype(np.float32), a.astype(np.float32)


def init_factors(signal: str, u: np.ndarray, s: np.ndarray, vt: np.ndarray, r: int, scale: float,
                 gamma: float = LORA_ONE_GAMMA) -> tuple[np.ndarray, np.ndarray]:
    """:func:`update_factors` (``signal="update"``, uses ``scale``) or :func:`gradient_factors` (``"gradient"``, uses ``gamma``)."""
    if signal == "update":
        return update_factors(u, s, vt, r, scale)
    if signal == "gradient":
        return gradient_factors(u, s, vt, r, gamma)
    raise ValueError(f"unknown signal {signal!r} (choose from {', '.join(SIGNALS)})")


def init_product(signal: str, u: np.ndarray, s: np.ndarray, vt: np.ndarray, r: int, scale: float,
                 gamma: float = LORA_ONE_GAMMA) -> np.ndarray:
    """The float64 matrix ``s·B·A`` the init stands for: ``ΔW_r`` (update) or ``−(s/γ)·G_r/σ₁`` (gradient)."""
    top = (np.asarray(u[:, :r], dtype=np.float64) * np.asarray(s[:r], dtype=np.float64)) @ np.asarray(vt[:r], dtype=np.float64)
    if signal == "update":
        return top
    if signal == "gradient":
        return -(scale / (gamma * float(s[0]))) * top if s[0] > 0 else np.zeros_like(top)
    raise ValueError(f"unknown signal {signal!r} (choose from {', '.join(SIGNALS)})")


def init_norm(signal: str, s: np.ndarray, r: int, scale: float, gamma: float = LORA_ONE_GAMMA) -> float:
    """``‖s·B·A‖_F`` from the singular values alone: ``‖σ_{1..r}‖`` (update), ``(s/γ)·‖σ_{1..r}‖/σ₁`` (gradient)."""
    top = float(np.sqrt(np.sum(np.asarray(s[:r], dtype=np.float64) ** 2)))
    if signal == "update":
        return top
    return scale / gamma * top / float(s[0]) if s[0] > 0 else 0.0

"""Frobenius norms of low-rank products and of their differences, computed from the factors alone.

``‖L R‖_F`` for ``L`` (``m x k``) and ``R`` (``k x n``) never forms the ``m x n`` product: with the reduced QR
factorisations ``L = Q_L T_L`` and ``Rᵀ = Q_R T_R``, ``L R = Q_L (T_L T_Rᵀ) Q_Rᵀ`` and, ``Q_L`` and ``Q_R`` having
orthonormal columns, ``‖L R‖_F = ‖T_L T_Rᵀ‖_F`` — the norm of a ``k x k`` core (the same identity as
:meth:`rankscope.io.adapters.LoraModule.factored_svd`).  The difference of two LoRA updates is one more such
product: ``s₁B₁A₁ − s₂B₂A₂ = [s₁B₁, −s₂B₂] · [A₁; A₂]``, a core of size ``(r₁ + r₂)``.  Householder QR is backward
stable, so the result is accurate to about ``ε·‖L‖·‖R‖`` with no cancellation between ``‖X‖²`` and ``‖Y‖²``
(the Gram identity ``‖X − Y‖² = ‖X‖² + ‖Y‖² − 2⟨X, Y⟩`` loses half the digits when ``X ≈ Y``).
"""

from __future__ import annotations

import numpy as np


def product_norm(left: np.ndarray, right: np.ndarray) -> float:
    """``‖left @ right‖_F`` (float64) from the QR factors of ``left`` and ``rightᵀ`` (no ``m x n`` product)."""
    left = np.asarray(left, dtype=np.float64)
    right = np.asarray(right, dtype=np.float64)
    if left.shape[1] != right.shape[0]:
        raise ValueError(f"inner dimensions differ: {left.shape} @ {right.shape}")
    if left.size == 0 or right.size == 0:
        return 0.0
    t_left = np.linalg.qr(left, mode="r")
    t_right = np.linalg.qr(right.T, mode="r")
    return float(np.linalg.norm(t_left @ t_right.T))


def difference_norm(b1: np.ndarray, a1: np.ndarray, s1: float, b2: np.ndarray, a2: np.ndarray, s2: float) -> float:
    """``‖s₁·B₁·A₁ − s₂·B₂·A₂‖_F`` for ``B`` (``out x r``) and ``A`` (``r x in``) factors, via :func:`product_norm`."""
    b1, a1 = np.asarray(b1, dtype=np.float64), np.asarray(a1, dtype=np.float64)
    b2, a2 = np.asarray(b2, dtype=np.float64), np.asarray(a2, dtype=np.float64)
    return product_norm(np.hstack([s1 * b1, -s2 * b2]), np.vstack([a1, a2]))

"""numerics.linalg.gram_spectrum (float64 Gram + LAPACK syevd) against closed forms and float64 LAPACK SVD."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from rankscope.numerics import linalg


def planted(rows: int, cols: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``U diag(σ) Vᵀ`` with orthonormal U, V and σ from 1 down to 1e-3 (so σ is known in closed form)."""
    rng = np.random.default_rng(seed)
    k = min(rows, cols)
    u = np.linalg.qr(rng.standard_normal((rows, k)))[0]
    v = np.linalg.qr(rng.standard_normal((cols, k)))[0]
    sigma = np.geomspace(1.0, 1e-3, k)
    return (u * sigma) @ v.T, sigma


def split(d: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    edges = np.cumsum([0, *sizes])
    assert edges[-1] == d.shape[0]
    return [np.ascontiguousarray(d[a:b]) for a, b in zip(edges[:-1], edges[1:], strict=True)]


@pytest.mark.parametrize(("rows", "cols", "sizes"), [
    (300, 120, [100, 0, 77, 123]),  # tall, uneven blocks, an empty one
    (120, 120, [120]),  # square, one block
    (90, 250, [40, 50]),  # wide: D Dᵀ
])
def test_closed_form_and_lapack(rows, cols, sizes):
    d, sigma = planted(rows, cols, seed=rows + cols)
    got = linalg.gram_spectrum(iter(split(d, sizes)), rows, cols)
    assert got.shape == sigma.shape
    # Gram route: |Δσ_i| ≲ eps·σ₁²/σ_i ≤ 1e3·eps here
    assert np.max(np.abs(got - sigma)) <= 1e-11
    assert np.max(np.abs(got - scipy.linalg.svdvals(d))) <= 1e-11
    assert np.all(np.diff(got) <= 0)


def test_float32_and_non_contiguous_blocks():
    d, _ = planted(200, 80, seed=3)
    d32 = d.astype(np.float32)
    blocks = [d32[:50], np.asfortranarray(d32[50:130]), d32[130:][:, ::1]]
    got = linalg.gram_spectrum(iter(blocks), 200, 80)
    ref = scipy.linalg.svdvals(d32.astype(np.float64))  # the float64 of the stored values
    assert np.max(np.abs(got - ref)) <= 1e-11


def test_rank_deficient_has_zero_tail():
    rng = np.random.default_rng(5)
    d = rng.standard_normal((150, 4)) @ rng.standard_normal((4, 100))
    got = linalg.gram_spectrum(iter(split(d, [75, 75])), 150, 100)
    ref = scipy.linalg.svdvals(d)
    assert np.max(np.abs(got[:4] - ref[:4])) <= 1e-12 * ref[0]
    assert np.all(got[4:] >= 0) and np.max(got[4:]) <= 1e-6 * ref[0]  # sqrt of round-off, clipped at 0


@pytest.mark.parametrize(("rows", "cols"), [(0, 5), (5, 0), (0, 0)])
def test_empty_consumes_the_blocks(rows, cols):
    seen = []

    def blocks():
        seen.append(True)
        yield np.zeros((rows, cols))

    assert linalg.gram_spectrum(blocks(), rows, cols).shape == (0,)
    assert seen == [True]

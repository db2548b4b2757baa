"""Subspace similarity, captured energy, intruder dimensions and amplification on planted cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from rankscope.compare import compare_module
from rankscope.io.adapters import LoraModule
from rankscope.numerics import similarity as sim
from rankscope.pairing.bind import BoundModule


def orthonormal(n, k, seed):
    return ortho_group.rvs(n, random_state=seed)[:, :k]


def test_phi_identical_subspaces_is_one():
    u = orthonormal(40, 8, 0)
    grid = sim.phi_grid(u, u)
    np.testing.assert_allclose(np.diag(grid), 1.0, atol=1e-12)
    # nested: top-i of U is inside top-j of U for i <= j, so φ(i, j) = 1 everywhere
    np.testing.assert_allclose(grid, 1.0, atol=1e-12)
    # same subspace, rotated basis: φ(k, k) = 1 still
    rot = ortho_group.rvs(8, random_state=3)
    assert sim.phi_grid(u, u @ rot)[-1, -1] == pytest.approx(1.0, abs=1e-12)


def test_phi_orthogonal_subspaces_closed_form():
    q = orthonormal(30, 10, 1)
    u1, u2 = q[:, :4], q[:, 4:10]
    np.testing.assert_allclose(sim.phi_grid(u1, u2), 0.0, atol=1e-12)
    # partly shared: u2 = [q0, q5, q6]: φ(i, j) = (#shared among top-i and top-j) / min(i, j)
    u2 = q[:, [0, 5, 6]]
    grid = sim.phi_grid(q[:, :4], u2)
    expected = np.array([[1 / min(i, j) for j in range(1, 4)] for i in range(1, 5)])
    np.testing.assert_allclose(grid, expected, atol=1e-12)


def test_phi_random_baseline_matches_sampling():
    n, i, j = 64, 4, 8
    values = [sim.phi_grid(orthonormal(n, i, s), orthonormal(n, j, 1000 + s))[-1, -1] for s in range(300)]
    expected = sim.phi_random_baseline(n, i, j)[-1, -1]
    assert expected == max(i, j) / n
    stderr = np.std(values) / np.sqrt(len(values))
    assert abs(np.mean(values) - expected) < 4 * stderr


def test_principal_angles_and_phi_agree():
    u1, u2 = orthonormal(50, 5, 4), orthonormal(50, 5, 5)
    angles = sim.principal_angles(u1, u2)
    assert sim.phi_grid(u1, u2)[-1, -1] == pytest.approx(np.mean(np.cos(angles) ** 2), rel=1e-10)
    assert np.all(sim.principal_angles(u1, u1) < 1e-6)


def test_captured_energy_never_exceeds_eckart_young():
    rng = np.random.default_rng(0)
    delta = rng.standard_normal((40, 30)) @ np.diag(np.geomspace(1, 1e-2, 30)) @ rng.standard_normal((30, 30))
    s = np.linalg.svd(delta, compute_uv=False)
    for r in (1, 3, 8):
        optimum = np.sum(s[:r] ** 2) / np.sum(s**2)
        for seed in range(20):
            u, v = orthonormal(40, r, seed), orthonormal(30, r, 100 + seed)
            for value in (sim.captured_energy(delta, u=u), sim.captured_energy(delta, v=v),
                          sim.captured_energy(delta, u, v)):
                assert 0 <= value <= optimum + 1e-12
        # the top-r singular subspaces attain it
        uu, _, vt = np.linalg.svd(delta)
        assert sim.captured_energy(delta, uu[:, :r], vt[:r].T) == pytest.approx(optimum, rel=1e-10)


def test_intruders_zero_for_zero_delta_and_positive_for_planted():
    rng = np.random.default_rng(1)
    n = 40
    u_b, v_b = orthonormal(n, n, 7), orthonormal(n, n, 8)
    s_b = np.geomspace(10, 0.1, n)
    w = u_b @ np.diag(s_b) @ v_b.T
    scores = sim.intruder_scores(np.linalg.svd(w)[0][:, :10], np.linalg.svd(w)[0])
    assert sim.intruder_count(scores, 0.5) == 0
    # planted: a strong rank-1 update along x, orthogonal to the base's top-10 left singular vectors and
    # spread evenly over the remaining 30 (so its best |cos| with any base vector is small)
    x = u_b[:, 10:] @ (np.ones(n - 10) / np.sqrt(n - 10))
    y = v_b[:, 10:] @ (np.ones(n - 10) / np.sqrt(n - 10))
    delta = 50.0 * np.outer(x, y)
    u_tuned = np.linalg.svd(w + delta)[0][:, :10]
    assert abs(u_tuned[:, 0] @ x) > 0.99
    scores = sim.intruder_scores(u_tuned, np.linalg.svd(w)[0])
    assert sim.intruder_count(scores, 0.5) >= 1
    assert scores[0] == pytest.approx(1 / np.sqrt(n - 10), abs=0.02)
    del rng


def test_amplification_factor_closed_form():
    n = 20
    u_b, v_b = orthonormal(n, n, 11), orthonormal(n, n, 12)
    s_b = np.arange(n, 0, -1, dtype=float)
    w = u_b @ np.diag(s_b) @ v_b.T
    # ΔW = 3 u_k v_kᵀ with (u_k, v_k) the base's k-th singular pair → ‖ΔW‖ / |σ_k(W)| = 3 / s_b[k]
    k = 15
    delta = 3.0 * np.outer(u_b[:, k], v_b[:, k])
    assert sim.amplification_factor(delta, w, 1) == pytest.approx(3.0 / s_b[k], rel=1e-9)
    assert sim.amplification_factor(np.zeros_like(w), w, 1) == 0.0


def test_factored_cosine_equals_dense():
    rng = np.random.default_rng(2)
    b1, a1, b2, a2 = (rng.standard_normal(s) for s in ((30, 3), (3, 20), (30, 5), (5, 20)))
    dense = sim.cosine_similarity(b1 @ a1, b2 @ a2)
    assert sim.factored_cosine(b1, a1, b2, a2) == pytest.approx(dense, rel=1e-10)
    assert sim.factored_cosine(b1, a1, b1, a1) == pytest.approx(1.0)


def test_compare_module_when_lora_equals_truncated_full_update():
    """LoRA = best rank-r approximation of ΔW_full: optimum attained, φ = 1 on the top-r, cosine = √energy."""
    rng = np.random.default_rng(3)
    m, n, r = 48, 36, 4
    w = rng.standard_normal((m, n))
    delta = orthonormal(m, 12, 20) @ np.diag(np.geomspace(1, 0.05, 12)) @ orthonormal(n, 12, 21).T
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    lm = LoraModule("x", u[:, :r] * np.sqrt(s[:r]), np.sqrt(s[:r])[:, None] * vt[:r], scale=1.0, alpha=4)
    row, grids, amp, intr = compare_module(w, delta, BoundModule("x", lm, "x.weight"), phi_max=8)
    optimum = np.sum(s[:r] ** 2) / np.sum(s**2)
    assert row["energy_optimal"] == pytest.approx(optimum)
    assert row["energy_both"] == pytest.approx(optimum) and row["energy_col"] == pytest.approx(optimum)
    assert row["energy_vs_optimal"] == pytest.approx(1.0)
    assert row["phi_left_r"] == pytest.approx(1.0) and row["phi_right_1"] == pytest.approx(1.0)
    assert row["cosine"] == pytest.approx(np.sqrt(optimum))
    assert row["norm_ratio"] == pytest.approx(np.sqrt(optimum))
    assert grids["x:left"].shape == (8, r)
    # same top-r directions, so only the numerator ‖ΔW‖_F differs: ‖ΔW_full‖ / ‖ΔW_lora‖ = 1/√optimum
    assert row["amp_full_r"] / row["amp_lora_r"] == pytest.approx(1 / np.sqrt(optimum))
    assert [a["rank"] for a in amp] == [1, 2, 4]
    assert len(intr) == 9

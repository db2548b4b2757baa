"""rankscope.numerics.metrics against closed forms and explicit numpy constructions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rankscope.numerics import metrics

# --------------------------------------------------------------------------------------------------
# stable rank
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_stable_rank_flat_spectrum_is_n(n):
    assert metrics.stable_rank(np.full(n, 0.37)) == pytest.approx(n, rel=1e-12)


def test_stable_rank_hand_value_and_definition():
    s = np.array([3.0, 2.0, 1.0, 1.0, 1.0])
    assert metrics.stable_rank(s) == pytest.approx(16 / 9, rel=1e-14)
    # ||A||_F^2 / ||A||_2^2 of an explicit matrix
    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 20))
    sigma = np.linalg.svd(a, compute_uv=False)
    assert metrics.stable_rank(sigma) == pytest.approx(np.linalg.norm(a, "fro") ** 2 / np.linalg.norm(a, 2) ** 2,
                                                        rel=1e-12)


def test_stable_rank_rank_k_flat_with_zeros():
    s = np.array([2.0, 2.0, 2.0, 0.0, 0.0, 0.0])
    assert metrics.stable_rank(s) == pytest.approx(3.0, rel=1e-14)


# --------------------------------------------------------------------------------------------------
# entropy effective rank (Roy & Vetterli 2007, p_i = sigma_i / sum sigma)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 10, 200])
def test_effective_rank_flat_is_n(n):
    assert metrics.effective_rank(np.full(n, 5.0)) == pytest.approx(n, rel=1e-12)


def test_effective_rank_single_nonzero_is_one():
    s = np.zeros(50)
    s[0] = 4.2
    assert metrics.effective_rank(s) == pytest.approx(1.0, abs=1e-15)


def test_effective_rank_flat_k_then_zeros_is_k():
    s = np.array([1.5] * 4 + [0.0] * 6)
    assert metrics.effective_rank(s) == pytest.approx(4.0, rel=1e-12)


def test_effective_rank_uses_singular_values_not_energies():
    s = np.array([3.0, 2.0, 1.0, 1.0, 1.0])
    p = np.array([3, 2, 1, 1, 1]) / 8
    h = -sum(pi * math.log(pi) for pi in p)
    assert metrics.effective_rank(s) == pytest.approx(math.exp(h), rel=1e-13)
    # the energy convention would give a different number: make sure it is not that one
    e = s**2 / (s**2).sum()
    assert abs(metrics.effective_rank(s) - math.exp(-(e * np.log(e)).sum())) > 0.3


def test_effective_rank_two_values_closed_form():
    # sigma = (a, b): p = (a, b)/(a+b); for (3, 1): H = -(3/4 ln 3/4 + 1/4 ln 1/4)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert metrics.effective_rank(np.array([3.0, 1.0])) == pytest.approx(math.exp(h), rel=1e-14)


# --------------------------------------------------------------------------------------------------
# energy ranks, captured energy, truncation error
# --------------------------------------------------------------------------------------------------

# energies 9, 4, 1, 1, 1 of 16: cumulative 0.5625, 0.8125, 0.875, 0.9375, 1 (all exact in binary)
HAND = np.array([3.0, 2.0, 1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    "tau, k",
    [(0.1, 1), (0.5, 1), (0.5625, 1), (0.56251, 2), (0.8, 2), (0.8125, 2), (0.85, 3), (0.875, 3), (0.9, 4),
     (0.9375, 4), (0.99, 5), (1.0, 5)],
)
def test_energy_rank_hand_spectrum(tau, k):
    assert metrics.energy_rank(HAND, tau) == k


def test_energy_fraction_hand_spectrum():
    np.testing.assert_allclose(metrics.energy_fraction(HAND), [0.5625, 0.8125, 0.875, 0.9375, 1.0], rtol=0, atol=1e-15)


def test_energy_rank_exact_low_rank_reaches_tau_one_at_rank():
    s = np.array([3.0, 2.0, 1.0, 0.0, 0.0, 0.0])
    assert metrics.energy_rank(s, 1.0) == 3
    assert metrics.energy_rank(s, 0.99) == 3


def test_energy_rank_is_monotone_in_tau():
    rng = np.random.default_rng(3)
    s = np.sort(rng.exponential(size=100))[::-1]
    ks = [metrics.energy_rank(s, t) for t in np.linspace(0.01, 1.0, 60)]
    assert ks == sorted(ks)
    assert ks[-1] == 100


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.01, 2.0])
def test_energy_rank_rejects_tau_outside_unit_interval(tau):
    with pytest.raises(ValueError):
        metrics.energy_rank(HAND, tau)


def test_captured_energy_and_truncation_error_match_eckart_young():
    rng = np.random.default_rng(11)
    a = rng.standard_normal((40, 30)) @ np.diag(np.geomspace(1, 1e-3, 30)) @ rng.standard_normal((30, 30))
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    total = np.linalg.norm(a, "fro")
    for r in range(0, 31):
        a_r = (u[:, :r] * s[:r]) @ vt[:r]
        err = np.linalg.norm(a - a_r, "fro") / total
        captured = np.linalg.norm(a_r, "fro") ** 2 / total**2
        assert metrics.captured_energy(s, r) == pytest.approx(captured, abs=1e-12), r
        assert metrics.truncation_error(s, r) == pytest.approx(err, abs=1e-7), r
        assert metrics.truncation_error(s, r) ** 2 + metrics.captured_energy(s, r) == pytest.approx(1.0, abs=1e-12)
    # beyond full rank: everything captured, no error
    assert metrics.captured_energy(s, 100) == pytest.approx(1.0, abs=1e-15)
    assert metrics.truncation_error(s, 100) == pytest.approx(0.0, abs=1e-7)
    assert metrics.captured_energy(s, 0) == 0.0
    assert metrics.truncation_error(s, 0) == pytest.approx(1.0, abs=1e-15)


def test_truncation_error_hand_values():
    # captured energy of rank 2 = 13/16 -> error sqrt(3/16)
    assert metrics.captured_energy(HAND, 2) == pytest.approx(13 / 16, abs=1e-15)
    assert metrics.truncation_error(HAND, 2) == pytest.approx(math.sqrt(3 / 16), abs=1e-15)
    assert metrics.truncation_error(HAND, 1) == pytest.approx(math.sqrt(7 / 16), abs=1e-15)


# --------------------------------------------------------------------------------------------------
# Gavish–Donoho
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "beta, expected",
    [
        (1.0, 0.56 - 0.95 + 1.82 + 1.43),  # 2.86
        (0.5, 0.07 - 0.2375 + 0.91 + 1.43),  # 2.1725
        (0.25, 0.00875 - 0.059375 + 0.455 + 1.43),  # 1.834375
        (0.0, 1.43),
        (2 / 3, 0.56 * 8 / 27 - 0.95 * 4 / 9 + 1.82 * 2 / 3 + 1.43),
    ],
)
def test_gavish_donoho_omega_polynomial(beta, expected):
    assert metrics.gavish_donoho_omega(beta) == pytest.approx(expected, abs=1e-12)


def test_gavish_donoho_omega_square_matches_paper():
    # Gavish & Donoho (2014): for square matrices the optimal coefficient is ~2.858
    assert metrics.gavish_donoho_omega(1.0) == pytest.approx(2.858, abs=0.005)


def test_gavish_donoho_rank_hand_value():
    s = np.array([10.0, 5.0, 1.0, 1.0, 1.0])  # square 5x5: threshold 2.86 * median(1) = 2.86
    assert metrics.gavish_donoho_rank(s, 5, 5) == 2
    # 7 x 14: beta = 1/2 -> omega 2.1725, median 1: 2.2 survives, 2.1 does not
    s = np.array([10.0, 2.2, 2.1, 1.0, 1.0, 1.0, 1.0])
    assert metrics.gavish_donoho_rank(s, 7, 14) == 2
    assert metrics.gavish_donoho_rank(s, 14, 7) == 2
    # same values, square: omega 2.86 -> only 10 survives
    assert metrics.gavish_donoho_rank(s, 7, 7) == 1


def test_gavish_donoho_threshold_is_strict():
    # a value exactly at omega(beta) * median is not kept ("keep sigma_i > threshold")
    omega = 0.56 * 1.0**3 - 0.95 * 1.0**2 + 1.82 * 1.0 + 1.43  # beta = 1, same float expression
    s = np.array([10.0, 2.0 * omega, 2.0, 2.0, 2.0])  # median 2: threshold 2 * omega, exact
    assert metrics.gavish_donoho_rank(s, 5, 5) == 1
    s[1] = np.nextafter(2.0 * omega, np.inf)
    assert metrics.gavish_donoho_rank(s, 5, 5) == 2


@pytest.mark.parametrize("k", [1, 3, 5, 8])
def test_gavish_donoho_recovers_planted_rank(k):
    rng = np.random.default_rng(100 + k)
    m, n = 300, 200
    u = np.linalg.qr(rng.standard_normal((m, k)))[0]
    v = np.linalg.qr(rng.standard_normal((n, k)))[0]
    signal_s = np.linspace(120, 70, k)  # noise bulk edge ~ sqrt(300) + sqrt(200) ~ 31.5
    x = (u * signal_s) @ v.T + rng.standard_normal((m, n))
    sigma = np.linalg.svd(x, compute_uv=False)
    assert metrics.gavish_donoho_rank(sigma, m, n) == k
    assert metrics.gavish_donoho_rank(sigma, n, m) == k  # beta is symmetric
    # noise alone: nothing survives
    noise_sigma = np.linalg.svd(rng.standard_normal((m, n)), compute_uv=False)
    assert metrics.gavish_donoho_rank(noise_sigma, m, n) == 0


# --------------------------------------------------------------------------------------------------
# zero matrix, summarize, tau_column
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 17])
def test_zero_spectrum_gives_zeros_and_no_nan(size):
    s = np.zeros(size)
    assert metrics.stable_rank(s) == 0
    assert metrics.effective_rank(s) == 0
    assert metrics.energy_rank(s, 0.9) == 0
    assert metrics.energy_rank(s, 1.0) == 0
    assert metrics.captured_energy(s, 3) == 0
    assert metrics.truncation_error(s, 3) == 0
    assert metrics.gavish_donoho_rank(s, 17, 40) == 0
    assert not np.isnan(metrics.energy_fraction(s)).any()
    summary = metrics.summarize(s, 17, 40)
    assert all(v == 0 for v in summary.values()), summary
    assert not any(isinstance(v, float) and math.isnan(v) for v in summary.values())


def test_summarize_columns_and_values():
    summary = metrics.summarize(HAND, 5, 5, (0.5, 0.9, 0.99))
    assert list(summary) == ["sigma_max", "stable_rank", "effective_rank", "rank_50", "rank_90", "rank_99", "gd_rank"]
    assert summary["sigma_max"] == 3.0
    assert summary["stable_rank"] == pytest.approx(16 / 9)
    assert (summary["rank_50"], summary["rank_90"], summary["rank_99"]) == (1, 4, 5)
    assert summary["gd_rank"] == 1  # median 1, threshold 2.86: only 3 survives


@pytest.mark.parametrize(
    "tau, name",
    [(0.5, "rank_50"), (0.9, "rank_90"), (0.99, "rank_99"), (0.995, "rank_99.5"), (0.999, "rank_99.9"),
     (1.0, "rank_100"), (0.8, "rank_80"), (0.07, "rank_7"), (0.95, "rank_95"), (0.3, "rank_30")],
)
def test_tau_column_naming(tau, name):
    assert metrics.tau_column(tau) == name


def test_summarize_custom_taus_use_tau_column():
    summary = metrics.summarize(HAND, 5, 5, (0.8125, 0.995))
    assert summary[metrics.tau_column(0.8125)] == 2
    assert summary["rank_99.5"] == 5

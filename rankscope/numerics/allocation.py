"""Per-module rank rules and the global allocation of a LoRA parameter budget (pure functions, no I/O).

See :mod:`rankscope.ranks` for how they are used.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KOHYA_MIN_SV = 1e-6
GAINS = ("absolute", "relative")


def kohya_rank(sigma: np.ndarray, method: str, target: float) -> int:
    """Rank chosen by kohya-ss sd-scripts ``networks/resize_lora.py`` (``rank_resize``), before its cap.

    With ``S`` descending (their ``index_sv_*`` functions, ``searchsorted`` = first index with ``c ≥ x``):

    * ``fro`` (``sv_fro``): smallest ``k`` with ``sqrt(Σ_{i≤k} σ_i² / Σσ²) ≥ t``, i.e. cumulative
      energy ``≥ t²`` — kohya compares ``cumsum(S²)/ΣS²`` with ``t**2`` (``--rule kohya-fro:0.9``
      keeps 90 % of the Frobenius *norm*, 81 % of the energy);
    * ``ratio`` (``sv_ratio``): ``#{σ_i > σ_1 / t}`` (strictly greater);
    * ``cumulative`` (``sv_cumulative``): smallest ``k`` with ``Σ_{i≤k} σ_i / Σσ ≥ t`` (singular values,
      not their squares).

    kohya then clamps the rank to ``[1, len(S)]`` and gives rank 1 to a matrix with ``σ_1 ≤ 1e-6``
    (``MIN_SV``); the cap by its ``--new_rank`` is rankscope's ``max_rank``.
    """
    s = np.asarray(sigma, dtype=np.float64)
    n = s.size
    if n == 0:
        return 0
    if s[0] <= KOHYA_MIN_SV:
        return 1
    if method == "fro":
        e = s**2
        index = int(np.searchsorted(np.cumsum(e) / e.sum(), target**2, side="left"))
    elif method == "cumulative":
        index = int(np.searchsorted(np.cumsum(s) / s.sum(), target, side="left"))
    elif method == "ratio":
        index = int(np.count_nonzero(s > s[0] / target)) - 1
    else:
        raise ValueError(f"unknown kohya method {method!r}")
    return max(0, min(index, n - 1)) + 1


# --------------------------------------------------------------------------------------------------
# allowed ranks
# --------------------------------------------------------------------------------------------------


def rank_levels(dim: int, min_rank: int = 1, max_rank: int | None = None,
                snap: Sequence[int] | None = None) -> np.ndarray:
    """Allowed ranks of an ``m × n`` module with ``dim = min(m, n)``, ascending (may be empty).

    Without ``snap``: every integer in ``[min_rank, min(max_rank, dim)]``.  With ``snap``: the snap values
    in that interval, plus 0 when ``min_rank`` is 0 (rank 0 = the module is not adapted).
    """
    top = dim if max_rank is None else min(max_rank, dim)
    if snap is None:
        return np.arange(min_rank, top + 1, dtype=np.int64)
    values = [s for s in snap if min_rank <= s <= top]
    if min_rank == 0:
        values = [0, *values]
    return np.array(sorted(set(values)), dtype=np.int64)


def snap_up(k: int, levels: np.ndarray) -> int:
    """The smallest allowed rank ``≥ k`` (the largest allowed rank when ``k`` exceeds them all)."""
    i = int(np.searchsorted(levels, k, side="left"))
    return int(levels[min(i, levels.size - 1)])


# --------------------------------------------------------------------------------------------------
# global allocation
# --------------------------------------------------------------------------------------------------


@dataclass
class Allocation:
    """Result of :func:`greedy_allocation`.

    Attributes:
        ranks: rank per module.
        params: ``Σ r_i (m_i + n_i)``.
        value: the objective ``Σ_i w_i Σ_{k≤r_i} σ_{i,k}²`` (``w_i = 1`` absolute, ``1/‖ΔW_i‖²`` relative).
        bound: an upper bound on the best value any allocation within the budget can reach (the
            linear-programming relaxation, see :func:`greedy_allocation`).
        exact: the allocation is provably optimal (``value`` reaches ``bound``, or no step was ever
            refused for lack of budget).
        start: ``"minimum"`` or ``"uniform"``, the starting point of the greedy that won.
    """

    ranks: np.ndarray
    params: int
    value: float
    bound: float
    exact: bool
    start: str = "minimum"


@dataclass
class _Problem:
    """``max Σ_i F_i(r_i)`` s.t. ``Σ_i c_i r_i ≤ B``, ``r_i ∈ levels_i``, with ``F_i(r) = w_i Σ_{k≤r} σ_{i,k}²``."""

    cum: list[np.ndarray]  # cum[i][r] = F_i(r), r = 0..dim_i
    costs: np.ndarray  # c_i = m_i + n_i
    levels: list[np.ndarray]

    def value(self, ranks: Sequence[int]) -> float:
        return float(sum(c[int(r)] for c, r in zip(self.cum, ranks, strict=True)))

    def cost(self, ranks: Sequence[int]) -> int:
        return int(np.dot(self.costs, np.asarray(ranks, dtype=np.int64)))


def _problem(spectra: Sequence[np.ndarray], shapes: Sequence[tuple[int, int]], min_rank: int, max_rank: int | None,
             snap: Sequence[int] | None, gain: str) -> _Problem:
    if gain not in GAINS:
        raise ValueError(f"gain must be one of {GAINS}, got {gain!r}")
    cum, levels = [], []
    for sigma, (m, n) in zip(spectra, shapes, strict=True):
        e = np.asarray(sigma, dtype=np.float64) ** 2
        total = float(e.sum())
        w = 1.0 if gain == "absolute" else (1.0 / total if total > 0 else 0.0)
        cum.append(np.concatenate([[0.0], np.cumsum(e) * w]))
        lv = rank_levels(min(m, n), min_rank, max_rank, snap)
        if lv.size == 0:
            raise ValueError(f"no allowed rank for a {m}x{n} module (min_rank={min_rank}, max_rank={max_rank}, "
                             f"snap={snap})")
        levels.append(lv)
    costs = np.array([m + n for m, n in shapes], dtype=np.int64)
    return _Problem(cum, costs, levels)


def _greedy(p: _Problem, start: Sequence[int], budget: int) -> tuple[np.ndarray, float, bool]:
    """Greedy by gain per parameter from level indices ``start``; returns (ranks, LP bound, refused a step).

    Each step moves one module to its next allowed rank ``a → b``: cost ``(b − a)(m + n)``, gain
    ``F(b) − F(a)``.  Because ``σ²`` is non-increasing these ratios are non-increasing along a module, so
    popping the best ratio from a heap visits all steps in globally non-increasing order.  A step
    that does not fit the remaining budget freezes its module (its later steps are no better per
    parameter and cannot be taken before it); the others go on, which spends the leftover.  Steps
    with no gain are never taken.
    """
    idx = list(start)
    ranks = np.array([lv[j] for lv, j in zip(p.levels, idx, strict=True)], dtype=np.int64)
    remaining = budget - p.cost(ranks)
    value = p.value(ranks)
    heap: list[tuple[float, int]] = []

    def push(i: int) -> None:
        j = idx[i]
        if j + 1 < p.levels[i].size:
            a, b = int(p.levels[i][j]), int(p.levels[i][j + 1])
            gain = p.cum[i][b] - p.cum[i][a]
            if gain > 0:
                heapq.heappush(heap, (-gain / ((b - a) * p.costs[i]), i))

    for i in range(len(idx)):
        push(i)
    bound, refused = None, False
    while heap:
        neg_ratio, i = heapq.heappop(heap)
        a, b = int(p.levels[i][idx[i]]), int(p.levels[i][idx[i] + 1])
        cost = (b - a) * int(p.costs[i])
        if cost > remaining:
            if bound is None:  # LP optimum: everything taken so far plus this step, fractionally
                bound = value + remaining * -neg_ratio
            refused = True
            continue
        idx[i] += 1
        ranks[i] = b
        remaining -= cost
        value += p.cum[i][b] - p.cum[i][a]
        push(i)
    return ranks, (value if bound is None else bound), refused


def uniform_rank_for_budget(shapes: Sequence[tuple[int, int]], budget: int, *, min_rank: int = 1,
                            max_rank: int | None = None, snap: Sequence[int] | None = None) -> tuple[int, np.ndarray]:
    """The uniform alternative: the largest ``u`` with ``Σ_i r_i(u) (m_i + n_i) ≤ budget``.

    ``r_i(u)`` is the largest allowed rank of module ``i`` (:func:`rank_levels`) not above ``u``, and at
    least its smallest allowed rank — i.e. rank ``u`` everywhere, capped at ``min(m, n)`` and
    ``max_rank``.  Candidates for ``u`` are the allowed ranks (the snap values with ``snap``).  Returns
    ``(u, ranks)``; raises ``ValueError`` when even the smallest allowed ranks exceed the budget.
    """
    levels = [rank_levels(min(m, n), min_rank, max_rank, snap) for m, n in shapes]
    costs = np.array([m + n for m, n in shapes], dtype=np.int64)

    def ranks_at(u: int) -> np.ndarray:
        return np.array([lv[max(0, int(np.searchsorted(lv, u, side="right")) - 1)] for lv in levels], dtype=np.int64)

    candidates = np.unique(np.concatenate(levels))
    lo, hi = 0, candidates.size - 1
    if int(np.dot(costs, ranks_at(int(candidates[0])))) > budget:
        raise ValueError(f"budget {budget} is below the cost of the smallest allowed ranks")
    while lo < hi:  # cost is non-decreasing in u: binary search for the last candidate that fits
        mid = (lo + hi + 1) // 2
        if int(np.dot(costs, ranks_at(int(candidates[mid])))) <= budget:
            lo = mid
        else:
            hi = mid - 1
    u = int(candidates[lo])
    return u, ranks_at(u)


def greedy_allocation(spectra: Sequence[np.ndarray], shapes: Sequence[tuple[int, int]], budget: int, *,
                      min_rank: int = 1, max_rank: int | None = None, snap: Sequence[int] | None = None,
                      gain: str = "absolute") -> Allocation:
    """Allocate ``budget`` trainable LoRA parameters over modules to maximise the captured energy.

    A rank-``r`` LoRA on an ``m × n`` module costs ``r (m + n)`` parameters and, at best
    (Eckart–Young), captures ``Σ_{k≤r} σ_k²`` of ``‖ΔW‖_F²``; so each rank-1 step costs ``m + n`` and
    gains the next ``σ_k²``.  The objective is ``Σ_i w_i Σ_{k≤r_i} σ_{i,k}²`` with

    * ``gain="absolute"`` (default), ``w_i = 1``: the energy of the whole update, i.e. it minimises
      ``Σ_i ‖ΔW_i − [ΔW_i]_{r_i}‖_F²``, the Eckart–Young error of the model's update taken as one
      block-diagonal matrix.  Energy is compared in the same units everywhere, so a module whose
      update is tiny or zero (an untouched pooler, noise) gets no rank beyond ``min_rank`` however
      flat its spectrum, and the result reads as "share of ``‖ΔW‖²`` captured".
    * ``gain="relative"``, ``w_i = 1/‖ΔW_i‖_F²``: maximises the *mean per-module* captured fraction;
      every module counts equally whatever the size of its update (useful when update sizes are not
      comparable across modules, e.g. differently scaled parameterisations).

    The budget problem is a knapsack with concave separable gains.  Greedy by gain per parameter
    (:func:`_greedy`) solves its linear relaxation exactly, so it is optimal whenever no step had to be
    refused for lack of budget, in particular when the steps taken in ratio order fill the budget
    exactly; otherwise its shortfall is below the gain of the one step refused first (``bound`` is the
    LP optimum).  Because that last knapsack step can leave greedy below the uniform allocation, the
    greedy is also run from the uniform allocation of :func:`uniform_rank_for_budget` (filling what
    uniform leaves); the better of the two is returned, which is never worse than uniform at the same
    budget.  ``min_rank``/``max_rank``/``snap`` restrict each module to :func:`rank_levels`; with ``snap``
    a step moves to the next allowed rank (its gain per parameter is an average of later, smaller
    ``σ²``, so the ratios stay non-increasing and the same argument holds).
    """
    p = _problem(spectra, shapes, min_rank, max_rank, snap, gain)
    low = [0] * len(p.levels)
    minimum = p.cost([lv[0] for lv in p.levels])
    if minimum > budget:
        raise ValueError(f"budget {budget} is below the minimum {minimum} (smallest allowed rank everywhere)")
    ranks, bound, refused = _greedy(p, low, budget)
    best = Allocation(ranks, p.cost(ranks), p.value(ranks), bound, not refused, "minimum")
    if refused:
        _, uniform = uniform_rank_for_budget(shapes, budget, min_rank=min_rank, max_rank=max_rank, snap=snap)
        start = [int(np.searchsorted(lv, r)) for lv, r in zip(p.levels, uniform, strict=True)]
        alt, _, _ = _greedy(p, start, budget)
        if p.value(alt) > best.value:
            best = Allocation(alt, p.cost(alt), p.value(alt), bound, False, "uniform")
    best.exact = best.exact or best.value >= bound * (1 - 1e-12)
    return best


@dataclass
class BudgetCurve:
    """Result of :func:`budget_curve`: captured share of ``Σ_i ‖ΔW_i‖²`` against LoRA parameters.

    Attributes:
        best_params, best_energy: the best allocation of each budget (ranks free in ``0..min(m, n)``); every point is
            an exact optimum, for the budget it spends.
        uniform_ranks, uniform_params, uniform_energy: rank ``r`` in every module (capped at ``min(m, n)``).
    """

    best_params: np.ndarray
    best_energy: np.ndarray
    uniform_ranks: np.ndarray
    uniform_params: np.ndarray
    uniform_energy: np.ndarray

    COLUMNS = ("allocation", "rank", "params", "captured_energy")

    def columns(self) -> dict[str, np.ndarray]:
        """The points as table columns (:data:`COLUMNS`: ``allocation`` ``best`` or ``uniform``; ``rank`` NaN for
        ``best``), the rows of ``budget_curve.csv``."""
        n, m = self.best_params.size, self.uniform_ranks.size
        return {"allocation": np.array(["best"] * n + ["uniform"] * m, dtype=object),
                "rank": np.r_[np.full(n, np.nan), self.uniform_ranks.astype(np.float64)],
                "params": np.r_[self.best_params, self.uniform_params].astype(np.int64),
                "captured_energy": np.r_[self.best_energy, self.uniform_energy]}


def budget_curve(spectra: Sequence[np.ndarray], shapes: Sequence[tuple[int, int]], points: int = 200,
                 all_ranks_to: int = 64) -> BudgetCurve:
    """The budget → captured-energy curve of rank allocations (absolute gain), and of uniform ranks.

    Best allocation: the rank-1 steps of every module (cost ``m + n``, gain ``σ_k²``) taken in order of gain per
    parameter, which is :func:`greedy_allocation` without limits on the ranks; at the budget ``N_j`` that the first
    ``j`` steps spend exactly it is optimal (no step is refused, the LP bound is reached), so each returned point
    ``(N_j, Σ gains / Σσ²)`` is an optimum.  ``points`` breakpoints are kept, geometrically spaced in ``N`` (plus
    the last).  Uniform: ranks ``1..all_ranks_to`` and then ``points`` geometrically spaced ranks up to the
    largest ``min(m, n)``.  Modules with ``ΔW = 0`` cost nothing here: pass only the live ones.
    """
    energies = [np.asarray(s, dtype=np.float64) ** 2 for s in spectra]
    costs = np.array([m + n for m, n in shapes], dtype=np.int64)
    total = float(sum(e.sum() for e in energies))
    if not energies or total <= 0:
        empty = np.zeros(0)
        return BudgetCurve(empty, empty, np.zeros(0, dtype=np.int64), empty, empty)
    gains = np.concatenate(energies)
    step_costs = np.concatenate([np.full(e.size, c, dtype=np.int64) for e, c in zip(energies, costs, strict=True)])
    order = np.argsort(-(gains / step_costs), kind="stable")  # stable: a module's equal steps stay in order
    keep = order[gains[order] > 0]
    cum_params = np.cumsum(step_costs[keep])
    cum_energy = np.cumsum(gains[keep]) / total
    targets = np.geomspace(cum_params[0], cum_params[-1], points)
    picks = np.unique(np.r_[np.searchsorted(cum_params, targets, side="right") - 1, cum_params.size - 1])
    picks = picks[picks >= 0]
    dims = np.array([e.size for e in energies], dtype=np.int64)
    top = int(dims.max())
    ranks = np.unique(np.r_[np.arange(1, min(all_ranks_to, top) + 1),
                            np.round(np.geomspace(1, top, points)).astype(np.int64)])
    cums = [np.concatenate([[0.0], np.cumsum(e)]) for e in energies]
    u_params = sum(np.minimum(ranks, d) * c for d, c in zip(dims, costs, strict=True)).astype(np.float64)
    u_energy = sum(c[np.minimum(ranks, c.size - 1)] for c in cums) / total
    return BudgetCurve(cum_params[picks].astype(np.float64), cum_energy[picks], ranks, u_params, u_energy)

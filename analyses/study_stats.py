"""Pure functions of the rank-choice study: equal-budget parameter accounting, the placebo shuffle, paired statistics.

Nothing here trains, reads files or imports torch; ``analyses/rank_choice.py`` calls these and
``tests/test_study_stats.py`` checks them against closed forms.

Parameter accounting (peft's LoRA on ``nn.Linear``): a module of weight shape ``(out, in)`` at rank ``r`` adds
``lora_A`` (``r × in``) and ``lora_B`` (``out × r``), i.e. ``r·(out + in)`` trainable parameters; AdaLoRA adds the
diagonal ``lora_E`` too, ``r·(out + in + 1)``.  A rank of 0 (module not adapted) costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

BUDGET_TOLERANCE = 0.01
"""Arms count as equal-budget when their trainable LoRA parameters differ from the budget by at most 1 %."""


# --------------------------------------------------------------------------------------------------
# parameter accounting
# --------------------------------------------------------------------------------------------------


def lora_parameters(shapes: Mapping[str, tuple[int, int]], ranks: Mapping[str, int], extra_per_rank: int = 0) -> int:
    """Exact trainable LoRA parameters: ``Σ rᵢ·(outᵢ + inᵢ + extra_per_rank)`` over the modules of ``ranks``.

    ``shapes[name] = (out, in)``; ``extra_per_rank=1`` counts AdaLoRA's ``lora_E``.  A module in ``ranks`` but not
    in ``shapes`` is a ``KeyError`` (a plan for another model must not be counted as if it fitted).
    """
    total = 0
    for name, r in ranks.items():
        if r < 0:
            raise ValueError(f"negative rank {r} for {name}")
        out_dim, in_dim = shapes[name]
        total += int(r) * (int(out_dim) + int(in_dim) + extra_per_rank)
    return total


def uniform_ranks(shapes: Mapping[str, tuple[int, int]], r: int) -> dict[str, int]:
    """Rank ``r`` in every module of ``shapes``."""
    return dict.fromkeys(shapes, int(r))


def budget_error(params: int, budget: int) -> float:
    """Relative difference ``(params − budget) / budget``."""
    return (params - budget) / budget


def within_budget(params: int, budget: int, tolerance: float = BUDGET_TOLERANCE) -> bool:
    """True when ``|params − budget| ≤ tolerance · budget``."""
    return abs(params - budget) <= tolerance * budget


def shuffled_ranks(shapes: Mapping[str, tuple[int, int]], ranks: Mapping[str, int], seed: int) -> dict[str, int]:
    """The placebo: the same multiset of ranks permuted across modules (seeded), at exactly the same budget.

    Ranks are permuted among modules of equal cost per rank (``out + in``): moving a rank from a 384×384 module to a
    384×1536 one would change the parameter count, so within every cost class the ranks are shuffled with
    ``numpy.random.default_rng(seed)`` (classes in increasing cost, modules in sorted name order).  The overall
    multiset of ranks and the exact parameter count are both kept.
    """
    rng = np.random.default_rng(seed)
    classes: dict[int, list[str]] = {}
    for name in sorted(ranks):
        out_dim, in_dim = shapes[name]
        classes.setdefault(int(out_dim) + int(in_dim), []).append(name)
    placebo: dict[str, int] = {}
    for cost in sorted(classes):
        names = classes[cost]
        values = [int(ranks[n]) for n in names]
        for name, i in zip(names, rng.permutation(len(names)), strict=True):
            placebo[name] = values[int(i)]
    return {name: placebo[name] for name in ranks}


# --------------------------------------------------------------------------------------------------
# paired statistics
# --------------------------------------------------------------------------------------------------


def paired_differences(arm: Mapping[int, float], reference: Mapping[int, float]) -> dict[int, float]:
    """``arm[s] − reference[s]`` for every seed ``s`` both have (the pairing: same seed, same data order)."""
    return {s: float(arm[s]) - float(reference[s]) for s in sorted(set(arm) & set(reference))}


def paired_bootstrap(arm: Mapping[int, float], reference: Mapping[int, float], *, resamples: int = 10_000,
                     level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Mean paired difference ``arm − reference`` and its percentile bootstrap interval, resampling seeds.

    The seeds common to both are the units: each resample draws as many seeds with replacement and averages their
    differences, so a seed's two runs always stay together.  Returns ``mean``, ``low``, ``high``, ``n`` (paired
    seeds), ``sd`` (of the differences, ddof=1; 0 for one seed) and ``level``.  Fewer than one common seed is a
    ``ValueError``.
    """
    diffs = paired_differences(arm, reference)
    if not diffs:
        raise ValueError("no seed in common: nothing to pair")
    d = np.array(list(diffs.values()), dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    mean = float(d.mean())
    # a constant difference must give a zero-width interval at it, not one float rounding away
    if np.ptp(d) == 0:
        low = high = mean
    return {"mean": mean, "low": float(min(low, mean)), "high": float(max(high, mean)), "n": int(d.size),
            "sd": float(d.std(ddof=1)) if d.size > 1 else 0.0, "level": level}


def paired_t_interval(arm: Mapping[int, float], reference: Mapping[int, float], level: float = 0.95) -> dict[str, Any]:
    """Student-t interval of the mean paired difference: ``d̄ ± t_{n−1, (1+level)/2} · s_d / √n``.

    The textbook small-sample interval (seeds are few; the percentile bootstrap is too narrow at n ≈ 8, most of
    all at the extreme levels a multiplicity correction asks for).  Needs ≥ 2 common seeds.
    """
    from scipy import stats

    d = np.array(list(paired_differences(arm, reference).values()), dtype=float)
    if d.size < 2:
        raise ValueError("a t interval needs at least two paired seeds")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, d.size - 1)) * sd / math.sqrt(d.size)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": int(d.size), "level": level}


def sign_flip_p(arm: Mapping[int, float], reference: Mapping[int, float]) -> float:
    """Exact two-sided p of the paired sign-flip (randomisation) test of "no difference".

    Under the null, each seed's difference is as likely to have either sign: the p value is the share of the
    ``2ⁿ`` sign patterns whose mean is at least as far from 0 as the observed one (so its smallest possible value
    is ``2/2ⁿ``: 0.0078 for 8 seeds).  Exact enumeration, n ≤ 20.
    """
    d = np.array(list(paired_differences(arm, reference).values()), dtype=float)
    if d.size == 0 or d.size > 20:
        raise ValueError(f"sign-flip test over {d.size} seeds: needs 1 to 20")
    signs = 1 - 2 * ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1)
    means = np.abs(signs @ d) / d.size
    observed = abs(float(d.mean()))
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


def verdict(low: float, high: float) -> str:
    """``wins`` (interval above 0), ``loses`` (below 0) or ``ties`` (covers 0)."""
    if low > 0:
        return "wins"
    if high < 0:
        return "loses"
    return "ties"


def gain_per_second(difference: float, extra_seconds: float) -> float | None:
    """Accuracy gained per extra second of cost (None when the arm costs no more than the reference)."""
    if extra_seconds <= 0 or not math.isfinite(extra_seconds):
        return None
    return difference / extra_seconds


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample SD (ddof=1; 0 for a single value)."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def gap_check(full: Sequence[float], lora: Sequence[float], min_gap: float = 0.03, min_sds: float = 4.0) -> dict[str, Any]:
    """Does full fine-tuning beat this uniform LoRA by ≥ ``min_gap`` and by ≥ ``min_sds`` seed SDs?

    The SD is the larger of the two arms' seed SDs (conservative).  Returns the gap, both means and SDs, the
    number of SDs and ``headroom`` (both conditions hold).
    """
    full_mean, full_sd = mean_sd(full)
    lora_mean, lora_sd = mean_sd(lora)
    gap = full_mean - lora_mean
    sd = max(full_sd, lora_sd)
    sds = gap / sd if sd > 0 else (math.inf if gap > 0 else 0.0)
    return {"full_mean": full_mean, "full_sd": full_sd, "lora_mean": lora_mean, "lora_sd": lora_sd, "gap": gap,
            "gap_in_sds": sds, "headroom": bool(gap >= min_gap and sds >= min_sds)}


def best_setting(rows: Sequence[Mapping[str, Any]], key: str = "lr") -> Any:
    """The ``key`` value with the highest mean ``validation_accuracy`` (ties: lower mean ``validation_loss``, then the
    smaller value)."""
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    if not groups:
        raise ValueError("no runs to choose from")

    def score(item: tuple[Any, list[Mapping[str, Any]]]) -> tuple[float, float, Any]:
        value, runs = item
        return (-float(np.mean([r["validation_accuracy"] for r in runs])),
                float(np.mean([r["validation_loss"] for r in runs])), value)

    return min(groups.items(), key=score)[0]


def settings_hash(settings: Mapping[str, Any]) -> str:
    """Short stable hash of a JSON-able settings dict (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]

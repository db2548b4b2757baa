"""rankscope.ranks / ``rankscope recommend``: every rule on planted spectra with hand-computed answers,
the greedy allocation against brute force and against uniform, kohya compatibility against a
transcription of kohya-ss ``resize_lora.py``, and the emitted config through real peft layers."""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from rankscope.cli.recommend import recommend_cmd
from rankscope.errors import RankscopeError
from rankscope.io.peft import check_lora_config, lora_config_dict
from rankscope.numerics.allocation import greedy_allocation, kohya_rank, rank_levels, snap_up, uniform_rank_for_budget
from rankscope.numerics.rank_rules import parse_alpha, parse_rule
from rankscope.pairing.align import assign_kinds
from rankscope.ranks import RankPlan, recommend
from rankscope.spectrum import SpectrumResult

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# --------------------------------------------------------------------------------------------------
# planted spectra (no checkpoints): a SpectrumResult built by hand
# --------------------------------------------------------------------------------------------------


def planted(mods: dict[str, tuple[int, int, list[float]]]) -> SpectrumResult:
    """``module -> (rows, cols, leading singular values)``; the rest of the ``min(m, n)`` values are 0."""
    kinds = assign_kinds(list(mods))
    rows, spectra = [], {}
    for name, (m, n, values) in mods.items():
        s = np.zeros(min(m, n))
        s[: len(values)] = sorted(values, reverse=True)
        spectra[name] = s
        layer, kind = kinds[name]
        rows.append({"module": name, "layer": layer, "kind": kind, "rows": m, "cols": n, "params": m * n,
                     "delta_norm": float(np.sqrt((s**2).sum()))})
    table = pd.DataFrame(rows)
    table["layer"] = table["layer"].astype("Int64")
    vectors = pd.DataFrame(columns=["module", "layer", "numel", "base_norm", "delta_norm", "rel_delta"])
    return SpectrumResult(table, spectra, vectors, {"command": "spectrum"})


def ranks_of(plan: RankPlan) -> dict[str, int]:
    return dict(zip(plan.table["module"], plan.table["rank"].astype(int), strict=True))


Q0, V0 = "encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value"
Q1, V1 = "encoder.layer.1.attention.self.query", "encoder.layer.1.attention.self.value"
AO0, FO0 = "encoder.layer.0.attention.output.dense", "encoder.layer.0.output.dense"


@pytest.fixture
def four() -> SpectrumResult:
    """σ chosen so every rule has a short hand computation.

    Q0 σ = (4, 2, 1, 1): σ² = 16, 4, 1, 1 (Σ 22): energy 0.727, 0.909, 0.955, 1; Σσ = 8: 0.5, 0.75, 0.875, 1.
    V0 σ = (3, 2, 1):     σ² = 9, 4, 1 (Σ 14): energy 0.643, 0.929, 1.
    Q1 σ = (10, 5, 1 × 8) in a 10 × 20 matrix: β = 0.5, ω = 2.1725, median 1 → GD keeps 10 and 5.
    V1: ΔW = 0.
    """
    return planted({
        Q0: (6, 6, [4, 2, 1, 1]),
        V0: (6, 6, [3, 2, 1]),
        Q1: (10, 20, [10, 5] + [1] * 8),
        V1: (6, 6, []),
    })


# --------------------------------------------------------------------------------------------------
# per-module rules, hand answers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule, expected", [
    ("energy:0.9", {Q0: 2, V0: 2, V1: 0}),      # V1 (ΔW = 0): rank 0, never lifted to --min-rank 1
    ("energy:0.95", {Q0: 3, V0: 3, Q1: 4}),
    ("energy:0.5", {Q0: 1, V0: 1}),
    ("gd", {Q1: 2, V1: 0}),
    ("kohya-fro:0.95", {Q0: 2, V0: 2}),         # energy ≥ 0.9025 (not 0.95)
    ("kohya-fro:0.97", {Q0: 3, V0: 3}),         # energy ≥ 0.9409
    ("kohya-ratio:2", {Q0: 1, V0: 2}),          # σ > σ1/2 strictly: 4 (not 2 = 4/2); 3 and 2 (> 1.5)
    ("kohya-ratio:3", {Q0: 2, V0: 2}),          # σ > 1.333 / σ > 1
    ("kohya-ratio:4.5", {Q0: 4, V0: 3}),
    ("kohya-cumulative:0.75", {Q0: 2}),         # Σσ fraction reaches exactly 0.75 at k = 2
    ("kohya-cumulative:0.8", {Q0: 3}),
    ("kohya-fro:0.5", {V1: 0}),                 # kohya: σ1 ≤ 1e-6 → rule rank 1, but ΔW = 0 is not adapted
])
def test_per_module_rules_hand_answers(four, rule, expected):
    plan = recommend(four, rule=rule, targets="query,value")
    got = ranks_of(plan)
    for module, rank in expected.items():
        assert got[module] == rank, (rule, module, got)


def test_zero_update_rank_zero_with_min_rank_zero(four):
    plan = recommend(four, rule="energy:0.9", targets="query,value", min_rank=0)
    assert ranks_of(plan)[V1] == 0
    assert V1 not in plan.config["target_modules"]
    assert plan.config["target_modules"] == [Q0, V0, Q1]
    # kohya's own answer for a zero matrix is 1 (rule_rank); the plan still leaves it out
    kohya = recommend(four, rule="kohya-ratio:2", targets="query,value", min_rank=0)
    assert ranks_of(kohya)[V1] == 0 and kohya.table.set_index("module").loc[V1, "rule_rank"] == 1
    assert V1 not in kohya.config["target_modules"]


def test_energy_rule_table_and_uniform(four):
    plan = recommend(four, rule="energy:0.9", targets="query")
    t = plan.table.set_index("module")
    assert t.loc[Q0, "rank"] == 2 and t.loc[Q0, "rule_rank"] == 2
    assert t.loc[Q0, "params"] == 2 * 12
    assert t.loc[Q0, "captured_energy"] == pytest.approx(20 / 22)
    # Q1 σ² = 100, 25, 1 × 8 (Σ 133): 100/133 = 0.752, 125/133 = 0.940 → rank 2
    assert t.loc[Q1, "rule_rank"] == 2 and t.loc[Q1, "rank"] == 2


def test_min_max_snap(four):
    # energy:0.95 gives Q0 3 (0.955), V0 3 (0.929 < 0.95 → 1), Q1 4 (126/133 = 0.947, 127/133 = 0.955)
    base = ranks_of(recommend(four, rule="energy:0.95", targets="query,value"))
    assert base == {Q0: 3, V0: 3, Q1: 4, V1: 0}  # V1: ΔW = 0, whatever --min-rank / --snap say
    assert ranks_of(recommend(four, rule="energy:0.95", targets="query,value", min_rank=3)) == {Q0: 3, V0: 3, Q1: 4,
                                                                                               V1: 0}
    capped = recommend(four, rule="energy:0.95", targets="query,value", max_rank=2)
    assert ranks_of(capped) == {Q0: 2, V0: 2, Q1: 2, V1: 0}
    assert any("capped" in w for w in capped.info["warnings"])
    # snap rounds up to an allowed rank, within min(m, n) and max_rank
    assert ranks_of(recommend(four, rule="energy:0.95", targets="query,value", snap="2,4")) == {Q0: 4, V0: 4, Q1: 4,
                                                                                               V1: 0}
    assert ranks_of(recommend(four, rule="energy:0.95", targets="query,value", snap="2,4,8", max_rank=3)) == {
        Q0: 2, V0: 2, Q1: 2, V1: 0}


def test_levels_and_snap_up():
    assert rank_levels(5).tolist() == [1, 2, 3, 4, 5]
    assert rank_levels(5, 0, 3).tolist() == [0, 1, 2, 3]
    assert rank_levels(40, 1, None, (8, 16, 32, 64)).tolist() == [8, 16, 32]
    assert rank_levels(40, 0, 16, (8, 16, 32)).tolist() == [0, 8, 16]
    assert rank_levels(4, 1, None, (8, 16)).tolist() == []
    lv = np.array([8, 16, 32])
    assert [snap_up(k, lv) for k in (0, 8, 9, 17, 40)] == [8, 8, 16, 32, 32]


def test_parsers():
    assert parse_rule("budget:1.5M").value == 1_500_000
    assert parse_rule("budget:200k").value == 200_000
    assert parse_rule(" Energy:0.99 ").name == "energy"
    assert parse_rule("gd").value is None
    assert parse_alpha("2r").alpha(8) == 16 and parse_alpha("r").alpha(8) == 8
    assert parse_alpha("16").alpha(4) == 16 and parse_alpha("0.5r").alpha(8) == 4
    for bad in ("magic:3", "energy:1.5", "energy", "budget:-3", "budget:2.5", "gd:3", "kohya-ratio:0", "avg-rank:x"):
        with pytest.raises(RankscopeError, match="--rule"):
            parse_rule(bad)
    for bad in ("-2r", "r2", "zero"):
        with pytest.raises(RankscopeError, match="--alpha"):
            parse_alpha(bad)


# --------------------------------------------------------------------------------------------------
# kohya compatibility: a transcription of kohya-ss sd-scripts networks/resize_lora.py (torch)
# --------------------------------------------------------------------------------------------------


def _kohya_reference(S: torch.Tensor, method: str, param: float, new_rank: int) -> int:
    """``rank_resize(S, rank=new_rank, dynamic_method, dynamic_param)["new_rank"]`` from sd-scripts."""
    def index_sv_cumulative(S, target):
        index = int(torch.searchsorted(torch.cumsum(S, dim=0) / float(torch.sum(S)), target))
        return max(0, min(index, len(S) - 1))

    def index_sv_fro(S, target):
        s2 = S.pow(2)
        index = int(torch.searchsorted(torch.cumsum(s2, dim=0) / float(torch.sum(s2)), target**2))
        return max(0, min(index, len(S) - 1))

    def index_sv_ratio(S, target):
        index = int(torch.sum(S > S[0] / target).item()) - 1  # noqa: SIM300 (as in kohya)
        return max(0, min(index, len(S) - 1))

    fn = {"sv_ratio": index_sv_ratio, "sv_cumulative": index_sv_cumulative, "sv_fro": index_sv_fro}[method]
    rank = fn(S, param) + 1 if S[0] > 1e-6 else 1
    if S[0] <= 1e-6:
        rank = 1
    elif rank > new_rank:
        rank = new_rank
    return rank


def test_kohya_modes_match_kohya_code():
    rng = np.random.default_rng(3)
    cases = 0
    for trial in range(300):
        n = int(rng.integers(1, 40))
        kind = trial % 4
        if kind == 0:
            s = np.sort(rng.exponential(1.0, n))[::-1]
        elif kind == 1:
            s = 0.9 ** np.arange(n) * rng.uniform(0.01, 10)
        elif kind == 2:
            s = np.round(np.sort(rng.uniform(0, 4, n))[::-1])  # ties and exact zeros
        else:
            s = np.zeros(n) if trial % 8 == 3 else np.sort(rng.uniform(0, 1e-6, n))[::-1]
        cap = int(rng.integers(1, 50))
        for method, param in (("fro", rng.uniform(0.3, 1)), ("ratio", rng.uniform(1, 20)),
                              ("cumulative", rng.uniform(0.3, 1))):
            ours = min(kohya_rank(s, method, param), cap)
            ref = _kohya_reference(torch.from_numpy(s.copy()), f"sv_{method}", param, cap)
            assert ours == ref, (method, param, s, cap)
            cases += 1
    assert cases == 900


def test_kohya_max_rank_is_their_new_rank(four):
    plan = recommend(four, rule="kohya-ratio:4.5", targets="query", max_rank=2)
    assert ranks_of(plan)[Q0] == 2 and plan.table.set_index("module").loc[Q0, "rule_rank"] == 4


# --------------------------------------------------------------------------------------------------
# global allocation
# --------------------------------------------------------------------------------------------------


def _all_allocations(spectra, shapes, min_rank=1, max_rank=None, snap=None, gain="absolute") -> np.ndarray:
    """(cost, value) of every allowed rank vector (written independently of rankscope)."""
    options = []
    for s, (m, n) in zip(spectra, shapes, strict=True):
        top = min(m, n) if max_rank is None else min(max_rank, m, n)
        allowed = [r for r in range(min_rank, top + 1) if snap is None or r in snap or r == 0]
        e = np.asarray(s, float) ** 2
        w = 1.0 if gain == "absolute" else (1 / e.sum() if e.sum() > 0 else 0.0)
        options.append([(r * (m + n), w * e[:r].sum()) for r in allowed])
    return np.array([(sum(c for c, _ in combo), sum(v for _, v in combo)) for combo in itertools.product(*options)])


def _brute(spectra, shapes, budget, min_rank=1, max_rank=None, snap=None, gain="absolute"):
    """Best value over every rank vector within the budget (written independently of rankscope)."""
    options = []
    for s, (m, n) in zip(spectra, shapes, strict=True):
        top = min(m, n) if max_rank is None else min(max_rank, m, n)
        allowed = [r for r in range(min_rank, top + 1) if snap is None or r in snap or r == 0]
        e = np.asarray(s, float) ** 2
        w = 1.0 if gain == "absolute" else (1 / e.sum() if e.sum() > 0 else 0.0)
        options.append([(r, r * (m + n), w * e[:r].sum()) for r in allowed])
    best = -1.0
    for combo in itertools.product(*options):
        if sum(c for _, c, _ in combo) <= budget:
            best = max(best, sum(v for _, _, v in combo))
    return best


def _value(spectra, ranks, gain="absolute"):
    total = 0.0
    for s, r in zip(spectra, ranks, strict=True):
        e = np.asarray(s, float) ** 2
        w = 1.0 if gain == "absolute" else (1 / e.sum() if e.sum() > 0 else 0.0)
        total += w * e[: int(r)].sum()
    return total


def test_budget_hand_answers():
    # A: 4x4 (cost 8) σ² = 9, 1, 0.25, 0; B: 2x8 (cost 10) σ² = 16, 4.
    # gain per parameter: A 1.125, 0.125, 0.031; B 1.6, 0.4.  Start (1, 1) costs 18.
    spectra, shapes = [np.sqrt([9, 1, 0.25, 0]), np.array([4.0, 2.0])], [(4, 4), (2, 8)]
    assert greedy_allocation(spectra, shapes, 28).ranks.tolist() == [1, 2]  # +B2 (10) fills 28 exactly
    alloc = greedy_allocation(spectra, shapes, 27)  # B2 does not fit → A2 (8)
    assert alloc.ranks.tolist() == [2, 1] and alloc.params == 26 and alloc.value == pytest.approx(26)
    assert greedy_allocation(spectra, shapes, 36).ranks.tolist() == [2, 2]
    assert greedy_allocation(spectra, shapes, 18).ranks.tolist() == [1, 1]
    with pytest.raises(ValueError):
        greedy_allocation(spectra, shapes, 17)
    # uniform alternative: rank u everywhere capped by min(m, n)
    assert uniform_rank_for_budget(shapes, 36)[0] == 2
    assert uniform_rank_for_budget(shapes, 44)[1].tolist() == [3, 2]  # u = 3: B capped at 2 → 24 + 20


def test_budget_and_avg_rank_rules(four):
    # query,value modules: Q0 6x6, V0 6x6, Q1 10x20 (cost 12, 12, 30; minimum 54); V1 (ΔW = 0) is left out
    plan = recommend(four, rule="budget:78", targets="query,value")
    # start 1 each (54), remaining 24: σ²/cost: Q0 4/12, V0 4/12, Q1 25/30 = 0.83 → Q1 (30) does not fit,
    # Q0 2 (0.33) then V0 2 (0.33) → 78 exactly
    assert ranks_of(plan) == {Q0: 2, V0: 2, Q1: 1, V1: 0}
    assert plan.info["results"]["params"] == 78
    plan = recommend(four, rule="budget:84", targets="query,value")
    assert ranks_of(plan) == {Q0: 1, V0: 1, Q1: 2, V1: 0}
    assert plan.info["results"]["exact"]
    # avg-rank:2 = budget 2 · 54 = 108 (rank 2 on the modules that changed)
    plan = recommend(four, rule="avg-rank:2", targets="query,value")
    assert plan.info["results"]["budget"] == 108 and plan.info["results"]["uniform"]["rank"] == 2
    assert plan.info["results"]["uniform"]["params"] == 108 and plan.info["results"]["params"] <= 108
    assert plan.info["results"]["captured_energy"] >= plan.info["results"]["uniform"]["captured_energy"]


def test_greedy_equals_brute_force_on_small_instances():
    rng = np.random.default_rng(0)
    exact_checked = 0
    for trial in range(60):
        shapes = [(int(rng.integers(1, 6)), int(rng.integers(1, 6))) for _ in range(3)]
        spectra = [np.sort(rng.exponential(1.0, min(m, n)))[::-1] for m, n in shapes]
        if trial % 5 == 0:
            spectra[1] = np.zeros_like(spectra[1])
        opts = [dict(), dict(min_rank=0), dict(max_rank=2), dict(min_rank=0, snap=(1, 2, 4)),
                dict(gain="relative")][trial % 5]
        costs = [m + n for m, n in shapes]
        top = sum(min(m, n) * c for (m, n), c in zip(shapes, costs, strict=True))
        lo = sum(opts.get("min_rank", 1) * c for c in costs)
        table = _all_allocations(spectra, shapes, **opts)
        for budget in range(lo, top + 1):
            alloc = greedy_allocation(spectra, shapes, budget, **opts)
            opt = float(table[table[:, 0] <= budget, 1].max())
            assert alloc.params <= budget
            assert alloc.value == pytest.approx(_value(spectra, alloc.ranks, opts.get("gain", "absolute")))
            assert alloc.value <= opt + 1e-9
            assert opt <= alloc.bound + 1e-9
            if alloc.exact:
                assert alloc.value == pytest.approx(opt, rel=1e-12, abs=1e-12)
                exact_checked += 1
            u, uniform = uniform_rank_for_budget(shapes, budget, **{k: v for k, v in opts.items() if k != "gain"})
            assert alloc.value >= _value(spectra, uniform, opts.get("gain", "absolute")) - 1e-12
    assert exact_checked > 200


def test_greedy_optimal_when_budget_filled_exactly():
    """Budgets equal to the cost of a prefix of all rank-1 steps sorted by gain per parameter are filled
    exactly by greedy, which is then optimal (checked by brute force)."""
    rng = np.random.default_rng(1)
    for _ in range(25):
        shapes = [(int(rng.integers(2, 6)), int(rng.integers(2, 6))) for _ in range(3)]
        spectra = [np.sort(rng.exponential(1.0, min(m, n)))[::-1] for m, n in shapes]
        steps = sorted(((s[k] ** 2 / (m + n), m + n) for s, (m, n) in zip(spectra, shapes, strict=True)
                        for k in range(1, min(m, n))), reverse=True)  # steps beyond the minimum rank 1
        start = sum(m + n for m, n in shapes)
        for budget in start + np.cumsum([c for _, c in steps]):
            alloc = greedy_allocation(spectra, shapes, int(budget))
            assert alloc.params == budget and alloc.exact
            assert alloc.value == pytest.approx(_brute(spectra, shapes, int(budget)), rel=1e-12)


def test_greedy_never_worse_than_uniform_on_random_instances():
    rng = np.random.default_rng(2)
    for _ in range(40):
        k = int(rng.integers(2, 12))
        shapes = [(int(rng.integers(4, 64)), int(rng.integers(4, 64))) for _ in range(k)]
        spectra = [np.sort(rng.exponential(rng.uniform(0.1, 3), min(m, n)))[::-1] for m, n in shapes]
        snap = (4, 8, 16, 32) if rng.random() < 0.3 else None
        lo = sum(min(rank_levels(min(m, n), 1, None, snap)) * (m + n) for m, n in shapes)
        for budget in rng.integers(lo, lo * 8, size=5):
            alloc = greedy_allocation(spectra, shapes, int(budget), snap=snap)
            _, uniform = uniform_rank_for_budget(shapes, int(budget), snap=snap)
            assert alloc.value >= _value(spectra, uniform) - 1e-12
            assert alloc.value <= alloc.bound * (1 + 1e-12)


def test_uniform_start_rescues_last_knapsack_step():
    # A: 3x3 (cost 6) σ² = 6.6 each (1.1 per parameter); B: 2x2 (cost 4) σ² = 4 each (1.0).
    # Budget 20 = uniform rank 2.  Greedy from 0: A, A, A (18) then B (4) does not fit: 19.8.
    # Uniform (2, 2): 21.2, the optimum.
    spectra, shapes = [np.sqrt([6.6] * 3), np.sqrt([4.0] * 2)], [(3, 3), (2, 2)]
    alloc = greedy_allocation(spectra, shapes, 20, min_rank=0)
    assert alloc.ranks.tolist() == [2, 2] and alloc.start == "uniform"
    assert alloc.value == pytest.approx(21.2) == pytest.approx(_brute(spectra, shapes, 20, min_rank=0))


def test_relative_gain_counts_modules_equally():
    # A has 100x the energy of B; per parameter, absolute gain prefers A, relative prefers B's larger share.
    spectra, shapes = [np.sqrt([100.0, 90, 80]), np.sqrt([1.0, 0.1, 0.01])], [(3, 3), (3, 3)]
    assert greedy_allocation(spectra, shapes, 24).ranks.tolist() == [3, 1]
    rel = greedy_allocation(spectra, shapes, 24, gain="relative")
    # relative gains: A 90/270 = 0.333, 80/270 = 0.296; B 0.1/1.11 = 0.09 → still A, A
    assert rel.ranks.tolist() == [3, 1]
    spectra[1] = np.sqrt([1.0, 0.9, 0.8])  # B now as flat as A, 100x smaller: relative ties → spreads
    assert greedy_allocation(spectra, shapes, 18).ranks.tolist() == [2, 1]
    assert greedy_allocation(spectra, shapes, 24, gain="relative").ranks.tolist() == [2, 2]


# --------------------------------------------------------------------------------------------------
# targets and the peft config (pure)
# --------------------------------------------------------------------------------------------------


def test_targets_by_kind_and_suffix():
    spec = planted({AO0: (6, 6, [1]), FO0: (6, 12, [1]), Q0: (6, 6, [1]),
                    "encoder.layer.0.intermediate.dense": (12, 6, [1]), "pooler.dense": (6, 6, [1]),
                    "embeddings.word_embeddings": (50, 6, [1])})
    mods = lambda targets, **kw: list(recommend(spec, rule="gd", targets=targets, **kw).table["module"])  # noqa: E731
    assert mods("output.dense") == [FO0]  # the kind, not attention.output.dense
    assert mods("attention.output.dense") == [AO0]
    assert set(mods("dense")) == {AO0, FO0, "encoder.layer.0.intermediate.dense", "pooler.dense"}  # peft suffix rule
    assert "embeddings.word_embeddings" not in mods("all-linear")
    assert "embeddings.word_embeddings" in mods("all-linear", exclude_embeddings=False)
    with pytest.raises(RankscopeError, match="word_embeddings.*--include-embeddings"):
        mods("word_embeddings")


def test_config_patterns_are_exact():
    modules = [f"encoder.layer.{i}.attention.self.query" for i in range(12)] + ["encoder.layer.1.output.dense",
                                                                                "encoder.layer.1.attention.output.dense"]
    ranks = [8] * 11 + [16, 4, 8]
    alphas = [2 * r for r in ranks]
    cfg = lora_config_dict(modules, ranks, alphas)
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16
    assert set(cfg["rank_pattern"].values()) == {16, 4} and len(cfg["rank_pattern"]) == 2
    intended = {m: (r, a) for m, r, a in zip(modules, ranks, alphas, strict=True)}
    check_lora_config(cfg, intended, modules, prefixes=("", "bert.", "base_model.model.bert."))
    # layer.1 must not match layer.11; output.dense must not match attention.output.dense
    key = next(k for k, v in cfg["rank_pattern"].items() if v == 16)
    assert [m for m in modules if re.match(rf"(.*\.)?({key})$", "bert." + m)] == ["encoder.layer.11.attention.self.query"]
    # a plan that peft cannot express: 'dense' at the top and 'encoder.dense' below
    with pytest.raises(RankscopeError, match="would also adapt"):
        check_lora_config(lora_config_dict(["dense"], [4], [8]), {"dense": (4, 8)}, ["dense", "encoder.dense"])


# --------------------------------------------------------------------------------------------------
# a tiny BERT pair on disk → recommend on the fly → peft creates exactly the planned layers
# --------------------------------------------------------------------------------------------------

DECAYS = (0.3, 0.6, 0.9)


def _tiny_bert_config():
    from transformers import BertConfig

    return BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      max_position_embeddings=16, type_vocab_size=2)


@pytest.fixture(scope="module")
def bert_pair(tmp_path_factory):
    """BertModel base and fine-tune with ΔW = U diag(s) Vᵀ, s_k = 0.05·ρ^k (ρ cycling 0.3, 0.6, 0.9); pooler ΔW = 0."""
    from transformers import BertModel

    root = tmp_path_factory.mktemp("bert-pair")
    torch.manual_seed(0)
    base = BertModel(_tiny_bert_config()).eval()
    ft = copy.deepcopy(base)
    rng = np.random.default_rng(0)
    planted_s = {}
    with torch.no_grad():
        index = 0
        for name, p in ft.named_parameters():
            if p.dim() != 2:
                continue
            m, n = p.shape
            k = min(m, n)
            s = np.zeros(k) if name.startswith("pooler") else 0.05 * DECAYS[index % 3] ** np.arange(k)
            index += 1
            u = np.linalg.qr(rng.standard_normal((m, k)))[0]
            v = np.linalg.qr(rng.standard_normal((n, k)))[0]
            p += torch.from_numpy((u * s) @ v.T).float()
            planted_s[name.removesuffix(".weight")] = s
    base.save_pretrained(root / "base")
    ft.save_pretrained(root / "ft")
    return root / "base", root / "ft", planted_s


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def _invoke(*args):
    return _runner().invoke(recommend_cmd, [str(a) for a in args], catch_exceptions=True)


def _lora_layers(model) -> dict[str, object]:
    from peft.tuners.lora import LoraLayer

    return {name: mod for name, mod in model.named_modules() if isinstance(mod, LoraLayer)}


def _check_peft(plan: pd.DataFrame, config, model, prefix: str) -> None:
    from peft import get_peft_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = get_peft_model(model, config)
    assert not [w for w in caught if "did not match" in str(w.message) or "no module was matched" in str(w.message)]
    layers = _lora_layers(peft_model)
    expected = {m: r for m, r in zip(plan["module"], plan["rank"], strict=True) if r > 0}
    alphas = dict(zip(plan["module"], plan["alpha"], strict=True))
    got = {name.removeprefix("base_model.model.").removeprefix(prefix): layer for name, layer in layers.items()}
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for module, layer in got.items():
        r = expected[module]
        base = layer.get_base_layer()
        assert layer.r["default"] == r
        assert tuple(layer.lora_A["default"].weight.shape) == (r, base.in_features)
        assert tuple(layer.lora_B["default"].weight.shape) == (base.out_features, r)
        assert layer.lora_alpha["default"] == pytest.approx(alphas[module])
        assert layer.scaling["default"] == pytest.approx(alphas[module] / r)


def test_on_the_fly_pair_to_peft(bert_pair, tmp_path):
    from peft import LoraConfig
    from transformers import BertForSequenceClassification, BertModel

    base, ft, planted_s = bert_pair
    out = tmp_path / "plan"
    result = _invoke(base, ft, "-o", out, "--rule", "energy:0.9", "--alpha", "2r", "-q", "--workers", "1")
    assert result.exit_code == 0, result.output + result.stderr
    plan = RankPlan.load(out)
    # hand rule on the planted spectra: smallest k with cumulative energy ≥ 0.9 (ΔW = 0 → rank 0, not adapted)
    for module, rank in zip(plan.table["module"], plan.table["rank"], strict=True):
        e = planted_s[module] ** 2
        k = int(np.argmax(np.cumsum(e) / e.sum() >= 0.9)) + 1 if e.sum() > 0 else 0
        assert rank == k, module
    assert set(plan.table["rank"]) >= {1, 3, 11}  # ρ = 0.3, 0.6, 0.9
    assert not any("embeddings" in m for m in plan.table["module"])
    assert len(plan.table) == 2 * 6 + 1  # all-linear: 6 per layer + pooler
    cfg_json = json.loads((out / "lora_config.json").read_text())
    assert cfg_json == json.loads((out / "adapter_config.json").read_text())
    from_dir = LoraConfig.from_pretrained(str(out))
    from_kwargs = LoraConfig(**cfg_json)
    for config in (from_dir, from_kwargs):
        torch.manual_seed(0)
        _check_peft(plan.table, copy.deepcopy(config), BertForSequenceClassification(_tiny_bert_config()), "bert.")
    torch.manual_seed(0)
    _check_peft(plan.table, copy.deepcopy(from_kwargs), BertModel(_tiny_bert_config()), "")
    # outputs: figure, run.json, and a reusable spectrum folder giving the same plan
    assert (out / "figures" / "ranks.png").stat().st_size > 10_000
    info = json.loads((out / "run.json").read_text())
    assert info["command"] == "recommend" and info["options"]["rule"] == "energy:0.9"
    again = recommend(out / "spectrum", rule="energy:0.9")
    assert ranks_of(again) == ranks_of(plan)


def test_budget_snap_plan_through_peft(bert_pair, tmp_path):
    from peft import LoraConfig
    from transformers import BertForSequenceClassification

    base, ft, _ = bert_pair
    first = recommend(base, ft, rule="energy:0.5", workers=1)
    first.save(tmp_path / "first", plots=False)
    spec_dir = tmp_path / "first" / "spectrum"
    assert (spec_dir / "spectra.npz").is_file()
    out = tmp_path / "plan"
    result = _invoke(spec_dir, "-o", out, "--rule", "budget:3000", "--snap", "2,4,8,16", "--targets",
                     "query,value,output.dense", "--alpha", "16", "--no-plots")
    assert result.exit_code == 0, result.output + result.stderr
    assert "uniform r=" in result.output and "plan:" in result.output
    plan = RankPlan.load(out)
    assert set(plan.table["rank"]) <= {2, 4, 8, 16}
    assert plan.table["params"].sum() <= 3000
    assert set(plan.table["kind"]) == {"query", "value", "output.dense"}  # not attention.output.dense
    assert len(set(plan.table["rank"])) > 1
    cfg = LoraConfig.from_pretrained(str(out))
    assert cfg.alpha_pattern == {} and cfg.lora_alpha == 16
    torch.manual_seed(0)
    _check_peft(plan.table, cfg, BertForSequenceClassification(_tiny_bert_config()), "bert.")


# --------------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing left behind
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def spectrum_folder(tmp_path, four) -> Path:
    return four.save(tmp_path / "spec", plots=False)


def _leftovers(out: Path) -> list[Path]:
    return ([out] if out.exists() else []) + sorted(out.parent.glob(f".{out.name}.*"))


@pytest.mark.parametrize("args, needles", [
    (["--rule", "magic:3"], ["--rule", "unknown rule"]),
    (["--rule", "energy:2"], ["--rule"]),
    (["--rule", "budget:50"], ["--rule budget:50", "minimum 54"]),  # rank 1 where ΔW ≠ 0: 2 × 12 + 30
    (["--rule", "budget:100", "--min-rank", "2"], ["minimum 108"]),
    (["--targets", "nope"], ["--targets", "'nope'"]),
    (["--min-rank", "7"], ["--min-rank 7", "min(m, n) = 6"]),
    (["--rule", "avg-rank:7"], ["avg-rank:7", "min(m, n) = 6"]),
    (["--snap", "8,16"], ["--snap", "min(m, n) = 6"]),
    (["--snap", "4,x"], ["--snap"]),
    (["--max-rank", "2", "--min-rank", "3"], ["--max-rank 2", "--min-rank 3"]),
    (["--alpha", "big"], ["--alpha"]),
    (["--min-rank", "-1"], ["--min-rank"]),
    (["--gain", "huge"], ["--gain"]),
])
def test_bad_input_cli(spectrum_folder, tmp_path, args, needles):
    out = tmp_path / "out"
    result = _invoke(spectrum_folder, "-o", out, *args)
    assert result.exit_code == 2, (result.output, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr + result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert _leftovers(out) == []


def test_bad_source_cli(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    for source, needle in ((tmp_path / "missing", "no such folder"), (tmp_path / "empty", "BASE FINETUNED")):
        result = _invoke(source, "-o", out)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr
        assert _leftovers(out) == []


def test_targets_matching_nothing_on_the_fly(bert_pair, tmp_path):
    base, ft, _ = bert_pair
    out = tmp_path / "out"
    result = _invoke(base, ft, "-o", out, "--targets", "q_proj", "-q")
    assert result.exit_code == 2 and "--targets" in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert _leftovers(out) == []


def test_summary_mentions_totals(four):
    plan = recommend(four, rule="budget:120", targets="query,value")
    text = plan.summary_text()
    assert "plan: " in text and "uniform r=" in text and "allocation:" in text and "lora_config: r=" in text
    assert math.isfinite(plan.info["results"]["captured_energy"])

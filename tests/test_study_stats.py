"""The rank-choice study's pure parts: equal-budget accounting, the placebo shuffle, paired bootstrap, the headroom task."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analyses"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import study_stats as st  # noqa: E402

from rankscope.training.data import load_task  # noqa: E402
from rankscope.training.synthetic import SYNTHETIC_TASKS, generate  # noqa: E402

# MiniLM-L6's 37 linear modules: 6 layers × (q, k, v, attention.output 384×384; intermediate 1536×384, output 384×1536)
# and the pooler (384×384)
MINILM = {f"encoder.layer.{i}.{m}": s for i in range(6) for m, s in (
    ("attention.self.query", (384, 384)), ("attention.self.key", (384, 384)), ("attention.self.value", (384, 384)),
    ("attention.output.dense", (384, 384)), ("intermediate.dense", (1536, 384)), ("output.dense", (384, 1536)))}
MINILM["pooler.dense"] = (384, 384)


# --------------------------------------------------------------------------------------------------
# parameter accounting
# --------------------------------------------------------------------------------------------------


def test_uniform_count_matches_closed_form_and_peft():
    import torch
    from peft import LoraConfig, get_peft_model

    # closed form: r · Σ(out + in) = r · (25·768 + 12·1920) for MiniLM
    assert st.lora_parameters(MINILM, st.uniform_ranks(MINILM, 2)) == 2 * (25 * 768 + 12 * 1920) == 84_480
    # and peft's own count on a small model with mixed shapes and a rank pattern
    net = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    shapes = {"0": (5, 7), "2": (3, 5)}
    ranks = {"0": 3, "2": 1}
    model = get_peft_model(net, LoraConfig(r=3, target_modules=["0", "2"], rank_pattern={"2": 1}))
    counted = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert st.lora_parameters(shapes, ranks) == counted == 3 * 12 + 1 * 8


def test_adalora_extra_and_zero_rank_and_unknown_module():
    shapes = {"a": (4, 6), "b": (2, 2)}
    assert st.lora_parameters(shapes, {"a": 2, "b": 0}, extra_per_rank=1) == 2 * 11
    with pytest.raises(KeyError):
        st.lora_parameters(shapes, {"c": 1})
    with pytest.raises(ValueError):
        st.lora_parameters(shapes, {"a": -1})


def test_budget_tolerance_is_one_percent_both_ways():
    assert st.within_budget(1010, 1000) and st.within_budget(990, 1000)
    assert not st.within_budget(1011, 1000) and not st.within_budget(989, 1000)
    assert st.budget_error(1010, 1000) == pytest.approx(0.01)


def test_placebo_keeps_multiset_and_exact_budget_and_is_seeded():
    rng = np.random.default_rng(1)
    plan = {name: int(rng.integers(0, 9)) for name in MINILM}
    placebo = st.shuffled_ranks(MINILM, plan, seed=3)
    assert Counter(placebo.values()) == Counter(plan.values())
    assert st.lora_parameters(MINILM, placebo) == st.lora_parameters(MINILM, plan)
    assert placebo == st.shuffled_ranks(MINILM, plan, seed=3)
    assert placebo != plan and placebo != st.shuffled_ranks(MINILM, plan, seed=4)
    # ranks only move between modules of the same cost per rank
    for name, r in placebo.items():
        cost = sum(MINILM[name])
        assert r in [plan[n] for n in MINILM if sum(MINILM[n]) == cost]


# --------------------------------------------------------------------------------------------------
# paired statistics
# --------------------------------------------------------------------------------------------------


def test_constant_difference_gives_zero_width_interval_at_it():
    ref = {s: 0.7 + 0.01 * s for s in range(8)}
    arm = {s: v + 0.02 for s, v in ref.items()}
    out = st.paired_bootstrap(arm, ref)
    assert out["mean"] == pytest.approx(0.02) and out["low"] == out["high"] == out["mean"]
    assert out["n"] == 8 and out["sd"] == pytest.approx(0.0, abs=1e-12)
    assert st.verdict(out["low"], out["high"]) == "wins"


def test_symmetric_differences_cover_zero_and_tie():
    ref = dict.fromkeys(range(8), 0.5)
    arm = {s: 0.5 + (0.03 if s % 2 else -0.03) for s in range(8)}
    out = st.paired_bootstrap(arm, ref)
    assert out["mean"] == pytest.approx(0.0, abs=1e-12)
    assert out["low"] < 0 < out["high"]
    assert out["low"] == pytest.approx(-out["high"], abs=0.01)  # symmetric around 0 up to resampling noise
    assert st.verdict(out["low"], out["high"]) == "ties"


def test_pairing_by_seed_is_respected():
    # large seed-to-seed spread shared by both arms: the paired difference is exactly -0.01 for every seed,
    # so the interval is a point below zero (an unpaired comparison would tie)
    ref = {s: 0.5 + 0.1 * s for s in range(8)}
    arm = {s: v - 0.01 for s, v in ref.items()}
    reordered = {s: arm[s] for s in reversed(list(arm))}  # insertion order must not matter, the seed does
    out = st.paired_bootstrap(reordered, ref)
    assert out["low"] == out["high"] == pytest.approx(-0.01) and st.verdict(out["low"], out["high"]) == "loses"
    # the same values attached to other seeds are other pairs: the interval widens to cover 0
    mismatched = dict(zip(reversed(list(arm)), arm.values(), strict=True))
    wide = st.paired_bootstrap(mismatched, ref)
    assert wide["mean"] == pytest.approx(-0.01) and wide["low"] < 0 < wide["high"]
    # only common seeds are paired
    assert st.paired_differences({0: 1.0, 1: 2.0, 5: 9.0}, {0: 0.5, 1: 1.0, 2: 3.0}) == {0: 0.5, 1: 1.0}
    with pytest.raises(ValueError):
        st.paired_bootstrap({1: 1.0}, {2: 1.0})


def test_bootstrap_interval_matches_normal_theory_for_many_seeds():
    rng = np.random.default_rng(0)
    d = rng.normal(0.01, 0.02, size=200)
    out = st.paired_bootstrap(dict(enumerate(d)), dict.fromkeys(range(200), 0.0), resamples=20_000)
    half = 1.96 * d.std(ddof=1) / np.sqrt(d.size)
    assert out["low"] == pytest.approx(d.mean() - half, abs=0.2 * half)
    assert out["high"] == pytest.approx(d.mean() + half, abs=0.2 * half)


def test_paired_t_interval_matches_the_closed_form_and_widens_with_the_level():
    arm = {s: 0.80 + 0.01 * s for s in range(8)}
    ref = {s: 0.78 + 0.005 * s + (0.01 if s % 2 else -0.01) for s in range(8)}
    d = np.array([arm[s] - ref[s] for s in range(8)])
    t975 = 2.3646242515927844  # t_{7, 0.975} (tables)
    ci = st.paired_t_interval(arm, ref)
    half = t975 * d.std(ddof=1) / np.sqrt(8)
    assert ci["mean"] == pytest.approx(d.mean()) and ci["low"] == pytest.approx(d.mean() - half, rel=1e-9)
    assert ci["high"] == pytest.approx(d.mean() + half, rel=1e-9)
    strict = st.paired_t_interval(arm, ref, level=1 - 0.05 / 10)
    assert strict["low"] < ci["low"] and strict["high"] > ci["high"]
    with pytest.raises(ValueError):
        st.paired_t_interval({0: 1.0}, {0: 0.5})


def test_sign_flip_p_is_exact():
    ref = dict.fromkeys(range(8), 0.5)
    assert st.sign_flip_p({s: 0.6 for s in range(8)}, ref) == pytest.approx(2 / 256)  # only ++…+ and −−…− as extreme
    assert st.sign_flip_p({s: 0.5 + (0.1 if s < 4 else -0.1) for s in range(8)}, ref) == 1.0  # mean 0: every pattern
    # one negative seed of eight: patterns at least as extreme are the 2 × (1 + 8) with ≤ 1 sign against the rest
    arm = {s: 0.6 if s else 0.4 for s in range(8)}
    brute = np.mean([abs(np.mean([(1 if (m >> i) & 1 else -1) * (arm[i] - 0.5) for i in range(8)])) >= 0.075 - 1e-12
                     for m in range(256)])
    assert st.sign_flip_p(arm, ref) == pytest.approx(brute) == pytest.approx(18 / 256)


def test_gap_check_and_gain_per_second_and_best_lr():
    gap = st.gap_check([0.90, 0.92], [0.80, 0.81])
    assert gap["gap"] == pytest.approx(0.105) and gap["headroom"]
    assert not st.gap_check([0.90, 0.92], [0.88, 0.89])["headroom"]  # 2.5 points: too small
    assert not st.gap_check([0.90, 0.99], [0.85, 0.86])["headroom"]  # 9 points but < 4 SDs
    assert st.gain_per_second(0.02, 10.0) == pytest.approx(0.002)
    assert st.gain_per_second(0.02, 0.0) is None
    rows = [{"lr": 1e-3, "validation_accuracy": 0.75, "validation_loss": 0.5},
            {"lr": 1e-3, "validation_accuracy": 0.875, "validation_loss": 0.4},
            {"lr": 3e-3, "validation_accuracy": 0.8125, "validation_loss": 0.3},
            {"lr": 3e-3, "validation_accuracy": 0.8125, "validation_loss": 0.3},
            {"lr": 3e-4, "validation_accuracy": 0.7, "validation_loss": 0.1}]
    assert st.best_setting(rows) == 3e-3  # equal mean accuracy 0.8125: lower loss wins
    assert st.settings_hash({"a": 1, "b": 2}) == st.settings_hash({"b": 2, "a": 1}) != st.settings_hash({"a": 2})


# --------------------------------------------------------------------------------------------------
# the headroom task
# --------------------------------------------------------------------------------------------------


def test_entity_facts_is_deterministic_balanced_and_template_disjoint():
    spec = SYNTHETIC_TASKS["entity-facts"]
    a, b, c = generate("entity-facts", 0), generate("entity-facts", 0), generate("entity-facts", 1)
    assert a.splits == b.splits and a.info == b.info
    assert a.splits["train"] != c.splits["train"]
    templates = a.info["templates"]
    assert set(templates["train"]).isdisjoint(templates["test"])
    assert set(templates["train"]).isdisjoint(templates["validation"])
    assert set(templates["validation"]).isdisjoint(templates["test"])
    assert [len(templates[k]) for k in ('train', 'validation', 'test')] == \
        [spec.train_templates, spec.validation_templates, spec.test_templates]
    assert sum(len(t) for t in templates.values()) <= len(spec.templates)
    per_label = spec.entities // len(spec.labels)
    for split, (texts, labels) in a.splits.items():
        assert len(texts) == spec.entities * len(templates[split])
        assert Counter(labels) == dict.fromkeys(range(len(spec.labels)), per_label * len(templates[split]))
        # no test sentence is a training sentence, and none names a label
        assert not any(name.lower() in t.lower() for t in texts for name in spec.labels)
    assert set(a.splits["train"][0]).isdisjoint(a.splits["test"][0])
    # every entity keeps its label across splits (the fact carries over to new templates)
    facts: dict[str, int] = {}
    for split, (texts, labels) in a.splits.items():
        for text, label in zip(texts, labels, strict=True):
            template = next(t for t in templates[split] if _fits(t, text))
            entity = _entity(template, text)
            assert facts.setdefault(entity, label) == label
    assert len(facts) == spec.entities


def _fits(template: str, text: str) -> bool:
    head, tail = template.split("{name}")
    return text.startswith(head) and text.endswith(tail)


def _entity(template: str, text: str) -> str:
    head, tail = template.split("{name}")
    return text[len(head):len(text) - len(tail)]


def test_entity_facts_loads_as_a_built_in_task():
    task = load_task("entity-facts", max_train=100)
    assert task.label_names == list(SYNTHETIC_TASKS["entity-facts"].labels)
    assert len(task.train) == 100 and len(task.test) == generate("entity-facts").splits["test"][0].__len__()
    assert task.describe()["generator_seed"] == 0


# --------------------------------------------------------------------------------------------------
# the study's arms build exactly the counted adapters
# --------------------------------------------------------------------------------------------------


def test_arm_configs_build_exactly_the_counted_ranks_in_peft(tmp_path):
    """Every LoRA arm trains ``config_from_ranks(ranks)``: peft must build exactly those ranks, α/r = 2 everywhere,
    and exactly ``lora_parameters`` trainable LoRA parameters (uniform, a skewed plan, its placebo)."""
    import rank_choice_arms as arms
    from tiny_text import bert_folder

    from rankscope.training.lora import LoraSpec
    from rankscope.training.models import build_model, load_classifier, load_tokenizer

    folder = bert_folder(tmp_path / "bert")
    shapes = arms.linear_shapes(load_classifier(folder, ["a", "b"], load_tokenizer(folder).pad_token_id, 0))
    assert len(shapes) == 2 * 6 + 1  # 2 layers × 6 linear modules + the pooler
    rng = np.random.default_rng(0)
    plan = {m: int(rng.integers(1, 9)) for m in shapes}
    for ranks in (st.uniform_ranks(shapes, 3), plan, st.shuffled_ranks(shapes, plan, seed=1)):
        cfg = arms.config_from_ranks(ranks)
        spec = LoraSpec(cfg["r"], cfg["lora_alpha"], cfg["target_modules"], cfg["rank_pattern"] or None,
                        cfg["alpha_pattern"] or None)
        model, _, _ = build_model(folder, ["a", "b"], "lora", spec, 0)
        built = {}
        for name, module in model.named_modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                short = name.removeprefix("base_model.model.").removeprefix("bert.")
                built[short] = module.lora_A["default"].weight.shape[0]
                assert module.scaling["default"] == pytest.approx(2.0)  # α/r constant
        assert built == ranks
        counted = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n and p.requires_grad)
        assert counted == st.lora_parameters(shapes, ranks)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable - counted == arms.head_parameters(32, 2)  # the rest is the classifier head


def test_lr_grid_grows_past_an_edge_only_while_the_best_rate_sits_there(tmp_path, monkeypatch):
    """``Study.lr_grid``: a best rate on an edge adds the next rate by the grid's own ratio there, at most
    ``MAX_LR_EXTENSIONS`` per side; an interior best or an unrun new rate stops the growth (no choice until run)."""
    import math

    import rank_choice as rc

    settings = rc.TASKS["entity-facts"]  # grid 1e-3, 2e-3, 4e-3 (ratio 2)
    study = rc.Study(tmp_path, tmp_path / "report", ["entity-facts"], math.inf, 1)
    monkeypatch.setattr(rc.Study, "shapes", property(lambda self: MINILM))
    spec = study.uniform_spec(2)

    def record(lr: float, accuracy: float) -> None:
        for seed in rc.LR_SEEDS:
            study.cache.run(settings, "uniform", spec, lr, seed,
                            lambda: {"validation_accuracy": accuracy, "validation_loss": 1 - accuracy,
                                     "test_accuracy": accuracy, "test_loss": 1 - accuracy}, budget_rank=2)

    for lr, acc in ((1e-3, 0.5), (2e-3, 0.6), (4e-3, 0.7)):
        record(lr, acc)
    assert study.lr_grid("entity-facts", "uniform", 2) == (1e-3, 2e-3, 4e-3, 8e-3)
    assert study.task_lr("entity-facts", "uniform", 2) is None  # the new rate is not run: no choice yet
    record(8e-3, 0.8)
    assert study.lr_grid("entity-facts", "uniform", 2) == (1e-3, 2e-3, 4e-3, 8e-3, 0.016)
    record(0.016, 0.9)  # still at the edge, but the limit (2 per side) is reached
    assert study.lr_grid("entity-facts", "uniform", 2) == (1e-3, 2e-3, 4e-3, 8e-3, 0.016)
    assert study.task_lr("entity-facts", "uniform", 2) == 0.016
    # another arm with an interior best keeps the task's grid; a lower-edge best grows downwards
    other = {**spec, "init": "x"}
    for lr, acc in ((1e-3, 0.9), (2e-3, 0.6), (4e-3, 0.5)):
        for seed in rc.LR_SEEDS:
            study.cache.run(settings, "uniform+init-update", other, lr, seed,
                            lambda acc=acc: {"validation_accuracy": acc, "validation_loss": 0.1,
                                             "test_accuracy": acc, "test_loss": 0.1}, budget_rank=2)
    assert study.lr_grid("entity-facts", "uniform+init-update", 2) == (5e-4, 1e-3, 2e-3, 4e-3)


def test_adalora_parameter_masking_keeps_the_best_triplets_that_fit(tmp_path):
    """``mask_to_parameters`` (the adalora-params arm): the kept triplets cost at most the parameter budget, no dropped
    triplet would still fit, dropped ones have λ = 0, and with a budget of everything nothing is dropped."""
    import torch
    from peft import AdaLoraConfig, TaskType, get_peft_model
    from tiny_text import bert_folder

    from rankscope.training.adalora import mask_to_parameters
    from rankscope.training.models import load_classifier, load_tokenizer

    folder = bert_folder(tmp_path / "bert")
    model = load_classifier(folder, ["a", "b"], load_tokenizer(folder).pad_token_id, 0)
    config = AdaLoraConfig(task_type=TaskType.SEQ_CLS, init_r=3, target_r=2, target_modules="all-linear",
                           total_step=100, tinit=10, tfinal=50)
    peft_model = get_peft_model(model, config)
    net, allocator = peft_model.base_model.model, peft_model.base_model.rankallocator
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "lora_" in n:
                allocator.exp_avg_ipt[n] = torch.rand(p.shape, generator=generator)
                allocator.exp_avg_unc[n] = torch.rand(p.shape, generator=generator)
                if "lora_E" in n:
                    p.fill_(1.0)
    params = dict(net.named_parameters())
    costs = {n: params[n.replace("lora_E", "lora_A")].shape[1] + params[n.replace("lora_E", "lora_B")].shape[0] + 1
             for n in params if "lora_E" in n}  # in + out + 1 per triplet
    everything = sum(3 * c for c in costs.values())
    target = int(0.55 * everything)
    keep = mask_to_parameters(allocator, net, allocator.target_bgt, target)
    spent = sum(costs[n] * sum(k) for n, k in keep.items())
    assert spent <= target
    assert all(spent + costs[n] > target for n, k in keep.items() for kept in k if not kept)  # maximal
    for n, k in keep.items():
        assert torch.equal(params[n].view(-1) != 0, torch.tensor(k))
    assert 0 < sum(map(sum, keep.values())) < 3 * len(costs)
    # the start of the schedule (every triplet's budget) drops nothing
    with torch.no_grad():
        for n in keep:
            params[n].fill_(1.0)
    keep_all = mask_to_parameters(allocator, net, allocator.init_bgt, target)
    assert all(all(k) for k in keep_all.values())

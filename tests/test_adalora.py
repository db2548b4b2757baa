"""``train --method adalora``: peft's AdaLoRA in the engine's loop, its parameter budget, and its LoRA export.

Checked against independent references: the exported LoRA adapter's merged weights equal peft's own AdaLoRA
``get_delta_weight`` (and the model's logits are unchanged by the export); the rank budget keeps exactly
``target_r × n`` triplets (peft's rule) and the parameter budget at most uniform LoRA's count, recomputed here from
the saved tensors; the masking step in parameters keeps triplets in order of importance while they fit (checked
against a direct re-implementation on planted scores); the orthogonality term equals a float64 numpy computation;
the best weights come from an evaluation at the final allocation; the saved adapter loads in peft and scores as
``metrics.json`` says; bad options are one line, exit 2, nothing written.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from rankscope.cli import main  # noqa: E402
from rankscope.errors import RankscopeError  # noqa: E402
from rankscope.train import evaluate_checkpoint, train  # noqa: E402
from rankscope.training.adalora import (  # noqa: E402
    AdaLoraHooks,
    AdaLoraSpec,
    apply_adalora,
    mask_to_parameters,
    module_shapes,
    to_lora,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {"epochs": 3, "batch_size": 8, "max_length": 16, "progress": False, "lr": 5e-3, "r": 2,
        "target_modules": "all-linear"}


def _run(bert: Path, data: Path, out: Path | None, **kw):
    return train(bert, "easy", "adalora", out, data=data, text_column="review", label_column="sentiment",
                 **{**FAST, **kw})


def _classifier(bert: Path) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(bert, num_labels=2).eval()


def _lora_params(folder: Path) -> int:
    tensors = load_file(folder / "adapter_model.safetensors")
    return sum(t.numel() for k, t in tensors.items() if ".lora_A." in k or ".lora_B." in k)


# -- the export to LoRA -------------------------------------------------------------------------------------------


def test_export_equals_peft_adalora_merge_and_keeps_the_logits(bert):
    """Random factors, a planted final pattern (one module keeps nothing): the exported LoRA merges to peft's
    AdaLoRA ΔW in every module and the logits do not move."""
    spec = AdaLoraSpec(target_r=2, init_r=4, target_modules="all-linear")
    model = apply_adalora(_classifier(bert), spec)
    hooks = AdaLoraHooks(model, spec)
    hooks.start(100)
    gen = torch.Generator().manual_seed(3)
    pattern = {}
    with torch.no_grad():
        for i, (name, module) in enumerate(model.base_model.model.named_modules()):
            if hasattr(module, "lora_E") and "default" in module.lora_E:
                for p in (module.lora_A["default"], module.lora_B["default"], module.lora_E["default"]):
                    p.copy_(torch.randn(p.shape, generator=gen))
                keep = [False] * 4 if i % 5 == 0 else [j % 2 == 0 or i % 3 == 0 for j in range(4)]
                pattern[f"{name}.lora_E.default"] = keep
    model.peft_config["default"].rank_pattern = pattern
    hooks.finish()
    expected = {}
    for name, module in model.base_model.model.named_modules():
        if hasattr(module, "lora_E") and "default" in module.lora_E:
            expected[name] = module.get_delta_weight("default").double()
    ids = torch.randint(5, model.config.vocab_size, (3, 9), generator=gen)
    with torch.no_grad():
        before = model(input_ids=ids).logits
    ranks = hooks.final_ranks()
    assert {n: r for n, r in ranks.items()} == {k.removesuffix(".lora_E.default"): sum(v) for k, v in pattern.items()}
    lora = to_lora(model, hooks)
    with torch.no_grad():
        after = lora(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    adapted = {n for n, m in lora.base_model.model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert adapted == {n for n, r in ranks.items() if r > 0}
    merged = lora.merge_and_unload()
    base = _classifier(bert)
    weights = dict(merged.named_modules())
    for name, delta in expected.items():
        got = weights[name].weight.double() - dict(base.named_modules())[name].weight.double()
        torch.testing.assert_close(got, delta, rtol=1e-5, atol=1e-6)
        if ranks[name] == 0:
            assert torch.count_nonzero(delta) == 0


def test_orthogonality_term_matches_numpy(bert):
    spec = AdaLoraSpec(target_r=2, init_r=3, target_modules=["query", "value"], orth_reg_weight=0.7)
    model = apply_adalora(_classifier(bert), spec)
    hooks = AdaLoraHooks(model, spec)
    norms = []
    for name, p in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            x = p.detach().double().numpy()
            gram = x @ x.T if ".lora_A." in name else x.T @ x
            norms.append(np.linalg.norm(gram - np.eye(gram.shape[0])))
    assert len(norms) == 2 * 2 * 2  # two layers, two modules, A and B
    assert hooks.extra_loss().item() == pytest.approx(0.7 * np.mean(norms), rel=1e-5)
    assert AdaLoraHooks(model, AdaLoraSpec(target_r=2, init_r=3, orth_reg_weight=0.0)).extra_loss() is None


def test_parameter_mask_keeps_the_most_important_triplets_that_fit():
    """Planted importance scores on three modules of different widths; the reference re-derives the allowed
    parameters and the greedy choice by importance."""

    class Fake:
        adapter_name = "default"

    gen = torch.Generator().manual_seed(5)
    shapes = {"a": (8, 4), "b": (16, 16), "c": (4, 32)}
    net = torch.nn.Module()
    for m, (out, inp) in shapes.items():
        sub = torch.nn.Module()
        sub.lora_A = torch.nn.ParameterDict({"default": torch.nn.Parameter(torch.randn(3, inp, generator=gen))})
        sub.lora_B = torch.nn.ParameterDict({"default": torch.nn.Parameter(torch.randn(out, 3, generator=gen))})
        sub.lora_E = torch.nn.ParameterDict({"default": torch.nn.Parameter(torch.ones(3, 1))})
        net.add_module(m, sub)
    alloc = Fake()
    alloc.init_bgt, alloc.target_bgt = 9, 3
    alloc.exp_avg_ipt, alloc.exp_avg_unc = {}, {}
    for n, p in net.named_parameters():
        alloc.exp_avg_ipt[n] = torch.rand(p.shape, generator=gen)
        alloc.exp_avg_unc[n] = torch.rand(p.shape, generator=gen)
    target = 1 * sum(o + i for o, i in shapes.values())
    for budget in (9, 6, 3):
        for p in net.parameters():
            p.data.fill_(1.0) if p.shape[1] == 1 else None
        keep = mask_to_parameters(alloc, net, budget, target)
        total = sum(3 * (o + i + 1) for o, i in shapes.values())
        allowed = target + (budget - 3) * (total - target) / 6
        scored = []
        for m, (out, inp) in shapes.items():
            s = {w: (alloc.exp_avg_ipt[f"{m}.lora_{w}.default"] * alloc.exp_avg_unc[f"{m}.lora_{w}.default"])
                 for w in "AEB"}
            for i in range(3):
                score = float(s["E"][i, 0] + s["A"][i].mean() + s["B"][:, i].mean())
                scored.append((score, m, i, out + inp + 1))
        spent, expected = 0, set()
        for _, m, i, cost in sorted(scored, reverse=True):
            if spent + cost <= allowed:
                expected.add((m, i))
                spent += cost
        got = {(n.split(".")[0], i) for n, kept in keep.items() for i, k in enumerate(kept) if k}
        assert got == expected and spent <= allowed
        for m in shapes:
            e = dict(net.named_parameters())[f"{m}.lora_E.default"].detach().view(-1)
            assert [bool(x) for x in e] == keep[f"{m}.lora_E.default"]
    assert len(expected) < 9


def test_parameter_mask_equals_peft_masking_when_every_triplet_costs_the_same(bert, easy_csv):
    """Modules of one shape and a parameter budget of ``budget × cost``: the kept triplets are exactly those peft's
    own ``mask_to_budget`` keeps (the top ``budget`` by importance), on importances from a real backward pass."""
    spec = AdaLoraSpec(target_r=2, init_r=4, target_modules=["query", "key", "value"])
    model = apply_adalora(_classifier(bert), spec)
    hooks = AdaLoraHooks(model, spec)
    hooks.start(100)
    allocator = model.base_model.rankallocator
    ids = torch.randint(5, model.config.vocab_size, (4, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_E" in name:
                p.normal_()
    for _ in range(3):
        model.zero_grad()
        model(input_ids=ids, labels=torch.tensor([0, 1, 1, 0])).loss.backward()
        allocator.update_ipt(model.base_model.model)
    net = model.base_model.model
    es = {n: p.detach().clone() for n, p in net.named_parameters() if "lora_E" in n}
    (cost,) = {o + i + 1 for o, i in hooks.shapes.values()}
    for budget in (allocator.init_bgt - 3, allocator.target_bgt + 2, allocator.target_bgt):
        peft_keep = allocator.mask_to_budget(net, budget)
        with torch.no_grad():
            for n, p in net.named_parameters():
                if n in es:
                    p.copy_(es[n])
        ours = mask_to_parameters(allocator, net, budget, allocator.target_bgt * cost)
        with torch.no_grad():
            for n, p in net.named_parameters():
                if n in es:
                    p.copy_(es[n])
        assert ours == peft_keep and sum(map(sum, ours.values())) == budget


def test_the_orthogonality_term_reaches_the_gradients_as_peft_adds_it(bert):
    """One engine step's gradients (cross-entropy + γ·R) equal those of peft's own forward with labels, which adds
    AdaLoRA's regulariser to the loss itself; with γ = 0 they differ (the term is really there)."""
    from rankscope.training.engine import linear_schedule, make_optimizer, train_step

    grads = {}
    for weight, route in ((0.5, "engine"), (0.5, "peft"), (0.0, "engine")):
        spec = AdaLoraSpec(target_r=2, init_r=3, target_modules=["query", "value"], orth_reg_weight=weight)
        torch.manual_seed(11)
        model = apply_adalora(_classifier(bert), spec)
        ids = torch.randint(5, model.config.vocab_size, (4, 9), generator=torch.Generator().manual_seed(3))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 1, 0])}
        if route == "engine":
            optimizer = make_optimizer(model, 0.0, 0.0)
            train_step(model, batch, optimizer, linear_schedule(optimizer, 0, 10), None, AdaLoraHooks(model, spec))
        else:
            model(**batch).loss.backward()
        grads[(weight, route)] = {n: p.grad.clone() for n, p in model.named_parameters() if "lora_A" in n}
    for n, g in grads[(0.5, "peft")].items():
        torch.testing.assert_close(grads[(0.5, "engine")][n], g, rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(grads[(0.0, "engine")][n], g) for n, g in grads[(0.5, "peft")].items())


# -- training -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(bert, easy_csv, tmp_path_factory):
    root = tmp_path_factory.mktemp("adalora")
    return {unit: (_run(bert, easy_csv, root / unit, budget_unit=unit, eval_every=4), root / unit)
            for unit in ("rank", "params")}


def test_rank_budget_keeps_target_r_triplets_per_module(runs):
    metrics, out = runs["rank"]
    record = metrics["adalora"]
    n = len(record["final_ranks"])
    assert n == 2 * 6 + 1  # all-linear of a two-layer BERT and its pooler
    assert sum(record["final_ranks"].values()) == record["target_r"] * n == record["budget_triplets"]
    assert record["init_r"] == 3 and record["total_step"] == metrics["steps"]
    assert _lora_params(out) == record["lora_params"]


def test_parameter_budget_is_at_most_uniform_lora(runs, bert):
    metrics, out = runs["params"]
    record = metrics["adalora"]
    shapes = module_shapes(apply_adalora(_classifier(bert), AdaLoraSpec(target_r=2, target_modules="all-linear")))
    uniform = 2 * sum(o + i for o, i in shapes.values())
    assert record["budget_params"] == uniform
    assert _lora_params(out) == record["lora_params"] <= uniform
    # greedy leaves less than one triplet's cost unspent (a triplet costs out + in + 1: its λ is folded into A here)
    kept = sum(record["final_ranks"].values())
    assert record["lora_params"] + kept > uniform - max(o + i + 1 for o, i in shapes.values())
    ranks = json.loads((out / "adapter_config.json").read_text())
    per_module = {k: ranks["rank_pattern"].get(re.escape(k), ranks["r"]) for k in ranks["target_modules"]}
    assert per_module == {k: v for k, v in record["final_ranks"].items() if v > 0}


def test_best_weights_come_from_the_final_allocation(runs):
    for metrics, out in runs.values():
        record = metrics["adalora"]
        final_step = record["total_step"] - record["tfinal"]
        early = [h for h in metrics["history"] if h["step"] < final_step]
        assert early and all(h.get("selectable") is False for h in early)
        assert metrics["best_step"] >= final_step
        run = json.loads((out / "run.json").read_text())
        assert run["adalora"] == record and run["lora"]["r"] >= 1


def test_saved_adapter_loads_in_peft_and_scores_as_recorded(runs, bert, easy_csv):
    metrics, out = runs["params"]
    scores = evaluate_checkpoint(bert, "easy", adapter=out, data=easy_csv, text_column="review",
                                 label_column="sentiment", max_length=16)
    assert scores["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    assert scores["validation_loss"] == pytest.approx(metrics["validation_loss"], rel=1e-4)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    scale = 6.0 / (3 + 1e-5)  # alpha 2·init_r, peft's AdaLoRA scale
    for module in config["target_modules"]:
        r = config["rank_pattern"].get(re.escape(module), config["r"])
        alpha = config["alpha_pattern"].get(re.escape(module), config["lora_alpha"])
        assert alpha / r == pytest.approx(scale, rel=1e-9)


def test_same_seed_same_adapter(bert, easy_csv, tmp_path, runs):
    _run(bert, easy_csv, tmp_path / "again", budget_unit="rank", eval_every=4)
    a, b = load_file(runs["rank"][1] / "adapter_model.safetensors"), load_file(tmp_path / "again" /
                                                                               "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- bad input ----------------------------------------------------------------------------------------------------


def test_too_short_a_run_has_no_pruning_phase(bert, easy_csv, tmp_path):
    with pytest.raises(RankscopeError, match="no pruning phase"):
        _run(bert, easy_csv, tmp_path / "short", max_train=8, epochs=1)
    assert not (tmp_path / "short").exists()


def _cli(*args: str):
    return CliRunner().invoke(main, ["train", *args])


@pytest.mark.parametrize(("args", "culprit"), [
    (["--method", "adalora", "--rank-pattern", "{}"], "--rank-pattern"),
    (["--method", "adalora", "--use-rslora"], "--use-rslora"),
    (["--method", "adalora", "--patience", "2"], "--patience"),
    (["--method", "adalora", "--r", "4", "--init-r", "4"], "--init-r"),
    (["--method", "adalora", "--adalora-schedule", "0.5,0.6"], "--adalora-schedule"),
    (["--method", "adalora", "--adalora-schedule", "half"], "--adalora-schedule"),
    (["--method", "adalora", "--target-modules", "nothing_here"], "nothing_here"),
    (["--method", "lora", "--budget-unit", "params"], "--budget-unit"),
    (["--method", "full", "--init-r", "4"], "--init-r"),
    (["--method", "adalora", "--init", "somewhere"], "--init"),
])
def test_cli_bad_adalora_options_are_one_line_exit_2(bert, easy_csv, tmp_path, args, culprit):
    result = _cli("--model", str(bert), "--data", str(easy_csv), "--text-column", "review", "--label-column",
                  "sentiment", *args, "-q", "-o", str(tmp_path / "bad"))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error") and culprit in lines[0], lines
    assert not (tmp_path / "bad").exists()


def test_cli_trains_adalora_and_writes_lora(bert, easy_csv, tmp_path):
    out = tmp_path / "cli"
    result = _cli("--model", str(bert), "--data", str(easy_csv), "--text-column", "review", "--label-column",
                  "sentiment", "--method", "adalora", "--r", "2", "--budget-unit", "params", "--epochs", "2",
                  "--max-length", "16", "--batch-size", "8", "--adalora-schedule", "0.1,0.4", "-q", "-o", str(out))
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["adalora"]["budget_unit"] == "params" and run["adalora"]["final"] == 0.4
    assert run["adalora"]["tfinal"] == round(0.4 * run["adalora"]["total_step"])
    assert math.isclose(run["options"]["lr"], 5e-4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "adalora" and metrics["adalora"]["lora_params"] == _lora_params(out)


def test_export_of_a_gpt2_causal_lm_keeps_the_logits(gpt2):
    """GPT-2's Conv1D layers (peft's fan_in_fan_out): the export keeps the logits; the LM head is not adapted."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    spec = AdaLoraSpec(target_r=1, init_r=3, target_modules="all-linear")
    model = apply_adalora(AutoModelForCausalLM.from_pretrained(gpt2).eval(), spec, "CAUSAL_LM")
    hooks = AdaLoraHooks(model, spec)
    hooks.start(100)
    gen = torch.Generator().manual_seed(1)
    pattern = {}
    with torch.no_grad():
        for name, module in model.base_model.model.named_modules():
            if hasattr(module, "lora_E") and "default" in module.lora_E:
                for p in (module.lora_A["default"], module.lora_B["default"], module.lora_E["default"]):
                    p.copy_(torch.randn(p.shape, generator=gen))
                pattern[f"{name}.lora_E.default"] = [True, False, True]
    model.peft_config["default"].rank_pattern = pattern
    ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=gen)
    hooks.finish()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    lora = to_lora(model, hooks, "CAUSAL_LM")
    with torch.no_grad():
        after = lora(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    adapted = {n for n, m in lora.base_model.model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert adapted and not any(n.endswith("lm_head") for n in adapted)
    assert all(m.lora_A["default"].weight.shape[0] == 2 for n, m in lora.base_model.model.named_modules()
               if n in adapted)


def test_causal_lm_adalora_run_saves_a_lora_that_scores_as_recorded(gpt2, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"q{i} ", "response": f"a{i % 3} b"}) for i in range(80)))
    out = tmp_path / "out"
    metrics = train(gpt2, "pairs", "adalora", out, data=data, objective="causal-lm", epochs=3, batch_size=8,
                    max_length=16, progress=False, r=1, target_modules="all-linear", lr=5e-3)
    assert sum(metrics["adalora"]["final_ranks"].values()) == len(metrics["adalora"]["final_ranks"])
    scores = evaluate_checkpoint(gpt2, "pairs", adapter=out, data=data, objective="causal-lm", max_length=16)
    assert scores["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-6)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and not config.get("modules_to_save")

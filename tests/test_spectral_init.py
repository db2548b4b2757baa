"""Spectral initialisation: ``recommend --init-from`` writes a peft adapter at the planned ranks whose factors start in
the signal's top singular subspace, ``train --init`` starts from exactly those factors, and every plan states its signal.

References are independent of rankscope: signal matrices are planted as ``Q₁ diag(σ) Q₂ᵀ`` (so ``M_r`` and its
subspaces are known without any SVD), the pair's ``ΔW`` comes from the float64 reference of ``conftest.py``, and the
adapters are read back through peft's own layers (``get_delta_weight``, ``scaling``).  Probe folders are written here
from the probe contract (a spectrum result with ``"command": "probe"`` plus ``singular_vectors.npz``), so these tests
do not depend on ``rankscope probe``.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.linalg

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tiny_text import bert_folder  # noqa: E402

from rankscope.cli import main  # noqa: E402
from rankscope.errors import RankscopeError  # noqa: E402
from rankscope.extract import extract  # noqa: E402
from rankscope.numerics.spectral_init import LORA_ONE_GAMMA, gradient_factors, init_product, update_factors  # noqa: E402
from rankscope.pairing.align import assign_kinds  # noqa: E402
from rankscope.ranks import recommend  # noqa: E402
from rankscope.spectrum import SpectrumResult  # noqa: E402
from rankscope.train import train  # noqa: E402

train_module = importlib.import_module("rankscope.train")  # the module (rankscope.train is the function)

KEEP = 6
"""Singular triplets the planted probes keep (their R)."""
FAST = {"epochs": 1, "batch_size": 8, "max_length": 16, "progress": False, "text_column": "review",
        "label_column": "sentiment"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, k)))
    return q * np.sign(np.diag(r))


def angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles (radians) between the column spaces of ``a`` and ``b``."""
    return scipy.linalg.subspace_angles(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


# --------------------------------------------------------------------------------------------------
# the formulas
# --------------------------------------------------------------------------------------------------


def test_formulas_span_the_top_subspaces_with_the_stated_scale():
    rng = np.random.default_rng(0)
    q1, q2 = orthonormal(rng, 12, 7), orthonormal(rng, 9, 7)
    sigma = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.1])
    m = (q1 * sigma) @ q2.T
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    r, scale, gamma = 3, 2.0, 16.0
    m_r = (q1[:, :r] * sigma[:r]) @ q2[:, :r].T  # from the plant, no SVD
    b, a = update_factors(u, s, vt, r, scale)
    assert b.shape == (12, r) and a.shape == (r, 9) and b.dtype == np.float32
    np.testing.assert_allclose(scale * b.astype(np.float64) @ a.astype(np.float64), m_r, atol=1e-5)
    b, a = gradient_factors(u, s, vt, r, gamma)
    step = -(scale / (gamma * sigma[0])) * m_r  # LoRA-One: a descent step of spectral norm s/γ
    np.testing.assert_allclose(scale * b.astype(np.float64) @ a.astype(np.float64), step, atol=1e-6)
    assert np.linalg.norm(step, 2) == pytest.approx(scale / gamma)
    assert angles(b, q1[:, :r]).max() < 1e-5 and angles(a.T, q2[:, :r]).max() < 1e-5
    np.testing.assert_allclose(init_product("gradient", u, s, vt, r, scale, gamma), step, atol=1e-12)
    # √Σ split evenly: the factors have equal column / row norms (the balanced split of LoRA-One)
    np.testing.assert_allclose(np.linalg.norm(b, axis=0), np.linalg.norm(a, axis=1), rtol=1e-5)
    with pytest.raises(ValueError, match="rank 7 outside"):
        update_factors(u[:, :6], s[:6], vt[:6], 7, scale)


# --------------------------------------------------------------------------------------------------
# planted probes on a tiny BERT
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return bert_folder(tmp_path_factory.mktemp("tiny-bert"))


def module_shapes(base: Path) -> dict[str, tuple[int, int]]:
    from safetensors.numpy import load_file as load_np

    state = load_np(str(base / "model.safetensors"))
    return {k[: -len(".weight")]: v.shape for k, v in state.items()
            if k.endswith(".weight") and v.ndim == 2 and "embeddings" not in k}


def plant_signals(shapes: dict[str, tuple[int, int]], seed: int = 1) -> dict[str, tuple[np.ndarray, ...]]:
    """``module -> (M, Q1, σ, Q2)`` with ``M = Q1 diag(σ) Q2ᵀ``, σ distinct and decaying at one of four rates."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, (name, (m, n)) in enumerate(sorted(shapes.items())):
        k = min(m, n)
        sigma = (1.0 + 0.2 * i) * (0.3, 0.5, 0.7, 0.8)[i % 4] ** np.arange(k)  # energy:0.8 ranks 1, 2, 3, 4
        q1, q2 = orthonormal(rng, m, k), orthonormal(rng, n, k)
        out[name] = ((q1 * sigma) @ q2.T, q1, sigma, q2)
    return out


def write_probe(folder: Path, base: Path, signal: str, signals: dict[str, tuple[np.ndarray, ...]],
                keep: int = KEEP, with_vectors: bool = True) -> Path:
    """A folder following the probe contract: a spectrum result (``"command": "probe"``) + ``singular_vectors.npz``."""
    kinds = assign_kinds(list(signals))
    rows, spectra, arrays = [], {}, {}
    for name, (m, *_) in signals.items():
        u, s, vt = np.linalg.svd(m, full_matrices=False)  # what a probe computes
        layer, kind = kinds[name]
        rows.append({"module": name, "layer": layer, "kind": kind, "rows": m.shape[0], "cols": m.shape[1],
                     "params": m.size, "delta_norm": float(np.linalg.norm(m))})
        spectra[name] = s
        arrays.update({f"{name}:U": u[:, :keep], f"{name}:S": s[:keep], f"{name}:Vt": vt[:keep]})
    table = pd.DataFrame(rows)
    table["layer"] = table["layer"].astype("Int64")
    info = {"command": "probe", "signal": signal, "keep_vectors": keep, "seed": 0,
            "task": {"name": "easy", "label_names": ["neg", "pos"]},
            "inputs": {"model": str(base), "model_resolved": str(base),
                       "finetuned": {"given": "the probe's task model", "architectures": ["BertForSequenceClassification"]}}}
    vectors_table = pd.DataFrame(columns=["module", "layer", "numel", "base_norm", "delta_norm", "rel_delta"])
    SpectrumResult(table, spectra, vectors_table, info).save(folder, plots=False)
    if with_vectors:
        np.savez(folder / "singular_vectors.npz", **arrays)
    return folder


@pytest.fixture(scope="module")
def planted(base) -> dict[str, tuple[np.ndarray, ...]]:
    return plant_signals(module_shapes(base))


@pytest.fixture(scope="module", params=["gradient", "update"])
def probe(request, base, planted, tmp_path_factory) -> tuple[str, Path]:
    return request.param, write_probe(tmp_path_factory.mktemp(f"probe-{request.param}"), base, request.param, planted)


def peft_model(base: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    return PeftModel.from_pretrained(model, adapter)


def lora_layers(model) -> dict[str, object]:
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def test_init_from_probe_is_the_formula_in_the_top_subspaces(probe, base, planted, tmp_path):
    signal, folder = probe
    plan = recommend(folder, rule="energy:0.8", init_from=folder)
    assert plan.info["signal"] == f"probe {signal}" and f"signal: probe {signal}" in plan.summary_text()
    assert plan.config["task_type"] == "SEQ_CLS"
    out = plan.save(tmp_path / "plan", plots=False)
    config = json.loads((out / "init" / "adapter_config.json").read_text())
    assert config.pop("base_model_name_or_path") == str(base)
    assert config == plan.config  # the plan's LoraConfig, as written next to it
    assert json.loads((out / "run.json").read_text())["init"]["signal"] == f"probe {signal}"
    ranks = dict(zip(plan.table["module"], plan.table["rank"], strict=True))
    assert len(set(ranks.values())) > 1  # the plan is not uniform, so patterns matter
    from rankscope.training.models import load_classifier  # the probe's head: train's seeded head, seed 0

    head = load_classifier(base, ["neg", "pos"], 0, 0).classifier.weight.detach()
    assert torch.equal(load_file(str(out / "init" / "adapter_model.safetensors"))["base_model.model.classifier.weight"],
                       head)
    layers = lora_layers(peft_model(base, out / "init"))
    assert len(layers) == len(ranks)
    for name, layer in layers.items():
        module = name.split("base_model.model.bert.", 1)[1]
        m, q1, sigma, q2 = planted[module]
        r = ranks[module]
        assert layer.r["default"] == r
        s = layer.scaling["default"]
        m_r = (q1[:, :r] * sigma[:r]) @ q2[:, :r].T
        expected = m_r if signal == "update" else -(s / (LORA_ONE_GAMMA * sigma[0])) * m_r
        delta = layer.get_delta_weight("default").double().numpy()  # peft's own merge: s·B·A
        np.testing.assert_allclose(delta, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
        b = layer.lora_B["default"].weight.detach().numpy()
        a = layer.lora_A["default"].weight.detach().numpy()
        assert angles(b, q1[:, :r]).max() < 1e-4 and angles(a.T, q2[:, :r]).max() < 1e-4


def test_init_rank_above_the_kept_vectors_is_refused(probe, tmp_path):
    _, folder = probe
    out = tmp_path / "plan"
    res = CliRunner().invoke(main, ["recommend", str(folder), "--rule", "avg-rank:8", "--init-from", str(folder),
                                    "-o", str(out), "-q"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert f"kept {KEEP} singular vectors" in res.output and "--max-rank" in res.output
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# train --init
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def init_adapter(base, planted, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("init")
    folder = write_probe(root / "probe", base, "gradient", planted)
    return recommend(folder, rule="energy:0.8", init_from=folder).save(root / "plan", plots=False) / "init"


def test_train_init_starts_from_exactly_the_factors(base, easy_csv, init_adapter, tmp_path, monkeypatch):
    start: dict[str, torch.Tensor] = {}
    real = train_module.train_model

    def capture(net, *args, **kwargs):  # the model as the training loop receives it, before any step
        start.update({n: p.detach().clone() for n, p in net.named_parameters()})
        return real(net, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_model", capture)
    result = train(base, "easy", "lora", tmp_path / "run", data=easy_csv, init=init_adapter, seed=3, **FAST)
    file = load_file(str(init_adapter / "adapter_model.safetensors"))
    factors = {n: p for n, p in start.items() if ".lora_" in n}
    assert len(factors) == len([k for k in file if ".lora_" in k]) > 0
    for name, value in factors.items():
        assert torch.equal(value, file[name.replace(".default", "")]), name
    # everything else as in a run without init: the same seeded head and frozen base
    start_init = dict(start)
    start.clear()
    config = json.loads((init_adapter / "adapter_config.json").read_text())
    train(base, "easy", "lora", None, data=easy_csv, seed=3, r=config["r"], alpha=config["lora_alpha"],
          target_modules=config["target_modules"], rank_pattern=config["rank_pattern"],
          alpha_pattern=config["alpha_pattern"], **FAST)
    others = [n for n in start_init if ".lora_" not in n]
    assert others and all(torch.equal(start_init[n], start[n]) for n in others)
    assert any(not torch.equal(start_init[n], start[n]) for n in factors)  # fresh LoRA init differs
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    heads = sorted(k for k in file if ".lora_" not in k)
    assert heads == ["base_model.model.classifier.bias", "base_model.model.classifier.weight"]
    assert run["init"]["modules"] == len(factors) // 2 and run["init"]["ignored_tensors"] == heads
    assert result.info["lora"]["rank_pattern"] == config["rank_pattern"]


def test_a_learning_rate_sweep_starts_every_rate_from_the_init_factors(base, easy_csv, init_adapter, monkeypatch):
    """``--init`` with ``--lr A,B``: each rate starts from exactly the adapter's factors; the init record and its note
    are those of one run (not repeated per rate)."""
    starts: list[dict[str, torch.Tensor]] = []
    real = train_module.train_model

    def capture(net, *args, **kwargs):
        starts.append({n: p.detach().clone() for n, p in net.named_parameters() if ".lora_" in n})
        return real(net, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_model", capture)
    result = train(base, "easy", "lora", None, data=easy_csv, init=init_adapter, seed=3, lr=[1e-3, 5e-3], **FAST)
    file = load_file(str(init_adapter / "adapter_model.safetensors"))
    assert len(starts) == 2
    for start in starts:
        assert start and all(torch.equal(v, file[n.replace(".default", "")]) for n, v in start.items())
    assert result.info["init"]["modules"] == len(starts[0]) // 2
    assert sum("were not used" in note for note in result.info["notes"]) == 1
    assert len(result["lr_sweep"]) == 2


def test_train_init_cli_and_its_bad_input(base, easy_csv, init_adapter, tmp_path):
    common = ["train", "--model", str(base), "--data", str(easy_csv), "--text-column", "review", "--label-column",
              "sentiment", "--epochs", "1", "--batch-size", "8", "--max-length", "16", "-q"]
    res = CliRunner().invoke(main, [*common, "--method", "lora", "--init", str(init_adapter), "-o", str(tmp_path / "ok")])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "ok" / "adapter_config.json").read_text())
    planned = json.loads((init_adapter / "adapter_config.json").read_text())
    assert saved["r"] == planned["r"] and saved["rank_pattern"] == planned["rank_pattern"]

    def bad(*args: str, name: str) -> str:
        out = tmp_path / name
        res = CliRunner().invoke(main, [*common, *args, "-o", str(out)])
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
        assert not out.exists()
        return res.output

    assert "--r" in bad("--method", "lora", "--init", str(init_adapter), "--r", "4", name="r")
    assert "--lora-config" in bad("--method", "lora", "--init", str(init_adapter), "--lora-config",
                                  str(init_adapter / "adapter_config.json"), name="cfg")
    assert "--method lora" in bad("--init", str(init_adapter), name="full")
    # an adapter for another model: the same module names, other shapes
    other = tmp_path / "other-model"
    from transformers import BertConfig, BertModel

    config = BertModel.from_pretrained(base).config.to_dict()
    BertModel(BertConfig(**{**config, "intermediate_size": 48})).save_pretrained(other)
    for f in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (base / f).exists():
            (other / f).write_bytes((base / f).read_bytes())
    msg = bad("--model", str(other), "--method", "lora", "--init", str(init_adapter), name="other")
    assert "another model" in msg and "shape" in msg
    # other targets: the config adapts a module whose factors the file lacks
    targets = tmp_path / "other-targets"
    targets.mkdir()
    cfg = json.loads((init_adapter / "adapter_config.json").read_text())
    cfg["target_modules"] = [*cfg["target_modules"], "pooler.dense"] if "pooler.dense" not in cfg["target_modules"] \
        else cfg["target_modules"][1:]
    (targets / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(load_file(str(init_adapter / "adapter_model.safetensors")), str(targets / "adapter_model.safetensors"))
    assert "other targets" in bad("--method", "lora", "--init", str(targets), name="targets")
    # an adapter for another task type
    causal = tmp_path / "causal"
    causal.mkdir()
    (causal / "adapter_config.json").write_text(json.dumps({**cfg, "task_type": "CAUSAL_LM"}))
    save_file(load_file(str(init_adapter / "adapter_model.safetensors")), str(causal / "adapter_model.safetensors"))
    assert "CAUSAL_LM" in bad("--method", "lora", "--init", str(causal), name="causal-out")


# --------------------------------------------------------------------------------------------------
# --init-from pair: extract's truncation of the full fine-tune
# --------------------------------------------------------------------------------------------------


def test_init_from_pair_reproduces_extract(make_pair, tmp_path):
    pair = make_pair("bert")
    plan = recommend(pair.base, pair.finetuned, rule="energy:0.9", init_from="pair", workers=1)
    assert plan.info["signal"] == "full-FT ΔW" and plan.info["init"]["signal"] == "full-FT ΔW"
    out = plan.save(tmp_path / "plan", plots=False)
    init = load_file(str(out / "init" / "adapter_model.safetensors"))
    ref = extract(pair.base, pair.finetuned, config=plan.config, method="exact", workers=1)
    lora_ref = {k: v for k, v in ref.tensors.items() if ".lora_" in k or k.startswith("base_model.model.classifier.")}
    assert set(init) == set(lora_ref)  # the planned factors and the fine-tune's head (peft needs it to load)
    assert {k for k in init if ".lora_" not in k} == {"base_model.model.classifier.weight",
                                                        "base_model.model.classifier.bias"}
    assert all(k.startswith("base_model.model.bert.") for k in init if ".lora_" in k)
    for key, value in init.items():
        assert np.array_equal(value.numpy(), lora_ref[key]), key
    reference = pair.reference()
    layers = lora_layers(peft_model(pair.base, out / "init"))
    ranks = {m: r for m, r in zip(plan.table["module"], plan.table["rank"], strict=True) if r > 0}
    assert pair.zero_module not in ranks and len(layers) == len(ranks) > 0
    for name, layer in layers.items():
        module = name.split("base_model.model.bert.", 1)[1]
        r = layer.r["default"]
        assert r == ranks[module]
        u, s, vt = np.linalg.svd(reference[module].delta, full_matrices=False)
        expected = (u[:, :r] * s[:r]) @ vt[:r]  # Eckart–Young, float64 numpy
        np.testing.assert_allclose(layer.get_delta_weight("default").double().numpy(), expected, atol=1e-6)


def bare_pair(base: Path, root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A bare ``BertModel`` "fine-tune" of ``base`` (like the bundled MiniLM pair): ``W + ΔW`` with ``ΔW`` of rank 3."""
    from transformers import BertModel

    rng = np.random.default_rng(5)
    model = BertModel.from_pretrained(base)
    planted = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embeddings" not in name:
                m, n = p.shape
                delta = (orthonormal(rng, m, 3) * np.array([0.3, 0.2, 0.1])) @ orthonormal(rng, n, 3).T
                p.add_(torch.from_numpy(delta).float())
                planted[name[: -len(".weight")]] = delta
    model.save_pretrained(root)
    return root, planted


def test_init_from_a_bare_pair_trains_from_the_truncation(base, easy_csv, tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import BertModel

    ft, planted = bare_pair(base, tmp_path / "ft")
    plan = recommend(base, ft, rule="energy:0.7", init_from="pair", workers=1)
    assert plan.config["task_type"] == "FEATURE_EXTRACTION"
    out = plan.save(tmp_path / "plan", plots=False)
    file = load_file(str(out / "init" / "adapter_model.safetensors"))
    assert file and all(k.startswith("base_model.model.encoder.") or k.startswith("base_model.model.pooler.")
                        for k in file)  # the bare model's names, as peft expects for FEATURE_EXTRACTION
    ranks = {m: r for m, r in zip(plan.table["module"], plan.table["rank"], strict=True) if r > 0}
    layers = lora_layers(PeftModel.from_pretrained(BertModel.from_pretrained(base), out / "init"))
    assert len(layers) == len(ranks) and {layer.r["default"] for layer in layers.values()} <= {1, 2, 3}
    for name, layer in layers.items():
        module = name.removeprefix("base_model.model.")
        delta = layer.get_delta_weight("default").double().numpy()
        stored = load_file(str(ft / "model.safetensors"))[f"{module}.weight"].double().numpy() - \
            load_file(str(base / "model.safetensors"))[f"{module}.weight"].double().numpy()
        u, s, vt = np.linalg.svd(stored, full_matrices=False)
        r = ranks[module]
        np.testing.assert_allclose(delta, (u[:, :r] * s[:r]) @ vt[:r], atol=1e-6)
    # train --init maps the bare names onto the classifier's bert.… modules (peft's suffix rule), exactly
    start: dict[str, torch.Tensor] = {}
    real = train_module.train_model

    def capture(net, *args, **kwargs):
        start.update({n: p.detach().clone() for n, p in net.named_parameters() if ".lora_" in n})
        return real(net, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_model", capture)
    train(base, "easy", "lora", None, data=easy_csv, init=out / "init", **FAST)
    assert len(start) == len(file) > 0
    for name, value in start.items():
        key = name.replace("base_model.model.bert.", "base_model.model.").replace(".default", "")
        assert torch.equal(value, file[key]), name


def test_init_from_pair_needs_the_pair(make_pair, tmp_path):
    pair = make_pair("bert")
    spec = tmp_path / "spec"
    res = CliRunner().invoke(main, ["spectrum", str(pair.base), str(pair.finetuned), "-o", str(spec), "-q", "--no-plots"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "plan"
    res = CliRunner().invoke(main, ["recommend", str(spec), "--init-from", "pair", "-o", str(out), "-q"])
    assert res.exit_code == 2 and "BASE FINETUNED" in res.output and not out.exists()
    res = CliRunner().invoke(main, ["recommend", str(spec), "--init-from", str(spec), "-o", str(out), "-q"])
    assert res.exit_code == 2 and "'spectrum' result, not a rankscope probe" in res.output and not out.exists()
    assert json.loads((spec / "run.json").read_text())["command"] == "spectrum"
    plan = recommend(spec)
    assert plan.info["signal"] == "full-FT ΔW" and "signal: full-FT ΔW" in plan.summary_text()


# --------------------------------------------------------------------------------------------------
# bad --init-from input
# --------------------------------------------------------------------------------------------------


def test_bad_init_sources(base, planted, tmp_path):
    source = write_probe(tmp_path / "source", base, "update", planted)
    no_vectors = write_probe(tmp_path / "novec", base, "gradient", planted, with_vectors=False)

    def bad(*args: str) -> str:
        out = tmp_path / "out"
        res = CliRunner().invoke(main, ["recommend", str(source), *args, "-o", str(out), "-q"])
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
        assert not out.exists()
        return res.output

    assert "no singular_vectors.npz" in bad("--init-from", str(no_vectors))
    assert "no such folder" in bad("--init-from", str(tmp_path / "nothere"))
    plain = tmp_path / "plain"
    plain.mkdir()
    assert "not a rankscope probe" in bad("--init-from", str(plain))
    assert "--init-scale applies to a gradient" in bad("--init-from", str(source), "--init-scale", "64")
    assert "--init-scale only applies with --init-from" in bad("--init-scale", "64")
    # a probe of another model: the plan's modules have no vectors there
    other = {k.replace("encoder.", "decoder."): v for k, v in planted.items()}
    assert "has no" in bad("--init-from", str(write_probe(tmp_path / "otherprobe", base, "update", other)))


# --------------------------------------------------------------------------------------------------
# hygiene: the signal of every plan, and a constant scale across ranks
# --------------------------------------------------------------------------------------------------


def planted_spectrum(command: str) -> SpectrumResult:
    names = ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value"]
    kinds = assign_kinds(names)
    spectra = {names[0]: np.r_[np.ones(8), np.zeros(24)], names[1]: np.r_[np.ones(2), np.zeros(30)]}
    rows = [{"module": n, "layer": kinds[n][0], "kind": kinds[n][1], "rows": 32, "cols": 32, "params": 1024,
             "delta_norm": float(np.linalg.norm(spectra[n]))} for n in names]
    table = pd.DataFrame(rows)
    table["layer"] = table["layer"].astype("Int64")
    vectors = pd.DataFrame(columns=["module", "layer", "numel", "base_norm", "delta_norm", "rel_delta"])
    return SpectrumResult(table, spectra, vectors, {"command": command})


@pytest.mark.parametrize("use_rslora", [False, True])
def test_four_times_the_rank_keeps_the_scale(base, use_rslora):
    from peft import LoraConfig, get_peft_model
    from transformers import BertModel

    plan = recommend(planted_spectrum("spectrum"), rule="energy:0.999", use_rslora=use_rslora)
    ranks = dict(zip(plan.table["module"], plan.table["rank"], strict=True))
    assert sorted(ranks.values()) == [2, 8]
    model = get_peft_model(BertModel.from_pretrained(base), LoraConfig(**plan.config))
    layers = lora_layers(model)
    scales = {n.rsplit("encoder.", 1)[1]: layer.scaling["default"] for n, layer in layers.items()}
    assert {layer.r["default"] for layer in layers.values()} == {2, 8}
    assert all(s == pytest.approx(2.0) for s in scales.values()), scales  # α/r = 2 (rsLoRA: α/√r = 2)
    assert plan.config.get("use_rslora", False) is use_rslora


def test_every_plan_states_its_signal():
    assert recommend(planted_spectrum("spectrum")).info["signal"] == "full-FT ΔW"
    assert recommend(planted_spectrum("lora")).info["signal"] == "adapter"
    probe = planted_spectrum("probe")
    probe.info["signal"] = "update"
    plan = recommend(probe)
    assert plan.info["signal"] == "probe update" and plan.config["task_type"] == "SEQ_CLS"
    with pytest.raises(RankscopeError, match="'extract' result"):
        recommend(planted_spectrum("extract"))

"""``rankscope resize``: a LoRA adapter cut to per-module ranks is the best rank-rᵢ approximation of the original.

Every adapter is built here with peft itself (``get_peft_model`` on a tiny ``BertModel``, ``save_pretrained``),
its factors replaced by ``B = U Σ G / s``, ``A = G⁻¹ Vᵀ`` for random orthonormal ``U, V``, a random well-conditioned
``G`` (so the factors are not already in SVD form) and a planted, strictly decreasing spectrum ``Σ``: several
modules with different ``r`` (``rank_pattern``), an ``alpha_pattern``, rsLoRA on and off, an embedding LoRA
module, one module whose update is exactly zero, ``modules_to_save`` and ``bias="lora_only"``.  The truth is
computed here: ``ΔW = s·B·A`` in float64 from the saved file (safetensors, scale from the construction) and
numpy's SVD truncation.  The resized adapter is read back with :mod:`rankscope.io.adapters`, densified here, and
merged by peft (``PeftModel.from_pretrained`` + ``merge_and_unload``) next to the original.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
import transformers
from click.testing import CliRunner
from safetensors.torch import load_file

from rankscope.cli import main
from rankscope.errors import RankscopeError
from rankscope.io.adapters import read_adapter
from rankscope.numerics.factored import difference_norm, product_norm
from rankscope.ranks import recommend
from rankscope.resize import ResizeResult, resize

PREFIX = "base_model.model."
ZERO = "encoder.layer.1.attention.self.query"  # its update is planted exactly zero


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 always separates stderr
        return CliRunner()


def invoke(*args: object):
    return _runner().invoke(main, [str(a) for a in args], catch_exceptions=True)


# --------------------------------------------------------------------------------------------------
# adapters with a planted spectrum
# --------------------------------------------------------------------------------------------------


def bert_config() -> transformers.BertConfig:
    return transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=48, max_position_embeddings=16)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    transformers.BertModel(bert_config()).save_pretrained(folder)
    return folder


def fresh_base(base_dir: Path) -> transformers.BertModel:
    return transformers.BertModel.from_pretrained(base_dir).eval()


def _orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, k)))
    return q * np.sign(np.diag(r))


def planted_sigma(index: int, r: int) -> np.ndarray:
    """Strictly decreasing, no ties (so every truncation is unique); some modules decay fast, some slowly."""
    k = np.arange(r, dtype=np.float64)
    return (1.0 + 0.3 * index) * (0.55 if index % 2 else 0.85) ** k


def make_adapter(folder: Path, base_dir: Path, *, use_rslora: bool = False, seed: int = 0, embedding: bool = True,
                 zero: bool = True, bias: str = "lora_only", safe: bool = True) -> dict[str, dict]:
    """A peft adapter of the tiny BERT with planted updates; returns ``module -> {r, alpha, scale}``."""
    targets = ["query", "value", "intermediate.dense"] + (["word_embeddings"] if embedding else [])
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=targets, use_rslora=use_rslora,
                             rank_pattern={"encoder.layer.1.attention.self.value": 12, "intermediate.dense": 6},
                             alpha_pattern={"encoder.layer.0.attention.self.query": 4},
                             modules_to_save=["pooler"], bias=bias)
    model = peft.get_peft_model(fresh_base(base_dir), config)
    rng = np.random.default_rng(seed)
    meta = {}
    with torch.no_grad():
        for index, (name, layer) in enumerate(sorted((n, m) for n, m in model.base_model.model.named_modules()
                                                     if isinstance(m, peft.tuners.lora.LoraLayer))):
            r = layer.r["default"]
            alpha = layer.lora_alpha["default"]
            scale = layer.scaling["default"]
            emb = "default" in layer.lora_embedding_A
            out_dim, in_dim = ((layer.base_layer.num_embeddings, layer.base_layer.embedding_dim) if emb
                               else (layer.base_layer.out_features, layer.base_layer.in_features))
            sigma = np.zeros(r) if (zero and name == ZERO) else planted_sigma(index, r)
            g = np.eye(r) + 0.3 * rng.standard_normal((r, r))
            b = (_orthonormal(rng, out_dim, r) * sigma) @ g / scale
            a = np.linalg.solve(g, _orthonormal(rng, in_dim, r).T)
            if emb:  # ΔW (num_embeddings x dim) = s·(B_emb A_emb)ᵀ: A_emb = Bᵀ, B_emb = Aᵀ
                layer.lora_embedding_A["default"].copy_(torch.from_numpy(b.T))
                layer.lora_embedding_B["default"].copy_(torch.from_numpy(a.T))
            else:
                layer.lora_A["default"].weight.copy_(torch.from_numpy(a))
                layer.lora_B["default"].weight.copy_(torch.from_numpy(b))
            meta[name] = {"r": r, "alpha": alpha, "scale": scale, "embedding": emb}
        for name, p in model.named_parameters():  # the saved head and biases are not at their init values
            if "pooler" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=safe)
    return meta


def stored_state(folder: Path) -> dict[str, torch.Tensor]:
    st = folder / "adapter_model.safetensors"
    if st.is_file():
        return load_file(st)
    return torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)


def true_updates(folder: Path, meta: dict[str, dict]) -> dict[str, np.ndarray]:
    """``ΔW = s·B·A`` (out x in, float64) of every module, from the stored factors (not through rankscope)."""
    state = {k.removeprefix(PREFIX).replace(".default", ""): v.double().numpy() for k, v in stored_state(folder).items()}
    out = {}
    for name, m in meta.items():
        if m["embedding"]:
            out[name] = m["scale"] * (state[f"{name}.lora_embedding_B"] @ state[f"{name}.lora_embedding_A"]).T
        else:
            out[name] = m["scale"] * state[f"{name}.lora_B.weight"] @ state[f"{name}.lora_A.weight"]
    return out


def truncate(delta: np.ndarray, r: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r]


@pytest.fixture(scope="module")
def plain(tmp_path_factory, base_dir):
    folder = tmp_path_factory.mktemp("plain") / "adapter"
    return folder, make_adapter(folder, base_dir)


@pytest.fixture(scope="module")
def rslora(tmp_path_factory, base_dir):
    folder = tmp_path_factory.mktemp("rslora") / "adapter"
    return folder, make_adapter(folder, base_dir, use_rslora=True, seed=1)


def check_truncation(resized: Path, truth: dict[str, np.ndarray], ranks: dict[str, int]) -> None:
    """Every module of ``resized`` (read by rankscope.io.adapters, densified here) is the rank-rᵢ truncation."""
    ad = read_adapter(resized)
    for name, delta in truth.items():
        r = ranks[name]
        if r == 0:
            assert name not in ad.modules
            continue
        lm = ad.modules[name]
        assert lm.r == r
        got = lm.scale * lm.B @ lm.A
        want = truncate(delta, r)
        scale = max(np.linalg.norm(delta), 1e-30)
        assert np.linalg.norm(got - want) / scale < 2e-6, (name, r, np.linalg.norm(got - want) / scale)


# --------------------------------------------------------------------------------------------------
# the numerics
# --------------------------------------------------------------------------------------------------


def test_factored_norms_match_dense_products():
    rng = np.random.default_rng(3)
    left, right = rng.standard_normal((40, 6)), rng.standard_normal((6, 25))
    assert product_norm(left, right) == pytest.approx(np.linalg.norm(left @ right), rel=1e-13)
    b1, a1 = rng.standard_normal((30, 5)), rng.standard_normal((5, 20))
    b2, a2 = rng.standard_normal((30, 3)), rng.standard_normal((3, 20))
    want = np.linalg.norm(1.5 * b1 @ a1 - 0.25 * b2 @ a2)
    assert difference_norm(b1, a1, 1.5, b2, a2, 0.25) == pytest.approx(want, rel=1e-13)
    # a tiny difference between two large updates: no cancellation (the Gram identity would lose it)
    eps = 1e-9 * rng.standard_normal((30, 5))
    want = np.linalg.norm(eps @ a1)
    assert difference_norm(b1 + eps, a1, 1.0, b1, a1, 1.0) == pytest.approx(want, rel=1e-5)
    assert product_norm(np.zeros((4, 0)), np.zeros((0, 3))) == 0.0


# --------------------------------------------------------------------------------------------------
# exactness: the float64 best rank-rᵢ approximation, under every rule
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["energy:0.9", "gd", "avg-rank:3", "budget:2500", "kohya-fro:0.9",
                                  "kohya-ratio:4", "kohya-cumulative:0.8"])
def test_resized_adapter_is_the_best_rank_r_approximation(tmp_path, plain, rule):
    folder, meta = plain
    result = resize(folder, rule=rule)
    out = result.save(tmp_path / "out")
    truth = true_updates(folder, meta)
    table = result.table.set_index("module")
    ranks = {m: int(table.loc[m, "r_after"]) for m in meta}
    assert ranks[ZERO] == 0 and table.loc[ZERO, "action"] == "dropped"  # ΔW = 0 exactly: dropped
    assert 0 < sum(ranks.values()) < sum(m["r"] for m in meta.values())  # something was cut, something kept
    check_truncation(out, truth, ranks)
    for name, delta in truth.items():  # the report: errors from the factors against dense float64 ones
        row = table.loc[name]
        s = np.linalg.svd(delta, compute_uv=False)
        energy = float(np.sum(s**2))
        if energy == 0:
            continue
        r = ranks[name]
        got = read_adapter(out).modules.get(name)
        dense = got.scale * got.B @ got.A if got is not None else 0.0
        assert row["rel_error"] == pytest.approx(np.linalg.norm(delta - dense) / math.sqrt(energy), abs=1e-7)
        assert row["optimal_rel_error"] == pytest.approx(math.sqrt(np.sum(s[r:] ** 2) / energy), abs=1e-9)
        assert row["captured_energy"] == pytest.approx(np.sum(s[:r] ** 2) / energy, abs=1e-12)
        assert 1.0 - 1e-6 <= row["ratio"] <= 1.0 + 1e-4
    config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(m for m, r in ranks.items() if r > 0)
    loaded = peft.LoraConfig.from_pretrained(out)
    for name, r in ranks.items():
        if r:
            key = next((k for k in loaded.rank_pattern if _peft_match(k, name)), None)
            assert (loaded.rank_pattern[key] if key else loaded.r) == r


def _peft_match(key: str, module: str) -> bool:
    import re

    return re.match(rf"(.*\.)?({key})$", module) is not None


def test_ranks_are_those_recommend_gives_for_the_adapters_spectra(tmp_path, base_dir):
    """The rules are applied exactly as recommend applies them to `rankscope lora` spectra (no embedding here)."""
    from rankscope.lora import lora_spectrum

    folder = tmp_path / "adapter"
    make_adapter(folder, base_dir, embedding=False, zero=False, seed=4)
    spec = lora_spectrum(folder)
    for rule, extra in [("energy:0.8", {}), ("kohya-ratio:3", {"snap": "2,4,8"}), ("budget:3000", {}),
                        ("avg-rank:2", {"gain": "relative"})]:
        plan = recommend(spec, rule=rule, alpha="2r", **extra).table.set_index("module")["rank"]
        table = resize(folder, rule=rule, **extra).table.set_index("module")
        for module, rank in plan.items():
            assert table.loc[module, "planned_rank"] == rank, (rule, module)
            assert table.loc[module, "r_after"] == min(rank, table.loc[module, "r_before"])


# --------------------------------------------------------------------------------------------------
# peft loads it, and its merge is the truncation
# --------------------------------------------------------------------------------------------------


def merged(base_dir: Path, adapter: Path) -> dict[str, np.ndarray]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(fresh_base(base_dir), adapter).eval()
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "missing adapter keys" in m or "unexpected" in m.lower()], messages
    return {k: v.detach().double().numpy() for k, v in model.merge_and_unload().state_dict().items()}


@pytest.mark.parametrize("which", ["plain", "rslora"])
def test_peft_merge_of_the_resized_adapter_is_the_truncation(tmp_path, base_dir, plain, rslora, which):
    folder, meta = {"plain": plain, "rslora": rslora}[which]
    out = tmp_path / "resized"
    result = invoke("resize", folder, "--rule", "avg-rank:3", "-o", out, "-q")
    assert result.exit_code == 0, result.output + result.stderr
    table = ResizeResult.load(out).table.set_index("module")
    base = {k: v.detach().double().numpy() for k, v in fresh_base(base_dir).state_dict().items()}
    before, after = merged(base_dir, folder), merged(base_dir, out)
    truth = true_updates(folder, meta)
    for name, delta in truth.items():
        key = f"{name}.weight"
        np.testing.assert_allclose(before[key] - base[key], delta, atol=1e-5 * max(1.0, np.abs(delta).max()))
        want = truncate(delta, int(table.loc[name, "r_after"]))
        assert np.linalg.norm(after[key] - base[key] - want) <= 2e-6 * max(np.linalg.norm(delta), 1.0), name
    for key in before:  # everything else peft merges (pooler copy, biases, untouched weights) is unchanged
        if key.removesuffix(".weight") not in truth:
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    assert not np.array_equal(before["pooler.dense.weight"], base["pooler.dense.weight"])  # the copy was applied
    assert not np.array_equal(before[f"{ZERO}.bias"], base[f"{ZERO}.bias"])  # the dropped module's bias too


def test_alpha_policies_and_the_scale_peft_uses(tmp_path, base_dir, plain, rslora):
    folder, _ = plain
    t = resize(folder, rule="avg-rank:3").table
    kept = t[t["r_after"] > 0]
    np.testing.assert_allclose(kept["alpha_after"] / kept["r_after"], kept["alpha_before"] / kept["r_before"])
    np.testing.assert_allclose(kept["scale_after"], kept["scale_before"])
    folder_rs, _ = rslora
    t = resize(folder_rs, rule="avg-rank:3").table
    kept = t[t["r_after"] > 0]
    np.testing.assert_array_equal(kept["alpha_after"], kept["alpha_before"])  # rsLoRA: α kept, s = α/√r'
    np.testing.assert_allclose(kept["scale_after"], kept["alpha_after"] / np.sqrt(kept["r_after"]))
    out = resize(folder, rule="avg-rank:3", alpha="2r").save(tmp_path / "two-r")
    model = peft.PeftModel.from_pretrained(fresh_base(base_dir), out)
    table = ResizeResult.load(out).table.set_index("module")
    for name, layer in model.base_model.model.named_modules():
        if isinstance(layer, peft.tuners.lora.LoraLayer):
            assert layer.r["default"] == table.loc[name, "r_after"]
            assert layer.scaling["default"] == pytest.approx(2.0)  # α = 2r everywhere: s = 2


# --------------------------------------------------------------------------------------------------
# budgets, caps, copies
# --------------------------------------------------------------------------------------------------


def lora_numel(folder: Path) -> int:
    return sum(v.numel() for k, v in load_file(folder / "adapter_model.safetensors").items() if ".lora_" in k)


@pytest.mark.parametrize("budget", [1500, 2222, 4000])
def test_budget_rule_spends_at_most_the_budget_and_the_accounting_is_exact(tmp_path, plain, budget):
    folder, meta = plain
    result = resize(folder, rule=f"budget:{budget}")
    out = result.save(tmp_path / "out")
    t = result.table
    spent = int(sum(int(r) * (int(m) + int(n)) for r, m, n in zip(t["r_after"], t["rows"], t["cols"], strict=True)))
    assert spent == int(t["params_after"].sum()) == result.info["results"]["params_after"] == lora_numel(out)
    assert spent <= budget
    assert result.info["results"]["budget"] == budget
    assert lora_numel(folder) == int(t["params_before"].sum())  # the original's own accounting
    # avg-rank:r is the budget of rank r in every module whose update is not zero, exactly
    live = t[t["delta_energy"] > 0]
    avg = resize(folder, rule="avg-rank:2")
    assert avg.info["results"]["budget"] == 2 * int((live["rows"] + live["cols"]).sum())
    assert avg.info["results"]["params_after"] <= avg.info["results"]["budget"]


def test_a_rule_asking_for_more_rank_than_the_adapter_has_is_capped(tmp_path, plain):
    folder, meta = plain
    out = tmp_path / "out"
    result = invoke("resize", folder, "--rule", "energy:0.5", "--min-rank", "7", "--snap", "7,16", "-o", out)
    assert result.exit_code == 0, result.output + result.stderr
    assert "capped at the adapter's rank" in result.stderr
    t = ResizeResult.load(out).table.set_index("module")
    for name, m in meta.items():
        if name == ZERO:
            continue
        planned = 7 if m["r"] >= 7 else 16  # energy:0.5 needs few directions; min-rank 7 and snap give 7 or 16
        assert t.loc[name, "planned_rank"] in (7, 16)
        assert t.loc[name, "r_after"] == min(int(t.loc[name, "planned_rank"]), m["r"])
        assert bool(t.loc[name, "capped"]) == (t.loc[name, "planned_rank"] > m["r"]), (name, planned)
    assert t["capped"].any()  # intermediate.dense has r = 6 < 7
    capped = t[t["capped"]]
    assert (capped["action"] == "copied").all() and (capped["rel_error"] == 0).all()
    run = json.loads((out / "run.json").read_text())
    assert any("capped at the adapter's rank" in w for w in run["warnings"]) and run["command"] == "resize"
    # a copied module keeps its factors bit for bit
    old, new = stored_state(folder), load_file(out / "adapter_model.safetensors")
    name = capped.index[0]
    for which in ("lora_A.weight", "lora_B.weight"):
        assert torch.equal(new[f"{PREFIX}{name}.{which}"], old[f"{PREFIX}{name}.{which}"])


def test_modules_to_save_and_biases_are_copied_unchanged(tmp_path, plain):
    folder, meta = plain
    out = resize(folder, rule="energy:0.9").save(tmp_path / "out")
    old, new = stored_state(folder), load_file(out / "adapter_model.safetensors")
    others = [k for k in old if ".lora_" not in k]
    assert any("pooler" in k for k in others) and any(k.endswith("base_layer.bias") for k in others)
    for key in others:
        target = key.replace(f"{ZERO}.base_layer.bias", f"{ZERO}.bias")  # the dropped module's bias, plain name
        assert torch.equal(new[target], old[key]), key
    orig = json.loads((folder / "adapter_config.json").read_text())
    config = json.loads((out / "adapter_config.json").read_text())
    for field in ("task_type", "base_model_name_or_path", "modules_to_save", "bias", "use_rslora", "fan_in_fan_out"):
        assert config[field] == orig[field], field


def test_bin_adapter_and_conv_lora(tmp_path, base_dir):
    """A .bin adapter reads the same; a Conv2d LoRA module keeps peft's kernel shapes and merges to the truncation."""
    folder = tmp_path / "bin"
    meta = make_adapter(folder, base_dir, safe=False, seed=5)
    out = resize(folder, rule="avg-rank:2").save(tmp_path / "bin-out")
    ranks = ResizeResult.load(out).table.set_index("module")["r_after"].to_dict()
    check_truncation(out, true_updates(folder, meta), ranks)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).mean(dim=(2, 3)))

    torch.manual_seed(0)
    net = Net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    model = peft.get_peft_model(net, peft.LoraConfig(r=5, lora_alpha=5, target_modules=["conv", "fc"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_()
    model.save_pretrained(tmp_path / "conv")
    conv_out = resize(tmp_path / "conv", rule="avg-rank:2").save(tmp_path / "conv-out")
    saved = load_file(conv_out / "adapter_model.safetensors")
    assert tuple(saved[f"{PREFIX}conv.lora_A.weight"].shape) == (2, 3, 3, 3)
    assert tuple(saved[f"{PREFIX}conv.lora_B.weight"].shape) == (8, 2, 1, 1)
    old = load_file(tmp_path / "conv" / "adapter_model.safetensors")
    delta = (old[f"{PREFIX}conv.lora_B.weight"].double().reshape(8, 5)
             @ old[f"{PREFIX}conv.lora_A.weight"].double().reshape(5, 27)).numpy()
    fresh = Net()
    fresh.load_state_dict(state)
    merged_conv = peft.PeftModel.from_pretrained(fresh, conv_out).merge_and_unload().state_dict()["conv.weight"]
    got = (merged_conv.double() - state["conv.weight"].double()).reshape(8, 27).numpy()
    assert np.linalg.norm(got - truncate(delta, 2)) <= 2e-6 * np.linalg.norm(delta)


def test_result_round_trip_and_summary(tmp_path, plain):
    folder, _ = plain
    result = resize(folder, rule="energy:0.9", min_rank=2)
    out = result.save(tmp_path / "out")
    again = ResizeResult.load(out)
    assert list(again.table["module"]) == list(result.table["module"])
    np.testing.assert_allclose(again.table["rel_error"], result.table["rel_error"])
    assert set(again.tensors) == set(result.tensors)
    assert again.info["signal"] == "adapter" and again.info["options"]["rule"] == "energy:0.9"
    text = again.summary_text()
    assert "LoRA parameters" in text and "dropped" in text
    # the same command replaces its own earlier result
    result = invoke("resize", folder, "--rule", "gd", "-o", out, "-q")
    assert result.exit_code == 0, result.stderr


# --------------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written
# --------------------------------------------------------------------------------------------------


def fails_cleanly(result, out: Path, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


def _copy_with(folder: Path, dest: Path, config: dict | None = None,
               tensors: dict[str, torch.Tensor] | None = None) -> Path:
    from safetensors.torch import save_file

    dest.mkdir()
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (dest / "adapter_config.json").write_text(json.dumps({**cfg, **(config or {})}))
    save_file({**load_file(folder / "adapter_model.safetensors"), **(tensors or {})},
              dest / "adapter_model.safetensors")
    return dest


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, plain):
    folder, _ = plain
    out = tmp_path / "out"
    ia3 = _copy_with(folder, tmp_path / "ia3", {"peft_type": "IA3"})
    fails_cleanly(invoke("resize", ia3, "--rule", "energy:0.9", "-o", out), out, "IA3", "only LORA")
    state = load_file(folder / "adapter_model.safetensors")
    key = next(k for k in state if k.endswith("lora_A.weight"))
    module = key.removesuffix(".lora_A.weight")
    dora = _copy_with(folder, tmp_path / "dora", {"use_dora": True},
                      {f"{module}.lora_magnitude_vector": torch.ones(32)})
    fails_cleanly(invoke("resize", dora, "--rule", "energy:0.9", "-o", out), out, "DoRA")
    bad = state[key].clone()
    bad[0, 0] = float("nan")
    nan = _copy_with(folder, tmp_path / "nan", tensors={key: bad})
    fails_cleanly(invoke("resize", nan, "--rule", "energy:0.9", "-o", out), out, "NaN", key)
    pissa = _copy_with(folder, tmp_path / "pissa", {"init_lora_weights": "pissa"})
    fails_cleanly(invoke("resize", pissa, "--rule", "energy:0.9", "-o", out), out, "pissa")
    for args, needle in [(["--rule", "energy:2"], "--rule"), (["--rule", "median"], "unknown rule"),
                         (["--rule", "gd:3"], "--rule"), (["--rule", "budget:10"], "below the minimum"),
                         (["--rule", "energy:0.9", "--alpha", "x"], "--alpha"),
                         (["--rule", "energy:0.9", "--min-rank", "4", "--max-rank", "2"], "--max-rank"),
                         (["--rule", "energy:0.9", "--snap", "a,b"], "--snap"),
                         (["--rule", "avg-rank:40"], "exceeds min(m, n)"),
                         ([], "--rule")]:
        fails_cleanly(invoke("resize", folder, *args, "-o", out), out, needle)
    fails_cleanly(invoke("resize", tmp_path / "missing", "--rule", "gd", "-o", out), out)
    with pytest.raises(RankscopeError, match="rank 0 to every module"):
        resize(folder, rule="budget:1", min_rank=0)

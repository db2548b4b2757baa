"""Adapter reading and factor-exact LoRA spectra, checked against peft's own merge (independent reference)."""

from __future__ import annotations

import json

import numpy as np
import peft
import pytest
import scipy.linalg
import torch
import transformers
from click.testing import CliRunner
from safetensors.numpy import load_file

from rankscope.cli import main
from rankscope.io.adapters import read_adapter
from rankscope.lora import lora_spectrum


def tiny_bert(path, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                                  vocab_size=60, max_position_embeddings=32)
    model = transformers.BertForSequenceClassification(cfg)
    model.save_pretrained(path)
    return model


def tiny_gpt2(path, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=60, n_positions=32)
    model = transformers.GPT2LMHeadModel(cfg)
    model.save_pretrained(path)
    return model


def make_adapter(base_model, path, seed=1, **lora_kwargs):
    """A peft adapter with random (non-zero) factors; returns dense ΔW per base tensor from peft's merge."""
    torch.manual_seed(seed)
    base_state = {k: v.clone() for k, v in base_model.state_dict().items()}
    model = peft.get_peft_model(base_model, peft.LoraConfig(**lora_kwargs))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.3 * torch.randn_like(p))
    model.save_pretrained(path)
    merged = model.merge_and_unload().state_dict()
    return {k: (merged[k].double() - base_state[k].double()).numpy() for k in base_state if k in merged
            and not torch.equal(merged[k], base_state[k])}


def oriented(delta: np.ndarray, name: str) -> np.ndarray:
    return delta.T if any(s in name for s in ("c_attn", "c_fc", "c_proj")) else delta


@pytest.mark.parametrize("kwargs", [
    {"r": 4, "lora_alpha": 8},
    {"r": 4, "lora_alpha": 8, "use_rslora": True},
    {"r": 4, "lora_alpha": 8, "rank_pattern": {"layer.0.attention.self.query": 2}, "alpha_pattern": {"value": 3}},
    {"r": 3, "lora_alpha": 5, "use_dora": True},
], ids=["plain", "rslora", "patterns", "dora"])
def test_bert_adapter_matches_peft_merge(tmp_path, kwargs):
    base = tiny_bert(tmp_path / "base")
    reference = make_adapter(base, tmp_path / "ad", target_modules=["query", "value"], **kwargs)
    result = lora_spectrum(tmp_path / "ad", base=tmp_path / "base")
    factors = load_file(tmp_path / "ad" / "adapter_model.safetensors")
    table = result.table.set_index("module")
    lora_rows = table[table["method"] != "modules_to_save"]
    assert len(lora_rows) == 4
    for module, row in lora_rows.iterrows():
        # 1) semantics (scale, patterns, rsLoRA, DoRA) against peft's own float32 merge
        delta = reference[f"{module}.weight"]
        ref = scipy.linalg.svdvals(delta)
        got = result.spectra[module]
        assert got.shape == ref.shape and np.all(np.diff(got) <= 1e-12)
        np.testing.assert_allclose(got, ref, atol=1e-5 * ref[0])
        assert row["delta_norm"] == pytest.approx(np.linalg.norm(delta), rel=1e-5)
        r_expected = 2 if module.endswith("layer.0.attention.self.query") and "rank_pattern" in kwargs else kwargs["r"]
        alpha_expected = 3 if module.endswith("value") and "alpha_pattern" in kwargs else kwargs["lora_alpha"]
        assert row["r"] == r_expected and row["alpha"] == alpha_expected
        scale = alpha_expected / (np.sqrt(r_expected) if kwargs.get("use_rslora") else r_expected)
        assert row["scale"] == pytest.approx(scale)
        if not kwargs.get("use_dora"):
            # 2) exactness against the dense float64 SVD of s·B·A built from the raw factors
            b = factors[f"base_model.model.{module}.lora_B.weight"].astype(np.float64)
            a = factors[f"base_model.model.{module}.lora_A.weight"].astype(np.float64)
            dense_ref = scipy.linalg.svdvals(scale * b @ a)
            np.testing.assert_allclose(got, dense_ref, atol=1e-12 * dense_ref[0])
            assert row["rank_90"] <= r_expected and row["method"] == "factored"
            assert row["utilization_effective"] == pytest.approx(row["effective_rank"] / r_expected)
        else:
            assert row["method"] == "dense-dora"


def test_fan_in_fan_out_gpt2_oriented_out_by_in(tmp_path):
    base = tiny_gpt2(tmp_path / "base")
    reference = make_adapter(base, tmp_path / "ad", r=4, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True)
    result = lora_spectrum(tmp_path / "ad", base=tmp_path / "base")
    table = result.table.set_index("module")
    for module, row in table.iterrows():
        delta = oriented(reference[f"{module}.weight"], module)
        assert (row["rows"], row["cols"]) == delta.shape == (96, 32)
        ref = scipy.linalg.svdvals(delta)
        np.testing.assert_allclose(result.spectra[module], ref, atol=1e-5 * ref[0])


def test_factored_svd_never_forms_dense_product_and_is_exact():
    from rankscope.io.adapters import LoraModule

    rng = np.random.default_rng(0)
    b, a = rng.standard_normal((300, 5)), rng.standard_normal((5, 200))
    lm = LoraModule("m", b, a, scale=0.7, alpha=3.5)
    u, s, vt = lm.factored_svd()
    dense = 0.7 * b @ a
    np.testing.assert_allclose(u @ np.diag(s) @ vt, dense, atol=1e-10)
    np.testing.assert_allclose(u.T @ u, np.eye(5), atol=1e-12)
    np.testing.assert_allclose(lm.singular_values()[:5], scipy.linalg.svdvals(dense)[:5], rtol=1e-10)
    assert np.all(lm.singular_values()[5:] == 0) and lm.singular_values().size == 200


def test_old_key_layout_and_embedding_lora(tmp_path):
    """Adapter names with the adapter segment kept (older peft) and LoRA on an embedding."""
    base = tiny_bert(tmp_path / "base")
    reference = make_adapter(base, tmp_path / "ad", r=2, lora_alpha=2, target_modules=["word_embeddings", "query"])
    weights = load_file(tmp_path / "ad" / "adapter_model.safetensors")
    renamed = {k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
               .replace("lora_embedding_A", "lora_embedding_A.default").replace("lora_embedding_B", "lora_embedding_B.default"): v
               for k, v in weights.items()}
    from safetensors.numpy import save_file

    save_file(renamed, tmp_path / "ad" / "adapter_model.safetensors")
    adapter = read_adapter(tmp_path / "ad")
    emb = adapter.modules["bert.embeddings.word_embeddings"]
    assert emb.embedding and emb.shape == (60, 32)
    np.testing.assert_allclose(emb.delta(), reference["bert.embeddings.word_embeddings.weight"], atol=1e-6)
    assert len(adapter.modules) == 3


def test_modules_to_save_diffed_densely(tmp_path):
    base = tiny_bert(tmp_path / "base")
    make_adapter(base, tmp_path / "ad", r=2, lora_alpha=2, target_modules=["query"], modules_to_save=["classifier"])
    weights = load_file(tmp_path / "ad" / "adapter_model.safetensors")
    key = next(k for k in weights if k.endswith("classifier.weight"))
    weights[key] = weights[key] + 1.0
    from safetensors.numpy import save_file

    save_file(weights, tmp_path / "ad" / "adapter_model.safetensors")
    result = lora_spectrum(tmp_path / "ad", base=tmp_path / "base")
    row = result.table.set_index("module").loc["classifier"]
    assert row["method"] == "modules_to_save"
    assert row["delta_norm"] == pytest.approx(np.sqrt(2 * 32), rel=1e-6)  # all-ones 2x32 delta
    assert row["rank_99"] == 1


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def test_lora_cli_writes_outputs(tmp_path):
    base = tiny_bert(tmp_path / "base")
    make_adapter(base, tmp_path / "ad", r=4, lora_alpha=8, target_modules=["query", "value"])
    res = run_cli("lora", tmp_path / "ad", "--base", tmp_path / "base", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    for name in ("modules.csv", "spectra.npz", "run.json", "figures/spectra.png"):
        assert (tmp_path / "out" / name).is_file()
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["command"] == "lora" and info["inputs"]["adapter"]["r"] == 4


def test_bad_adapters_exit_2(tmp_path):
    base = tiny_bert(tmp_path / "base")
    make_adapter(base, tmp_path / "ad", r=4, lora_alpha=8, target_modules=["query"])
    other = tmp_path / "other"
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(transformers.BertConfig(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, vocab_size=60,
        max_position_embeddings=32)).save_pretrained(other)
    # different shapes in the base
    res = run_cli("lora", tmp_path / "ad", "--base", other, "-o", tmp_path / "o1")
    assert res.exit_code == 2 and "different base model" in res.stderr and not (tmp_path / "o1").exists()
    # rank mismatch between config and weights
    cfg_path = tmp_path / "ad" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "r": 8}))
    res = run_cli("lora", tmp_path / "ad", "-o", tmp_path / "o2")
    assert res.exit_code == 2 and "rank mismatch" in res.stderr and "r=8" in res.stderr
    # unreadable config
    cfg_path.write_text("{not json")
    res = run_cli("lora", tmp_path / "ad", "-o", tmp_path / "o3")
    assert res.exit_code == 2 and "adapter_config.json" in res.stderr
    # missing config
    cfg_path.unlink()
    res = run_cli("lora", tmp_path / "ad", "-o", tmp_path / "o4")
    assert res.exit_code == 2 and "no adapter_config.json" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not any(p.name.startswith((".o", "o")) for p in tmp_path.iterdir() if p.name not in ("other",))

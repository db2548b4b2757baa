"""The training loop on tiny random models (BERT and GPT-2, hidden size 32) and an easy CSV task.

Checked: outputs exist and load back (HF checkpoint for ``full``, peft adapter for ``lora``), the same
seed gives identical metrics and weights and another seed does not, trainable parameter counts
match their closed form, the loss falls on a separable task, the loop works for any module that
returns logits, early stopping, and bad inputs raise :class:`RankscopeError` naming the culprit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tiny_text import HIDDEN  # noqa: E402

from rankscope.cli import main  # noqa: E402
from rankscope.errors import RankscopeError  # noqa: E402
from rankscope.train import train  # noqa: E402
from rankscope.training.data import load_task  # noqa: E402
from rankscope.training.engine import TrainConfig, count_parameters, train_model  # noqa: E402

FAST = {"epochs": 1, "batch_size": 8, "max_length": 16, "progress": False}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(model: Path, data: Path, method: str, out: Path | None, **kw) -> dict:
    options = {**FAST, **kw}
    return train(model, "easy", method, out, data=data, text_column="review", label_column="sentiment", **options)


def _weights(folder: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(folder / name)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _stable(metrics: dict) -> dict:
    """Metrics without wall-clock timings."""
    timing = {"seconds", "train_seconds", "eval_seconds", "examples_per_second"}
    return {k: v for k, v in metrics.items() if k not in timing}


# -- outputs --------------------------------------------------------------------------------------------------


def test_full_writes_a_loadable_checkpoint(bert, easy_csv, tmp_path):
    from transformers import AutoModelForSequenceClassification

    metrics = _run(bert, easy_csv, "full", tmp_path / "out")
    out = tmp_path / "out"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "metrics.json", "run.json"):
        assert (out / name).is_file(), name
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] == metrics["test_accuracy"]
    run = json.loads((out / "run.json").read_text())
    assert run["inputs"]["model"] == str(bert) and run["task"]["sizes"] == {"train": 96, "validation": 12, "test": 12}
    assert run["options"]["lr"] == 5e-5 and run["seed"] == 0 and run["versions"]["torch"]
    assert metrics["trainable_params"] == metrics["total_params"] == sum(p.numel() for p in model.parameters())
    assert metrics["steps"] == 12 and metrics["weights"] == "best"
    for key in ("validation_accuracy", "test_accuracy", "train_loss", "seconds", "examples_per_second"):
        assert metrics[key] is not None, key


def test_train_returns_a_result_that_reads_as_the_metrics_dict(bert, easy_csv, tmp_path):
    from collections.abc import Mapping

    from rankscope.train import TrainResult, summary_line

    out = tmp_path / "out"
    result = _run(bert, easy_csv, "lora", out, r=2)
    written = json.loads((out / "metrics.json").read_text())
    assert isinstance(result, TrainResult) and isinstance(result, Mapping)
    assert dict(result) == result.metrics and result == written and written == result
    assert json.loads(json.dumps(dict(result))) == written and (lambda **kw: kw)(**result) == written
    assert result["test_accuracy"] == written["test_accuracy"] and sorted(result) == sorted(written)
    assert result.info == json.loads((out / "run.json").read_text())
    assert result.info["lora"]["r"] == 2 and "outputs" in result.info and "rankscope" in result.info
    assert result.summary_text() == summary_line(result) == summary_line(written)
    assert list(result.table.columns) == list(written) and len(result.table) == 1
    assert result.table["test_accuracy"].iloc[0] == written["test_accuracy"]
    loaded = TrainResult.load(out)
    assert loaded == written and loaded.info == result.info and loaded.summary_text() == result.summary_text()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "run.json").write_text(json.dumps({"command": "spectrum"}))
    with pytest.raises(RankscopeError, match="not the output of rankscope train"):
        TrainResult.load(tmp_path / "other")
    with pytest.raises(RankscopeError, match="not found"):
        TrainResult.load(tmp_path / "missing")


def test_lora_writes_a_loadable_adapter_with_the_requested_config(bert, easy_csv, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "lora"
    pattern = tmp_path / "ranks.json"
    pattern.write_text(json.dumps({"layer.0.attention.self.query": 2}))
    _run(bert, easy_csv, "lora", out, r=4, alpha=8, target_modules="query,value", rank_pattern=str(pattern))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert sorted(config["target_modules"]) == ["query", "value"]
    assert config["rank_pattern"] == {"layer.0.attention.self.query": 2}
    base = AutoModelForSequenceClassification.from_pretrained(bert, num_labels=2)
    model = PeftModel.from_pretrained(base, out)
    a = dict(model.named_parameters())
    assert a["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight"].shape == (2, HIDDEN)
    assert a["base_model.model.bert.encoder.layer.1.attention.self.query.lora_A.default.weight"].shape == (4, HIDDEN)


# -- determinism ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "weights"), [("full", "model.safetensors"), ("lora", "adapter_model.safetensors")])
def test_same_seed_same_result_other_seed_other_result(bert, easy_csv, tmp_path, method, weights):
    runs = {name: _run(bert, easy_csv, method, tmp_path / name, seed=seed)
            for name, seed in (("a", 1), ("b", 1), ("c", 2))}
    assert _stable(runs["a"]) == _stable(runs["b"])
    assert _same(_weights(tmp_path / "a", weights), _weights(tmp_path / "b", weights))
    assert not _same(_weights(tmp_path / "a", weights), _weights(tmp_path / "c", weights))
    assert runs["a"]["train_loss"] != runs["c"]["train_loss"]


# -- parameter counts -------------------------------------------------------------------------------------


def test_lora_trainable_count_closed_form(bert, easy_csv):
    r, layers, labels = 4, 2, 2
    metrics = _run(bert, easy_csv, "lora", None, r=r, target_modules=["query", "value", "intermediate.dense"],
                   rank_pattern={"layer.1.intermediate.dense": 1})
    attention = layers * 2 * r * (HIDDEN + HIDDEN)  # query and value: 32 -> 32
    mlp = (r + 1) * (HIDDEN + 64)  # intermediate.dense 32 -> 64: rank 4 in layer 0, 1 in layer 1
    head = HIDDEN * labels + labels  # classifier, in modules_to_save (the pooler stays frozen)
    assert metrics["trainable_params"] == attention + mlp + head


def test_all_linear_targets_every_linear_layer_but_the_head(bert, easy_csv, tmp_path):
    _run(bert, easy_csv, "lora", tmp_path / "all", target_modules="all-linear", r=2)
    targets = json.loads((tmp_path / "all" / "run.json").read_text())["lora"]
    assert "classifier" not in targets["target_modules"]
    assert len(targets["target_modules"]) == 2 * 6 + 1  # six linear layers per block, plus the pooler


# -- learning -------------------------------------------------------------------------------------------------


def test_loss_decreases_on_a_separable_task(bert, easy_csv):
    metrics = _run(bert, easy_csv, "full", None, epochs=4, lr=1e-2)
    losses = metrics["train_loss_by_epoch"]
    assert losses[-1] < 0.5 * losses[0]
    assert metrics["validation_accuracy"] >= 0.9
    assert metrics["validation_accuracy"] == max(h["validation_accuracy"] for h in metrics["history"])


@pytest.mark.parametrize("method", ["full", "lora"])
def test_decoder_without_pad_token_trains(gpt2, easy_csv, tmp_path, method):
    metrics = _run(gpt2, easy_csv, method, tmp_path / method)
    assert metrics["steps"] == 12
    tokenizer = json.loads((tmp_path / method / "tokenizer_config.json").read_text())
    assert tokenizer.get("pad_token") == "<eos>"
    if method == "lora":  # peft's default for GPT-2 adapts the fused c_attn (32 -> 96)
        assert metrics["trainable_params"] == 2 * 8 * (HIDDEN + 3 * HIDDEN) + HIDDEN * 2


def test_loop_trains_any_module_that_returns_logits(bert, easy_csv):
    """The loop is method-agnostic: a bag-of-embeddings classifier (plain tensor output) learns the task."""
    from transformers import AutoTokenizer

    class Bag(torch.nn.Module):
        def __init__(self, vocab: int) -> None:
            super().__init__()
            self.bag = torch.nn.EmbeddingBag(vocab, 2, mode="sum")

        def forward(self, input_ids, attention_mask):
            return self.bag(input_ids, per_sample_weights=attention_mask.float())

    tokenizer = AutoTokenizer.from_pretrained(bert)
    task = load_task("easy", easy_csv, text_column="review", label_column="sentiment")
    torch.manual_seed(0)
    model = Bag(len(tokenizer))
    metrics = train_model(model, task, tokenizer, TrainConfig(epochs=5, lr=0.1, batch_size=8, progress=False))
    assert metrics["test_accuracy"] == 1.0
    assert metrics["trainable_params"] == count_parameters(model)[0] == 2 * len(tokenizer)


def test_patience_stops_when_validation_does_not_improve(bert, easy_csv):
    metrics = _run(bert, easy_csv, "full", None, epochs=3, lr=1e-30, eval_every=2, patience=2)
    assert metrics["stopped_early"] and metrics["steps"] == 6
    assert [h["step"] for h in metrics["history"]] == [2, 4, 6] and metrics["best_step"] == 2


# -- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kw", "culprit"), [
    ({"target_modules": "query,valeu"}, "valeu"),
    ({"rank_pattern": {"no_such_layer": 2}}, "no_such_layer"),
    ({"rank_pattern": "missing-ranks.json"}, "missing-ranks.json"),
    ({"label_column": "stars"}, "stars"),
    ({"device": "tpu"}, "tpu"),
])
def test_bad_input_names_the_culprit(bert, easy_csv, kw, culprit):
    options = {"text_column": "review", "label_column": "sentiment", **FAST, **kw}
    with pytest.raises(RankscopeError, match=culprit):
        train(bert, "easy", "lora", None, data=easy_csv, **options)


def test_unknown_task_and_method(bert):
    with pytest.raises(RankscopeError, match="imdb"):
        train(bert, "imdb", "full", None, progress=False)
    with pytest.raises(RankscopeError, match="adapter"):
        train(bert, "imdb", "adapter", None, progress=False)


def _cli(*args: str):
    return CliRunner().invoke(main, ["train", *args])


def test_cli_trains_and_reports(bert, easy_csv, tmp_path):
    out = tmp_path / "cli"
    result = _cli("--model", str(bert), "--data", str(easy_csv), "--text-column", "review", "--label-column",
                  "sentiment", "--method", "lora", "--r", "2", "--target-modules", "query", "--epochs", "1",
                  "--max-length", "16", "-q", "-o", str(out))
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["task"]["name"] == "easy" and run["lora"]["target_modules"] == ["query"]


@pytest.mark.parametrize(("args", "culprit"), [
    (["--task", "no-such-task"], "no-such-task"),
    (["--method", "lora", "--target-modules", "nothing_here"], "nothing_here"),
    (["--label-column", "stars"], "stars"),
    (["--method", "full", "--r", "4"], "--r"),
    (["--epochs", "0"], "--epochs"),
    (["--method", "qlora"], "qlora"),
])
def test_cli_bad_input_is_one_line_exit_2(bert, easy_csv, tmp_path, args, culprit):
    data = [] if "--task" in args else ["--data", str(easy_csv), "--text-column", "review"]
    label = [] if "--label-column" in args or "--task" in args else ["--label-column", "sentiment"]
    result = _cli("--model", str(bert), *data, *label, *args, "-q", "-o", str(tmp_path / "bad"))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error") and culprit in lines[0]
    assert not (tmp_path / "bad").exists()


def test_max_length_is_capped_at_the_model_positions(bert, easy_csv, tmp_path):
    long_csv = tmp_path / "long.csv"
    long_csv.write_text("text,label\n" + "".join(f"{' '.join(['good'] * 60)},{i % 2}\n" for i in range(20)))
    metrics = train(bert, "long", "full", None, data=long_csv, **{**FAST, "max_length": 512})
    assert metrics["steps"] == 2  # 32 positions: texts of 62 tokens are cut to 32, not an index error


def test_importing_the_command_does_not_import_torch():
    """`rankscope --help` stays fast: torch is imported only when training runs."""
    import subprocess
    import sys

    code = "import sys, rankscope.train; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_train_both_ways_then_compare_end_to_end(bert, easy_csv, tmp_path):
    """Train full and LoRA for a few steps, then `compare`, `lora` and `compare-adapters` on the results."""
    import pandas as pd

    _run(bert, easy_csv, "full", tmp_path / "full", lr=1e-3)
    _run(bert, easy_csv, "lora", tmp_path / "lora4", r=4, alpha=8, target_modules="query,value")
    _run(bert, easy_csv, "lora", tmp_path / "lora2", r=2, alpha=4, target_modules="query,value", seed=1)
    res = CliRunner().invoke(main, ["compare", str(bert), str(tmp_path / "full"), str(tmp_path / "lora4"),
                                    "-o", str(tmp_path / "cmp"), "-q"])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert sorted(table["kind"].unique()) == ["query", "value"] and len(table) == 4
    assert (table["r"] == 4).all()
    assert (table["energy_both"] <= table["energy_optimal"] + 1e-12).all()
    assert (table["energy_col"] <= table["energy_optimal"] + 1e-12).all()
    assert table[["phi_left_1", "phi_right_r", "cosine"]].abs().le(1 + 1e-12).all().all()
    assert (table["full_norm"] > 0).all() and (table["lora_norm"] > 0).all()
    for name in ("phi.npz", "amplification.csv", "intruders.csv", "run.json", "figures/energy.png",
                 "figures/intruders.png", "figures/phi_diagonal.png"):
        assert (tmp_path / "cmp" / name).is_file(), name
    res = CliRunner().invoke(main, ["lora", str(tmp_path / "lora4"), "--base", str(bert), "-o", str(tmp_path / "ls"),
                                    "-q", "--no-plots"])
    assert res.exit_code == 0, res.output
    spectra = pd.read_csv(tmp_path / "ls" / "modules.csv")
    assert (spectra.loc[spectra["method"] == "factored", "rank_99"] <= 4).all()
    res = CliRunner().invoke(main, ["compare-adapters", str(tmp_path / "lora2"), str(tmp_path / "lora4"),
                                    "-o", str(tmp_path / "ca"), "-q"])
    assert res.exit_code == 0, res.output
    pair = pd.read_csv(tmp_path / "ca" / "compare.csv")
    assert (pair["r_1"] == 2).all() and (pair["r_2"] == 4).all()
    assert (tmp_path / "ca" / "figures" / "phi_adapters.png").is_file()


def test_lora_config_file_sets_every_lora_option(bert, easy_csv, tmp_path):
    """`--lora-config` (a recommend output) gives each module its planned rank and alpha."""
    import json

    config = {"r": 2, "lora_alpha": 4, "target_modules": ["query", "value"],
              "rank_pattern": {"encoder\\.layer\\.1\\.attention\\.self\\.value": 3},
              "alpha_pattern": {"encoder\\.layer\\.1\\.attention\\.self\\.value": 6}}
    (tmp_path / "lora_config.json").write_text(json.dumps(config))
    res = CliRunner().invoke(main, ["train", "--model", str(bert), "--data", str(easy_csv), "--text-column", "review",
                                    "--label-column", "sentiment", "--method", "lora", "--lora-config",
                                    str(tmp_path / "lora_config.json"), "--epochs", "1", "--max-length", "16",
                                    "-q", "-o", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    from rankscope.io.adapters import read_adapter

    adapter = read_adapter(tmp_path / "run")
    ranks = {m.split("bert.")[-1]: lm.r for m, lm in adapter.modules.items()}
    assert ranks == {"encoder.layer.0.attention.self.query": 2, "encoder.layer.0.attention.self.value": 2,
                     "encoder.layer.1.attention.self.query": 2, "encoder.layer.1.attention.self.value": 3}
    assert adapter.modules["bert.encoder.layer.1.attention.self.value"].scale == 2.0
    res = CliRunner().invoke(main, ["train", "--model", str(bert), "--data", str(easy_csv), "--method", "lora",
                                    "--lora-config", str(tmp_path / "lora_config.json"), "--r", "4",
                                    "-o", str(tmp_path / "run2")])
    assert res.exit_code == 2 and "--r" in res.stderr and not (tmp_path / "run2").exists()


def test_outputs_list_what_the_folder_holds(bert, easy_csv, tmp_path):
    out = tmp_path / "run"
    result = _run(bert, easy_csv, "lora", out)
    outputs = result.info["outputs"]
    assert ".rankscope-partial.json" not in outputs  # the work folder's marker is gone from the result
    assert all((out / name).exists() for name in outputs)

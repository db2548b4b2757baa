"""``rankscope probe`` on tiny BERT / GPT-2 models against independent references.

* gradient: the saved spectrum and top singular triplets are those of the autograd gradient of the mean training
  loss, computed here with transformers and torch directly (full batch, eval mode, the head seeded as ``train``
  seeds it), for BERT and for GPT-2 (``Conv1D`` stored ``in x out``: rows must be the output space); several
  batches of unequal size give the mean over their examples, and the batches are those of the training order;
* update: ``ΔW`` equals the weights of ``rankscope.train.train(..., method="full")`` for the same steps and seed
  minus the base checkpoint's;
* ``recommend`` plans from the folder unchanged (task type, head in ``modules_to_save``, a config peft applies);
* bad input is one line, exit 2, nothing written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from rankscope.cli import main  # noqa: E402
from rankscope.errors import RankscopeError  # noqa: E402
from rankscope.probe import ProbeResult, probe  # noqa: E402
from rankscope.spectrum import SpectrumResult  # noqa: E402
from rankscope.train import train  # noqa: E402
from rankscope.training.data import load_task  # noqa: E402

COLUMNS = {"text_column": "review", "label_column": "sentiment"}
MAX_LENGTH = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _probe(model: Path, data: Path, signal: str, **kw) -> ProbeResult:
    options = {"batch_size": 8, "max_length": MAX_LENGTH, **COLUMNS, **kw}
    return probe(model, "easy", signal, data=data, **options)


def _saved(result: ProbeResult, out: Path) -> ProbeResult:
    result.save(out, plots=False)
    return ProbeResult.load(out)


# -- the independent references ----------------------------------------------------------------------------------


def _reference_model(folder: Path, seed: int):
    """The task model built directly with transformers: head seeded by ``seed``, eval mode, float64 (exact)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.double().eval(), tokenizer


def _reference_gradients(folder: Path, data: Path, seed: int, examples: list[int] | None = None) -> dict:
    """``∂/∂W`` of the mean cross-entropy over ``examples`` of the train split (all by default), one batch."""
    split = load_task("easy", data, **COLUMNS).train
    idx = range(len(split)) if examples is None else examples
    model, tokenizer = _reference_model(folder, seed)
    enc = tokenizer([split.texts[i] for i in idx], truncation=True, max_length=MAX_LENGTH, padding=True,
                    return_tensors="pt")
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([split.labels[i] for i in idx]))
    loss.backward()
    return {n: p.grad.detach().double().numpy() for n, p in model.named_parameters() if p.grad is not None}


def _matrix(tensors: dict, prefix: str, module: str, conv1d: bool) -> np.ndarray:
    m = np.asarray(tensors[f"{prefix}{module}.weight"], dtype=np.float64)
    return m.T if conv1d else m


def _assert_matches(result: ProbeResult, reference: dict[str, np.ndarray], rtol: float = 1e-9) -> None:
    """Every module's spectrum (to rtol·σ₁) and top triplets (U S Vt = M at full keep) match ``reference``."""
    assert set(result.table["module"]) == set(reference)
    for row in result.table.itertuples():
        m = reference[row.module]
        assert m.shape == (row.rows, row.cols)
        sigma = np.linalg.svd(m, compute_uv=False)
        scale = max(sigma[0], 1e-30)
        np.testing.assert_allclose(result.spectra[row.module], sigma, rtol=0, atol=rtol * scale)
        u, s, vt = result.singular_vectors[row.module]
        assert s.size == min(row.rows, row.cols)  # full keep
        np.testing.assert_allclose(u @ np.diag(s) @ vt, m, rtol=0, atol=rtol * scale)
        assert row.delta_norm == pytest.approx(np.linalg.norm(m), rel=rtol, abs=1e-30)


# -- gradient ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["bert", "gpt2"])
def test_the_gradient_is_the_autograd_gradient_of_the_mean_loss(which, bert, gpt2, easy_csv, tmp_path):
    folder = bert if which == "bert" else gpt2
    result = _saved(_probe(folder, easy_csv, "gradient", batches=1, batch_size=1000, seed=3), tmp_path / "out")
    grads = _reference_gradients(folder, easy_csv, seed=3)
    prefix = "bert." if which == "bert" else ""
    conv1d = set(result.info["alignment"]["transposed_conv1d"])
    if which == "gpt2":
        assert conv1d and all(m.endswith(("c_attn", "c_proj", "c_fc")) for m in conv1d)
    # every 2-D weight of the backbone (embeddings included), named without the task model's prefix
    backbone = {n[len(prefix):-len(".weight")] for n, g in grads.items()
                if g.ndim == 2 and not n.startswith(("classifier", "score"))}
    assert set(result.table["module"]) == backbone
    _assert_matches(result, {m: _matrix(grads, prefix, m, m in conv1d) for m in backbone})
    assert result.info["examples"] == len(load_task("easy", easy_csv, **COLUMNS).train)


def test_unequal_batches_give_the_mean_over_their_examples(bert, easy_csv, tmp_path):
    train_size = len(load_task("easy", easy_csv, **COLUMNS).train)
    assert train_size % 10  # batches of 10 are not all the same size
    result = _saved(_probe(bert, easy_csv, "gradient", batches=-(-train_size // 10), batch_size=10, seed=1),
                    tmp_path / "out")
    assert result.info["examples"] == train_size
    grads = _reference_gradients(bert, easy_csv, seed=1)
    _assert_matches(result, {m: _matrix(grads, "bert.", m, False) for m in result.table["module"]})


def test_the_batches_are_the_first_of_the_training_order(bert, easy_csv, tmp_path):
    from transformers import AutoTokenizer

    from rankscope.training.engine import encode, train_batches

    split = load_task("easy", easy_csv, **COLUMNS).train
    encoded = encode(split, AutoTokenizer.from_pretrained(bert), MAX_LENGTH)
    first = [i for batch in train_batches(encoded, 10, torch.Generator().manual_seed(2))[:3] for i in batch]
    result = _saved(_probe(bert, easy_csv, "gradient", batches=3, batch_size=10, seed=2), tmp_path / "out")
    assert result.info["examples"] == len(first) == 30
    grads = _reference_gradients(bert, easy_csv, seed=2, examples=first)
    _assert_matches(result, {m: _matrix(grads, "bert.", m, False) for m in result.table["module"]})


# -- update ------------------------------------------------------------------------------------------------------


def test_the_update_is_the_delta_of_train_full(bert, easy_csv, tmp_path):
    train_size = len(load_task("easy", easy_csv, **COLUMNS).train)
    steps = -(-train_size // 8)  # one epoch of batches of 8
    result = _saved(_probe(bert, easy_csv, "update", steps=steps, seed=1, lr=1e-3), tmp_path / "probe")
    train(bert, "easy", "full", tmp_path / "full", data=easy_csv, epochs=1, batch_size=8, max_length=MAX_LENGTH,
          seed=1, lr=1e-3, restore_best=False, progress=False, **COLUMNS)
    after, before = load_file(tmp_path / "full" / "model.safetensors"), load_file(bert / "model.safetensors")
    deltas = {m: _matrix(after, "bert.", m, False) - _matrix(before, "", m, False) for m in result.table["module"]}
    assert all(np.any(d) for d in deltas.values())
    _assert_matches(result, deltas)
    for row in result.vectors.itertuples():  # biases and norms too
        name = f"{row.module}.weight" if f"{row.module}.weight" in before else row.module  # spectrum drops .weight
        delta = after[f"bert.{name}"].double().numpy() - before[name].double().numpy()
        assert row.delta_norm == pytest.approx(np.linalg.norm(delta), rel=1e-6, abs=1e-12)
    info = json.loads((tmp_path / "probe" / "run.json").read_text())
    assert (info["command"], info["signal"], info["steps"], info["probe"]["steps"]) == ("probe", "update", steps, steps)
    assert info["cost_seconds"] > 0 and info["seeds"] == {"seed": 1, "split_seed": 0}


def test_a_short_update_stops_after_its_steps(bert, easy_csv):
    result = _probe(bert, easy_csv, "update", steps=3, seed=0, keep_vectors=2)
    assert result.info["probe"]["steps"] == 3 and result.info["probe"]["epochs_completed"] == 0.25
    assert all(s.size == 2 and u.shape[1] == 2 for u, s, _ in result.singular_vectors.values())


# -- the folder feeds recommend ----------------------------------------------------------------------------------


def test_recommend_plans_from_a_probe_folder(bert, easy_csv, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    runner = CliRunner()
    out = tmp_path / "probe"
    args = ["probe", "--model", str(bert), "--data", str(easy_csv), "--text-column", "review", "--label-column",
            "sentiment", "--batches", "2", "--batch-size", "8", "--max-length", str(MAX_LENGTH), "--keep-vectors", "4",
            "-o", str(out), "-q"]
    done = runner.invoke(main, args)
    assert done.exit_code == 0, done.output
    spec = SpectrumResult.load(out)
    assert not any(m.startswith("bert.") for m in spec.table["module"])
    with np.load(out / "singular_vectors.npz") as npz:
        for row in spec.table.itertuples():
            r = min(4, row.rows, row.cols)
            assert npz[f"{row.module}:U"].shape == (row.rows, r) and npz[f"{row.module}:Vt"].shape == (r, row.cols)
            assert npz[f"{row.module}:S"].dtype == np.float64
    done = runner.invoke(main, ["recommend", str(out), "--rule", "avg-rank:2", "-o", str(tmp_path / "plan"), "-q"])
    assert done.exit_code == 0, done.output
    plan = json.loads((tmp_path / "plan" / "lora_config.json").read_text())
    assert plan["task_type"] == "SEQ_CLS" and plan["modules_to_save"] == ["classifier"]
    model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(bert, num_labels=2),
                           LoraConfig.from_pretrained(tmp_path / "plan"))
    ranks = {n[len("base_model.model.bert."):-len(".lora_A.default")]: m.out_features
             for n, m in model.named_modules() if n.endswith(".lora_A.default")}
    planned = pd.read_csv(tmp_path / "plan" / "ranks.csv")
    assert ranks == {m: int(r) for m, r in zip(planned["module"], planned["rank"], strict=True) if r > 0}
    assert runner.invoke(main, ["plot", str(out)]).exit_code == 0


# -- bad input ---------------------------------------------------------------------------------------------------


BAD = {
    "no batches": (["--batches", "0"], "--batches"),
    "no steps": (["--signal", "update", "--steps", "0"], "--steps"),
    "missing column": (["--text-column", "nope"], "nope"),
    "targets match nothing": (["--include", "no_such_module"], "--include"),
    "no vectors kept": (["--keep-vectors", "0"], "--keep-vectors"),
    "steps of a gradient": (["--steps", "5"], "--steps"),
    "batches of an update": (["--signal", "update", "--batches", "5"], "--batches"),
    "bad learning rate": (["--signal", "update", "--lr", "0"], "--lr"),
    "bad pattern": (["--exclude", "("], "--exclude"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_writes_nothing(case, bert, easy_csv, tmp_path):
    extra, named = BAD[case]
    out = tmp_path / "out"
    text = [] if case == "missing column" else ["--text-column", "review"]
    args = ["probe", "--model", str(bert), "--data", str(easy_csv), *text, "--label-column", "sentiment",
            "--batch-size", "8", "--max-length", str(MAX_LENGTH), "-o", str(out), "-q"]
    done = CliRunner().invoke(main, args + extra)
    assert done.exit_code == 2, done.output
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], done.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_model_without_a_tokenizer_is_refused(easy_csv, tmp_path):
    with pytest.raises(RankscopeError):
        _probe(tmp_path, easy_csv, "gradient")

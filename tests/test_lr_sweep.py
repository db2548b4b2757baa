"""``train --lr A,B,C``: one run per rate from the same seed, the best on validation tested and saved.

The reference is the single runs themselves: each rate trained on its own must give the validation scores the
sweep records, the sweep must choose the best of them on validation (never on test), and the saved weights and test
scores must be bit-identical to the single run at the chosen rate.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from rankscope.cli import main  # noqa: E402
from rankscope.errors import RankscopeError  # noqa: E402
from rankscope.train import train  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {"epochs": 4, "batch_size": 8, "max_length": 16, "progress": False}
RATES = [1e-4, 1e-2, 3e-1]
"""Full fine-tuning of the tiny BERT: 1e-4 learns nothing in 4 epochs, 3e-1 diverges, 1e-2 separates the task."""


def _run(bert: Path, data: Path, out: Path | None, lr, method: str = "full", **kw):
    return train(bert, "easy", method, out, data=data, text_column="review", label_column="sentiment", lr=lr,
                 **{**FAST, **kw})


@pytest.fixture(scope="module")
def sweep(bert, easy_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    return _run(bert, easy_csv, out, RATES), out


def test_sweep_chooses_the_best_single_run_on_validation(sweep, bert, easy_csv, tmp_path):
    metrics, out = sweep
    singles = {lr: _run(bert, easy_csv, tmp_path / f"single-{lr:g}", lr) for lr in RATES}
    rows = {row["lr"]: row for row in metrics["lr_sweep"]}
    assert sorted(rows) == sorted(RATES)
    for lr, single in singles.items():
        assert rows[lr]["validation_accuracy"] == single["validation_accuracy"]
        assert rows[lr]["validation_loss"] == single["validation_loss"]
        assert "test_accuracy" not in rows[lr]  # the other rates are never tested
    best = max(RATES, key=lambda lr: (singles[lr]["validation_accuracy"], -singles[lr]["validation_loss"]))
    assert [row["lr"] for row in metrics["lr_sweep"] if row["chosen"]] == [best] == [1e-2]  # not an edge of the grid
    assert metrics["test_accuracy"] == singles[best]["test_accuracy"]
    assert not any("extend the grid" in w for w in metrics.info["warnings"])
    a = load_file(out / "model.safetensors")
    b = load_file(tmp_path / f"single-{best:g}" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["lr"] == best and len(run["lr_sweep"]) == len(RATES)
    assert "lr_sweep.csv" in run["outputs"]


def test_the_sweep_table_holds_validation_only(sweep):
    metrics, out = sweep
    table = pd.read_csv(out / "lr_sweep.csv")
    assert list(table["lr"]) == RATES and table["chosen"].sum() == 1
    assert not any(column.startswith("test") for column in table.columns)


def _scripted(monkeypatch, scores: dict[float, tuple[float, float]]) -> None:
    """Each rate's validation (accuracy, loss) set by hand over a real one-step run (the selection logic alone)."""
    import importlib
    from dataclasses import replace

    api = importlib.import_module("rankscope.train")
    real = api.train_model

    def scripted(net, task_data, tok, config, hooks=None, test=True):
        metrics = real(net, task_data, tok, replace(config, max_steps=1), hooks, test)
        metrics["validation_accuracy"], metrics["validation_loss"] = scores[config.learning_rate]
        return metrics

    monkeypatch.setattr(api, "train_model", scripted)


@pytest.mark.parametrize(("scores", "chosen", "warning"), [
    ({1e-3: (0.8, 0.5), 2e-3: (0.8, 0.4), 4e-3: (0.7, 0.1)}, 2e-3, None),  # accuracy ties: lower loss; not an edge
    ({1e-3: (0.9, 0.3), 2e-3: (0.8, 0.2), 4e-3: (0.7, 0.1)}, 1e-3, "is the smallest of the grid"),
    ({1e-3: (0.6, 0.3), 2e-3: (0.7, 0.2), 4e-3: (0.8, 0.9)}, 4e-3, "is the largest of the grid"),
    ({1e-3: (0.5, float("nan")), 2e-3: (0.5, 0.69), 4e-3: (0.5, 0.70)}, 2e-3, "same validation accuracy"),
    ({1e-3: (0.8, 0.5), 2e-3: (0.8, 0.5), 4e-3: (0.1, 0.1)}, 1e-3, "is the smallest of the grid"),  # exact tie
])
def test_selection_rules(bert, easy_csv, monkeypatch, scores, chosen, warning):
    _scripted(monkeypatch, scores)
    metrics = _run(bert, easy_csv, None, list(scores), method="lora", epochs=1)
    assert [row["lr"] for row in metrics["lr_sweep"] if row["chosen"]] == [chosen]
    assert metrics.info["options"]["lr"] == chosen
    edge = [w for w in metrics.info["warnings"] if w.startswith("--lr:")]
    assert (edge == []) if warning is None else (len(edge) == 1 and warning in edge[0]), edge
    if warning and "smallest" in warning:
        assert "a lower rate may be better" in edge[0]


def test_a_diverged_first_rate_does_not_win_a_causal_lm_sweep(gpt2, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"q{i} ", "response": f"a{i % 3} b"}) for i in range(40)))
    metrics = train(gpt2, "pairs", "lora", None, data=data, objective="causal-lm", lr=[1e6, 1e-2], epochs=1,
                    batch_size=8, max_length=16, progress=False)
    rows = {row["lr"]: row for row in metrics["lr_sweep"]}
    assert math.isnan(rows[1e6]["validation_loss"]) or rows[1e6]["validation_loss"] > 1e3
    assert rows[1e-2]["chosen"] and metrics["test_loss"] is not None and math.isfinite(metrics["test_loss"])


def test_a_single_rate_is_no_sweep(bert, easy_csv):
    metrics = _run(bert, easy_csv, None, 3e-3, epochs=1)
    assert "lr_sweep" not in metrics and "lr_sweep" not in metrics.info


@pytest.mark.parametrize("lr", [[], [1e-3, 1e-3], [1e-3, -1.0], [1e-3, float("inf")]])
def test_bad_grids_are_refused(bert, easy_csv, lr):
    with pytest.raises(RankscopeError, match="--lr"):
        _run(bert, easy_csv, None, lr)


@pytest.mark.parametrize("value", ["1e-3,abc", "1e-3,0", "1e-3,1e-3", "inf"])
def test_cli_bad_rates_are_one_line_exit_2(bert, easy_csv, tmp_path, value):
    result = CliRunner().invoke(main, ["train", "--model", str(bert), "--data", str(easy_csv), "--text-column",
                                       "review", "--label-column", "sentiment", "--lr", value, "-q", "-o",
                                       str(tmp_path / "bad")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--lr" in lines[0]
    assert not (tmp_path / "bad").exists()


def test_cli_sweep_of_adalora(bert, easy_csv, tmp_path):
    out = tmp_path / "ada"
    result = CliRunner().invoke(main, ["train", "--model", str(bert), "--data", str(easy_csv), "--text-column",
                                       "review", "--label-column", "sentiment", "--method", "adalora", "--r", "2",
                                       "--epochs", "2", "--batch-size", "8", "--max-length", "16", "--lr",
                                       "1e-3,1e-2", "-q", "-o", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["lr_sweep"]) == 2 and metrics["adalora"]["final_ranks"]
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"

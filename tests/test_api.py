"""The Python API for notebooks: every analysis at the top level, one result protocol, models in memory.

* ``import rankscope`` stays light (no torch, no peft) and lists every analysis; importing a submodule named like
  a function (``rankscope.compare``, as the command line does) keeps the function;
* every result has ``table``, ``summary()`` (a DataFrame whose numbers are recomputed here from the table),
  ``summary_text()`` (what the command prints), ``save``/``load``, ``figures()`` (the figures ``save`` writes, drawn
  in memory: same names, nothing written), ``key_figures()`` equal to the saved folder's ``summary.json``, and
  ``_repr_html_`` with the answer sentences;
* checkpoints given as ``torch.nn.Module``s or state dicts give the same tables and spectra as the same pair
  saved to disk (spectrum, recommend, extract, compare, lora's base);
* ``RankPlan.lora_config`` is a ``peft.LoraConfig`` that builds exactly the planned ranks.
"""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import rankscope
from rankscope.cli import main
from rankscope.errors import RankscopeError
from rankscope.io.checkpoints import open_checkpoint
from rankscope.summaries import key_figures

TIMINGS = ("seconds",)
"""Table columns that measure time, not the result."""


def same_table(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal in every column but the timings, row for row by module (a safetensors file lists its tensors by name,
    a model in memory in its own order, as a ``.bin`` file does)."""
    drop = [c for c in TIMINGS if c in a]
    key = [c for c in ("module", "tensor") if c in a][:1]
    a, b = (t.drop(columns=drop).sort_values(key, kind="stable").reset_index(drop=True) if key else t for t in (a, b))
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def png_stems(folder: Path) -> set[str]:
    return {p.stem for p in (folder / "figures").glob("*.png")}


# --------------------------------------------------------------------------------------------------
# the facade
# --------------------------------------------------------------------------------------------------

ANALYSES = {"spectrum": "rankscope.spectrum", "lora_spectrum": "rankscope.lora", "compare": "rankscope.compare",
            "compare_adapters": "rankscope.compare", "recommend": "rankscope.ranks", "extract": "rankscope.extract",
            "resize": "rankscope.resize", "probe": "rankscope.probe", "train": "rankscope.train",
            "intrinsic_dimension": "rankscope.subspace.intrinsic", "report": "rankscope.report",
            "load": "rankscope.loader"}


def test_import_is_light_and_lists_every_analysis():
    code = f"""
import sys, rankscope
names = {list(ANALYSES)!r}
assert "torch" not in sys.modules and "peft" not in sys.modules and "transformers" not in sys.modules
assert set(names) <= set(rankscope.__all__) and set(rankscope.__all__) <= set(dir(rankscope)), dir(rankscope)
import rankscope.cli
assert "torch" not in sys.modules
import rankscope.compare, rankscope.train, rankscope.report, rankscope.extract  # what the commands import
for name, module in {ANALYSES!r}.items():
    f = getattr(rankscope, name)
    assert callable(f) and f.__module__ == module and f.__name__ == name, (name, f)
from rankscope import compare
from rankscope.compare import CompareResult
assert compare is rankscope.compare and CompareResult is rankscope.CompareResult
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        rankscope.nothing  # noqa: B018


# --------------------------------------------------------------------------------------------------
# in-memory checkpoints
# --------------------------------------------------------------------------------------------------

CLASSES = {"llama": ("AutoModelForCausalLM", "AutoModelForCausalLM"), "gpt2": ("AutoModelForCausalLM", "AutoModelForCausalLM"),
           "bert": ("AutoModel", "AutoModelForSequenceClassification")}


def loaded(pair, arch: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    import transformers

    base_cls, ft_cls = (getattr(transformers, n) for n in CLASSES[arch])
    return base_cls.from_pretrained(pair.base).eval(), ft_cls.from_pretrained(pair.finetuned).eval()


@pytest.fixture(scope="module")
def llama(make_pair):
    pair = make_pair("llama")
    return pair, *loaded(pair, "llama")


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_in_memory_modules_give_the_spectra_of_the_saved_pair(make_pair, arch):
    """GPT-2: Conv1D orientation from the module's config, lm_head tied to wte; BERT: a bare base and a classifier."""
    pair = make_pair(arch)
    base, ft = loaded(pair, arch)
    before = {k: v.clone() for k, v in ft.state_dict().items()}
    disk = rankscope.spectrum(pair.base, pair.finetuned, workers=1)
    memory = rankscope.spectrum(base, ft, workers=1)
    same_table(memory.table, disk.table)
    same_table(memory.vectors, disk.vectors)
    assert memory.spectra.keys() == disk.spectra.keys()
    for module, sigma in disk.spectra.items():
        np.testing.assert_array_equal(memory.spectra[module], sigma)
    given = memory.info["inputs"]["finetuned"]
    assert given["given"] == f"<in-memory {type(ft).__name__}>" and given["format"] == "memory"
    assert given["architectures"] == disk.info["inputs"]["finetuned"]["architectures"]
    assert all(torch.equal(before[k], v) for k, v in ft.state_dict().items())  # read, never written


def test_state_dicts_and_numpy_arrays_are_checkpoints_too(llama):
    pair, base, ft = llama
    disk = rankscope.spectrum(pair.base, pair.finetuned, workers=1)
    as_numpy = {k: v.numpy() for k, v in ft.state_dict().items()}
    memory = rankscope.spectrum(base.state_dict(), as_numpy, workers=1)
    same_table(memory.table, disk.table)
    assert memory.info["inputs"]["base"]["given"] == f"<in-memory state dict of {len(base.state_dict())} entries>"


def test_a_model_built_from_its_config_is_named_by_its_class():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    with open_checkpoint(model) as ckpt:
        described = ckpt.describe()
        rows = ckpt.read_rows("model.embed_tokens.weight", 0, 3)
        rows[:] = 7.0  # a copy: the model's weights stay as they were
    assert described["architectures"] == ["LlamaForCausalLM"] and described["model_type"] == "llama"
    assert not torch.any(model.model.embed_tokens.weight[:3] == 7.0)


@pytest.mark.parametrize("given, message", [(42, "<in-memory int>: not a checkpoint"),
                                            ({"a": "text"}, "holds no tensors"),
                                            ({1: torch.zeros(2)}, "key 1 is not a tensor name")])
def test_what_is_not_a_checkpoint_is_one_clear_error(llama, given, message):
    pair, _, ft = llama
    with pytest.raises(RankscopeError, match=message) as err:
        rankscope.spectrum(given, ft)
    assert "\n" not in str(err.value)


def test_a_model_in_memory_cannot_be_a_spectrum_source_alone_or_go_to_ray(llama):
    from rankscope.pairing.executors import RayExecutor

    pair, base, ft = llama
    with pytest.raises(RankscopeError, match="give the fine-tune too"):
        rankscope.recommend(base)
    with open_checkpoint(base) as b, open_checkpoint(pair.finetuned) as f, \
            pytest.raises(RankscopeError, match="--executor ray: <in-memory LlamaForCausalLM> is a model in memory"):
        RayExecutor().run([], print, (b, f))


def test_in_memory_pair_gives_the_plan_adapter_and_comparison_of_the_saved_pair(llama, tmp_path):
    pair, base, ft = llama
    plan_disk = rankscope.recommend(pair.base, pair.finetuned, rule="avg-rank:4", workers=1)
    plan_memory = rankscope.recommend(base, ft, rule="avg-rank:4", workers=1)
    same_table(plan_memory.table, plan_disk.table)
    in_order = [{**c, "target_modules": sorted(c["target_modules"])} for c in (plan_memory.config, plan_disk.config)]
    assert in_order[0] == in_order[1]
    extract_disk = rankscope.extract(pair.base, pair.finetuned, rank=4, workers=1)
    extract_memory = rankscope.extract(base, ft, rank=4, workers=1)
    same_table(extract_memory.table, extract_disk.table)
    assert extract_memory.tensors.keys() == extract_disk.tensors.keys()
    assert all(np.array_equal(extract_memory.tensors[k], v) for k, v in extract_disk.tensors.items())
    adapter = extract_disk.save(tmp_path / "adapter")
    same_table(rankscope.compare(base, ft, adapter).table, rankscope.compare(pair.base, pair.finetuned, adapter).table)
    lora_memory, lora_disk = rankscope.lora_spectrum(adapter, base), rankscope.lora_spectrum(adapter, pair.base)
    same_table(lora_memory.table, lora_disk.table)


# --------------------------------------------------------------------------------------------------
# the result protocol
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results(llama, tmp_path_factory):
    """In-memory results of the module analyses on the planted Llama pair, each also saved (with figures)."""
    pair, _, _ = llama
    root = tmp_path_factory.mktemp("api")
    made = {"spectrum": rankscope.spectrum(pair.base, pair.finetuned, workers=1)}
    made["recommend"] = rankscope.recommend(made["spectrum"], rule="avg-rank:4")
    made["extract"] = rankscope.extract(pair.base, pair.finetuned, rank=4, workers=1)
    made["extract"].save(root / "extract")
    made["extract16"] = rankscope.extract(pair.base, pair.finetuned, rank=16, workers=1)
    made["extract16"].save(root / "extract16")
    made["lora"] = rankscope.lora_spectrum(root / "extract", pair.base)
    made["compare"] = rankscope.compare(pair.base, pair.finetuned, root / "extract")
    made["compare-adapters"] = rankscope.compare_adapters(root / "extract", root / "extract16")
    made["resize"] = rankscope.resize(root / "extract16", rule="avg-rank:4")
    folders = {"extract": root / "extract"}
    for name, result in made.items():
        if name not in ("extract", "extract16"):
            folders[name] = result.save(root / name)
    return made, folders


COMMANDS = ["spectrum", "recommend", "extract", "lora", "compare", "compare-adapters", "resize"]


@pytest.mark.parametrize("command", COMMANDS)
def test_key_figures_in_memory_are_the_saved_summary_json(results, command):
    made, folders = results
    figures = made[command].key_figures()
    saved = json.loads((folders[command] / "summary.json").read_text())
    assert figures == saved == json.loads(json.dumps(key_figures(folders[command])))
    assert figures["command"] == command and made[command].answer() == saved["answer"] != []


@pytest.mark.parametrize("command", COMMANDS)
def test_figures_are_those_save_writes_drawn_without_a_file(results, command, monkeypatch):
    from matplotlib.figure import Figure

    made, folders = results

    def refuse(*args, **kwargs):
        raise AssertionError("figures() wrote a file")

    monkeypatch.setattr(Figure, "savefig", refuse)
    drawn = made[command].figures()
    assert set(drawn) == png_stems(folders[command]) and drawn, (set(drawn), png_stems(folders[command]))
    assert all(isinstance(f, Figure) and f.axes for f in drawn.values())
    import matplotlib.pyplot as plt

    assert not {id(f) for f in drawn.values()} & {id(plt.figure(n)) for n in plt.get_fignums()}  # released


@pytest.mark.parametrize("command", COMMANDS)
def test_load_gives_back_the_same_result(results, command):
    made, folders = results
    back = rankscope.load(folders[command])
    assert type(back) is type(made[command])
    pd.testing.assert_frame_equal(back.summary(), made[command].summary(), check_dtype=False)
    assert back.summary_text() == made[command].summary_text()


@pytest.mark.parametrize("command", COMMANDS)
def test_the_notebook_view_holds_the_answer_and_the_summary(results, command):
    made, _ = results
    page = made[command]._repr_html_()
    for sentence in made[command].answer():
        assert html.escape(sentence.split("`")[0]) in page
    assert "<table" in page and f"rankscope {command}" in page


def test_spectrum_summary_is_the_per_kind_table(results):
    made, _ = results
    t = made["spectrum"].table
    summary = made["spectrum"].summary()
    assert list(summary.index) == list(dict.fromkeys(t["kind"]))
    for kind, rows in t.groupby("kind"):
        assert summary.loc[kind, "n"] == len(rows)
        assert summary.loc[kind, "rank_90"] == rows["rank_90"].median()
        share = 100 * rows["rank_90"] / np.minimum(rows["rows"], rows["cols"])
        assert summary.loc[kind, "rank_90_pct"] == pytest.approx(share.median(), rel=1e-12)


def test_plan_summary_energy_is_the_energy_weighted_share(results):
    made, _ = results
    t, summary = made["recommend"].table, made["recommend"].summary()
    for kind, rows in t.groupby("kind"):
        weights = rows["delta_energy"]
        for col, name in (("captured_energy", "energy"), ("uniform_captured_energy", "uniform")):
            want = (rows[col] * weights).sum() / weights.sum() if weights.sum() > 0 else 0.0
            assert summary.loc[kind, name] == pytest.approx(want, rel=1e-12, abs=1e-15)
        assert summary.loc[kind, "params"] == rows["params"].sum()


def test_summary_text_is_what_the_command_prints(llama, tmp_path):
    pair, _, _ = llama
    run = CliRunner().invoke(main, ["spectrum", str(pair.base), str(pair.finetuned), "-o", str(tmp_path / "s"),
                                    "--no-plots"])
    assert run.exit_code == 0, run.output
    printed = run.stdout.rsplit("\nwrote ", 1)[0]
    assert printed == rankscope.load(tmp_path / "s").summary_text()


def test_lora_config_builds_the_planned_ranks(llama):
    from peft import LoraConfig, get_peft_model

    pair, base, ft = llama
    plan = rankscope.recommend(base, ft, rule="energy:0.9", workers=1)
    config = plan.lora_config
    assert isinstance(config, LoraConfig) and config.task_type == "CAUSAL_LM"
    import transformers

    model = get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(pair.base), config)
    modules = dict(model.named_modules())
    planned = dict(zip(plan.table["module"], plan.table["rank"], strict=True))
    assert any(r == 0 for r in planned.values()) and len(set(planned.values())) > 2  # a plan worth checking
    for module, rank in planned.items():
        wrapped = modules[f"base_model.model.{module}"]
        if rank == 0:
            assert not hasattr(wrapped, "lora_A"), module
        else:
            assert wrapped.lora_A["default"].weight.shape[0] == rank, module
            assert wrapped.scaling["default"] == pytest.approx(float(plan.table.set_index("module").loc[module, "alpha"])
                                                               / rank)


# --------------------------------------------------------------------------------------------------
# train, intrinsic-dim, report
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny bare BERT with its tokenizer, and a separable CSV task."""
    from tiny_text import bert_folder, write_easy_csv

    root = tmp_path_factory.mktemp("tiny-task")
    return bert_folder(root / "bert"), write_easy_csv(root / "easy.csv")


def test_probe_result_follows_the_protocol(tiny_task, tmp_path):
    model, data = tiny_task
    result = rankscope.probe(model, "easy", "gradient", data=data, text_column="review", label_column="sentiment",
                             batches=2, batch_size=8, max_length=16, keep_vectors=4)
    folder = result.save(tmp_path / "probe")
    assert result.key_figures() == json.loads((folder / "summary.json").read_text())
    assert set(result.figures()) == png_stems(folder) and result.figures()
    counts = result.table.groupby("kind").size()
    assert result.summary()["n"].to_dict() == counts.to_dict()
    back = rankscope.load(folder)
    assert type(back) is type(result) and back.summary_text() == result.summary_text()
    assert html.escape("From the probe's gradient signal") in result._repr_html_()


def test_train_result_saves_its_record_and_never_over_a_model(tiny_task, tmp_path):
    model, data = tiny_task
    out = tmp_path / "trained"
    result = rankscope.train(model, "easy", "lora", out, data=data, text_column="review", label_column="sentiment",
                             epochs=1, batch_size=8, max_length=16, progress=False, r=2)
    summary = result.summary()
    assert set(summary.index) == {"validation", "test"}
    assert summary.loc["test", "accuracy"] == result["test_accuracy"]
    assert summary.loc["validation", "loss"] == result["validation_loss"]
    assert result.key_figures() == json.loads((out / "summary.json").read_text())
    with pytest.raises(RankscopeError, match="holds a model trained by `rankscope train`"):
        result.save(out)
    record = result.save(tmp_path / "record")
    assert {p.name for p in record.iterdir()} >= {"metrics.json", "run.json", "summary.json"}
    assert not any(p.suffix == ".safetensors" for p in record.rglob("*"))
    back = rankscope.load(record)
    assert back == result and back.summary_text() == result.summary_text()
    assert set(result.figures()) == png_stems(record)
    result.save(record)  # its own record is replaced


def test_intrinsic_dimension_result_follows_the_protocol(tmp_path):
    result = rankscope.intrinsic_dimension("toy", None, grid=[5, 10], seeds=1)
    summary = result.summary()
    d90 = result.result["modes"]["did"]["d90"]
    assert list(summary.index) == ["did"] and (summary.loc["did", "d90"] == d90 or d90 is None)
    assert summary.loc["did", "D"] == result.result["D"]
    folder = tmp_path / "toy"
    result.save(folder)
    assert result.key_figures() == json.loads((folder / "summary.json").read_text())
    assert set(result.figures()) == png_stems(folder) == {"intrinsic-dim"}
    assert "d90" in result._repr_html_()


def test_report_has_the_key_table_and_reads_back(results, tmp_path):
    _, folders = results
    page = rankscope.report([folders["spectrum"]])
    assert page.summary() is page.table and "rank_90.median" in page.table.index
    assert page.table.iloc[:, 0]["rank_90.median"] == key_figures(folders["spectrum"])["rank_90"]["median"]
    path = page.save(tmp_path / "page.html")
    back = rankscope.Report.load(path)
    assert back.text == page.text and back.results == page.results and back.key_figures == page.key_figures
    pd.testing.assert_frame_equal(back.table, page.table)
    assert set(back.figures()) == png_stems(folders["spectrum"])
    with pytest.raises(RankscopeError, match="not a rankscope report"):
        (tmp_path / "other.html").write_text("<html></html>")
        rankscope.Report.load(tmp_path / "other.html")


def test_a_notebook_backend_is_left_alone_and_anything_else_becomes_agg(tmp_path):
    """Jupyter's inline backend (a stand-in named like it here) survives figures(); elsewhere files are drawn on Agg."""
    (tmp_path / "fake_inline_backend.py").write_text(
        "from matplotlib.backend_bases import FigureManagerBase as FigureManager\n"
        "from matplotlib.backends.backend_agg import FigureCanvasAgg as FigureCanvas\n")
    code = ("import matplotlib; from rankscope.figures.style import pyplot; plt, _ = pyplot(); "
            "plt.subplots(); print(matplotlib.get_backend())")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for backend, expected in (("module://fake_inline_backend", "module://fake_inline_backend"), ("", "agg")):
        env["MPLBACKEND"] = backend
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0 and done.stdout.strip().lower() == expected, done.stderr

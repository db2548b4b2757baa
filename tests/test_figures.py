"""Figures that explain themselves, the adapter's storage format and model card, and the BASE/FINETUNED order.

* every new figure is written and listed in the result's marker: ``budget_curve.png`` (recommend), ``error.png``
  (extract, resize), ``learning_curves.png`` (train, classification and causal LM), and ``rankscope plot`` redraws
  them;
* the budget curve's points are exact optima: each equals the brute-force best allocation of its budget;
* a panel with nothing to draw holds a one-line note (read from the matplotlib Figure, captured in memory);
  colour that encodes depth has a colour bar; heatmaps of comparable values share one scale from 0;
* ``--dtype``: the tensors are stored in that format, the merge is the rank-r truncation to the format's precision
  (a closed-form bound), and the reported error is that of the rounded factors;
* the model card names the sources, the ranks and the command;
* the swap warning fires on a swapped pair and not on the normal one (unit cases of the rule, then the commands).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.numpy import save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rankscope.cli import main  # noqa: E402
from rankscope.extract import extract  # noqa: E402
from rankscope.figures import compare as compare_figs  # noqa: E402
from rankscope.figures.adapters import render_error_figure  # noqa: E402
from rankscope.figures.ranks import render_rank_figure  # noqa: E402
from rankscope.figures.style import capturing, pyplot  # noqa: E402
from rankscope.figures.training import render_learning_curves  # noqa: E402
from rankscope.io.results import read_marker  # noqa: E402
from rankscope.numerics.allocation import budget_curve  # noqa: E402
from rankscope.pairing.order import SWAP_WARNING, swap_warning  # noqa: E402
from rankscope.ranks import RankPlan, recommend  # noqa: E402
from rankscope.resize import resize  # noqa: E402
from rankscope.spectrum import spectrum  # noqa: E402

KINDS = ("query", "value")
ROWS, COLS = 24, 16
ZERO = "encoder.layer.1.attention.self.value"  # ΔW = 0 exactly
UNIT = {"bf16": 2.0**-9, "fp16": 2.0**-12}
"""Unit roundoff (half the spacing at 1) of round-to-nearest in each format."""


# --------------------------------------------------------------------------------------------------
# a tiny pair with planted low-rank updates
# --------------------------------------------------------------------------------------------------


def module(layer: int, kind: str) -> str:
    return f"encoder.layer.{layer}.attention.self.{kind}"


def _write(folder: Path, tensors: dict[str, np.ndarray], config: dict) -> Path:
    folder.mkdir(parents=True)
    save_file({f"{k}.weight": v for k, v in tensors.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> SimpleNamespace:
    """BASE and FINETUNED (3 layers × query, value; float32) whose configs name their origin the usual way:
    the fine-tune's ``_name_or_path`` is the base's folder, the base's is its own Hub origin."""
    root = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(0)
    base, ft = {}, {}
    for layer in range(3):
        for j, kind in enumerate(KINDS):
            name = module(layer, kind)
            w = rng.standard_normal((ROWS, COLS)).astype(np.float32)
            k = 2 + layer + j  # planted rank
            delta = (rng.standard_normal((ROWS, k)) * (3.0 ** -np.arange(k))) @ rng.standard_normal((k, COLS))
            base[name], ft[name] = w, (w + 0.05 * delta).astype(np.float32)
    ft[ZERO] = base[ZERO].copy()
    b = _write(root / "base", base, {"model_type": "bert", "_name_or_path": "org/original-model"})
    f = _write(root / "ft", ft, {"model_type": "bert", "_name_or_path": str(b)})
    return SimpleNamespace(base=b, ft=f, root=root)


def deltas(pair: SimpleNamespace) -> dict[str, np.ndarray]:
    """ΔW in float64, read back from the two files (independent of rankscope's reader)."""
    out = {}
    with safe_open(str(pair.base / "model.safetensors"), "np") as b, safe_open(str(pair.ft / "model.safetensors"),
                                                                                "np") as f:
        names = b.keys()
        for key in names:
            out[key.removesuffix(".weight")] = f.get_tensor(key).astype(np.float64) - b.get_tensor(key).astype(np.float64)
    return out


def truncation(delta: np.ndarray, r: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vt[:r]


def stored_factors(folder: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """``module -> (B, A)`` in float64 from ``adapter_model.safetensors``, and every tensor's torch dtype."""
    factors: dict[str, dict[str, np.ndarray]] = {}
    dtypes = {}
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as g:
        names = g.keys()
        for key in names:
            t = g.get_tensor(key)
            dtypes[key] = str(t.dtype)
            name = key.removeprefix("base_model.model.")
            for which in ("lora_A", "lora_B"):
                if f".{which}." in name:
                    factors.setdefault(name.split(f".{which}.")[0], {})[which] = t.double().numpy()
    return {m: (f["lora_B"], f["lora_A"]) for m, f in factors.items()}, dtypes


def figure_texts(fig) -> list[str]:
    """Every text of a Figure: the suptitle, the axes' titles, labels and free texts."""
    texts = [t.get_text() for t in fig.texts]
    if fig._suptitle is not None:
        texts.append(fig._suptitle.get_text())
    for ax in fig.axes:
        texts += [t.get_text() for t in ax.texts] + [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
    return texts


def captured(draw) -> dict:
    with capturing() as store:
        draw()
    return dict(store)


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# --------------------------------------------------------------------------------------------------
# recommend: the budget → captured-energy curve
# --------------------------------------------------------------------------------------------------


def brute_force_best(spectra: list[np.ndarray], shapes: list[tuple[int, int]], budget: int) -> float:
    """The largest captured share of Σσ² over every allocation of ranks 0..min(m, n) within ``budget``."""
    total = sum(float(np.sum(s**2)) for s in spectra)
    best = 0.0
    for ranks in itertools.product(*(range(min(m, n) + 1) for m, n in shapes)):
        if sum(r * (m + n) for r, (m, n) in zip(ranks, shapes, strict=True)) <= budget:
            best = max(best, sum(float(np.sum(s[:r] ** 2)) for s, r in zip(spectra, ranks, strict=True)) / total)
    return best


def test_budget_curve_points_are_exact_optima_and_uniform_is_rank_r_everywhere():
    rng = np.random.default_rng(3)
    shapes = [(5, 4), (7, 3), (6, 6)]
    spectra = [np.sort(rng.random(min(s)) * (i + 1))[::-1] for i, s in enumerate(shapes)]
    curve = budget_curve(spectra, shapes, points=40)
    total = sum(float(np.sum(s**2)) for s in spectra)
    assert curve.best_params.size > 5 and np.all(np.diff(curve.best_params) > 0)
    for params, energy in zip(curve.best_params, curve.best_energy, strict=True):
        assert energy == pytest.approx(brute_force_best(spectra, shapes, int(params)), abs=1e-12)
    assert curve.best_energy[-1] == pytest.approx(1.0)
    dims = [min(s) for s in shapes]
    for r, params, energy in zip(curve.uniform_ranks, curve.uniform_params, curve.uniform_energy, strict=True):
        ranks = [min(int(r), d) for d in dims]
        assert params == sum(k * (m + n) for k, (m, n) in zip(ranks, shapes, strict=True))
        assert energy == pytest.approx(sum(float(np.sum(s[:k] ** 2)) for s, k in zip(spectra, ranks, strict=True))
                                       / total, abs=1e-12)
    assert list(curve.uniform_ranks) == list(range(1, max(dims) + 1))


def test_recommend_writes_the_budget_curve_and_plot_redraws_it(pair, tmp_path):
    spec = spectrum(pair.base, pair.ft)
    plan = recommend(spec, rule="avg-rank:2")
    assert plan.budget_curve is not None and set(plan.budget_curve["allocation"]) == {"best", "uniform"}
    out = plan.save(tmp_path / "plan")
    assert {"budget_curve.csv", "figures/budget_curve.png", "figures/ranks.png"} <= set(read_marker(out)["files"])
    assert (out / "figures" / "budget_curve.png").stat().st_size > 10_000
    again = RankPlan.load(out)
    pd.testing.assert_frame_equal(again.budget_curve.reset_index(drop=True), plan.budget_curve, check_dtype=False)
    # the plan is an allocation of its budget: on or below the best curve at its parameters
    best = plan.budget_curve[plan.budget_curve["allocation"] == "best"]
    res = plan.info["results"]
    at = best[best["params"] >= res["params"]]["captured_energy"].iloc[0]
    assert res["captured_energy"] <= at + 1e-12
    figures = captured(lambda: plan.render_figures(tmp_path / "mem"))
    assert set(figures) == {"ranks", "budget_curve"}
    assert any("best allocation" in t for t in [h.get_label() for h in figures["budget_curve"].axes[0].lines])
    (out / "figures" / "budget_curve.png").unlink()
    assert cli("plot", str(out)).exit_code == 0
    assert (out / "figures" / "budget_curve.png").is_file()


def test_rank_heatmap_starts_at_zero_and_zero_kinds_say_so(pair):
    plan = recommend(spectrum(pair.base, pair.ft), rule="energy:0.9")
    fig = captured(lambda: render_rank_figure(plan, Path("ranks.png")))["ranks"]
    heat = fig.axes[0].collections[0]
    assert heat.norm.vmin == 0
    # a kind whose every module has ΔW = 0: a note where its bars would be
    table = plan.table.copy()
    table.loc[table["kind"] == "value", ["delta_energy", "rank", "params", "captured_energy"]] = 0
    fake = SimpleNamespace(table=table, info=plan.info)
    texts = figure_texts(captured(lambda: render_rank_figure(fake, Path("ranks.png")))["ranks"])
    assert texts.count("ΔW = 0: not adapted") == 2


# --------------------------------------------------------------------------------------------------
# compare figures: notes, colour bars, shared scales
# --------------------------------------------------------------------------------------------------


def compare_result(intruders_full: list[int], intruders_lora: list[int], full_norm: list[float]) -> SimpleNamespace:
    rows, phi = [], {}
    for i, (layer, kind) in enumerate(itertools.product(range(3), ("query", "value"))):
        name = module(layer, kind)
        rows.append({"module": name, "layer": layer, "kind": kind, "rows": ROWS, "cols": COLS, "r": 2,
                     "full_norm": full_norm[i], "lora_norm": 1.0, "energy_both": 0.5, "energy_col": 0.6,
                     "energy_optimal": 0.7, "intruders_full": intruders_full[i], "intruders_lora": intruders_lora[i]})
        phi[f"{name}:left"] = phi[f"{name}:right"] = np.full((4, 2), 0.5)
    table = pd.DataFrame(rows)
    table["layer"] = table["layer"].astype("Int64")
    return SimpleNamespace(table=table, phi=phi, info={"command": "compare", "options": {"k": 10, "epsilon": 0.5}})


def test_all_zero_intruder_counts_are_a_note_and_counts_share_one_scale_from_zero():
    plt, sns = pyplot()
    zero = compare_result([0] * 6, [0] * 6, [1.0] * 6)
    fig = captured(lambda: compare_figs.plot_intruders(zero, Path("intruders.png"), plt, sns))["intruders"]
    texts = figure_texts(fig)
    assert sum("no intruder dimension in any module" in t for t in texts) == 2
    assert not any(ax.collections for ax in fig.axes)  # no empty heatmap drawn
    some = compare_result([0, 3, 1, 0, 0, 2], [0, 1, 0, 0, 0, 0], [1.0] * 6)
    fig = captured(lambda: compare_figs.plot_intruders(some, Path("intruders.png"), plt, sns))["intruders"]
    heats = [ax.collections[0] for ax in fig.axes[:2]]  # the two panels (their colour bars follow)
    assert {(h.norm.vmin, h.norm.vmax) for h in heats} == {(0, 3)}
    lora_only_zero = compare_result([0, 3, 1, 0, 0, 2], [0] * 6, [1.0] * 6)
    texts = figure_texts(captured(lambda: compare_figs.plot_intruders(lora_only_zero, Path("i.png"), plt, sns))["i"])
    assert sum("no intruder dimension" in t for t in texts) == 1


def test_zero_updates_are_notes_and_depth_has_a_colour_bar():
    plt, _ = pyplot()
    result = compare_result([0] * 6, [0] * 6, [1.0, 0.0, 1.0, 0.0, 1.0, 0.0])  # every 'value' module: ΔW_full = 0
    energy = captured(lambda: compare_figs.plot_energy(result, Path("energy.png"), plt))["energy"]
    assert sum(t == compare_figs.ZERO_NOTE for t in figure_texts(energy)) == 1
    assert energy.legends, "the legend sits below the panels (a figure legend)"
    diagonal = captured(lambda: compare_figs.plot_phi_diagonal(result, Path("phi_diagonal.png"), plt))["phi_diagonal"]
    assert sum(t == "ΔW = 0 in every module" for t in figure_texts(diagonal)) == 2  # column and row panel
    assert "layer (depth)" in figure_texts(diagonal)  # the colour bar's label
    query_axes = [ax for ax in diagonal.axes if ax.get_title().startswith("query")]
    assert all(len(ax.lines) == 3 + 1 for ax in query_axes)  # one line per layer and the random baseline


# --------------------------------------------------------------------------------------------------
# extract and resize: error figure, --dtype, model card
# --------------------------------------------------------------------------------------------------


def test_extract_writes_error_figure_and_model_card(pair, tmp_path):
    result = extract(pair.base, pair.ft, rank=2)
    result.info["argv"] = "rankscope extract BASE FT --rank 2 -o OUT"
    out = result.save(tmp_path / "ad")
    files = set(read_marker(out)["files"])
    assert {"README.md", "figures/error.png"} <= files and result.info["outputs"]["figures"] == ["error.png"]
    card = (out / "README.md").read_text()
    assert str(pair.base) in card and str(pair.ft) in card and "library_name: peft" in card
    assert "rankscope extract BASE FT --rank 2 -o OUT" in card
    assert "| query | 3 | 2 |" in card  # kind, modules, rank (the zero module is left out)
    worst = result.table.loc[result.table["ratio"].idxmax()]
    assert f"`{worst['module']}`, ratio {worst['ratio']:.6f}" in card
    fig = captured(lambda: result.render_figures(tmp_path / "mem"))["error"]
    assert len(fig.axes) == 2 and all(len(ax.lines) == 2 for ax in fig.axes)  # stored error and optimum per kind
    no_plots = extract(pair.base, pair.ft, rank=2).save(tmp_path / "np", plots=False)
    assert not (no_plots / "figures").exists() and (no_plots / "README.md").is_file()


def test_error_figure_without_adapted_modules_is_a_note():
    table = pd.DataFrame({"module": ["a"], "layer": pd.array([None], dtype="Int64"), "kind": ["a"], "role": ["skip"],
                          "rank": [0], "rel_error": [1.0], "optimal_rel_error": [1.0], "ratio": [1.0]})
    fig = captured(lambda: render_error_figure(SimpleNamespace(table=table, info={"command": "extract"}),
                                               Path("error.png")))["error"]
    assert any(t.startswith("no module holds a LoRA") for t in figure_texts(fig))


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_extract_dtype_stores_that_format_and_the_merge_holds_to_its_precision(pair, tmp_path, dtype):
    r = 2
    out = extract(pair.base, pair.ft, rank=r, dtype=dtype).save(tmp_path / dtype, plots=False)
    factors, dtypes = stored_factors(out)
    assert set(dtypes.values()) == {{"bf16": "torch.bfloat16", "fp16": "torch.float16", "fp32": "torch.float32"}[dtype]}
    table = pd.read_csv(out / "extract.csv").set_index("module")
    u = UNIT.get(dtype, 2.0**-24)
    for name, delta in deltas(pair).items():
        if name == ZERO:
            assert name not in factors
            continue
        b, a = factors[name]
        scale = float(table.loc[name, "scale"])
        best = truncation(delta, r)
        # rounding B and A (entries of relative error ≤ u each, after float32's) moves s·B·A by at most
        # (2u + u²)·s‖B‖_F‖A‖_F = (2u + u²)·Σσ_i ≤ (2u + u²)·√r·‖ΔW_r‖_F (balanced factors: ‖B‖² = ‖A‖² = Σσ/s)
        bound = (2 * u + u * u + 2**-22) * math.sqrt(r) * np.linalg.norm(best)
        assert np.linalg.norm(scale * b @ a - best) <= bound
        # the reported error is that of the stored (rounded) factors
        rel = np.linalg.norm(delta - scale * b @ a) / np.linalg.norm(delta)
        assert table.loc[name, "rel_error"] == pytest.approx(rel, rel=1e-9)
    assert json.loads((out / "run.json").read_text())["options"]["dtype"] == dtype


def test_extract_fp16_refuses_values_beyond_its_range(tmp_path):
    big = {module(0, "query"): np.ones((ROWS, COLS), np.float32)}
    ft = {module(0, "query"): np.zeros((ROWS, COLS), np.float32)}
    ft[module(0, "query")] += 1
    ft[module(0, "query")][0, 0] = 3.0e10  # rank 1, σ₁ = 3e10: B = A = √σ₁ = 1.7e5 > 65504, fp16's largest
    b = _write(tmp_path / "b", big, {})
    f = _write(tmp_path / "f", ft, {})
    result = runner_error(lambda: extract(b, f, rank=1, dtype="fp16"))
    assert "--dtype fp16" in result and "beyond the range" in result
    assert extract(b, f, rank=1, dtype="bf16").table["rel_error"].notna().all()  # bf16 has float32's range


def runner_error(call) -> str:
    from rankscope.errors import RankscopeError

    with pytest.raises(RankscopeError) as exc:
        call()
    return str(exc.value)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_resize_dtype_card_and_figure(pair, tmp_path, dtype):
    source = extract(pair.base, pair.ft, rank=4).save(tmp_path / "r4", plots=False)
    result = resize(source, rule="avg-rank:2", dtype=dtype)
    out = result.save(tmp_path / f"resized-{dtype}")
    assert {"README.md", "figures/error.png"} <= set(read_marker(out)["files"])
    card = (out / "README.md").read_text()
    assert str(source) in card and "avg-rank:2" in card and f"tensors stored as {dtype}" in card
    factors, dtypes = stored_factors(out)
    assert set(dtypes.values()) == {"torch.bfloat16" if dtype == "bf16" else "torch.float16"}
    old, _ = stored_factors(source)
    old_scale = json.loads((source / "adapter_config.json").read_text())["lora_alpha"] / 4
    table = result.table.set_index("module")
    u = UNIT[dtype]
    for name, (b, a) in factors.items():
        r = int(table.loc[name, "r_after"])
        update = old_scale * old[name][0] @ old[name][1]
        best = truncation(update, r)
        merged = float(table.loc[name, "scale_after"]) * b @ a
        assert np.linalg.norm(merged - best) <= (2 * u + u * u + 2**-22) * math.sqrt(r) * np.linalg.norm(best)
        rel = np.linalg.norm(update - merged) / np.linalg.norm(update)
        assert table.loc[name, "rel_error"] == pytest.approx(rel, rel=1e-7, abs=1e-12)


def test_resize_copied_modules_are_cast_and_their_error_is_that_of_the_cast(pair, tmp_path):
    source = extract(pair.base, pair.ft, rank=2).save(tmp_path / "r2", plots=False)
    result = resize(source, rule="avg-rank:2", dtype="bf16", max_rank=2)  # every module keeps rank 2: copied
    copied = result.table[result.table["action"] == "copied"]
    assert len(copied) > 0 and (copied["rel_error"] > 0).all() and (copied["rel_error"] < 2.0**-7).all()
    same = resize(source, rule="avg-rank:2", dtype="fp32", max_rank=2)  # float32 to float32: nothing changes
    assert (same.table.loc[same.table["action"] == "copied", "rel_error"] == 0).all()


def test_cli_extract_and_resize_take_dtype_and_no_plots_and_plot_redraws(pair, tmp_path):
    ad = tmp_path / "ad"
    assert cli("extract", str(pair.base), str(pair.ft), "--rank", "2", "--dtype", "bf16", "-q", "-o", str(ad)
               ).exit_code == 0
    assert (ad / "figures" / "error.png").is_file()
    assert "## Command\n\n```bash\nrankscope " in (ad / "README.md").read_text()  # argv (here pytest's)
    small = tmp_path / "small"
    assert cli("resize", str(ad), "--rule", "avg-rank:1", "--dtype", "fp16", "--no-plots", "-q", "-o", str(small)
               ).exit_code == 0
    assert not (small / "figures").exists() and (small / "README.md").is_file()
    assert cli("plot", str(small)).exit_code == 0
    assert (small / "figures" / "error.png").is_file() and "figures/error.png" in read_marker(small)["files"]
    bad = CliRunner().invoke(main, ["extract", str(pair.base), str(pair.ft), "--rank", "2", "--dtype", "fp8", "-o",
                                    str(tmp_path / "x")])
    assert bad.exit_code == 2 and "fp8" in bad.output


# --------------------------------------------------------------------------------------------------
# train: learning curves
# --------------------------------------------------------------------------------------------------


def test_learning_curves_of_classification_and_causal_lm_metrics():
    history = [{"step": 2, "epoch": 0.5, "validation_loss": 0.7, "validation_accuracy": 0.55},
               {"step": 4, "epoch": 1.0, "validation_loss": 0.6, "validation_accuracy": 0.70}]
    metrics = {"history": history, "train_loss_by_epoch": [0.65], "epochs_completed": 1.0, "best_step": 4,
               "weights": "best", "method": "lora", "task": "t", "steps": 4}
    fig = captured(lambda: render_learning_curves(metrics, Path("learning_curves.png")))["learning_curves"]
    loss, acc = fig.axes
    assert [list(line.get_ydata()) for line in loss.lines[:2]] == [[0.7, 0.6], [0.65]]
    assert list(acc.lines[0].get_ydata()) == pytest.approx([55.0, 70.0]) and acc.get_ylabel() == "validation accuracy (%)"
    assert "kept: step 4" in figure_texts(fig)
    lm = [{"step": 3, "epoch": 1.0, "validation_loss": 2.0, "validation_perplexity": math.exp(2.0)}]
    fig = captured(lambda: render_learning_curves({"history": lm}, Path("learning_curves.png")))["learning_curves"]
    assert fig.axes[1].get_yscale() == "log" and "perplexity" in fig.axes[1].get_ylabel()
    empty = captured(lambda: render_learning_curves({"history": []}, Path("learning_curves.png")))["learning_curves"]
    assert any(t.startswith("no evaluation was recorded") for t in figure_texts(empty))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> SimpleNamespace:
    from tiny_text import bert_folder, gpt2_folder, write_easy_csv

    root = tmp_path_factory.mktemp("tiny")
    return SimpleNamespace(bert=bert_folder(root / "bert"), gpt2=gpt2_folder(root / "gpt2"),
                           csv=write_easy_csv(root / "easy.csv"))


def test_train_writes_learning_curves_for_both_objectives(tiny_models, tmp_path):
    import torch

    from rankscope.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fast = {"epochs": 1, "batch_size": 16, "max_length": 16, "progress": False, "eval_every": 2}
        run = tmp_path / "cls"
        metrics = train(tiny_models.bert, "easy", "lora", run, data=tiny_models.csv, text_column="review",
                        label_column="sentiment", **fast)
        assert len(metrics["history"]) >= 2
        assert "figures/learning_curves.png" in read_marker(run)["files"]
        assert "figures/learning_curves.png" in metrics.info["outputs"]
        text = tmp_path / "lines.txt"
        text.write_text("\n".join(f"the movie was {w}" for w in ["good", "bad", "fine", "dull"] * 10))
        lm_run = tmp_path / "lm"
        train(tiny_models.gpt2, "lines", "full", lm_run, data=text, objective="causal-lm", **fast)
        assert (lm_run / "figures" / "learning_curves.png").stat().st_size > 10_000
        plain = tmp_path / "plain"
        train(tiny_models.bert, "easy", "lora", plain, data=tiny_models.csv, text_column="review",
              label_column="sentiment", plots=False, **fast)
        assert not (plain / "figures").exists()
        assert cli("plot", str(plain)).exit_code == 0 and (plain / "figures" / "learning_curves.png").is_file()
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# BASE and FINETUNED in the wrong order
# --------------------------------------------------------------------------------------------------


def test_swap_rule_unit_cases(tmp_path):
    b, f = tmp_path / "base", tmp_path / "ft"
    b.mkdir(), f.mkdir()
    hub = {"_name_or_path": "org/base-model"}
    # normal: the fine-tune names the base
    assert swap_warning(hub, {"_name_or_path": "org/base-model"}, "org/base-model", str(f), None, f) is None
    # swapped: BASE's config names FINETUNED (as given, as a folder, a Hub id in another case)
    assert swap_warning({"_name_or_path": str(f)}, {}, str(b), str(f), b, f).startswith(SWAP_WARNING)
    assert swap_warning({"_name_or_path": str(f) + "/"}, None, str(b), "ft-given-otherwise", b, f) is not None
    assert swap_warning({"_name_or_path": "Org/Base-Model"}, {}, "./local-ft", "org/base-model") is not None
    # not evidence: no field, an unrelated name, a name that fits both, two configs that name each other
    assert swap_warning({}, {"_name_or_path": str(b)}, str(b), str(f), b, f) is None
    assert swap_warning({"_name_or_path": "org/other"}, {}, str(b), str(f), b, f) is None
    assert swap_warning({"_name_or_path": str(f)}, {}, str(f), str(f), f, f) is None
    assert swap_warning({"_name_or_path": str(f)}, {"_name_or_path": str(b)}, str(b), str(f), b, f) is None
    assert swap_warning({"_name_or_path": "bad\x00name"}, {}, str(b), str(f), b, f) is None


def test_swap_warning_fires_on_the_swapped_pair_only(pair, tmp_path):
    """The fixture's fine-tune names the base's folder; given swapped, BASE (the fine-tune) names FINETUNED."""
    expected = (f"{SWAP_WARNING}: BASE's config.json _name_or_path is '{pair.base}', which is FINETUNED "
                f"({pair.base}); are the two swapped? ΔW = FINETUNED − BASE (give the original model first)")
    assert [w for w in spectrum(pair.ft, pair.base).info["warnings"] if w.startswith(SWAP_WARNING)] == [expected]
    assert not any(w.startswith(SWAP_WARNING) for w in spectrum(pair.base, pair.ft).info["warnings"])
    assert expected in extract(pair.ft, pair.base, rank=2).info["warnings"]
    normal = extract(pair.base, pair.ft, rank=2)
    assert not any(w.startswith(SWAP_WARNING) for w in normal.info["warnings"])
    adapter = normal.save(tmp_path / "ad", plots=False)
    runs = {"spectrum": ["spectrum", str(pair.ft), str(pair.base), "--no-plots"],
            "extract": ["extract", str(pair.ft), str(pair.base), "--rank", "2", "--no-plots"],
            "compare": ["compare", str(pair.ft), str(pair.base), str(adapter), "--no-plots"],
            "recommend": ["recommend", str(pair.ft), str(pair.base), "--rule", "energy:0.5", "--no-plots"]}
    for command, args in runs.items():
        result = CliRunner().invoke(main, [*args, "-q", "-o", str(tmp_path / command)])
        assert result.exit_code == 0, result.output
        lines = [line for line in result.output.splitlines() if line.startswith(f"Warning: {SWAP_WARNING}")]
        assert lines == [f"Warning: {expected}"], (command, result.output)
        assert expected in json.loads((tmp_path / command / "run.json").read_text())["warnings"]
    result = CliRunner().invoke(main, ["spectrum", str(pair.base), str(pair.ft), "--no-plots", "-q", "-o",
                                       str(tmp_path / "normal")])
    assert result.exit_code == 0 and SWAP_WARNING not in result.output

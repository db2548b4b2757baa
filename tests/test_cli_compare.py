"""``rankscope compare`` and ``rankscope compare-adapters`` through the CLI, checked against numpy.

Every input is built here in ``tmp_path``: a base / full fine-tune pair of float32 safetensors (two
layers, a square ``query`` and a non-square ``intermediate.dense``, so orientation matters) whose
ΔW has a known, decaying spectrum, and LoRA adapters (``adapter_model.safetensors`` +
``adapter_config.json``, ``ΔW = (α/r)·B·A``) whose factors lean on ΔW's top directions, so that
φ is neither 0 nor 1.  The commands run through click's ``CliRunner``; the reference values
come from numpy's SVD of the matrices read back from the files, never from rankscope.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from rankscope.cli import main
from rankscope.io.results import MARKER, read_marker
from rankscope.version import __version__

HIDDEN, INTERMEDIATE = 16, 24
SHAPES = {f"encoder.layer.{i}.{m}": shape for i in range(2)
          for m, shape in (("attention.self.query", (HIDDEN, HIDDEN)), ("intermediate.dense", (INTERMEDIATE, HIDDEN)))}
"""Module → ``(out, in)`` of its weight."""
MODULES = sorted(SHAPES)
COMPARE_COLUMNS = [
    "module", "layer", "kind", "rows", "cols", "r", "full_norm", "lora_norm", "norm_ratio", "cosine",
    "energy_optimal", "energy_col", "energy_row", "energy_both", "energy_vs_optimal", "phi_left_1", "phi_left_r",
    "phi_right_1", "phi_right_r", "phi_random_left_r", "phi_random_right_r", "angle_left_min_deg",
    "angle_left_max_deg", "angle_right_min_deg", "angle_right_max_deg", "intruders_full", "intruders_lora",
    "amp_full_r", "amp_lora_r", "amp_full_1", "amp_lora_1"]
ADAPTERS_COLUMNS = ["module", "layer", "kind", "rows", "cols", "r_1", "r_2", "phi_A_1", "phi_A_min_r", "phi_B_1",
                    "phi_B_min_r", "phi_random_A", "phi_random_B", "cosine_BA"]


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((n, k)))[0]


def planted_delta(rng: np.random.Generator, shape: tuple[int, int], top: float, decay: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``U diag(s) Vᵀ`` with ``s_i = top·decay^i`` and random orthonormal ``U``, ``V``: a clear top, a long tail."""
    k = min(shape)
    u, v = orthonormal(rng, shape[0], k), orthonormal(rng, shape[1], k)
    s = top * decay ** np.arange(k)
    return (u * s) @ v.T, u, v


def make_pair(root: Path) -> tuple[Path, Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Base and fine-tune folders; returns them and each module's top singular vectors of the planted ΔW."""
    rng = np.random.default_rng(0)
    base, ft, directions = {}, {}, {}
    for n, (module, shape) in enumerate(SHAPES.items()):
        w = rng.standard_normal(shape).astype(np.float32)
        # layer 0: a small update (~1 %); layer 1: one as large as W's own top, which brings intruders
        delta, u, v = planted_delta(rng, shape, top=0.05 if ".0." in module else 12.0, decay=0.5 + 0.05 * n)
        base[f"{module}.weight"] = w
        ft[f"{module}.weight"] = (w + delta).astype(np.float32)
        directions[module] = (u, v)
    folders = []
    for name, tensors in (("base", base), ("ft", ft)):
        folder = root / name
        folder.mkdir(parents=True)
        save_file(tensors, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
        folders.append(folder)
    return folders[0], folders[1], directions


def make_adapter(folder: Path, directions: dict[str, tuple[np.ndarray, np.ndarray]], r: int, seed: int,
                 prefix: str = "base_model.model.") -> Path:
    """A LoRA adapter whose ``B``/``A`` mix ΔW's top directions with noise (φ strictly between 0 and 1)."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for module, (u, v) in directions.items():
        out, inp = SHAPES[module]
        weight = 0.7 ** np.arange(r)  # ΔW_lora ≈ Σ_i 0.49^i u_i v_iᵀ: ΔW's order of directions, blurred
        b = u[:, :r] * weight + 0.4 * rng.standard_normal((out, r)) / np.sqrt(out)
        a = (v[:, :r] * weight).T + 0.4 * rng.standard_normal((r, inp)) / np.sqrt(inp)
        tensors[f"{prefix}{module}.lora_B.weight"] = (0.1 * b).astype(np.float32)
        tensors[f"{prefix}{module}.lora_A.weight"] = (0.1 * a).astype(np.float32)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["query", "dense"]}))
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    base, ft, directions = make_pair(root)
    return {"base": base, "ft": ft,
            "adapter": make_adapter(root / "lora-r2", directions, r=2, seed=1),
            "adapter_r4": make_adapter(root / "lora-r4", directions, r=4, seed=2, prefix="base_model.model.bert.")}


def invoke(*args: object) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


# --------------------------------------------------------------------------------------------
# the independent reference
# --------------------------------------------------------------------------------------------


def weights(folder: Path) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) for k, v in load_file(str(folder / "model.safetensors")).items()}


def lora_factors(adapter: Path) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """``module → (B, A, scale)`` read with safetensors, the module named without peft's prefix."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    out = {}
    for module in MODULES:
        (a_name,) = [k for k in tensors if k.endswith(f"{module}.lora_A.weight")]
        b_name = a_name.replace("lora_A", "lora_B")
        out[module] = (tensors[b_name].astype(np.float64), tensors[a_name].astype(np.float64),
                       config["lora_alpha"] / config["r"])
    return out


def phi_reference(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """``φ(i, j) = ‖U1^(i)ᵀ U2^(j)‖_F² / min(i, j)``, entry by entry."""
    grid = np.empty((u1.shape[1], u2.shape[1]))
    for i in range(1, u1.shape[1] + 1):
        for j in range(1, u2.shape[1] + 1):
            grid[i - 1, j - 1] = np.linalg.norm(u1[:, :i].T @ u2[:, :j]) ** 2 / min(i, j)
    return grid


def row_of(table: pd.DataFrame, module: str) -> pd.Series:
    (index,) = np.flatnonzero(table["module"] == module)
    return table.iloc[index]


def assert_marker(out: Path, command: str) -> dict:
    """The run.json marker names the command, this version and exactly the files in the folder."""
    info = json.loads((out / "run.json").read_text())
    marker = read_marker(out)
    assert marker is not None and info[MARKER] == marker
    assert marker["tool"] == "rankscope" and marker["command"] == command and marker["version"] == __version__
    present = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert marker["files"] == present
    assert info["command"] == command
    return info


# --------------------------------------------------------------------------------------------
# rankscope compare
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compared(inputs, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("compare") / "out"
    text = invoke("compare", inputs["base"], inputs["ft"], inputs["adapter"], "-o", out)
    return out, text


def test_compare_writes_its_files_and_marker(compared):
    out, text = compared
    assert sorted(p.name for p in out.iterdir()) == ["amplification.csv", "compare.csv", "figures", "intruders.csv",
                                                     "phi.npz", "run.json", "summary.json"]
    info = assert_marker(out, "compare")
    figures = {"energy.png", "phi_diagonal.png", "intruders.png",
               "phi_encoder.layer.0.attention.self.query.png", "phi_encoder.layer.1.attention.self.query.png",
               "phi_encoder.layer.0.intermediate.dense.png", "phi_encoder.layer.1.intermediate.dense.png"}
    assert {p.name for p in (out / "figures").iterdir()} == figures
    assert set(info["outputs"]["figures"]) == figures
    assert all((out / "figures" / f).stat().st_size > 5000 for f in figures)
    assert info["options"] == {"include": [], "phi_max": 64, "k": 10, "epsilon": 0.5, "phi_modules": None,
                               "epsilons": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]}
    assert info["inputs"]["adapter"] and info["inputs"]["base"]["resolved"].endswith("base")
    assert "energy_optimal" in text and text.rstrip().endswith(f"wrote {out}/")  # the summary, then the ending


def test_compare_table_matches_numpy(compared, inputs):
    out, _ = compared
    table = pd.read_csv(out / "compare.csv")
    assert list(table.columns) == COMPARE_COLUMNS
    assert sorted(table["module"]) == MODULES
    base, ft = weights(inputs["base"]), weights(inputs["ft"])
    factors = lora_factors(inputs["adapter"])
    for module in MODULES:
        row = row_of(table, module)
        w = base[f"{module}.weight"]
        delta_full = ft[f"{module}.weight"] - w
        b, a, scale = factors[module]
        delta_lora = scale * b @ a
        r = 2
        assert (row["rows"], row["cols"], row["r"]) == (*SHAPES[module], r)
        assert row["layer"] == int(module.split(".")[2])
        assert row["kind"] == module.rsplit(".", 1)[1]  # the shortest suffix that tells the kinds apart

        u_f, s_f, vt_f = np.linalg.svd(delta_full)
        u_l, _, vt_l = np.linalg.svd(delta_lora)
        u_l, v_l = u_l[:, :r], vt_l[:r].T
        energy = s_f**2
        tol = {"rel": 1e-9, "abs": 1e-12}
        assert row["energy_optimal"] == pytest.approx(energy[:r].sum() / energy.sum(), **tol)  # Eckart–Young
        total = np.linalg.norm(delta_full) ** 2
        assert row["energy_both"] == pytest.approx(np.linalg.norm(u_l.T @ delta_full @ v_l) ** 2 / total, **tol)
        assert row["energy_col"] == pytest.approx(np.linalg.norm(u_l.T @ delta_full) ** 2 / total, **tol)
        assert row["energy_row"] == pytest.approx(np.linalg.norm(delta_full @ v_l) ** 2 / total, **tol)
        assert row["energy_both"] <= row["energy_optimal"] + 1e-12  # Ky Fan: no rank-r basis beats the optimum
        assert row["cosine"] == pytest.approx(
            np.sum(delta_full * delta_lora) / (np.linalg.norm(delta_full) * np.linalg.norm(delta_lora)), **tol)
        assert row["full_norm"] == pytest.approx(np.linalg.norm(delta_full), **tol)
        assert row["norm_ratio"] == pytest.approx(np.linalg.norm(delta_lora) / np.linalg.norm(delta_full), **tol)
        assert row["phi_left_1"] == pytest.approx(float(u_f[:, 0] @ u_l[:, 0]) ** 2, **tol)
        assert row["phi_right_1"] == pytest.approx(float(vt_f[0] @ v_l[:, 0]) ** 2, **tol)
        assert row["phi_left_r"] == pytest.approx(np.linalg.norm(u_f[:, :r].T @ u_l) ** 2 / r, **tol)
        assert 0.05 < row["phi_left_1"] < 0.999 and 0.05 < row["phi_right_1"] < 0.999  # neither trivial case
        assert row["phi_random_left_r"] == pytest.approx(r / SHAPES[module][0])
        amp = np.linalg.norm(delta_full) / np.linalg.norm(u_f[:, :r].T @ w @ vt_f[:r].T)
        assert row["amp_full_r"] == pytest.approx(amp, rel=1e-9)
        amp = np.linalg.norm(delta_lora) / np.linalg.norm(u_l.T @ w @ v_l)
        assert row["amp_lora_r"] == pytest.approx(amp, rel=1e-9)
        u_base = np.linalg.svd(w, full_matrices=False)[0]
        for column, tuned in (("intruders_full", w + delta_full), ("intruders_lora", w + delta_lora)):
            top = np.linalg.svd(tuned, full_matrices=False)[0][:, :10]  # --k 10, --epsilon 0.5
            assert row[column] == int(np.sum(np.max(np.abs(u_base.T @ top), axis=0) < 0.5)), column
    assert table["intruders_full"].sum() > 0  # the large layer-1 updates bring intruders: the check is not 0 == 0


def test_compare_phi_grids_match_numpy(compared, inputs):
    out, _ = compared
    base, ft = weights(inputs["base"]), weights(inputs["ft"])
    factors = lora_factors(inputs["adapter"])
    with np.load(out / "phi.npz") as phi:
        assert sorted(phi.files) == sorted(f"{m}:{side}" for m in MODULES for side in ("left", "right"))
        for module in MODULES:
            delta_full = ft[f"{module}.weight"] - base[f"{module}.weight"]
            b, a, scale = factors[module]
            u_f, _, vt_f = np.linalg.svd(delta_full, full_matrices=False)
            u_l, _, vt_l = np.linalg.svd(scale * b @ a, full_matrices=False)
            left, right = phi[f"{module}:left"], phi[f"{module}:right"]
            assert left.shape == right.shape == (min(SHAPES[module]), 2)  # i ≤ min(phi_max, min(m, n)), j ≤ r
            np.testing.assert_allclose(left, phi_reference(u_f, u_l[:, :2]), atol=1e-10)
            np.testing.assert_allclose(right, phi_reference(vt_f.T, vt_l[:2].T), atol=1e-10)


def test_compare_no_plots_writes_the_same_tables_without_figures(compared, inputs, tmp_path):
    out = tmp_path / "quiet"
    text = invoke("compare", inputs["base"], inputs["ft"], inputs["adapter"], "-o", out, "--no-plots", "-q")
    assert text == ""
    assert sorted(p.name for p in out.iterdir()) == ["amplification.csv", "compare.csv", "intruders.csv", "phi.npz",
                                                     "run.json", "summary.json"]
    info = assert_marker(out, "compare")
    assert "figures" not in info.get("outputs", {})
    with_plots, _ = compared
    numbers = [c for c in COMPARE_COLUMNS if c not in ("module", "kind")]
    pd.testing.assert_frame_equal(pd.read_csv(out / "compare.csv")[numbers],
                                  pd.read_csv(with_plots / "compare.csv")[numbers], rtol=1e-12)


def test_compare_options_reach_the_result(inputs, tmp_path):
    out = tmp_path / "opts"
    invoke("compare", inputs["base"], inputs["ft"], inputs["adapter"], "-o", out, "--phi-max", "3", "--k", "4",
           "--include", "query", "--phi-modules", "layer\\.1\\.", "-q")
    table = pd.read_csv(out / "compare.csv")
    assert sorted(table["module"]) == [m for m in MODULES if m.endswith("query")]
    with np.load(out / "phi.npz") as phi:
        assert {phi[k].shape for k in phi.files} == {(3, 2)}
    info = json.loads((out / "run.json").read_text())
    assert (info["options"]["phi_max"], info["options"]["k"], info["options"]["phi_modules"]) == (3, 4, "layer\\.1\\.")
    assert "phi_encoder.layer.1.attention.self.query.png" in info["outputs"]["figures"]
    assert "phi_encoder.layer.0.attention.self.query.png" not in info["outputs"]["figures"]


# --------------------------------------------------------------------------------------------
# rankscope compare-adapters
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plots", [True, False], ids=["figures", "no-plots"])
def test_compare_adapters_matches_numpy(inputs, tmp_path, plots):
    out = tmp_path / "adapters"
    text = invoke("compare-adapters", inputs["adapter"], inputs["adapter_r4"], "-o", out,
                  *([] if plots else ["--no-plots"]))
    expected = ["compare.csv", "phi.npz", "run.json", "summary.json", *(["figures"] if plots else [])]
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    info = assert_marker(out, "compare-adapters")
    if plots:
        assert [p.name for p in (out / "figures").iterdir()] == ["phi_adapters.png"] == info["outputs"]["figures"]
        assert (out / "figures" / "phi_adapters.png").stat().st_size > 5000
    assert "phi_A_1" in text and text.rstrip().endswith(f"wrote {out}/")
    # the second adapter was made for a model with a `bert.` prefix: modules are aligned without it
    assert info["alignment"]["prefix_1"] == "" and info["alignment"]["prefix_2"] == "bert."
    table = pd.read_csv(out / "compare.csv")
    assert list(table.columns) == ADAPTERS_COLUMNS
    assert sorted(table["module"]) == MODULES
    one, two = lora_factors(inputs["adapter"]), lora_factors(inputs["adapter_r4"])
    with np.load(out / "phi.npz") as phi:
        assert sorted(phi.files) == sorted(f"{m}:{side}" for m in MODULES for side in ("A", "B"))
        for module in MODULES:
            (b1, a1, s1), (b2, a2, s2) = one[module], two[module]
            v1, v2 = np.linalg.svd(a1, full_matrices=False)[2].T, np.linalg.svd(a2, full_matrices=False)[2].T
            u1, u2 = np.linalg.svd(b1, full_matrices=False)[0], np.linalg.svd(b2, full_matrices=False)[0]
            grid_a, grid_b = phi_reference(v1, v2), phi_reference(u1, u2)
            assert phi[f"{module}:A"].shape == phi[f"{module}:B"].shape == (2, 4)
            np.testing.assert_allclose(phi[f"{module}:A"], grid_a, atol=1e-10)
            np.testing.assert_allclose(phi[f"{module}:B"], grid_b, atol=1e-10)
            row = row_of(table, module)
            assert (row["r_1"], row["r_2"], row["rows"], row["cols"]) == (2, 4, *SHAPES[module])
            assert row["phi_A_1"] == pytest.approx(float(v1[:, 0] @ v2[:, 0]) ** 2, rel=1e-9, abs=1e-12)
            assert row["phi_B_1"] == pytest.approx(float(u1[:, 0] @ u2[:, 0]) ** 2, rel=1e-9, abs=1e-12)
            assert row["phi_A_min_r"] == pytest.approx(np.linalg.norm(v1.T @ v2[:, :2]) ** 2 / 2, rel=1e-9)
            assert row["phi_B_min_r"] == pytest.approx(np.linalg.norm(u1.T @ u2[:, :2]) ** 2 / 2, rel=1e-9)
            assert row["phi_random_A"] == pytest.approx(4 / SHAPES[module][1])
            assert row["phi_random_B"] == pytest.approx(4 / SHAPES[module][0])
            d1, d2 = s1 * b1 @ a1, s2 * b2 @ a2
            assert row["cosine_BA"] == pytest.approx(np.sum(d1 * d2) / (np.linalg.norm(d1) * np.linalg.norm(d2)),
                                                     rel=1e-9)
            assert 0.05 < row["phi_A_min_r"] < 0.999  # the adapters share ΔW's top directions, but not exactly


def test_compare_adapters_of_one_adapter_with_itself_is_one(inputs, tmp_path):
    out = tmp_path / "self"
    invoke("compare-adapters", inputs["adapter"], inputs["adapter"], "-o", out, "--no-plots", "-q")
    table = pd.read_csv(out / "compare.csv")
    for column in ("phi_A_1", "phi_A_min_r", "phi_B_1", "phi_B_min_r", "cosine_BA"):
        np.testing.assert_allclose(table[column], 1.0, atol=1e-10)

"""MoE experts (per-expert 2-D, fused 3-D in both orientations) and quantized bases (FP8 block-scaled, MXFP4).

Every pair is written here as raw safetensors bytes; the reference dequantizes with torch's own FP8 dtypes
(``torch.float8_e4m3fn``) or an independent MXFP4 decoder written from the OCP MX specification, forms each
expert's ΔW in float64 and takes LAPACK ``svdvals``.  rankscope must match it to 1e-6·σ₁, per expert, with
names, the ``expert`` column, shared kinds and per-layer aggregation.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from click.testing import CliRunner

from rankscope.cli import main as cli_main
from rankscope.io.checkpoints import open_checkpoint
from rankscope.io.quantized import FP8_TABLES
from rankscope.pairing.align import align
from rankscope.spectrum import SpectrumResult, spectrum

TOL = 1e-6


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> None:
    """A safetensors file from ``{name: (dtype, shape, raw little-endian bytes)}`` (any dtype, FP8 included)."""
    header, offset, blobs = {}, 0, []
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def bf16_bytes(x: np.ndarray) -> tuple[bytes, np.ndarray]:
    """bfloat16 bytes of ``x`` (round to nearest even, via torch) and the float64 values they hold."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().tobytes(), t.to(torch.float64).numpy()


def f32(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x, dtype="<f4").tobytes()


def planted(rng: np.random.Generator, rows: int, cols: int, rank: int, scale: float = 0.05) -> np.ndarray:
    u, _ = np.linalg.qr(rng.standard_normal((rows, rank)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, rank)))
    return (u * (scale / np.arange(1, rank + 1))) @ v.T


def reference_sigma(delta: np.ndarray) -> np.ndarray:
    return scipy.linalg.svdvals(delta)


def assert_spectra(result: SpectrumResult, expected: dict[str, np.ndarray]) -> None:
    assert set(expected) <= set(result.spectra), sorted(set(expected) - set(result.spectra))[:5]
    for module, ref in expected.items():
        got = result.spectra[module]
        assert got.shape == ref.shape, module
        assert np.max(np.abs(got - ref)) <= TOL * ref[0], module


# --------------------------------------------------------------------------------------------------
# MoE layouts
# --------------------------------------------------------------------------------------------------

E, HID, INTER, LAYERS = 4, 24, 16, 2


def moe_pair(tmp: Path, layout: str) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A 2-layer MoE pair in ``layout`` (``per-expert``, ``fused-out-in``, ``fused-in-out``) with references."""
    rng = np.random.default_rng(7)
    model_type = {"per-expert": "qwen3_moe", "fused-out-in": "mixtral", "fused-in-out": "gpt_oss"}[layout]
    config = {"model_type": model_type, "hidden_size": HID, "architectures": ["X"]}
    base, ft, ref = {}, {}, {}
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        w = rng.standard_normal((HID, HID)) * 0.02
        d = planted(rng, HID, HID, 3)
        for side, value in ((base, w), (ft, w + d)):
            side[p + "self_attn.q_proj.weight"] = ("F32", (HID, HID), f32(value))
        ref[f"model.layers.{layer}.self_attn.q_proj"] = reference_sigma(
            np.float32(w + d).astype(np.float64) - np.float32(w).astype(np.float64))
        router = rng.standard_normal((E, HID)) * 0.02
        for side in (base, ft):
            side[p + "mlp.gate.weight"] = ("F32", (E, HID), f32(router))
        for proj, (out, inp) in (("gate_up_proj", (2 * INTER, HID)), ("down_proj", (HID, INTER))):
            ws = rng.standard_normal((E, out, inp)) * 0.02
            ds = np.stack([planted(rng, out, inp, 2 + e % 6) for e in range(E)])
            for e in range(E):
                exact = np.float32(ws[e] + ds[e]).astype(np.float64) - np.float32(ws[e]).astype(np.float64)
                ref[f"model.layers.{layer}.mlp.experts.{e}.{proj}"] = reference_sigma(exact)
            if layout == "per-expert":
                for e in range(E):
                    for side, value in ((base, ws[e]), (ft, ws[e] + ds[e])):
                        side[f"{p}mlp.experts.{e}.{proj}.weight"] = ("F32", (out, inp), f32(value))
            else:
                stored = (lambda a: a) if layout == "fused-out-in" else (lambda a: a.transpose(0, 2, 1))
                for side, value in ((base, ws), (ft, ws + ds)):
                    v = stored(value)
                    side[f"{p}mlp.experts.{proj}"] = ("F32", v.shape, f32(v))
                bias = rng.standard_normal((E, out)) * 0.01
                for side, value in ((base, bias), (ft, bias + 0.001)):
                    side[f"{p}mlp.experts.{proj}_bias"] = ("F32", (E, out), f32(value))
    folders = []
    for name, tensors in (("base", base), ("ft", ft)):
        folder = tmp / f"{layout}-{name}"
        write_safetensors(folder / "model.safetensors", tensors)
        (folder / "config.json").write_text(json.dumps(config))
        folders.append(folder)
    return folders[0], folders[1], ref


@pytest.mark.parametrize("layout", ["per-expert", "fused-out-in", "fused-in-out"])
def test_moe_spectra_per_expert(tmp_path: Path, layout: str) -> None:
    base, ft, ref = moe_pair(tmp_path, layout)
    result = spectrum(base, ft)
    assert_spectra(result, ref)
    t = result.table.set_index("module")
    experts = t.loc[[m for m in t.index if ".experts." in m]]
    assert len(experts) == LAYERS * 2 * E
    assert sorted(experts["expert"].dropna().astype(int).unique()) == list(range(E))
    assert set(experts["kind"]) == {"gate_up_proj", "down_proj"}  # shared by the experts of a layer
    gate_up = t.loc["model.layers.0.mlp.experts.3.gate_up_proj"]
    assert (gate_up["rows"], gate_up["cols"]) == (2 * INTER, HID)  # oriented out x in in every layout
    assert pd_isna(t.loc["model.layers.0.self_attn.q_proj", "expert"])
    if layout != "per-expert":  # the fused biases are vectors, not E x out matrices
        assert "model.layers.0.mlp.experts.gate_up_proj_bias" in set(result.vectors["module"])
    line = next(x for x in result.summary_text().splitlines() if x.startswith("gate_up_proj"))
    assert line.split()[1] == str(LAYERS * E)  # one summary line per kind, over every layer and expert


def pd_isna(value: object) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def test_moe_result_round_trip_and_figures(tmp_path: Path) -> None:
    base, ft, ref = moe_pair(tmp_path, "fused-in-out")
    out = tmp_path / "out"
    run = CliRunner().invoke(cli_main, ["spectrum", str(base), str(ft), "-o", str(out), "-q"])
    assert run.exit_code == 0, run.output
    loaded = SpectrumResult.load(out)
    assert str(loaded.table["expert"].dtype) == "Int64"
    assert_spectra(loaded, ref)
    for name in ("heatmaps.png", "spectra.png", "rank_by_layer.png"):
        assert (out / "figures" / name).stat().st_size > 1000


def test_fused_orientation_unknown_is_a_reported_skip(tmp_path: Path) -> None:
    base, ft, _ = moe_pair(tmp_path, "fused-out-in")
    for folder in (base, ft):
        (folder / "config.json").write_text(json.dumps({"model_type": "somemoe", "hidden_size": 5}))
    with open_checkpoint(base) as b, open_checkpoint(ft) as f:
        alignment = align(b, f)
    reasons = {s["tensor"]: s["reason"] for s in alignment.skipped_tensors}
    assert "orientation" in reasons["model.layers.0.mlp.experts.gate_up_proj"]
    assert not any(p.expert is not None and p.fused for p in alignment.pairs)


def test_fused_orientation_from_hidden_size(tmp_path: Path) -> None:
    base, ft, ref = moe_pair(tmp_path, "fused-in-out")
    for folder in (base, ft):
        (folder / "config.json").write_text(json.dumps({"model_type": "newmoe", "hidden_size": HID}))
    assert_spectra(spectrum(base, ft), ref)


# --------------------------------------------------------------------------------------------------
# FP8 block-scaled and MXFP4 bases
# --------------------------------------------------------------------------------------------------


def test_fp8_tables_match_torch() -> None:
    codes = np.arange(256, dtype=np.uint8)
    for name, dtype in (("F8_E4M3", torch.float8_e4m3fn), ("F8_E5M2", torch.float8_e5m2)):
        want = torch.from_numpy(codes).view(dtype).to(torch.float64).numpy()
        got = FP8_TABLES[name]
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.array_equal(got[~np.isnan(got)], want[~np.isnan(want)])
    assert FP8_TABLES["F8_E4M3"][0x7E] == 448.0 and FP8_TABLES["F8_E4M3"][0x38] == 1.0


def fp8_pair(tmp: Path, block: tuple[int, int] = (128, 128), rows: int = 300, cols: int = 200,
             config_block: bool = True) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """An FP8 block-scaled base (partial edge blocks) and a bf16 fine-tune of it."""
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, size=(rows, cols), dtype=np.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0x30  # no NaN codes
    scale_shape = (-(-rows // block[0]), -(-cols // block[1]))
    scales = rng.uniform(1e-4, 3e-3, size=scale_shape).astype(np.float32)
    deq = torch.from_numpy(codes).view(torch.float8_e4m3fn).to(torch.float64).numpy()
    deq = deq * np.repeat(np.repeat(scales.astype(np.float64), block[0], 0), block[1], 1)[:rows, :cols]
    raw, ft_values = bf16_bytes(deq + planted(rng, rows, cols, 5, scale=0.2))
    base_t = {"model.layers.0.mlp.down_proj.weight": ("F8_E4M3", (rows, cols), codes.tobytes()),
              "model.layers.0.mlp.down_proj.weight_scale_inv": ("F32", scale_shape, f32(scales)),
              "model.norm.weight": ("F32", (cols,), f32(np.ones(cols)))}
    ft_t = {"model.layers.0.mlp.down_proj.weight": ("BF16", (rows, cols), raw),
            "model.norm.weight": ("F32", (cols,), f32(np.ones(cols)))}
    config = {"model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"]}
    if config_block:
        config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": list(block)}
    folders = []
    for name, tensors in (("base", base_t), ("ft", ft_t)):
        folder = tmp / f"fp8-{name}"
        write_safetensors(folder / "model.safetensors", tensors)
        (folder / "config.json").write_text(json.dumps(config))
        folders.append(folder)
    return folders[0], folders[1], {"model.layers.0.mlp.down_proj": reference_sigma(ft_values - deq)}


@pytest.mark.parametrize("block", [(128, 128), (64, 32)])
def test_fp8_block_scaled_base_against_bf16_finetune(tmp_path: Path, block: tuple[int, int]) -> None:
    base, ft, ref = fp8_pair(tmp_path, block)
    result = spectrum(base, ft)
    assert_spectra(result, ref)
    assert result.table.set_index("module").loc["model.layers.0.mlp.down_proj", "dtype"] == "F8_E4M3"
    assert not any("scale_inv" in s["tensor"] for s in result.info["skipped_tensors"])  # consumed, not skipped
    assert result.info["inputs"]["base"]["dequantized"] == {"fp8-block": 1}


def test_fp8_scale_of_wrong_shape_stays_a_skip(tmp_path: Path) -> None:
    base, ft, _ = fp8_pair(tmp_path, (128, 128), config_block=False, rows=300, cols=200)
    with open_checkpoint(base) as b:
        assert b.tensors["model.layers.0.mlp.down_proj.weight"].quant is not None  # default 128 x 128 fits
    cfg = json.loads((base / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [64, 64]}  # lies about the blocks
    (base / "config.json").write_text(json.dumps(cfg))
    with open_checkpoint(base) as b, open_checkpoint(ft) as f:
        alignment = align(b, f)
    assert not any(p.module == "model.layers.0.mlp.down_proj" for p in alignment.pairs)
    assert any(s["tensor"] == "model.layers.0.mlp.down_proj.weight" for s in alignment.skipped_tensors)


FP4 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def mxfp4_reference(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """OCP MX v1.0 decoding written independently: element k of block g of row r, per byte low nibble first."""
    experts, rows, groups, _ = blocks.shape
    out = np.zeros((experts, rows, groups * 32))
    for k in range(32):
        nibble = (blocks[..., k // 2] >> (4 * (k % 2))) & 0xF
        magnitude = np.array(FP4)[nibble & 0x7]
        sign = np.where(nibble & 0x8, -1.0, 1.0)
        out[..., k::32] = sign * magnitude * 2.0 ** (scales.astype(np.float64) - 127)
    return out.transpose(0, 2, 1)  # [E, in, out], the bf16 gpt-oss layout


def test_mxfp4_base_against_bf16_finetune(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    experts, rows, groups = 3, 40, 2  # each expert: out = 40, in = 64
    blocks = rng.integers(0, 256, size=(experts, rows, groups, 16), dtype=np.uint8)
    scales = rng.integers(118, 124, size=(experts, rows, groups), dtype=np.uint8)
    deq = mxfp4_reference(blocks, scales)
    deltas = np.stack([planted(rng, groups * 32, rows, 4, scale=0.05) for _ in range(experts)])
    raw, ft_values = bf16_bytes(deq + deltas)
    base_t = {"model.layers.0.mlp.experts.gate_up_proj_blocks": ("U8", blocks.shape, blocks.tobytes()),
              "model.layers.0.mlp.experts.gate_up_proj_scales": ("U8", scales.shape, scales.tobytes())}
    ft_t = {"model.layers.0.mlp.experts.gate_up_proj": ("BF16", deq.shape, raw)}
    config = {"model_type": "gpt_oss", "hidden_size": groups * 32, "quantization_config": {"quant_method": "mxfp4"}}
    for name, tensors in (("base", base_t), ("ft", ft_t)):
        write_safetensors(tmp_path / name / "model.safetensors", tensors)
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    result = spectrum(tmp_path / "base", tmp_path / "ft")
    ref = {f"model.layers.0.mlp.experts.{e}.gate_up_proj": reference_sigma((ft_values[e] - deq[e]).T)
           for e in range(experts)}
    assert_spectra(result, ref)
    t = result.table.set_index("module")
    assert (t.loc["model.layers.0.mlp.experts.0.gate_up_proj", "rows"], t.iloc[0]["cols"]) == (rows, groups * 32)
    assert result.info["inputs"]["base"]["dequantized"] == {"mxfp4": 1}


def test_tied_head_is_analysed_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    emb = rng.standard_normal((50, 16)).astype(np.float32)
    d = planted(rng, 50, 16, 2).astype(np.float32)
    for name, value in (("base", emb), ("ft", emb + d)):
        write_safetensors(tmp_path / name / "model.safetensors", {
            "model.embed_tokens.weight": ("F32", (50, 16), f32(value)),
            "lm_head.weight": ("F32", (50, 16), f32(value)),
            "model.layers.0.mlp.up_proj.weight": ("F32", (16, 16), f32(value[:16]))})
    result = spectrum(tmp_path / "base", tmp_path / "ft")
    modules = set(result.table["module"])
    assert "model.embed_tokens" in modules and "lm_head" not in modules
    tied = [s for s in result.info["skipped_tensors"] if s["tensor"] == "lm_head.weight"]
    assert tied and "tied to 'model.embed_tokens'" in tied[0]["reason"]
    # an untied head (different values) is analysed on its own
    for name, value in (("base", emb), ("ft", emb + d)):
        write_safetensors(tmp_path / name / "model.safetensors", {
            "model.embed_tokens.weight": ("F32", (50, 16), f32(value)),
            "lm_head.weight": ("F32", (50, 16), f32(value * 2)),
            "model.layers.0.mlp.up_proj.weight": ("F32", (16, 16), f32(value[:16]))})
    assert "lm_head" in set(spectrum(tmp_path / "base", tmp_path / "ft").table["module"])


def test_recommend_on_experts(tmp_path: Path) -> None:
    from rankscope.ranks import recommend

    base, ft, _ = moe_pair(tmp_path, "per-expert")
    plan = recommend(base, ft, rule="energy:0.9")
    experts = plan.table[plan.table["module"].str.contains(".experts.")]
    assert len(experts) == LAYERS * 2 * E and set(experts["expert"].astype(int)) == set(range(E))
    # fused 3-D experts have no nn.Linear to adapt: left out of the LoRA config, and said so
    base, ft, _ = moe_pair(tmp_path, "fused-out-in")
    plan = recommend(base, ft, rule="energy:0.9")
    assert not plan.table["module"].str.contains(".experts.").any()
    assert any("fused 3-D expert" in w for w in plan.info["warnings"])


@pytest.mark.parametrize("layout", ["per-expert", "fused-in-out"])
def test_extract_on_experts(tmp_path: Path, layout: str) -> None:
    from rankscope.extract import extract

    base, ft, ref = moe_pair(tmp_path, layout)
    result = extract(base, ft, rank=2)
    t = result.table.set_index("module")
    module = "model.layers.1.mlp.experts.2.down_proj"
    if layout == "per-expert":  # a LoRA per expert Linear, equal to the best rank-2 approximation
        assert t.loc[module, "method"] != "skipped"
        sigma = ref[module]
        optimum = np.sqrt(np.sum(sigma[2:] ** 2) / np.sum(sigma ** 2))
        assert abs(t.loc[module, "rel_error"] - optimum) <= 1e-6
    else:
        assert t.loc[module, "method"] == "skipped"

"""Malformed or hostile input: crafted headers, skipped tensors, non-finite LoRA factors, bad patterns, wrongly
typed config and result files, and pickles with code in them.

The contract is the one of ``test_bad_input.py``: exit status 2, exactly one non-empty stderr line
``Error: <message>`` naming the file, tensor, option or field at fault, no traceback, and nothing
written (no ``OUT``, no ``.OUT.partial-*``).  On top of it: a few hundred bytes of crafted
safetensors header fail in well under a second (no big buffer, no eigen-solver on a phantom
matrix); every file the reference implementation (the ``safetensors`` package, whose Rust core
is ``safetensors/src/tensor.rs``) refuses is refused too; tensors rankscope does not analyse are
listed in ``run.json`` under ``skipped_tensors``; and a pickle that would run ``touch PWNED``
never does.  Every input is built here in ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from test_bad_input import (
    BERT_MATRICES,
    DIM,
    QUERY0,
    check_failure,
    error_line,
    finetune,
    invoke,
    leftovers,
    raw_safetensors,
    run_subprocess,
    save_folder,
    spectrum_args,
    valid_pair,
    weights,
)

QUERY1 = BERT_MATRICES[1]
NBYTES = DIM * DIM * 4  # one float32 DIM x DIM tensor
FAST_S = 3.0  # a crafted header must be refused well within this


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def f32(begin: int, shape: list[int] | None = None, nbytes: int = NBYTES, dtype: str = "F32") -> dict:
    """A header entry whose data lies at ``[begin, begin + nbytes)``."""
    shape = [DIM, DIM] if shape is None else shape
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, begin + nbytes]}


def packed(entries: dict[str, tuple[str, list[int], bytes]]) -> bytes:
    """A well-formed safetensors file laying out ``name -> (dtype, shape, raw bytes)`` contiguously."""
    header, data, offset = {}, b"", 0
    for name, (dtype, shape, raw) in entries.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    return raw_safetensors(header, data)


def crafted_folder(root: Path, content: bytes) -> tuple[Path, Path]:
    """(folder, its model.safetensors) holding ``content``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.safetensors").write_bytes(content)
    return root, root / "model.safetensors"


def stderr_lines(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.strip()]


def run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


class Payload:
    """Unpickling this runs ``touch MARKER``: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_hostile_pickle(path: Path, marker: Path, fmt: str) -> Path:
    """A checkpoint whose pickle calls ``os.system``: torch's zip format or a legacy raw pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "zip":
        torch.save({"weight": torch.zeros(2, 2), "payload": Payload(marker)}, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump({"payload": Payload(marker)}, fh, protocol=4)
    return path


ADAPTER_MODULES = [f"encoder.layer.{i}.attention.self.query" for i in range(2)]


def lora_tensors(r: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for m in ADAPTER_MODULES:
        out[f"base_model.model.{m}.lora_A.weight"] = rng.standard_normal((r, DIM)).astype(np.float32)
        out[f"base_model.model.{m}.lora_B.weight"] = rng.standard_normal((DIM, r)).astype(np.float32)
    return out


def make_adapter(folder: Path, tensors: dict[str, np.ndarray] | None = None, fmt: str = "safetensors",
                 **config) -> Path:
    """A peft LoRA adapter folder (r=2 on the query layers unless ``config`` says otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["query"], **config}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    tensors = lora_tensors() if tensors is None else tensors
    if fmt == "safetensors":
        save_file(tensors, str(folder / "adapter_model.safetensors"))
    else:
        torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in tensors.items()}, folder / "adapter_model.bin")
    return folder


def adapter_file(folder: Path) -> Path:
    st = folder / "adapter_model.safetensors"
    return st if st.is_file() else folder / "adapter_model.bin"


# --------------------------------------------------------------------------------------------------
# 1. crafted safetensors headers
# --------------------------------------------------------------------------------------------------

# case -> (file bytes, tensor the message must name or None, refused by the reference implementation)
HOSTILE = {
    "overlap": (lambda: raw_safetensors({QUERY0: f32(0), QUERY1: f32(NBYTES // 2)}, bytes(3 * NBYTES // 2)),
                QUERY1, True),
    "runs-backwards": (lambda: raw_safetensors({QUERY0: {**f32(0), "data_offsets": [NBYTES, 0]}}, bytes(NBYTES)),
                       QUERY0, True),
    "gap": (lambda: raw_safetensors({QUERY0: f32(0), QUERY1: f32(NBYTES + 64)}, bytes(2 * NBYTES + 64)),
            QUERY1, True),
    "overflowing-shape": (lambda: raw_safetensors({QUERY0: f32(0, [2**32, 2**32, 2**32], 0)}), QUERY0, True),
    "dim-of-2**70": (lambda: raw_safetensors({QUERY0: f32(0, [2**70, 1], 0)}), QUERY0, True),
    "dim-of-2**64": (lambda: raw_safetensors({QUERY0: f32(0, [2**64], 0)}), QUERY0, True),
    "huge-shape-tiny-data": (lambda: raw_safetensors({QUERY0: f32(0, [10**6, 10**6])}, bytes(NBYTES)), QUERY0, True),
    "trailing-garbage": (lambda: raw_safetensors({QUERY0: f32(0)}, bytes(NBYTES) + b"trailing garbage"),
                         QUERY0, True),
    "dtype-F33": (lambda: raw_safetensors({QUERY0: f32(0, dtype="F33")}, bytes(NBYTES)), QUERY0, True),
    "dtype-5": (lambda: raw_safetensors({QUERY0: {**f32(0), "dtype": 5}}, bytes(NBYTES)), QUERY0, True),
    "shape-string": (lambda: raw_safetensors({QUERY0: {**f32(0), "shape": "12"}}, bytes(NBYTES)), QUERY0, True),
    "shape-bool": (lambda: raw_safetensors({QUERY0: f32(0, [True, DIM])}, bytes(NBYTES)), QUERY0, True),
    "shape-float": (lambda: raw_safetensors({QUERY0: f32(0, [16.0, DIM])}, bytes(NBYTES)), QUERY0, True),
    "shape-negative": (lambda: raw_safetensors({QUERY0: f32(0, [-DIM, -DIM])}, bytes(NBYTES)), QUERY0, True),
    "offsets-three": (lambda: raw_safetensors({QUERY0: {**f32(0), "data_offsets": [0, 512, NBYTES]}},
                                              bytes(NBYTES)), QUERY0, True),
    "offsets-bool": (lambda: raw_safetensors({QUERY0: {**f32(0), "data_offsets": [False, NBYTES]}},
                                             bytes(NBYTES)), QUERY0, True),
    "integer-size-mismatch": (lambda: raw_safetensors({QUERY0: f32(0, dtype="I64")}, bytes(NBYTES)), QUERY0, True),
    "fp8-size-mismatch": (lambda: raw_safetensors({QUERY0: f32(0, dtype="F8_E4M3")}, bytes(NBYTES)), QUERY0, True),
    "fp4-half-byte": (lambda: raw_safetensors({QUERY0: f32(0, [3], 2, "F4")}, bytes(2)), QUERY0, True),
    "metadata-not-strings": (lambda: raw_safetensors({"__metadata__": {"format": 1}, QUERY0: f32(0)}, bytes(NBYTES)),
                             "__metadata__", True),
    "nan-literal-in-header": (lambda: raw_safetensors(
        b'{"' + QUERY0.encode() + b'": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 1024]}}',
        bytes(NBYTES)), "NaN", True),
    "header-longer-than-100MB": (lambda: raw_safetensors(b"{}", bytes(NBYTES), claimed_len=200_000_000), None, True),
    # beyond the reference: a key given twice would hide a tensor; the format requires a leading '{'
    "duplicate-tensor-key": (lambda: raw_safetensors(
        ("{" + ", ".join([f'"{QUERY0}": ' + json.dumps(f32(0))] * 2) + "}").encode(), bytes(NBYTES)), QUERY0, False),
    "header-not-starting-with-brace": (lambda: raw_safetensors(b" " + json.dumps({QUERY0: f32(0)}).encode(),
                                                               bytes(NBYTES)), "'{'", False),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_crafted_header_is_refused_fast_and_names_file_and_tensor(tmp_path, case):
    """``rankscope spectrum`` on a crafted finetuned file: exit 2 in well under a second, nothing written."""
    content, culprit, reference_refuses = HOSTILE[case]
    base, _ = valid_pair(tmp_path)
    folder, bad = crafted_folder(tmp_path / "crafted", content())
    out = tmp_path / "out"
    t0 = time.perf_counter()
    result = invoke(*spectrum_args(base, folder, out))
    elapsed = time.perf_counter() - t0
    needles = [str(bad)] + ([culprit if culprit.startswith(("'", "NaN")) else f"'{culprit}'"] if culprit else [])
    check_failure(result, out, *needles)
    assert elapsed < FAST_S, f"{case}: took {elapsed:.2f} s"
    if reference_refuses:  # parity: the reference implementation refuses this file as well
        from safetensors import safe_open

        with pytest.raises(Exception), safe_open(str(bad), "numpy") as fh:  # noqa: B017 (SafetensorError)
            fh.keys()


def test_crafted_header_subprocess_one_line(tmp_path):
    """The real CLI process: one line on stderr for an overflowing shape, no traceback, no output."""
    base, _ = valid_pair(tmp_path)
    folder, bad = crafted_folder(tmp_path / "crafted", HOSTILE["overflowing-shape"][0]())
    out = tmp_path / "out"
    proc = run_subprocess(*spectrum_args(base, folder, out), cwd=tmp_path)
    error_line(proc.stderr, proc.returncode, str(bad), f"'{QUERY0}'", "overflow")
    assert leftovers(out) == []


def test_tensors_listed_out_of_order_are_valid(tmp_path):
    """The reference sorts entries by offset: a header listing them in another order is a valid file."""
    base = weights(names=[QUERY0, QUERY1], vectors=[])
    ft = finetune(base)
    raw = {n: ft[n].tobytes() for n in (QUERY0, QUERY1)}
    content = raw_safetensors({QUERY1: f32(NBYTES), QUERY0: f32(0)}, raw[QUERY0] + raw[QUERY1])
    folder, _ = crafted_folder(tmp_path / "ft", content)
    out = tmp_path / "out"
    result = invoke(*spectrum_args(save_folder(tmp_path / "base", base), folder, out))
    assert result.exit_code == 0, result.output + result.stderr
    from safetensors.numpy import load_file

    np.testing.assert_array_equal(load_file(str(folder / "model.safetensors"))[QUERY1], ft[QUERY1])


def test_empty_tensors_are_valid_but_never_reach_the_linear_algebra(tmp_path, monkeypatch):
    """Zero-sized dimensions (even next to 10**12) are valid files; they are listed as skipped, never solved."""
    import rankscope.numerics.linalg as linalg

    solved: list[tuple[int, int]] = []
    real = linalg.spectrum_of_blocks

    def guarded(blocks, rows, cols, *args, **kwargs):
        assert rows * cols > 0, f"phantom {rows} x {cols} matrix reached the solver"
        solved.append((rows, cols))
        return real(blocks, rows, cols, *args, **kwargs)

    monkeypatch.setattr(linalg, "spectrum_of_blocks", guarded)
    base = weights(names=[QUERY0, QUERY1], vectors=[])
    ft = finetune(base)
    empties = {"encoder.layer.0.empty_rows.weight": [0, 10**12], "encoder.layer.0.empty_cols.weight": [10**12, 0],
               "encoder.layer.0.empty.bias": [0]}
    folders = []
    for side, values in (("base", base), ("ft", ft)):
        entries = {n: ("F32", [DIM, DIM], values[n].tobytes()) for n in (QUERY0, QUERY1)}
        entries.update({n: ("F32", shape, b"") for n, shape in empties.items()})
        folder, file = crafted_folder(tmp_path / side, packed(entries))
        folders.append(folder)
        from safetensors import safe_open

        with safe_open(str(file), "numpy") as fh:  # the reference accepts the file
            assert set(fh.keys()) == {QUERY0, QUERY1, *empties}
    out = tmp_path / "out"
    t0 = time.perf_counter()
    result = invoke(*spectrum_args(*folders, out))
    assert result.exit_code == 0, result.output + result.stderr
    assert time.perf_counter() - t0 < 10
    assert sorted(solved) == [(DIM, DIM), (DIM, DIM)]
    skipped = {s["tensor"]: s for s in run_json(out)["skipped_tensors"]}
    assert set(skipped) == set(empties)
    assert all(s["reason"] == "empty tensor, nothing to analyse" and s["checkpoint"] == "both"
               for s in skipped.values())


# --------------------------------------------------------------------------------------------------
# 2. skipped tensors are listed, never dropped silently
# --------------------------------------------------------------------------------------------------

POSITION_IDS = "embeddings.position_ids"
TOKEN_TYPE_IDS = "embeddings.token_type_ids"
FP8 = "encoder.layer.1.attention.self.fp8.weight"
FP8_IN_FT = "encoder.layer.1.attention.self.quantized.weight"
FT_ONLY = "encoder.layer.1.extra.weight"
EMPTY = "encoder.layer.0.attention.self.empty.weight"

EXPECTED_SKIPPED = [  # (tensor, checkpoint, dtype, reason), sorted by tensor
    (POSITION_IDS, "base", "I64", "only in base"),
    (TOKEN_TYPE_IDS, "both", "I64", "dtype I64 (integer) is not analysed"),
    (EMPTY, "both", "F32", "empty tensor, nothing to analyse"),
    (FP8, "both", "F8_E4M3", "dtype F8_E4M3 (FP8) is not analysed"),
    (FP8_IN_FT, "both", "F32 in base, F8_E4M3 in finetuned", "dtype F8_E4M3 (FP8) in finetuned is not analysed"),
    (FT_ONLY, "finetuned", "F32", "only in finetuned"),
]


def mixed_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A BERT-like pair with FP8, int64, empty, one-sided and dtype-changed tensors next to float32 matrices."""
    from safetensors.torch import save_file as save_torch

    base_np = weights()
    ft_np = finetune(base_np)
    ids = torch.arange(DIM, dtype=torch.int64)[None]
    fp8 = torch.randn(DIM, DIM, generator=torch.Generator().manual_seed(0)).to(torch.float8_e4m3fn)
    sides = []
    for name, values in (("base", base_np), ("ft", ft_np)):
        tensors = {n: torch.from_numpy(v) for n, v in values.items()}
        tensors.update({TOKEN_TYPE_IDS: ids * 0, FP8: fp8, EMPTY: torch.zeros(0, DIM)})
        if name == "base":
            tensors.update({POSITION_IDS: ids, FP8_IN_FT: torch.zeros(DIM, DIM)})
        else:
            tensors.update({FT_ONLY: torch.ones(DIM, DIM), FP8_IN_FT: fp8.clone()})
        folder = tmp_path / name
        folder.mkdir()
        save_torch(tensors, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
        sides.append(folder)
    return sides[0], sides[1]


def assert_skipped(skipped: list[dict], expected=EXPECTED_SKIPPED) -> None:
    assert [(s["tensor"], s["checkpoint"], s["dtype"], s["reason"]) for s in skipped] == list(expected)


def test_spectrum_lists_every_skipped_tensor_in_run_json(tmp_path):
    base, ft = mixed_pair(tmp_path)
    out = tmp_path / "out"
    result = invoke(*spectrum_args(base, ft, out))
    assert result.exit_code == 0, result.output + result.stderr
    info = run_json(out)
    assert_skipped(info["skipped_tensors"])
    assert info["notes"] == [
        f"6 tensors not analysed ({POSITION_IDS}: only in base, dtype I64; {TOKEN_TYPE_IDS}: dtype I64 (integer) is "
        f"not analysed; {EMPTY}: empty tensor, nothing to analyse; and 3 more); all are listed in run.json under "
        "skipped_tensors"]
    analysed = set(np.load(out / "spectra.npz").files)
    assert analysed == {n.removesuffix(".weight") for n in BERT_MATRICES}


def test_notes_line_for_one_skipped_tensor():
    from rankscope.io.skipped import skipped_entry, skipped_notes

    assert skipped_notes([]) == []
    assert skipped_notes([skipped_entry(POSITION_IDS, "base", "I64", "only in base")]) == [
        "1 tensor not analysed (embeddings.position_ids: only in base, dtype I64); all are listed in run.json "
        "under skipped_tensors"]


def test_compare_extract_and_recommend_list_skipped_tensors(tmp_path):
    base, ft = mixed_pair(tmp_path)
    extra = {**lora_tensors(), "base_model.model.step": np.array([3], dtype=np.int64)}
    adapter = make_adapter(tmp_path / "adapter", extra)
    out = tmp_path / "cmp"
    result = invoke("compare", base, ft, adapter, "-o", out, "--no-plots", "-q")
    assert result.exit_code == 0, result.output + result.stderr
    info = run_json(out)
    assert_skipped(info["skipped_tensors"], [*EXPECTED_SKIPPED,
                                             ("base_model.model.step", "adapter", "I64",
                                              "dtype I64 (integer) is not analysed")])
    assert len(info["notes"]) == 1 and info["notes"][0].startswith("7 tensors not analysed (")

    out = tmp_path / "ext"
    result = invoke("extract", base, ft, "-o", out, "--rank", "2", "--model-check", "never", "-q")
    assert result.exit_code == 0, result.output + result.stderr
    assert_skipped(run_json(out)["skipped_tensors"])

    out = tmp_path / "rec"
    result = invoke("recommend", base, ft, "-o", out, "--no-plots", "-q")
    assert result.exit_code == 0, result.output + result.stderr
    assert_skipped(run_json(out / "spectrum")["skipped_tensors"])


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_lora_lists_adapter_tensors_it_ignores(tmp_path, fmt):
    tensors = {**lora_tensors(), "base_model.model.step": np.array([3], dtype=np.int64),
               "base_model.model.mask": np.array([True, False])}
    adapter = make_adapter(tmp_path / "adapter", tensors, fmt)
    out = tmp_path / "out"
    result = invoke("lora", adapter, "-o", out, "--no-plots", "-q")
    assert result.exit_code == 0, result.output + result.stderr
    info = run_json(out)
    assert_skipped(info["skipped_tensors"], [
        ("base_model.model.mask", "adapter", "BOOL", "dtype BOOL (boolean) is not analysed"),
        ("base_model.model.step", "adapter", "I64", "dtype I64 (integer) is not analysed")])
    assert info["notes"][0].startswith("2 tensors not analysed (base_model.model.mask: dtype BOOL")


# --------------------------------------------------------------------------------------------------
# 3. NaN / Inf in LoRA factors
# --------------------------------------------------------------------------------------------------

EMBED = "embeddings.word_embeddings"
NON_FINITE = {  # case -> (tensor key, value, extra config)
    "nan-in-lora_A": (f"base_model.model.{ADAPTER_MODULES[0]}.lora_A.weight", np.nan, {}),
    "inf-in-lora_B": (f"base_model.model.{ADAPTER_MODULES[1]}.lora_B.weight", np.inf, {}),
    "neg-inf-in-lora_embedding_A": (f"base_model.model.{EMBED}.lora_embedding_A", -np.inf, {}),
    "nan-in-lora_embedding_B": (f"base_model.model.{EMBED}.lora_embedding_B", np.nan, {}),
    "nan-in-dora-magnitude": (f"base_model.model.{ADAPTER_MODULES[0]}.lora_magnitude_vector.weight", np.nan,
                              {"use_dora": True}),
}


def non_finite_adapter(folder: Path, case: str, fmt: str) -> tuple[Path, str]:
    key, value, config = NON_FINITE[case]
    tensors = lora_tensors()
    tensors[f"base_model.model.{EMBED}.lora_embedding_A"] = np.ones((2, 30), np.float32)
    tensors[f"base_model.model.{EMBED}.lora_embedding_B"] = np.ones((DIM, 2), np.float32)
    if "magnitude" in key:
        tensors[key] = np.ones(DIM, np.float32)
    tensors[key] = tensors[key].copy()
    tensors[key].flat[1] = value
    return make_adapter(folder, tensors, fmt, **config), key


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("case", list(NON_FINITE))
def test_non_finite_lora_factor_names_adapter_file_and_tensor(tmp_path, case, fmt):
    adapter, key = non_finite_adapter(tmp_path / "adapter", case, fmt)
    out = tmp_path / "out"
    line = check_failure(invoke("lora", adapter, "-o", out, "-q"), out, str(adapter_file(adapter)), f"'{key}'")
    assert "NaN or Inf" in line


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_non_finite_lora_factor_in_compare_adapters(tmp_path, fmt):
    good = make_adapter(tmp_path / "good")
    bad, key = non_finite_adapter(tmp_path / "bad", "nan-in-lora_A", fmt)
    out = tmp_path / "out"
    check_failure(invoke("compare-adapters", good, bad, "-o", out, "-q"), out, str(adapter_file(bad)), f"'{key}'")


def test_empty_lora_factor_is_refused(tmp_path):
    tensors = lora_tensors()
    key = f"base_model.model.{ADAPTER_MODULES[0]}.lora_B.weight"
    tensors[key] = np.zeros((0, 2), np.float32)
    adapter = make_adapter(tmp_path / "adapter", tensors)
    out = tmp_path / "out"
    check_failure(invoke("lora", adapter, "-o", out, "-q"), out, str(adapter_file(adapter)), f"'{key}'", "empty")


# --------------------------------------------------------------------------------------------------
# 4. every user-supplied regular expression is checked before any work
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "option"), [("spectrum", "--include"), ("spectrum", "--exclude"),
                                                 ("compare", "--include"), ("extract", "--exclude"),
                                                 ("extract", "--save-modules")])
def test_bad_regex_fails_before_any_checkpoint_is_opened(tmp_path, command, option):
    """The checkpoints do not even exist: the pattern must be what the error names."""
    gone = [tmp_path / "no-base", tmp_path / "no-finetuned"] + ([tmp_path / "no-adapter"] if command == "compare"
                                                               else [])
    out = tmp_path / "out"
    extra = ["--rank", "2"] if command == "extract" else []
    line = check_failure(invoke(command, *gone, "-o", out, "-q", *extra, option, "(unclosed"), out, option,
                         "(unclosed")
    assert "no such file" not in line


def test_intrinsic_dim_bad_regex_fails_before_training(tmp_path):
    out = tmp_path / "out"
    t0 = time.perf_counter()
    check_failure(invoke("intrinsic-dim", "--task", "toy", "--include", "[a-", "-o", out, "-q"), out, "--include",
                  "[a-")
    assert time.perf_counter() - t0 < FAST_S


ADAPTER_PATTERNS = {
    "rank_pattern-key": ({"rank_pattern": {"(query": 2}}, "rank_pattern"),
    "rank_pattern-key-invalid-once-wrapped": ({"rank_pattern": {"(?i)query": 2}}, "rank_pattern"),
    "alpha_pattern-key": ({"alpha_pattern": {"[query": 4}}, "alpha_pattern"),
    "target_modules-string": ({"target_modules": "(query"}, "target_modules"),
}


@pytest.mark.parametrize("case", list(ADAPTER_PATTERNS))
def test_bad_pattern_in_adapter_config_names_file_and_field(tmp_path, case):
    config, field = ADAPTER_PATTERNS[case]
    adapter = make_adapter(tmp_path / "adapter", **config)
    out = tmp_path / "out"
    line = check_failure(invoke("lora", adapter, "-o", out, "-q"), out, str(adapter / "adapter_config.json"), field)
    assert "regular expression" in line
    other = tmp_path / "other"
    check_failure(invoke("compare-adapters", make_adapter(tmp_path / "good"), adapter, "-o", other, "-q"), other,
                  str(adapter / "adapter_config.json"), field)


@pytest.mark.parametrize(("config", "field"), [({"rank_pattern": {"(query": 2}}, "rank_pattern"),
                                               ({"alpha_pattern": {"query)": 2}}, "alpha_pattern"),
                                               ({"target_modules": "*query"}, "target_modules")])
def test_bad_pattern_in_train_lora_config_fails_before_the_model_loads(tmp_path, config, field):
    cfg = tmp_path / "lora_config.json"
    cfg.write_text(json.dumps({"r": 4, "lora_alpha": 8, **config}))
    out = tmp_path / "out"
    result = invoke("train", "--model", tmp_path / "no-such-model", "--method", "lora", "--lora-config", cfg,
                    "-o", out, "-q")
    line = check_failure(result, out, str(cfg), field)
    assert "regular expression" in line


@pytest.mark.parametrize("option", ["--rank-pattern", "--alpha-pattern"])
def test_bad_pattern_file_in_train_names_option_and_file(tmp_path, option):
    """``rankscope train --method lora --rank-pattern FILE``: a key that is no regex, before any training step."""
    from tiny_text import bert_folder, write_easy_csv

    model = bert_folder(tmp_path / "tiny-bert")
    data = write_easy_csv(tmp_path / "easy.csv")
    pattern = tmp_path / "pattern.json"
    pattern.write_text(json.dumps({"layer.0.attention.self.(query": 4}))
    out = tmp_path / "out"
    result = invoke("train", "--model", model, "--data", data, "--text-column", "review", "--label-column",
                    "sentiment", "--method", "lora", option, pattern, "--max-train", "8", "--epochs", "1", "-o", out,
                    "-q")
    line = check_failure(result, out, option, str(pattern))
    assert "regular expression" in line


# --------------------------------------------------------------------------------------------------
# 5. wrongly typed values in config and result files
# --------------------------------------------------------------------------------------------------

BAD_FIELDS = [
    ("r", "abc"), ("r", 8.5), ("r", True), ("r", 0), ("lora_alpha", "x"), ("lora_alpha", True), ("lora_alpha", -1),
    ("rank_pattern", {"query": -1}), ("rank_pattern", {"query": "2"}), ("rank_pattern", {"query": 2.5}),
    ("rank_pattern", [2]), ("alpha_pattern", {"query": 0}), ("alpha_pattern", {"query": "x"}),
    ("alpha_pattern", {"query": True}), ("use_rslora", "yes"), ("use_dora", 1), ("fan_in_fan_out", "false"),
    ("target_modules", 5), ("target_modules", ["query", 3]),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_wrongly_typed_adapter_config_names_file_and_field(tmp_path, field, value):
    adapter = make_adapter(tmp_path / "adapter", **{field: value})
    out = tmp_path / "out"
    check_failure(invoke("lora", adapter, "-o", out, "-q"), out, str(adapter / "adapter_config.json"), field)


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS + [("rank_pattern", {"query": 0})],
                         ids=[f"{f}={v!r}" for f, v in BAD_FIELDS + [("rank_pattern", {"query": 0})]])
def test_wrongly_typed_train_lora_config_names_file_and_field(tmp_path, field, value):
    cfg = tmp_path / "lora_config.json"
    cfg.write_text(json.dumps({"r": 4, "lora_alpha": 8, "target_modules": ["query"], field: value}))
    out = tmp_path / "out"
    result = invoke("train", "--model", tmp_path / "no-such-model", "--method", "lora", "--lora-config", cfg,
                    "-o", out, "-q")
    check_failure(result, out, str(cfg), field)


@pytest.mark.parametrize(("option", "content", "needle"), [
    ("--rank-pattern", {"query": "8"}, "rank_pattern['query']"),
    ("--rank-pattern", {"query": 0}, "rank_pattern['query']"),
    ("--alpha-pattern", {"query": -2}, "alpha_pattern['query']"),
    ("--alpha-pattern", {"(query": 2}, "regular expression"),
    ("--rank-pattern", [1, 2], "JSON object"),
])
def test_train_pattern_files_are_checked(tmp_path, option, content, needle):
    from rankscope.errors import RankscopeError
    from rankscope.training.lora import load_pattern

    path = tmp_path / "pattern.json"
    path.write_text(json.dumps(content))
    with pytest.raises(RankscopeError) as info:
        load_pattern(str(path), option)
    message = str(info.value)
    assert option in message and str(path) in message and needle in message and "\n" not in message


@pytest.fixture
def spectrum_result(tmp_path) -> Path:
    base, ft = valid_pair(tmp_path)
    out = tmp_path / "spec"
    result = invoke(*spectrum_args(base, ft, out))
    assert result.exit_code == 0, result.output + result.stderr
    return out


def _edit_csv(path: Path, edit) -> None:
    import pandas as pd

    table = pd.read_csv(path)
    edit(table)
    table.to_csv(path, index=False)


def _edit_npz(path: Path, edit) -> None:
    arrays = dict(np.load(path))
    edit(arrays)
    np.savez(path, **arrays)


MODULE0 = QUERY0.removesuffix(".weight")
BROKEN_SPECTRUM = {  # case -> (how to break the folder, file named, what else is named)
    "modules-missing-column": (lambda o: _edit_csv(o / "modules.csv", lambda t: t.pop("rows")), "modules.csv",
                               "'rows'"),
    "modules-unparsable-value": (lambda o: _edit_csv(o / "modules.csv", lambda t: t.__setitem__("cols", "abc")),
                                 "modules.csv", "'cols'"),
    "modules-blank-value": (lambda o: _edit_csv(o / "modules.csv", lambda t: t.__setitem__("rows", np.nan)),
                            "modules.csv", "'rows'"),
    "spectra-missing-key": (lambda o: _edit_npz(o / "spectra.npz", lambda a: a.pop(MODULE0)), "spectra.npz",
                            f"'{MODULE0}'"),
    "spectra-non-numeric": (lambda o: _edit_npz(o / "spectra.npz", lambda a: a.__setitem__(MODULE0, np.array(
        ["a"] * DIM))), "spectra.npz", f"'{MODULE0}'"),
    "spectra-wrong-length": (lambda o: _edit_npz(o / "spectra.npz", lambda a: a.__setitem__(MODULE0, np.ones(3))),
                             "spectra.npz", f"'{MODULE0}'"),
    "spectra-garbage": (lambda o: (o / "spectra.npz").write_bytes(b"PK\x03\x04 not a zip"), "spectra.npz", ""),
    "run-json-a-list": (lambda o: (o / "run.json").write_text("[1, 2]"), "run.json", "JSON object"),
}


@pytest.mark.parametrize("case", list(BROKEN_SPECTRUM))
def test_recommend_on_a_broken_spectrum_folder(tmp_path, spectrum_result, case):
    breaker, file, needle = BROKEN_SPECTRUM[case]
    breaker(spectrum_result)
    out = tmp_path / "plan"
    check_failure(invoke("recommend", spectrum_result, "-o", out, "-q"), out, str(spectrum_result / file), needle)


@pytest.mark.parametrize("case", list(BROKEN_SPECTRUM))
def test_plot_on_a_broken_spectrum_folder(spectrum_result, case):
    breaker, file, needle = BROKEN_SPECTRUM[case]
    breaker(spectrum_result)
    before = sorted(p.name for p in spectrum_result.iterdir())
    check_failure(invoke("plot", spectrum_result), None, str(spectrum_result / file), needle)
    assert sorted(p.name for p in spectrum_result.iterdir()) == before


def test_plot_on_broken_compare_and_recommend_folders(tmp_path, spectrum_result):
    base, ft = tmp_path / "base", tmp_path / "ft"  # written by the spectrum_result fixture
    adapter = make_adapter(tmp_path / "adapter")
    cmp = tmp_path / "cmp"
    assert invoke("compare", base, ft, adapter, "-o", cmp, "--no-plots", "-q").exit_code == 0
    plan = tmp_path / "plan"
    assert invoke("recommend", spectrum_result, "-o", plan, "--no-plots", "-q").exit_code == 0
    cases = [
        (cmp, lambda: _edit_csv(cmp / "compare.csv", lambda t: t.pop("energy_both")),
         "compare.csv", "'energy_both'"),
        (cmp, lambda: _edit_npz(cmp / "phi.npz", lambda a: a.pop(f"{ADAPTER_MODULES[0]}:left")), "phi.npz",
         f"'{ADAPTER_MODULES[0]}:left'"),
        (cmp, lambda: (cmp / "run.json").write_text(json.dumps({**run_json(cmp), "options": {"phi_modules": "(q"}})),
         "run.json", "phi_modules"),
        (plan, lambda: _edit_csv(plan / "ranks.csv", lambda t: t.pop("rank")), "ranks.csv",
         "'rank'"),
        (plan, lambda: _edit_csv(plan / "ranks.csv", lambda t: t.__setitem__("captured_energy", "lots")),
         "ranks.csv", "'captured_energy'"),
        (plan, lambda: (plan / "lora_config.json").write_text("[]"), "lora_config.json", "JSON object"),
    ]
    for folder, breaker, file, needle in cases:
        snapshot = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        breaker()
        check_failure(invoke("plot", folder), None, str(folder / file), needle)
        assert not (folder / "figures").exists()
        for name, data in snapshot.items():  # repair for the next case
            (folder / name).write_bytes(data)


# --------------------------------------------------------------------------------------------------
# 6. pickles with code in them are refused, and nothing runs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_hostile_bin_checkpoint_subprocess(tmp_path, fmt):
    """A fresh process, so that no warning was shown before: still exactly one line, and no PWNED."""
    base, _ = valid_pair(tmp_path)
    marker = tmp_path / "PWNED"
    bad = write_hostile_pickle(tmp_path / "hostile" / "pytorch_model.bin", marker, fmt)
    out = tmp_path / "out"
    proc = run_subprocess(*spectrum_args(base, bad.parent, out), cwd=tmp_path)
    line = error_line(proc.stderr, proc.returncode, str(bad), "refused")
    if fmt == "zip":  # torch's unpickler names the global it refused
        assert "posix.system" in line or "os.system" in line
    assert leftovers(out) == [] and not marker.exists()


@pytest.mark.parametrize("command", ["spectrum", "extract", "compare"])
def test_hostile_bin_checkpoint_in_every_command_reading_bin(tmp_path, command):
    base, ft = valid_pair(tmp_path)
    marker = tmp_path / "PWNED"
    bad = write_hostile_pickle(tmp_path / "hostile" / "pytorch_model.bin", marker, "zip")
    out = tmp_path / "out"
    if command == "compare":
        args = ["compare", bad.parent, ft, make_adapter(tmp_path / "adapter"), "-o", out, "--no-plots", "-q"]
    elif command == "extract":
        args = ["extract", base, bad.parent, "-o", out, "--rank", "2", "-q"]
    else:
        args = spectrum_args(base, bad, out)
    check_failure(invoke(*args), out, str(bad), "refused")
    assert not marker.exists()


@pytest.mark.parametrize("command", ["lora", "compare-adapters"])
def test_hostile_adapter_bin(tmp_path, command):
    marker = tmp_path / "PWNED"
    adapter = tmp_path / "adapter"
    make_adapter(adapter)
    (adapter / "adapter_model.safetensors").unlink()
    bad = write_hostile_pickle(adapter / "adapter_model.bin", marker, "legacy")
    out = tmp_path / "out"
    args = ["lora", adapter] if command == "lora" else ["compare-adapters", make_adapter(tmp_path / "good"), adapter]
    check_failure(invoke(*args, "-o", out, "-q"), out, str(bad), "refused")
    assert not marker.exists()


def test_train_refuses_a_model_folder_with_a_hostile_bin(tmp_path):
    """``rankscope train --model FOLDER``: transformers' loader meets the pickle; one line names the file."""
    from tiny_text import SPECIALS, write_easy_csv
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path / "tiny-bert"
    vocab = {w: i for i, w in enumerate(SPECIALS + ["good", "bad", "movie"])}
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)).save_pretrained(folder)
    BertTokenizer(vocab=vocab).save_pretrained(folder)
    for weights_file in folder.glob("*.safetensors"):
        weights_file.unlink()
    marker = tmp_path / "PWNED"
    bad = write_hostile_pickle(folder / "pytorch_model.bin", marker, "zip")
    data = write_easy_csv(tmp_path / "easy.csv")
    out = tmp_path / "out"
    proc = run_subprocess("train", "--model", folder, "--data", data, "--text-column", "review", "--label-column",
                          "sentiment", "--max-train", "8", "--epochs", "1", "-o", out, "-q", cwd=tmp_path)
    error_line(proc.stderr, proc.returncode, str(bad), "refused")
    assert leftovers(out) == [] and not marker.exists()


def test_hostile_pickle_would_run_if_loaded_unsafely(tmp_path):
    """Control: the payload is live (plain ``pickle.load`` runs it), so the refusals above mean something."""
    marker = tmp_path / "PWNED"
    bad = write_hostile_pickle(tmp_path / "hostile.bin", marker, "legacy")
    with open(bad, "rb") as fh:
        pickle.load(fh)  # noqa: S301 (deliberately unsafe: proves the payload works)
    assert marker.exists()


def test_header_length_field_alone_is_not_trusted(tmp_path):
    """An 8-byte length claiming 2**64 - 1 bytes: refused from the length alone, nothing read or allocated."""
    base, _ = valid_pair(tmp_path)
    folder, bad = crafted_folder(tmp_path / "crafted", struct.pack("<Q", 2**64 - 1) + b"{}")
    out = tmp_path / "out"
    check_failure(invoke(*spectrum_args(base, folder, out)), out, str(bad))

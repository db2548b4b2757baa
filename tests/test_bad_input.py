"""Bad input must fail cleanly.

The contract: every problem caused by the input prints exactly one line, ``Error: <message>``, on
stderr, naming the path / tensor / option at fault; the exit status is 2; there is no traceback
unless ``--debug`` is given; and no output is left behind (results are written into a hidden
sibling ``.OUT.partial-XXXX`` and renamed onto ``OUT`` only at the end, so after a failure neither
``OUT`` nor any ``.OUT.partial-*`` may exist, and a folder rankscope did not write is never touched).

Everything here is self-contained: checkpoints are tiny float32 safetensors files built in
``tmp_path``; nothing comes from ``conftest.py`` and nothing touches the network.
"""

from __future__ import annotations

import importlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from rankscope.cli import main
from rankscope.errors import RankscopeError

ROOT = Path(__file__).resolve().parents[1]
DIM = 16
BERT_MATRICES = [
    f"encoder.layer.{i}.attention.self.{m}.weight" for i in range(2) for m in ("query", "key", "value")
]
BERT_VECTORS = [f"encoder.layer.{i}.attention.self.query.bias" for i in range(2)]
LLAMA_MATRICES = [
    f"model.layers.{i}.self_attn.{m}.weight" for i in range(2) for m in ("q_proj", "k_proj", "v_proj")
]
QUERY0 = BERT_MATRICES[0]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def weights(names=BERT_MATRICES, vectors=BERT_VECTORS, seed=0, shape=(DIM, DIM)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {n: rng.standard_normal(shape).astype(np.float32) for n in names}
    out.update({n: rng.standard_normal(shape[0]).astype(np.float32) for n in vectors})
    return out


def finetune(base: dict[str, np.ndarray], seed=1, scale=1e-2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + scale * rng.standard_normal(v.shape)).astype(np.float32) for k, v in base.items()}


def save_folder(folder: Path, tensors: dict[str, np.ndarray]) -> Path:
    """A Hugging Face style folder: ``model.safetensors`` (+ a ``config.json``)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return folder


def save_single(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def valid_pair(tmp_path: Path, as_folders: bool = True) -> tuple[Path, Path]:
    base = weights()
    ft = finetune(base)
    if as_folders:
        return save_folder(tmp_path / "base", base), save_folder(tmp_path / "ft", ft)
    return save_single(tmp_path / "base.safetensors", base), save_single(tmp_path / "ft.safetensors", ft)


def raw_safetensors(header: bytes | dict, data: bytes = b"", claimed_len: int | None = None) -> bytes:
    """Hand-made safetensors bytes: 8-byte little-endian header length, header, data."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(head) if claimed_len is None else claimed_len) + head + data


def _runner() -> CliRunner:
    try:  # click < 8.2 mixes stderr into output unless told otherwise
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2: stderr is always available separately
        return CliRunner()


def invoke(*args: object):
    return _runner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def run_subprocess(*args: object, cwd: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_HOME"] = str(cwd / ".hf-home")
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "rankscope.cli", *[str(a) for a in args]],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )


def leftovers(out: Path) -> list[Path]:
    """What a failed run must not leave next to OUT: OUT itself and hidden work folders."""
    found = []
    if out.exists():
        found.append(out)
    parent = out.parent
    if parent.is_dir():
        found += sorted(parent.glob(f".{out.name}.partial-*")) + sorted(parent.glob(f".{out.name}.old-*"))
    return found


def error_line(stderr: str, exit_code: int, *needles: str, strict: bool = True) -> str:
    """Check a clean failure; return its ``Error:`` line.

    ``strict``: stderr is that single line and nothing else.  Otherwise exactly one line of
    stderr starts with ``Error: `` (other lines, e.g. click's usage header, are tolerated).
    """
    assert "Traceback" not in stderr, stderr
    assert exit_code == 2, f"exit code {exit_code}, stderr:\n{stderr}"
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error: ")]
    assert len(errors) == 1, f"expected exactly one 'Error: ' line, got:\n{stderr}"
    if strict:
        assert lines == errors, f"expected stderr to be one line, got:\n{stderr}"
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not named in: {errors[0]}"
    return errors[0]


def check_failure(result, out: Path | None, *needles: str, strict: bool = True) -> str:
    """A CliRunner result that failed cleanly and left nothing at ``out``."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    line = error_line(result.stderr, result.exit_code, *needles, strict=strict)
    assert "Traceback" not in result.output
    if out is not None:
        assert leftovers(out) == [], f"left behind after a failure: {leftovers(out)}"
    return line


def spectrum_args(base: Path | str, ft: Path | str, out: Path, *extra: object) -> list[object]:
    return ["spectrum", base, ft, "-o", out, "--no-plots", "-q", *extra]


# --------------------------------------------------------------------------------------------
# positive control
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_folders", [True, False], ids=["folders", "single-files"])
def test_valid_pair_succeeds_and_writes_complete_result(tmp_path, as_folders):
    base, ft = valid_pair(tmp_path, as_folders)
    out = tmp_path / "res"
    result = invoke(*spectrum_args(base, ft, out))
    assert result.exit_code == 0, result.output
    assert "Error" not in result.stderr
    for name in ("modules.csv", "run.json", "spectra.npz", "vectors.csv"):
        assert (out / name).is_file(), name
    assert json.loads((out / "run.json").read_text())["command"] == "spectrum"
    assert list(tmp_path.glob(".res.partial-*")) == [] and list(tmp_path.glob(".res.old-*")) == []
    # a second run replaces an earlier rankscope result (it holds run.json) without leftovers
    again = invoke(*spectrum_args(base, ft, out))
    assert again.exit_code == 0, again.output
    assert (out / "modules.csv").is_file()
    assert list(tmp_path.glob(".res.*")) == []


# --------------------------------------------------------------------------------------------
# missing inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["base", "finetuned"])
def test_missing_path(tmp_path, side):
    base, ft = valid_pair(tmp_path)
    missing = tmp_path / "no-such-checkpoint"
    args = (missing, ft) if side == "base" else (base, missing)
    out = tmp_path / "out"
    line = check_failure(invoke(*spectrum_args(*args, out)), out, str(missing))
    assert "no such file or folder" in line


def test_missing_hub_like_id_offline_is_clean_error_subprocess(tmp_path):
    """``org/name`` that is not a local path: with HF_HUB_OFFLINE=1 a clean error that names it."""
    _, ft = valid_pair(tmp_path)
    out = tmp_path / "out"
    proc = run_subprocess(*spectrum_args("some-org/no-such-model", ft, out), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    error_line(proc.stderr, proc.returncode, "some-org/no-such-model")
    assert "Traceback" not in proc.stdout
    assert leftovers(out) == []


def test_folder_without_weights(tmp_path):
    _, ft = valid_pair(tmp_path)
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "config.json").write_text('{"model_type": "bert"}')
    (empty / "README.md").write_text("not a model")
    out = tmp_path / "out"
    line = check_failure(invoke(*spectrum_args(empty, ft, out)), out, str(empty))
    assert "no weights" in line


def test_folder_with_only_an_adapter(tmp_path):
    """A PEFT adapter folder is not a full checkpoint: refused with the folder named."""
    _, ft = valid_pair(tmp_path)
    adapter = tmp_path / "adapter"
    save_single(adapter / "adapter_model.safetensors", {"base_model.model.q.lora_A.weight": np.ones((4, 16), np.float32)})
    out = tmp_path / "out"
    check_failure(invoke(*spectrum_args(adapter, ft, out)), out, str(adapter))


def test_file_that_is_not_a_checkpoint(tmp_path):
    _, ft = valid_pair(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    out = tmp_path / "out"
    check_failure(invoke(*spectrum_args(notes, ft, out)), out, str(notes))


def test_shard_index_with_missing_shard(tmp_path):
    _, ft = valid_pair(tmp_path)
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {QUERY0: "model-00001-of-00002.safetensors"}})
    )
    out = tmp_path / "out"
    check_failure(invoke(*spectrum_args(folder, ft, out)), out, "model.safetensors.index.json",
                  "model-00001-of-00002.safetensors")


def test_corrupt_pytorch_bin(tmp_path):
    _, ft = valid_pair(tmp_path)
    folder = tmp_path / "bin-model"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 this is not a torch zip archive" * 4)
    out = tmp_path / "out"
    check_failure(invoke(*spectrum_args(folder, ft, out)), out, str(folder / "pytorch_model.bin"))


# --------------------------------------------------------------------------------------------
# truncated and corrupt safetensors
# --------------------------------------------------------------------------------------------


def _valid_bytes() -> bytes:
    from safetensors.numpy import save

    return save(weights())


_DATA = np.zeros(DIM * DIM, np.float32).tobytes()
CORRUPT = {
    "truncated-half": lambda: _valid_bytes()[: len(_valid_bytes()) // 2],
    "truncated-inside-header": lambda: _valid_bytes()[:40],
    "truncated-inside-length": lambda: _valid_bytes()[:5],
    "empty-file": lambda: b"",
    "garbage-bytes": lambda: bytes(range(256)) * 8,
    "bad-json-header": lambda: raw_safetensors(b'{"encoder.layer.0": {not json', _DATA),
    "not-utf8-header": lambda: raw_safetensors(b'{"\xff\xfe": 1}', _DATA),
    "header-not-an-object": lambda: raw_safetensors(b"[1, 2, 3]", _DATA),
    "header-length-larger-than-file": lambda: raw_safetensors(b"{}", _DATA, claimed_len=10_000_000),
    "entry-missing-dtype": lambda: raw_safetensors({QUERY0: {"shape": [DIM, DIM], "data_offsets": [0, len(_DATA)]}}, _DATA),
    "entry-size-mismatch": lambda: raw_safetensors(
        {QUERY0: {"dtype": "F32", "shape": [DIM, DIM], "data_offsets": [0, len(_DATA) // 2]}}, _DATA),
    "entry-offsets-past-end": lambda: raw_safetensors(
        {QUERY0: {"dtype": "F32", "shape": [DIM, DIM], "data_offsets": [len(_DATA), 2 * len(_DATA)]}}, _DATA),
    "entry-offsets-not-numbers": lambda: raw_safetensors(
        {QUERY0: {"dtype": "F32", "shape": [DIM, DIM], "data_offsets": [0, str(len(_DATA))]}}, _DATA),
    "entry-dtype-not-a-string": lambda: raw_safetensors(
        {QUERY0: {"dtype": ["F32"], "shape": [DIM, DIM], "data_offsets": [0, len(_DATA)]}}, _DATA),
    "entry-negative-offsets": lambda: raw_safetensors(
        {QUERY0: {"dtype": "F32", "shape": [DIM, DIM], "data_offsets": [-4 * len(_DATA), -3 * len(_DATA)]}}, _DATA),
}


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_corrupt_or_truncated_safetensors_base(tmp_path, kind):
    _, ft = valid_pair(tmp_path)
    folder = tmp_path / "broken"
    folder.mkdir()
    bad = folder / "model.safetensors"
    bad.write_bytes(CORRUPT[kind]())
    out = tmp_path / "out"
    check_failure(invoke(*spectrum_args(folder, ft, out)), out, str(bad))


@pytest.mark.parametrize("kind", ["truncated-half", "garbage-bytes", "header-length-larger-than-file"])
def test_corrupt_or_truncated_safetensors_finetuned_single_file(tmp_path, kind):
    base, _ = valid_pair(tmp_path)
    bad = tmp_path / "ft-broken.safetensors"
    bad.write_bytes(CORRUPT[kind]())
    out = tmp_path / "out"
    check_failure(invoke(*spectrum_args(base, bad, out)), out, str(bad))


def test_truncated_safetensors_subprocess(tmp_path):
    base, _ = valid_pair(tmp_path)
    bad = tmp_path / "half.safetensors"
    full = (tmp_path / "ft" / "model.safetensors").read_bytes()
    bad.write_bytes(full[: len(full) // 2])
    out = tmp_path / "out"
    proc = run_subprocess(*spectrum_args(base, bad, out), cwd=tmp_path)
    error_line(proc.stderr, proc.returncode, str(bad))
    assert "Traceback" not in proc.stdout
    assert leftovers(out) == []


# --------------------------------------------------------------------------------------------
# checkpoints that do not match
# --------------------------------------------------------------------------------------------


def test_unrelated_architectures(tmp_path):
    base = save_folder(tmp_path / "bert", weights())
    llama = save_folder(tmp_path / "llama", weights(LLAMA_MATRICES, ["model.norm.weight"]))
    out = tmp_path / "out"
    line = check_failure(invoke(*spectrum_args(base, llama, out)), out, str(base), str(llama))
    assert "share no 2-D tensor" in line


def test_same_names_but_every_matrix_shape_differs(tmp_path):
    base = save_folder(tmp_path / "small", weights())
    big = save_folder(tmp_path / "big", weights(shape=(2 * DIM, 2 * DIM)))
    out = tmp_path / "out"
    check_failure(invoke(*spectrum_args(base, big, out)), out, str(base), str(big))


def test_include_that_matches_nothing(tmp_path):
    base, ft = valid_pair(tmp_path)
    out = tmp_path / "out"
    check_failure(invoke(*spectrum_args(base, ft, out, "--include", "no_such_module")), out, "--include")


# --------------------------------------------------------------------------------------------
# non-finite weights: the message names the tensor and the file
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "tensor", "value"),
    [
        ("base", BERT_MATRICES[4], np.nan),
        ("base", BERT_MATRICES[2], -np.inf),
        ("finetuned", BERT_MATRICES[1], np.inf),
        ("finetuned", BERT_MATRICES[5], np.nan),
        ("finetuned", BERT_VECTORS[1], np.inf),
    ],
    ids=["nan-in-base", "neg-inf-in-base", "inf-in-finetuned", "nan-in-finetuned", "inf-in-finetuned-bias"],
)
def test_non_finite_weights(tmp_path, side, tensor, value):
    base = weights()
    ft = finetune(base)
    target = base if side == "base" else ft
    target[tensor] = target[tensor].copy()
    target[tensor].flat[7] = value
    b_dir, f_dir = save_folder(tmp_path / "base", base), save_folder(tmp_path / "ft", ft)
    bad_file = (b_dir if side == "base" else f_dir) / "model.safetensors"
    out = tmp_path / "out"
    line = check_failure(invoke(*spectrum_args(b_dir, f_dir, out)), out, str(bad_file), f"'{tensor}'")
    assert "NaN" in line or "Inf" in line


def test_nan_in_base_subprocess(tmp_path):
    base = weights()
    ft = finetune(base)
    base[QUERY0][3, 4] = np.nan
    b_file = save_single(tmp_path / "base.safetensors", base)
    f_file = save_single(tmp_path / "ft.safetensors", ft)
    out = tmp_path / "out"
    proc = run_subprocess(*spectrum_args(b_file, f_file, out), cwd=tmp_path)
    error_line(proc.stderr, proc.returncode, str(b_file), QUERY0)
    assert "Traceback" not in proc.stdout
    assert leftovers(out) == []


# --------------------------------------------------------------------------------------------
# output folder problems
# --------------------------------------------------------------------------------------------


def test_out_under_a_regular_file(tmp_path):
    """Unwritable OUT that works even as root: its parent is a regular file."""
    base, ft = valid_pair(tmp_path)
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    out = blocker / "out"
    check_failure(invoke(*spectrum_args(base, ft, out)), out, str(out))
    assert blocker.read_text() == "keep me"
    assert list(tmp_path.glob(".out.partial-*")) == [] and list(tmp_path.glob(".file.txt.partial-*")) == []


def test_out_is_an_existing_file(tmp_path):
    base, ft = valid_pair(tmp_path)
    out = tmp_path / "result.csv"
    out.write_text("precious")
    check_failure(invoke(*spectrum_args(base, ft, out)), None, str(out))
    assert out.read_text() == "precious"
    assert list(tmp_path.glob(".result.csv.*")) == []


def test_out_is_a_foreign_non_empty_folder(tmp_path):
    """Refuse, and never delete what is inside."""
    base, ft = valid_pair(tmp_path)
    out = tmp_path / "my-thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("months of work")
    (out / "figs").mkdir()
    (out / "figs" / "f1.png").write_bytes(b"\x89PNG")
    line = check_failure(invoke(*spectrum_args(base, ft, out)), None, str(out))
    assert "not empty" in line or "not a rankscope result" in line
    assert (out / "chapter1.tex").read_text() == "months of work"
    assert (out / "figs" / "f1.png").read_bytes() == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir()) == ["chapter1.tex", "figs"]
    assert list(tmp_path.glob(".my-thesis.*")) == []


def test_failed_run_keeps_an_earlier_result_intact(tmp_path):
    base, ft = valid_pair(tmp_path)
    out = tmp_path / "res"
    assert invoke(*spectrum_args(base, ft, out)).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    missing = tmp_path / "gone"
    check_failure(invoke(*spectrum_args(missing, ft, out)), None, str(missing))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert list(tmp_path.glob(".res.*")) == []


@pytest.mark.parametrize("exc", [RankscopeError("figure backend exploded"), RuntimeError("plotting bug")],
                         ids=["input-error", "unexpected-error"])
def test_failure_while_writing_leaves_no_partial_folder(tmp_path, monkeypatch, exc):
    """A failure inside the atomic write (here: the figures) removes the hidden work folder."""
    plots = importlib.import_module("rankscope.figures.spectrum")

    def boom(result, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "half.png").write_bytes(b"half")
        raise exc

    monkeypatch.setattr(plots, "render_spectrum_figures", boom)
    base, ft = valid_pair(tmp_path)
    out = tmp_path / "out"
    result = invoke("spectrum", base, ft, "-o", out, "-q")
    assert "Traceback" not in result.stderr
    assert result.exit_code == (2 if isinstance(exc, RankscopeError) else 1), result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(exc) in lines[0], result.stderr
    assert leftovers(out) == []


# --------------------------------------------------------------------------------------------
# bad options
# --------------------------------------------------------------------------------------------

BAD_OPTIONS = {
    "tau-above-one": (["--tau", "1.5"], "--tau"),
    "tau-zero": (["--tau", "0,0.9"], "--tau"),
    "tau-not-a-number": (["--tau", "abc"], "--tau"),
    "tau-empty": (["--tau", ""], "--tau"),
    "include-invalid-regex": (["--include", "("], "--include"),
    "exclude-invalid-regex": (["--exclude", "[a-"], "--exclude"),
    "method-unknown": (["--method", "nope"], "--method"),
    "workers-zero": (["--workers", "0"], "--workers"),
    "device-unknown": (["--device", "tpu"], "--device"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_option_names_the_option(tmp_path, case):
    """Exit 2 and exactly one ``Error:`` line naming the option (click's usage header tolerated)."""
    options, name = BAD_OPTIONS[case]
    base, ft = valid_pair(tmp_path)
    out = tmp_path / "out"
    check_failure(invoke(*spectrum_args(base, ft, out, *options)), out, name, strict=False)


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_option_error_is_one_line(tmp_path, case):
    """The documented contract: bad input prints ONE line on stderr, option errors included."""
    options, name = BAD_OPTIONS[case]
    base, ft = valid_pair(tmp_path)
    out = tmp_path / "out"
    check_failure(invoke(*spectrum_args(base, ft, out, *options)), out, name, strict=True)


def test_bad_option_subprocess(tmp_path):
    base, ft = valid_pair(tmp_path)
    out = tmp_path / "out"
    proc = run_subprocess(*spectrum_args(base, ft, out, "--include", "("), cwd=tmp_path)
    error_line(proc.stderr, proc.returncode, "--include", "(")
    assert leftovers(out) == []


# --------------------------------------------------------------------------------------------
# --debug shows the traceback
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before-command", "after-command"])
def test_debug_shows_traceback_subprocess(tmp_path, where):
    _, ft = valid_pair(tmp_path)
    missing = tmp_path / "missing-base"
    out = tmp_path / "out"
    args = spectrum_args(missing, ft, out)
    args = ["--debug", *args] if where == "before-command" else [*args, "--debug"]
    proc = run_subprocess(*args, cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr, proc.stderr
    assert "RankscopeError" in proc.stderr and str(missing) in proc.stderr
    assert leftovers(out) == []


def test_debug_reraises_in_process(tmp_path):
    base, ft = valid_pair(tmp_path)
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(CORRUPT["garbage-bytes"]())
    out = tmp_path / "out"
    result = invoke("--debug", *spectrum_args(base, bad, out))
    assert result.exit_code != 0
    assert isinstance(result.exception, RankscopeError), result.exc_info
    assert str(bad) in str(result.exception)
    assert leftovers(out) == []


# --------------------------------------------------------------------------------------------
# rankscope plot on something that is not a result
# --------------------------------------------------------------------------------------------


def _not_a_result(tmp_path: Path, kind: str) -> Path:
    target = tmp_path / "target"
    if kind == "missing":
        return target
    if kind == "regular-file":
        target.write_text("hello")
        return target
    target.mkdir()
    if kind == "model-folder":
        save_file(weights(), str(target / "model.safetensors"))
    elif kind == "junk-run-json":
        (target / "run.json").write_text("{ not json")
    elif kind == "run-json-only":
        (target / "run.json").write_text(json.dumps({"command": "spectrum"}))
    return target


@pytest.mark.parametrize("kind", ["missing", "regular-file", "empty-folder", "model-folder", "junk-run-json",
                                  "run-json-only"])
def test_plot_on_a_folder_that_is_not_a_result(tmp_path, kind):
    target = _not_a_result(tmp_path, kind)
    before = sorted(p.name for p in target.iterdir()) if target.is_dir() else None
    check_failure(invoke("plot", target), None, str(target))
    if before is not None:
        assert sorted(p.name for p in target.iterdir()) == before, "plot wrote into a folder that is not a result"
    elif kind == "missing":
        assert not target.exists()


def test_plot_on_a_non_result_subprocess(tmp_path):
    target = _not_a_result(tmp_path, "model-folder")
    proc = run_subprocess("plot", target, cwd=tmp_path)
    error_line(proc.stderr, proc.returncode, str(target))
    assert not (target / "figures").exists()

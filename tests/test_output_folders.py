"""The output-folder rule: nothing of the user's is ever deleted, interrupted runs leave nothing behind.

``-o OUT`` may be replaced only when it is empty or holds a complete result that rankscope wrote for the
same command (recognised by the marker in its ``run.json``); anything else is refused with exit 2 and one
line, unless ``--overwrite``, which replaces rankscope's own files and keeps every other one.  Every test
here builds its own inputs (tiny safetensors pairs and adapters in ``tmp_path``) and compares the whole
tree under ``tmp_path`` before and after a refused run: not one byte may change.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from rankscope.cli import main
from rankscope.io.results import PARTIAL_MARKER, read_marker

ROOT = Path(__file__).resolve().parents[1]
DIM = 16
MATRICES = [f"encoder.layer.{i}.attention.self.{m}.weight" for i in range(2) for m in ("query", "value")]


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def make_pair(root: Path, dim: int = DIM, names: list[str] = MATRICES) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    base = {n: rng.standard_normal((dim, dim)).astype(np.float32) for n in names}
    ft = {n: (v + 1e-2 * rng.standard_normal(v.shape)).astype(np.float32) for n, v in base.items()}
    folders = []
    for name, tensors in (("base", base), ("ft", ft)):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
        folders.append(folder)
    return folders[0], folders[1]


def make_adapter(folder: Path, r: int = 2, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name in MATRICES:
        module = name.removesuffix(".weight")
        tensors[f"base_model.model.{module}.lora_A.weight"] = rng.standard_normal((r, DIM)).astype(np.float32)
        tensors[f"base_model.model.{module}.lora_B.weight"] = rng.standard_normal((DIM, r)).astype(np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["query", "value"]}))
    return folder


@pytest.fixture()
def inputs(tmp_path):
    base, ft = make_pair(tmp_path / "in")
    return {"base": base, "ft": ft, "adapter": make_adapter(tmp_path / "in" / "adapter"),
            "adapter2": make_adapter(tmp_path / "in" / "adapter2", seed=1)}


def command_args(command: str, io: dict, out: Path) -> list[str]:
    """A valid, cheap invocation of every command that takes ``-o``."""
    b, f, a, a2 = (str(io[k]) for k in ("base", "ft", "adapter", "adapter2"))
    args = {
        "spectrum": ["spectrum", b, f, "--no-plots", "-q"],
        "lora": ["lora", a, "--no-plots", "-q"],
        "compare": ["compare", b, f, a, "--no-plots", "-q"],
        "compare-adapters": ["compare-adapters", a, a2, "--no-plots", "-q"],
        "recommend": ["recommend", b, f, "--rule", "energy:0.5", "--no-plots", "-q"],
        "extract": ["extract", b, f, "--rank", "2", "--no-plots", "-q"],
        "intrinsic-dim": ["intrinsic-dim", "--task", "toy", "--d", "10", "-q"],
        "train": ["train", "--model", b, "--task", "rotten-tomatoes", "-q"],
    }[command]
    return [*args, "-o", str(out)]


COMMANDS = ["spectrum", "lora", "compare", "compare-adapters", "recommend", "extract", "intrinsic-dim", "train"]
CHEAP = [c for c in COMMANDS if c != "train"]  # train refuses before work, but succeeding would take a real run


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=True)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a digest of its content (files), its target (symlinks) or 'dir'."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_clean_refusal(result, *fragments: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def foreign_folder(out: Path) -> Path:
    """A W&B-style run folder: its own run.json and the user's notes."""
    out.mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"id": "3kx9", "project": "my-sweep", "state": "finished"}))
    (out / "notes.md").write_text("do not lose this\n")
    return out


# --------------------------------------------------------------------------------------------
# refusals: foreign folders, other commands' results, train models
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_foreign_run_json_folder_is_refused_by_every_command(tmp_path, inputs, command):
    out = foreign_folder(tmp_path / "wandb-run")
    before = snapshot(tmp_path)
    result = invoke(command_args(command, inputs, out))
    assert_clean_refusal(result, str(out), "--overwrite")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_result_of_another_command_is_refused(tmp_path, inputs, command):
    other = "lora" if command == "spectrum" else "spectrum"
    out = tmp_path / "earlier"
    assert invoke(command_args(other, inputs, out)).exit_code == 0
    assert read_marker(out)["command"] == other
    before = snapshot(tmp_path)
    result = invoke(command_args(command, inputs, out))
    assert_clean_refusal(result, f"rankscope {other}")
    assert snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory) -> Path:
    """A real `rankscope train` output (tiny BERT, one epoch)."""
    import torch
    from tiny_text import bert_folder, write_easy_csv

    from rankscope.train import train

    root = tmp_path_factory.mktemp("trained")
    model, data = bert_folder(root / "bert"), write_easy_csv(root / "easy.csv")
    torch.set_num_threads(1)
    train(model, "easy", "full", root / "model", data=data, text_column="review", label_column="sentiment",
          epochs=1, batch_size=8, max_length=16, progress=False)
    return root / "model"


@pytest.mark.parametrize("command", CHEAP)
def test_a_train_model_folder_is_never_replaced(tmp_path, inputs, trained_model, command):
    out = tmp_path / "model"
    os.system(f"cp -a {trained_model} {out}")
    assert read_marker(out)["command"] == "train" and (out / "model.safetensors").is_file()
    before = snapshot(tmp_path)
    result = invoke(command_args(command, inputs, out))
    assert_clean_refusal(result, "a model trained by `rankscope train`")
    assert snapshot(tmp_path) == before


def test_an_extract_adapter_is_never_replaced_by_another_command(tmp_path, inputs):
    out = tmp_path / "adapter"
    assert invoke(command_args("extract", inputs, out)).exit_code == 0
    before = snapshot(tmp_path)
    assert_clean_refusal(invoke(command_args("spectrum", inputs, out)), "an adapter written by `rankscope extract`")
    assert snapshot(tmp_path) == before


def test_train_refuses_a_foreign_folder_before_loading_anything(tmp_path):
    out = foreign_folder(tmp_path / "out")
    before = snapshot(tmp_path)
    t0 = time.perf_counter()
    result = invoke(["train", "--model", str(tmp_path / "no-such-model"), "-o", str(out)])
    assert_clean_refusal(result, str(out))  # the folder, not the missing model: checked first
    assert time.perf_counter() - t0 < 5 and snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------
# what may be replaced, and --overwrite
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", CHEAP)
def test_same_command_result_is_replaced_and_marked(tmp_path, inputs, command):
    out = tmp_path / "out"
    assert invoke(command_args(command, inputs, out)).exit_code == 0
    marker = read_marker(out)
    assert marker["tool"] == "rankscope" and marker["command"] == command and marker["version"]
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert sorted(marker["files"]) == on_disk  # the marker lists exactly what was written
    again = invoke(command_args(command, inputs, out))
    assert again.exit_code == 0, again.output
    assert read_marker(out)["command"] == command
    assert not list(tmp_path.glob(".out.*"))


def test_same_command_result_with_a_users_file_needs_overwrite_and_keeps_it(tmp_path, inputs):
    out = tmp_path / "out"
    assert invoke(command_args("spectrum", inputs, out)).exit_code == 0
    (out / "my-notes.txt").write_text("mine")
    (out / "figures").mkdir()
    (out / "figures" / "my-plot.png").write_bytes(b"\x89PNG mine")
    before = snapshot(tmp_path)
    assert_clean_refusal(invoke(command_args("spectrum", inputs, out)), "2 file(s) rankscope did not write", "--overwrite")
    assert snapshot(tmp_path) == before
    result = invoke([*command_args("spectrum", inputs, out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "my-notes.txt").read_text() == "mine"
    assert (out / "figures" / "my-plot.png").read_bytes() == b"\x89PNG mine"
    assert "my-notes.txt" not in read_marker(out)["files"] and (out / "modules.csv").is_file()


@pytest.mark.parametrize("command", CHEAP)
def test_a_file_edited_after_rankscope_wrote_it_is_the_users_and_never_replaced(tmp_path, inputs, command):
    """The marker keeps a SHA-256 per file: an edited file of an earlier result (a model card, a table) is refused
    on a plain re-run and with ``--overwrite`` alike, and nothing in the folder changes."""
    out = tmp_path / "out"
    assert invoke(command_args(command, inputs, out)).exit_code == 0
    marker = read_marker(out)
    assert set(marker["digests"]) == set(marker["files"]) - {"run.json"}
    victim = next(f for f in marker["files"] if f.endswith((".md", ".csv", ".json")) and f != "run.json")
    (out / victim).write_text((out / victim).read_text() + "\n<!-- my edit -->\n")
    before = snapshot(tmp_path)
    assert_clean_refusal(invoke(command_args(command, inputs, out)), "changed since rankscope wrote", victim)
    assert snapshot(tmp_path) == before
    forced = invoke([*command_args(command, inputs, out), "--overwrite"])  # refused when the result is installed
    errors = [line for line in forced.stderr.splitlines() if line.startswith("Error: ")]
    assert forced.exit_code == 2 and len(errors) == 1 and "Traceback" not in forced.output, forced.output
    assert victim in errors[0] and "changed since rankscope wrote" in errors[0]
    assert snapshot(tmp_path) == before


def test_files_rankscope_adds_later_keep_a_result_its_own(tmp_path, inputs):
    """`plot` (re-rendered figures) and `report -o OUT/…` update the digests: a re-run then replaces the result."""
    out = tmp_path / "out"
    assert invoke(command_args("spectrum", inputs, out)).exit_code == 0
    assert invoke(["plot", str(out)]).exit_code == 0
    result = invoke(["report", str(out), "-o", str(out / "report.html")])
    assert result.exit_code == 0, result.output
    marker = read_marker(out)
    assert "report.html" in marker["files"] and "report.html" in marker["digests"]
    again = invoke(command_args("spectrum", inputs, out))
    assert again.exit_code == 0, again.output


def test_overwrite_of_another_result_keeps_foreign_files_and_drops_only_rankscope_files(tmp_path, inputs):
    out = tmp_path / "out"
    assert invoke(command_args("extract", inputs, out)).exit_code == 0
    extract_files = read_marker(out)["files"]
    (out / "NOTES.md").write_text("my adapter")  # (README.md is extract's own: its model card)
    result = invoke([*command_args("spectrum", inputs, out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "NOTES.md").read_text() == "my adapter"
    assert read_marker(out)["command"] == "spectrum"
    for name in extract_files:
        if name not in read_marker(out)["files"]:
            assert not (out / name).exists(), name


def test_overwrite_never_replaces_a_foreign_file_of_the_same_name(tmp_path, inputs):
    out = tmp_path / "out"
    out.mkdir()
    (out / "modules.csv").write_text("my own table")
    before = snapshot(tmp_path)
    result = invoke([*command_args("spectrum", inputs, out), "--overwrite"])
    assert_clean_refusal(result, "modules.csv")
    assert snapshot(tmp_path) == before


def test_overwrite_into_a_foreign_folder_adds_files_and_keeps_everything(tmp_path, inputs):
    out = foreign_folder(tmp_path / "out")
    (out / "run.json").unlink()  # a W&B run.json would clash with ours: tested above as a refusal
    result = invoke([*command_args("spectrum", inputs, out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "notes.md").read_text() == "do not lose this\n" and (out / "modules.csv").is_file()


def test_empty_folder_is_used(tmp_path, inputs):
    out = tmp_path / "out"
    out.mkdir()
    assert invoke(command_args("spectrum", inputs, out)).exit_code == 0
    assert (out / "modules.csv").is_file()


# --------------------------------------------------------------------------------------------
# symlinks
# --------------------------------------------------------------------------------------------


def test_symlink_to_an_empty_folder_writes_into_the_target(tmp_path, inputs):
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    result = invoke(command_args("spectrum", inputs, link))
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and (target / "modules.csv").is_file()
    assert invoke(command_args("spectrum", inputs, link)).exit_code == 0  # and replaces its own result there
    assert link.is_symlink() and (target / "modules.csv").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_symlink_to_a_foreign_folder_is_refused(tmp_path, inputs):
    target = foreign_folder(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(target)
    before = snapshot(tmp_path)
    assert_clean_refusal(invoke(command_args("spectrum", inputs, link)), str(link))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_dangling_or_looping_symlink_is_refused_before_any_work(tmp_path, inputs, kind):
    link = tmp_path / "link"
    if kind == "dangling":
        link.symlink_to(tmp_path / "nowhere")
    else:
        link.symlink_to(tmp_path / "link2")
        (tmp_path / "link2").symlink_to(link)
    before = snapshot(tmp_path)
    assert_clean_refusal(invoke(command_args("spectrum", inputs, link)), "symlink")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------
# permissions
# --------------------------------------------------------------------------------------------


def _assert_modes(out: Path, umask: int) -> None:
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    for f in out.rglob("*"):
        expected = (0o777 if f.is_dir() else 0o666) & ~umask
        assert f.stat().st_mode & 0o777 == expected, (f, oct(f.stat().st_mode))


@pytest.mark.parametrize("umask", [0o022, 0o027])
@pytest.mark.parametrize("command", ["spectrum", "extract", "intrinsic-dim"])
def test_created_folders_and_files_follow_the_umask(tmp_path, inputs, umask, command):
    out = tmp_path / "out"
    args = command_args(command, inputs, out)
    if command == "spectrum":
        args = [a for a in args if a != "--no-plots"]  # figures too
    old = os.umask(umask)
    try:
        assert invoke(args).exit_code == 0
    finally:
        os.umask(old)
    _assert_modes(out, umask)
    if command == "extract":
        assert (out / "adapter_model.safetensors").is_file()  # safetensors writes 0600 on its own


def test_a_trained_model_follows_the_umask(trained_model):
    mask = os.umask(0)
    os.umask(mask)  # the process umask, under which the fixture trained (safetensors and torch write 0600)
    _assert_modes(trained_model, mask)


# --------------------------------------------------------------------------------------------
# interruptions (real processes and real signals)
# --------------------------------------------------------------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_HOME"] = str(tmp_path / ".hf-home")
    env["MPLBACKEND"] = "Agg"
    return env


def _start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rankscope.cli", *args], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _assert_one_line_interrupt(proc: subprocess.Popen, signum: int) -> None:
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum], (proc.returncode, err)
    assert "Traceback" not in err and len(lines) == 1 and "interrupted" in lines[0], err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_importing_is_one_line(tmp_path, inputs, signum):
    out = tmp_path / "out"
    proc = _start(command_args("spectrum", inputs, out), tmp_path)
    time.sleep(0.15)  # the package and numpy are still importing
    proc.send_signal(signum)
    _assert_one_line_interrupt(proc, signum)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_writing_removes_the_partial_folder(tmp_path, signum):
    base, ft = make_pair(tmp_path / "in", dim=64)
    out = tmp_path / "out"
    for _attempt in range(5):  # on a loaded machine the run may finish between our poll and the signal: retry
        proc = _start(["spectrum", str(base), str(ft), "-o", str(out), "-q"], tmp_path)  # figures: a second or more
        deadline = time.time() + 90
        while not list(tmp_path.glob(".out.partial-*")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0 and not err.strip():  # it was done before the signal landed
            import shutil

            shutil.rmtree(out)
            continue
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum], (proc.returncode, err)
        assert "Traceback" not in err and len(lines) == 1 and "interrupted" in lines[0], err
        break
    else:
        pytest.fail("every run finished before the signal")
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".out", "out")))
    if "nothing was written" not in err:  # the signal landed just after the result was installed: it is complete, and said so
        assert left == ["out"] and read_marker(out) is not None, left
    else:
        assert not left, left


def test_killed_run_leaves_a_partial_that_the_next_run_removes(tmp_path, inputs):
    out = tmp_path / "out"
    proc = _start(command_args("spectrum", inputs, out)[:-3] + ["-o", str(out)], tmp_path)
    deadline = time.time() + 90
    while not list(tmp_path.glob(".out.partial-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    stale = list(tmp_path.glob(".out.partial-*"))
    if not stale:  # the run outran the poll: plant what a SIGKILL leaves, owned by a finished process
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        folder = tmp_path / f".out.partial-{dead.pid}-abc"
        folder.mkdir()
        (folder / "run.json").write_text("{}")
        (folder / PARTIAL_MARKER).write_text(json.dumps({"tool": "rankscope", "pid": dead.pid,
                                                         "host": socket.gethostname(), "started": 0}))
        stale = [folder]
    # killed between mkdtemp and writing its marker: named like ours, owner gone, empty -> removed too
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    unmarked = tmp_path / f".out.partial-{dead.pid}-abcd1234"
    unmarked.mkdir()
    stale.append(unmarked)
    # killed while writing its marker: only a cut-short marker inside -> removed too
    truncated = tmp_path / f".out.partial-{dead.pid}-trunc123"
    truncated.mkdir()
    (truncated / PARTIAL_MARKER).write_text('{"tool": "rank')
    stale.append(truncated)
    # not ours: no marker (and not empty), no pid, or a live owner -> kept
    kept = tmp_path / f".out.partial-{dead.pid}-keepme12"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    foreign = tmp_path / ".out.partial-mine"
    foreign.mkdir()
    live = tmp_path / f".out.partial-{os.getpid()}-live"
    live.mkdir()
    (live / PARTIAL_MARKER).write_text(json.dumps({"tool": "rankscope", "pid": os.getpid(),
                                                   "host": socket.gethostname(), "started": 0}))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    result = invoke(command_args("spectrum", inputs, out))
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in stale)
    assert foreign.is_dir() and live.is_dir() and (kept / "notes.txt").read_text() == "mine"


def test_crash_between_the_two_renames_restores_the_earlier_result(tmp_path, inputs):
    out = tmp_path / "out"
    assert invoke(command_args("spectrum", inputs, out)).exit_code == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = tmp_path / f".out.old-{dead.pid}"
    out.rename(old)  # what a run killed between moving OUT aside and moving the new result in leaves
    (old / PARTIAL_MARKER).write_text(json.dumps({"tool": "rankscope", "pid": dead.pid,
                                                  "host": socket.gethostname(), "started": 0}))
    earlier = snapshot(old)
    from rankscope.io.results import check_output_target

    check_output_target(out, "spectrum")
    assert out.is_dir() and not old.exists()
    assert {k: v for k, v in snapshot(out).items() if k != PARTIAL_MARKER} == {
        k: v for k, v in earlier.items() if k != PARTIAL_MARKER}


# --------------------------------------------------------------------------------------------
# intrinsic-dim: resumable, but the same rule for foreign folders
# --------------------------------------------------------------------------------------------


def test_intrinsic_dim_resumes_its_own_search_and_recomputes_a_corrupt_cache_entry(tmp_path, inputs):
    out = tmp_path / "id"
    args = command_args("intrinsic-dim", inputs, out)
    first = invoke(args)
    assert first.exit_code == 0, first.output
    assert read_marker(out)["command"] == "intrinsic-dim"
    cached = sorted((out / "runs").glob("*.json"))
    assert cached
    cached[0].write_text('{"metric": "abc"')  # truncated and wrongly typed
    (out / "my-notes.txt").write_text("mine")
    again = invoke(args)
    assert again.exit_code == 0, again.output
    assert "corrupt run-cache entry" in again.stderr and cached[0].name in again.stderr
    assert isinstance(json.loads(cached[0].read_text())["metric"], float)
    assert (out / "my-notes.txt").read_text() == "mine"


def test_intrinsic_dim_restart_removes_only_its_cache(tmp_path, inputs):
    out = tmp_path / "id"
    args = command_args("intrinsic-dim", inputs, out)
    assert invoke(args).exit_code == 0
    (out / "runs" / "keep-me.txt").write_text("mine")
    result = invoke([*args, "--restart"])
    assert result.exit_code == 0, result.output
    assert (out / "runs" / "keep-me.txt").read_text() == "mine"

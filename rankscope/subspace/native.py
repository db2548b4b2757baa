"""Native kernels for subspace training: the FWHT and the Fastfood gather/scatter in C, called through ctypes.

``native/kernels.c`` is compiled on first use with the machine's C compiler (``$CC``, else ``cc``;
``-O3 -march=native -pthread``) into ``$RANKSCOPE_CACHE_DIR`` (default ``$XDG_CACHE_HOME/rankscope`` or
``~/.cache/rankscope``; a temporary folder when that is not writable), under a name keyed by the source, the flags, the compiler's version and the CPU's
feature flags, so a changed source or another machine builds afresh; the library is written to a temporary
name and renamed, so a build that is interrupted never leaves a broken library behind.

The kernels take float32 CPU tensors; everything else (float64, CUDA) and every machine without a compiler
uses the pure-torch transform of :mod:`.fwht`, which is also the reference the tests hold these kernels to.
``RANKSCOPE_NATIVE=0`` turns the kernels off; a failed build says so once (a warning naming the compiler
error) and falls back.

Why: on this 2-core CPU the torch transform moves ≈ 0.4–1 GB/s (a GEMM and a transposed copy per 4
butterfly stages, each a pass over memory); the cache-blocked C transform does all stages in two passes
(``benchmarks/subspace.py`` prints both side by side).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("native") / "kernels.c"
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-pthread", "-std=c11")
_enabled = os.environ.get("RANKSCOPE_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")

_I64, _INT, _PTR = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
_SIGNATURES = {
    "rs_fwht": [_PTR, _PTR, _I64, _INT, _INT],
    "rs_fwht_blocked": [_PTR, _PTR, _I64, _INT, _INT, _INT, _INT],
    "rs_fastfood_expand": [_PTR, _I64, _PTR, _PTR, _PTR, _I64, _INT, _INT],
    "rs_fastfood_scatter": [_PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64, _INT],
}


def cache_dir() -> Path:
    """Where compiled kernels are kept."""
    if os.environ.get("RANKSCOPE_CACHE_DIR"):
        return Path(os.environ["RANKSCOPE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rankscope"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build_key(compiler: str) -> str:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    text = "\n".join([SOURCE.read_text(), " ".join(FLAGS), version, platform.machine(), _cpu_flags()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _build() -> Path:
    """Compile the kernels (once per source, compiler and CPU) and return the shared library's path."""
    compiler = _compiler()
    if compiler is None:
        raise OSError("no C compiler found (set CC)")
    name = f"kernels-{_build_key(compiler)}.so"
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"rankscope-{os.getuid()}"):  # read-only home: /tmp
        target = folder / name
        if target.exists():
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=folder)
            break
        except OSError:
            continue
    else:
        raise OSError(f"no writable folder for the compiled kernels (tried {cache_dir()}; set RANKSCOPE_CACHE_DIR)")
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise OSError(f"{compiler} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return target


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(str(_build()))
    except (OSError, subprocess.SubprocessError) as exc:
        warnings.warn(f"rankscope: native kernels unavailable, using the torch FWHT ({exc})", RuntimeWarning,
                      stacklevel=3)
        return None
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return lib


def available() -> bool:
    """Whether the native kernels are switched on and built (builds them on first call)."""
    return _enabled and _library() is not None


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run a block on the pure-torch path (for references and comparisons)."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the native kernels can take these tensors: float32 on the CPU (and the kernels available)."""
    if not _enabled or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    return available()


def _check(status: int, what: str) -> None:
    if status == -2:
        raise ValueError(f"native {what}: blocking out of range")
    if status != 0:
        raise MemoryError(f"native {what}: could not allocate its working buffers")


def _require(what: str, *tensors: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
    """The kernels read raw memory: refuse anything but contiguous CPU tensors of the expected dtype."""
    for t in tensors:
        if t.device.type != "cpu" or t.dtype != dtype or not t.is_contiguous():
            raise ValueError(f"native {what}: needs contiguous {dtype} CPU tensors, got {t.dtype} on {t.device}"
                             f"{'' if t.is_contiguous() else ' (not contiguous)'}")


def _threads(threads: int | None) -> int:
    return max(1, int(threads) if threads is not None else torch.get_num_threads())


def fwht_rows(x: torch.Tensor, out: torch.Tensor | None = None, *, threads: int | None = None,
              blocking: tuple[int, int] | None = None) -> torch.Tensor:
    """``H_L`` applied to each row of a contiguous float32 ``(rows, L)`` tensor (``out`` may be ``x``).

    ``threads``: default ``torch.get_num_threads()``.  ``blocking``: ``(chunk_bits, group_bits)`` of the
    passes (see kernels.c; the default is tuned, other values exist for the tests).
    """
    rows, length = x.shape
    if length & (length - 1):
        raise ValueError(f"native fwht: needs a power-of-two length, got {length}")
    out = torch.empty_like(x) if out is None else out
    _require("fwht", x, out)
    if out.shape != x.shape:
        raise ValueError(f"native fwht: out has shape {tuple(out.shape)}, not {tuple(x.shape)}")
    lib, bits = _library(), length.bit_length() - 1
    if blocking is None:
        status = lib.rs_fwht(x.data_ptr(), out.data_ptr(), rows, bits, _threads(threads))
    else:
        status = lib.rs_fwht_blocked(x.data_ptr(), out.data_ptr(), rows, bits, _threads(threads), *blocking)
    _check(status, "fwht")
    return out


def fastfood_expand(h: torch.Tensor, index: torch.Tensor, scale: torch.Tensor, *,
                    threads: int | None = None) -> torch.Tensor:
    """``y[r] = H_L (scale[r] ⊙ h[r, index[r]])``: ``h`` is ``(rows, n)``, ``index`` (int32) and ``scale`` ``(rows, L)``."""
    rows, length = index.shape
    _require("fastfood expansion", h, scale)
    _require("fastfood expansion", index, dtype=torch.int32)
    if scale.shape != index.shape or h.shape[0] != rows or length & (length - 1):
        raise ValueError("native fastfood expansion: h (rows, n), index and scale (rows, L = 2^k) disagree")
    out = torch.empty(rows, length, dtype=torch.float32)
    status = _library().rs_fastfood_expand(h.data_ptr(), h.shape[1], index.data_ptr(), scale.data_ptr(),
                                           out.data_ptr(), rows, length.bit_length() - 1, _threads(threads))
    _check(status, "fastfood expansion")
    return out


def fastfood_scatter(g: torch.Tensor, index: torch.Tensor, scale: torch.Tensor, n: int, *,
                     threads: int | None = None) -> torch.Tensor:
    """The gather's adjoint: ``out[r, j] = Σ_{i: index[r, i] = j} scale[r, i] · g[r, i]``, shape ``(rows, n)``."""
    rows, length = index.shape
    _require("fastfood scatter", g, scale)
    _require("fastfood scatter", index, dtype=torch.int32)
    if g.shape != index.shape or scale.shape != index.shape:
        raise ValueError("native fastfood scatter: g, index and scale must have one shape (rows, L)")
    out = torch.zeros(rows, n, dtype=torch.float32)
    status = _library().rs_fastfood_scatter(g.data_ptr(), index.data_ptr(), scale.data_ptr(), out.data_ptr(),
                                            rows, length, n, _threads(threads))
    _check(status, "fastfood scatter")
    return out

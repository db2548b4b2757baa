"""Result folders that are either complete or absent, and the ``run.json`` that describes them.

A result is written into a hidden sibling ``.NAME.partial-XXXX`` and renamed onto ``OUT`` only
when everything is in place, so an interrupted or failed run never leaves a folder that looks
complete.  An existing ``OUT`` is replaced only if it is empty or a previous rankscope result
(it holds a ``run.json``).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import RankscopeError

PACKAGES = ("rankscope", "numpy", "scipy", "pandas", "torch", "safetensors", "transformers", "peft", "matplotlib", "seaborn")


def versions() -> dict[str, str | None]:
    """Installed versions of Python and the packages rankscope builds on (``None`` if absent)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def check_output_target(out: Path) -> None:
    """Fail early (before any computation) if ``out`` cannot become a result folder."""
    if out.exists() and not out.is_dir():
        raise RankscopeError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "run.json").is_file():
        raise RankscopeError(f"output folder {out} is not empty and is not a rankscope result; choose another -o")
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise RankscopeError(f"cannot write output folder {out}: {ancestor} is not a writable folder")


@contextmanager
def atomic_output(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``out`` in one rename, on error it vanishes."""
    out = Path(out)
    check_output_target(out)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    except OSError as exc:
        raise RankscopeError(f"cannot write output folder {out}: {exc.strerror or exc}") from exc
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def result_folder(out: str | os.PathLike, info: dict[str, Any]) -> Iterator[Path]:
    """:func:`atomic_output` that also finishes ``info`` and writes it as ``run.json`` on success.

    ``info["seconds"]["total"]`` becomes the analysis time plus the time spent writing (figures
    included); ``info["peak_rss_mb"]`` the peak resident memory of the process.
    """
    t0 = time.perf_counter()
    with atomic_output(out) as tmp:
        yield tmp
        seconds = info.setdefault("seconds", {})
        seconds["total"] = round(seconds.get("analysis", 0.0) + time.perf_counter() - t0, 3)
        info["peak_rss_mb"] = round(peak_rss_mb(), 1)
        write_json(tmp / "run.json", info)


def read_table(path: Path):
    """A result CSV with ``module``/``kind`` as text and ``layer`` as nullable integers."""
    import pandas as pd

    try:
        return pd.read_csv(path, dtype={"layer": "Int64", "module": str, "kind": str})
    except (OSError, ValueError) as exc:
        raise RankscopeError(f"{path}: missing or unreadable ({exc})") from exc


def read_arrays(path: Path) -> dict[str, Any]:
    """Every array of an ``.npz`` file, by key."""
    import numpy as np

    try:
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise RankscopeError(f"{path}: missing or unreadable ({exc})") from exc


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise RankscopeError(f"{path} not found: is this a rankscope result folder?") from exc
    except (OSError, ValueError) as exc:
        raise RankscopeError(f"{path}: unreadable ({exc})") from exc

"""Result folders that are either complete or absent, never touching what rankscope did not write.

A result is written into a hidden sibling ``.NAME.partial-<pid>-XXXX`` (with a marker file naming its
owner process) and renamed onto ``OUT`` only when everything is in place, so an interrupted or
failed run never leaves a folder that looks complete.  Every ``run.json`` rankscope writes carries a
marker, ``"rankscope": {"tool": "rankscope", "command": …, "version": …, "files": [...]}``, listing
the files of that result.  The output-folder rule (:func:`check_output_target`):

* ``OUT`` that does not exist, or is an empty folder, is created;
* ``OUT`` holding a complete result that rankscope wrote **for the same command**, and nothing else,
  is replaced in one rename;
* a file of an earlier result that changed since rankscope wrote it (an edited model card: the marker keeps a
  SHA-256 of every file, ``"digests"``) is the user's now: it counts as a file rankscope did not write;
* anything else — files rankscope did not write, a result of another command (a trained model, an
  extracted adapter), a ``run.json`` without the marker — is refused before any work, unless
  ``overwrite`` is given: then the files of the earlier rankscope result listed in its marker are
  replaced and every other file is kept (a new file whose name is taken by a foreign file is refused);
* ``OUT`` may be a symlink to a folder (the folder is used); a dangling symlink or a loop is refused.

Stale work folders (``.OUT.partial-*``, ``.OUT.old-*``) left by a rankscope process that no longer
runs on this host are removed (an ``.old`` folder is restored if ``OUT`` itself went missing).
Created folders get the permissions of the user's umask.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import resource
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import interrupts
from ..errors import RankscopeError
from ..version import __version__

if TYPE_CHECKING:
    import pandas as pd

PACKAGES = ("rankscope", "numpy", "scipy", "pandas", "torch", "safetensors", "transformers", "peft", "matplotlib", "seaborn")
TOOL = "rankscope"
MARKER = "rankscope"
"""Key of the marker in every ``run.json`` rankscope writes."""
PARTIAL_MARKER = ".rankscope-partial.json"
"""File inside a work folder naming its owner process (removed before the folder becomes ``OUT``)."""
DESCRIPTIONS = {"train": "a model trained by `rankscope train`", "extract": "an adapter written by `rankscope extract`",
                "resize": "an adapter written by `rankscope resize`"}


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


# --------------------------------------------------------------------------------------------------
# the marker
# --------------------------------------------------------------------------------------------------


def tool_version() -> str:
    """The rankscope version written into every marker (:data:`rankscope.version.__version__`)."""
    return __version__


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes (``link:<target>`` for a symlink): what the marker remembers of a file."""
    if path.is_symlink():
        return "link:" + os.readlink(path)
    with open(path, "rb") as handle:
        return "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()


def make_marker(command: str, files: list[str] | None = None, folder: Path | None = None) -> dict[str, Any]:
    """The marker rankscope writes into its ``run.json`` (``files``: the result's files, relative paths).

    With ``folder`` (where the files are now), the marker also keeps each file's :func:`file_digest` (``run.json``
    excepted: it holds the marker), so that a later run can tell a file the user edited from rankscope's own.
    """
    marker: dict[str, Any] = {"tool": TOOL, "command": command, "version": tool_version()}
    if files is not None:
        marker["files"] = files
        if folder is not None:
            marker["digests"] = _digests(folder, files)
    return marker


def _digests(folder: Path, files: list[str]) -> dict[str, str]:
    return {f: file_digest(folder / f) for f in files
            if f != "run.json" and ((folder / f).is_file() or (folder / f).is_symlink())}


def marker_with_files(marker: dict[str, Any], folder: Path, files: list[str]) -> dict[str, Any]:
    """``marker`` with ``files`` (just written into ``folder`` by rankscope) added to its files and digests."""
    digests = marker.get("digests") if isinstance(marker.get("digests"), dict) else None
    updated = {**marker, "files": sorted({*(marker.get("files") or []), *files})}
    if digests is not None:
        updated["digests"] = {**digests, **_digests(folder, files)}
    return updated


def edited_files(folder: Path, marker: dict[str, Any]) -> list[str]:
    """Files of the result in ``folder`` whose bytes differ from what rankscope wrote (per the marker's digests)."""
    digests = marker.get("digests")
    if not isinstance(digests, dict):
        return []  # a marker of an older rankscope: no digests, every listed file counts as rankscope's
    edited = []
    for name, digest in sorted(digests.items()):
        path = folder / name
        if not _is_safe_relative(name) or not (path.is_file() or path.is_symlink()):
            continue
        try:
            if file_digest(path) != digest:
                edited.append(name)
        except OSError:
            edited.append(name)
    return edited


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The rankscope marker of ``folder/run.json``, or ``None`` when there is none (or it is not rankscope's)."""
    try:
        info = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    marker = info.get(MARKER) if isinstance(info, dict) else None
    if not isinstance(marker, dict) or marker.get("tool") != TOOL or not isinstance(marker.get("command"), str):
        return None
    files = marker.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        marker = {**marker, "files": None}
    return marker


def _relative_files(folder: Path) -> list[str]:
    """Every file under ``folder`` (symlinks count as files), as sorted POSIX relative paths."""
    found = []
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        found += [(base / f).relative_to(folder).as_posix() for f in files]
        found += [(base / d).relative_to(folder).as_posix() for d in dirs if (base / d).is_symlink()]
    return sorted(found)


def _is_safe_relative(name: str) -> bool:
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts


# --------------------------------------------------------------------------------------------------
# the output-folder rule
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputTarget:
    """Where a result goes and what is there now (see the module docstring)."""

    path: Path  # the folder to write (symlinks resolved)
    given: Path  # as the user typed it
    state: str  # "new", "empty", "replace" (a complete result of this command) or "merge" (--overwrite)
    previous: tuple[str, ...] = ()  # files of the earlier rankscope result that may be replaced
    edited: tuple[str, ...] = ()  # files of the earlier result changed since rankscope wrote them (kept, never replaced)


def _describe_other(marker: dict[str, Any]) -> str:
    command = marker["command"]
    return DESCRIPTIONS.get(command, f"a result of `rankscope {command}`")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def resolve_output(out: str | os.PathLike) -> Path:
    """``out`` with symlinks resolved; a dangling symlink or a symlink loop is refused."""
    given = Path(out)
    if given.is_symlink():
        target = Path(os.path.realpath(given))
        if target.is_symlink() or not target.exists():
            where = os.readlink(given)
            raise RankscopeError(f"output {given} is a symlink to {where}, which does not exist (or loops); "
                                 "create that folder or give another -o")
        return target
    return Path(os.path.abspath(given))


def check_output_target(out: str | os.PathLike, command: str | None = None, overwrite: bool = False) -> OutputTarget:
    """Decide, before any work, whether ``out`` may receive a ``command`` result (module docstring).

    Raises :class:`RankscopeError` (one line: what is there and how to proceed) when it may not.
    Also removes stale work folders of earlier rankscope runs on this ``out``.
    """
    given = Path(out)
    path = resolve_output(given)
    if path.exists() and not path.is_dir():
        raise RankscopeError(f"output {given} exists and is not a folder")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise RankscopeError(f"cannot write output folder {given}: {ancestor} is not a writable folder")
    remove_stale_work_folders(path)
    if not path.exists():
        return OutputTarget(path, given, "new")
    try:
        entries = list(path.iterdir())
    except OSError as exc:
        raise RankscopeError(f"cannot read output folder {given}: {exc.strerror or exc}") from exc
    if not entries:
        return OutputTarget(path, given, "empty")
    if not os.access(path, os.W_OK | os.X_OK):
        raise RankscopeError(f"cannot write output folder {given}: it is not writable")
    marker = read_marker(path)
    same = marker is not None and (command is None or marker["command"] == command)
    # the files' bytes are read only where an edit changes the answer: another command's result is refused anyway
    edited = edited_files(path, marker) if marker is not None and (same or overwrite) else []
    previous = tuple(f for f in (marker or {}).get("files") or () if _is_safe_relative(f) and f not in edited)
    present = _relative_files(path)
    foreign = sorted(set(present) - set(previous))
    if same and marker.get("files") is not None and not foreign:
        return OutputTarget(path, given, "replace", previous)
    if overwrite:
        return OutputTarget(path, given, "merge", previous if marker is not None else (), tuple(edited))
    hint = "give another -o, or --overwrite to replace rankscope's files there and keep the others"
    if marker is None:
        what = ("a run.json that rankscope did not write" if (path / "run.json").exists()
                else f"{len(present)} file(s) rankscope did not write (e.g. {present[0] if present else entries[0].name})")
        raise RankscopeError(f"output folder {given} is not empty and is not a rankscope result: it holds {what}; {hint}")
    if not same:
        raise RankscopeError(f"output folder {given} holds {_describe_other(marker)}; this `rankscope {command}` "
                             f"result would replace it: {hint}")
    if edited:
        raise RankscopeError(f"output folder {given} holds an earlier `rankscope {command}` result with "
                             f"{len(edited)} file(s) changed since rankscope wrote them (e.g. {edited[0]}): they are "
                             f"yours now and would be replaced; move them, or give another -o")
    example = foreign[0] if foreign else "run.json"
    raise RankscopeError(f"output folder {given} holds an earlier `rankscope {command}` result plus {len(foreign)} "
                         f"file(s) rankscope did not write (e.g. {example}); move them, or {hint}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


_WORK_NAME = re.compile(r"\.(?:partial|old)-(\d+)(?:-[A-Za-z0-9_]{8})?$")
"""The tail of a work folder's name: its owner's pid (``mkdtemp`` adds 8 random characters to partials)."""


def _stale(folder: Path) -> bool:
    """A work folder whose marker names a process of this host that no longer runs.

    A folder killed between its creation and its marker is still recognised: named like ours with a dead
    owner pid, and empty but for a marker whose writing was cut short.
    """
    try:
        owner = json.loads((folder / PARTIAL_MARKER).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        match = _WORK_NAME.search(folder.name)
        try:
            empty = all(entry.name == PARTIAL_MARKER for entry in folder.iterdir())
        except OSError:
            return False
        return bool(match) and empty and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1)))
    if not isinstance(owner, dict) or owner.get("tool") != TOOL or owner.get("host") != socket.gethostname():
        return False
    pid = owner.get("pid")
    return isinstance(pid, int) and pid != os.getpid() and not _pid_alive(pid)


def remove_stale_work_folders(path: Path) -> list[Path]:
    """Remove ``.NAME.partial-*`` / ``.NAME.old-*`` siblings of ``path`` left by dead rankscope processes."""
    parent = path.parent
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    try:
        candidates = sorted(parent.glob(f".{path.name}.partial-*")) + sorted(parent.glob(f".{path.name}.old-*"))
    except OSError:
        return removed
    for folder in candidates:
        if folder.is_symlink() or not folder.is_dir() or not _stale(folder):
            continue
        if ".old-" in folder.name[len(path.name) + 1:] and not path.exists():
            (folder / PARTIAL_MARKER).unlink(missing_ok=True)
            folder.rename(path)  # the run died between its two renames: put the earlier result back
        else:
            shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _owner_marker(folder: Path) -> None:
    data = {"tool": TOOL, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    (folder / PARTIAL_MARKER).write_text(json.dumps(data) + "\n")


def _make_work_folder(target: OutputTarget) -> Path:
    parent = target.path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.path.name}.partial-{os.getpid()}-", dir=parent))
        os.chmod(tmp, 0o777 & ~_umask())
        _owner_marker(tmp)
    except OSError as exc:
        raise RankscopeError(f"cannot write output folder {target.given}: {exc.strerror or exc}") from exc
    return tmp


def apply_umask(folder: Path) -> None:
    """Give every folder and file under ``folder`` the permissions the user's umask asks for.

    Some writers (safetensors' ``save_file``, :func:`tempfile.mkdtemp`) create 0600 / 0700 entries
    whatever the umask; results are meant to be shared like any file the user creates.
    """
    mask = _umask()
    for root, _dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def _install(tmp: Path, target: OutputTarget) -> None:
    """Move the finished work folder onto ``OUT`` according to ``target.state``."""
    apply_umask(tmp)  # before the marker goes: a run killed while this walks stays recognisably ours
    (tmp / PARTIAL_MARKER).unlink(missing_ok=True)
    out = target.path
    if target.state == "merge":
        _merge(tmp, target)
        return
    if target.state == "replace":
        if read_marker(out) is None or set(_relative_files(out)) - set(target.previous):
            raise RankscopeError(f"output folder {target.given} changed while rankscope was running; "
                                 "nothing was replaced")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        _owner_marker_at(old, out)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        tmp.rename(out)  # also replaces an empty folder
    except OSError as exc:
        raise RankscopeError(f"output folder {target.given} appeared or filled while rankscope was running "
                             f"({exc.strerror or exc}); nothing was replaced") from exc


def _owner_marker_at(old: Path, out: Path) -> None:
    """Rename ``out`` to ``old`` and mark it as ours, so a crash between the two renames can be undone."""
    out.rename(old)
    _owner_marker(old)


def _merge(tmp: Path, target: OutputTarget) -> None:
    """``--overwrite``: replace the earlier result's files, keep every other file, ``run.json`` last."""
    out = target.path
    new_files = _relative_files(tmp)
    previous = set(target.previous)
    clash = [f for f in new_files if (out / f).exists() or (out / f).is_symlink()]
    clash = [f for f in clash if f not in previous or (out / f).is_dir()]
    if clash:
        how = "was changed since rankscope wrote it" if clash[0] in target.edited else "was not written by rankscope"
        raise RankscopeError(f"output folder {target.given}: '{clash[0]}' exists and {how}; "
                             "refusing to replace it (move it, or give another -o)")
    if (out / "run.json").is_file() and "run.json" in previous:
        (out / "run.json").unlink()  # the folder must not look complete while files move
    for name in sorted(previous - {"run.json"}):
        victim = out / name
        if victim.is_file() or victim.is_symlink():
            victim.unlink()
    for name in sorted(set(new_files) - {"run.json"}) + (["run.json"] if "run.json" in new_files else []):
        dest = out / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / name, dest)
    for name in sorted(previous, reverse=True):  # folders the earlier result left empty
        folder = (out / name).parent
        while folder != out and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_output(out: str | os.PathLike, command: str | None = None, overwrite: bool = False,
                  info: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a work folder; on success it becomes ``out`` (module docstring), on error it vanishes.

    With ``info``, the marker (``info["rankscope"]``, listing every file written) is added and
    ``info`` is written as ``run.json`` last.
    """
    target = check_output_target(out, command, overwrite)
    tmp: Path | None = None
    held = interrupts.hold()  # a signal while the work folder is made or installed waits until that is done
    try:
        tmp = _make_work_folder(target)
        held = interrupts.release(held)  # a pending signal raises here, inside the clean-up's reach
        yield tmp
        if info is not None:
            write_summary(tmp, info)
            files = sorted({*(f for f in _relative_files(tmp) if f != PARTIAL_MARKER), "run.json"})
            info[MARKER] = make_marker(command or str(info.get("command")), files, tmp)
            write_json(tmp / "run.json", info)
        held = interrupts.hold()
        _install(tmp, target)
        interrupts.wrote(target.given)
        held = interrupts.release(held)
    except BaseException:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        interrupts.release(held)
        raise


SUMMARY_FILE = "summary.json"
_SUMMARY_MAKERS: list[Callable[[Path, dict[str, Any]], dict[str, Any] | None]] = []


def register_summary(maker: Callable[[Path, dict[str, Any]], dict[str, Any] | None]) -> None:
    """Have every result folder get ``summary.json`` = ``maker(folder, info)`` (the key figures of its command).

    Registered by :mod:`rankscope.summaries` (which knows every command's results) when rankscope is imported;
    called by :func:`atomic_output` after the command's files and before ``run.json``.
    """
    if maker not in _SUMMARY_MAKERS:
        _SUMMARY_MAKERS.append(maker)


def write_summary(folder: Path, info: dict[str, Any]) -> str | None:
    """Write ``folder/summary.json`` from the registered maker; returns its name (None when nothing is registered)."""
    for maker in _SUMMARY_MAKERS:
        figures = maker(folder, info)
        if figures is not None:
            write_json(folder / SUMMARY_FILE, figures)
            return SUMMARY_FILE
    return None


@contextmanager
def result_folder(out: str | os.PathLike, info: dict[str, Any], overwrite: bool = False) -> Iterator[Path]:
    """:func:`atomic_output` that also finishes ``info`` and writes it as ``run.json`` (with the marker).

    ``info["seconds"]["total"]`` becomes the analysis time plus the time spent writing (figures
    included); ``info["peak_rss_mb"]`` the peak resident memory of the process.
    """
    t0 = time.perf_counter()
    seconds = info.setdefault("seconds", {})
    with atomic_output(out, str(info.get("command")), overwrite, info) as tmp:
        yield tmp
        seconds["total"] = round(seconds.get("analysis", 0.0) + time.perf_counter() - t0, 3)
        info["peak_rss_mb"] = round(peak_rss_mb(), 1)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def read_table(path: Path, required: tuple[str, ...] = (), numeric: tuple[str, ...] = ()) -> pd.DataFrame:
    """A result CSV with ``module``/``kind`` as text and ``layer`` as nullable integers.

    ``required``: columns that must be there; ``numeric``: columns that, where present, must hold a
    number in every row.  Either problem is a :class:`RankscopeError` naming the file and the column.
    """
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype={"layer": "Int64", "module": str, "kind": str})
    except (OSError, ValueError, TypeError) as exc:  # ValueError covers parser, empty-file and decoding errors
        raise RankscopeError(f"{path}: missing or unreadable ({_reason(exc)})") from exc
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise RankscopeError(f"{path}: no column {', '.join(repr(c) for c in missing)} "
                             f"(not a complete rankscope result table)")
    for col in numeric:
        if col not in table.columns:
            continue
        values = pd.to_numeric(table[col], errors="coerce")
        bad = table[col][values.isna()]
        if len(bad):
            raise RankscopeError(f"{path}: column '{col}' holds {bad.iloc[0]!r} (row {int(bad.index[0]) + 2}), "
                                 f"not a number")
        table[col] = values
    return table


def read_arrays(path: Path, required: tuple[str, ...] = (), ndim: int | None = None) -> dict[str, Any]:
    """Every array of an ``.npz`` file, by key; each must hold real numbers (with ``ndim`` dimensions if given).

    ``required``: keys that must be there.  Problems are a :class:`RankscopeError` naming the file and the key.
    """
    import zipfile

    import numpy as np

    try:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise RankscopeError(f"{path}: missing or unreadable ({_reason(exc)})") from exc
    except (AttributeError, TypeError) as exc:  # np.load of a single .npy array (not an archive)
        raise RankscopeError(f"{path}: not an .npz archive of named arrays") from exc
    for key in required:
        if key not in arrays:
            raise RankscopeError(f"{path}: no array '{key}'")
    for key, value in arrays.items():
        if not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)):
            raise RankscopeError(f"{path}: array '{key}' is not numeric (dtype {value.dtype})")
        if ndim is not None and value.ndim != ndim:
            raise RankscopeError(f"{path}: array '{key}' has {value.ndim} dimensions, expected {ndim}")
    return arrays


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def read_run_info(folder: Path) -> dict[str, Any]:
    """The ``run.json`` of a result folder, which must exist and name its ``command`` (else one RankscopeError)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RankscopeError(f"{folder}: no such result folder")
    info = read_json(folder / "run.json")
    if not isinstance(info.get("command"), str):
        raise RankscopeError(f"{folder / 'run.json'}: not a rankscope run.json (no 'command')")
    return info


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` (a list, a number or broken JSON is one :class:`RankscopeError`)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise RankscopeError(f"{path} not found: is this a rankscope result folder?") from exc
    except (OSError, ValueError, RecursionError) as exc:
        raise RankscopeError(f"{path}: unreadable ({_reason(exc)})") from exc
    if not isinstance(data, dict):
        raise RankscopeError(f"{path}: not a JSON object (got {type(data).__name__})")
    return data

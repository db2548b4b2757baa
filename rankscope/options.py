"""Checks shared by every command on what the user typed or wrote in a file: regular expressions and devices.

Every user-supplied regular expression (``--include``/``--exclude``, ``--phi-modules``, ``--save-modules``,
``rank_pattern``/``alpha_pattern`` keys, a string ``target_modules``) goes through :func:`compile_regex`
before any work starts, so a bad pattern is one line naming the option or file, never a traceback
halfway through a run.  ``--device`` goes through :func:`resolve_device` (``auto``, ``cuda:N`` checked against
the GPUs torch sees).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import RankscopeError

MAX_PATTERN_CHARS = 10_000
"""Longer patterns are refused (a pattern that long is a mistake, and compiling it costs real time)."""


def compile_regex(pattern: object, where: str) -> re.Pattern[str]:
    """``re.compile(pattern)`` or a :class:`RankscopeError` naming ``where`` (an option or ``file: field``)."""
    if not isinstance(pattern, str):
        raise RankscopeError(f"{where}: a regular expression must be a string, got {pattern!r}")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise RankscopeError(f"{where}: regular expression of {len(pattern):,} characters is too long")
    try:
        return re.compile(pattern)
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        raise RankscopeError(f"{where}: invalid regular expression '{pattern}' ({exc})") from exc


def compile_regexes(patterns: Iterable[object] | None, where: str) -> list[re.Pattern[str]]:
    """:func:`compile_regex` for each pattern (``None`` or empty: an empty list)."""
    return [compile_regex(p, where) for p in (patterns or ())]


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible; ``cuda`` without one is an error.

    ``cpu`` needs nothing; every other value imports torch (lazily: ``cpu`` runs never load it).
    """
    if device == "cpu":
        return device
    try:
        import torch
    except ImportError as exc:
        raise RankscopeError(f"--device {device}: torch is not installed") from exc
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not match:
        raise RankscopeError(f"--device {device}: unknown device (use cpu, cuda, cuda:N or auto)")
    if not torch.cuda.is_available():
        raise RankscopeError(f"--device {device}: no CUDA device is available (torch.cuda.is_available() is False)")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise RankscopeError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device

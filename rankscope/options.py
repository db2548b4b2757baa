"""Checks shared by every command on what the user typed or wrote in a file: regular expressions first.

Every user-supplied regular expression (``--include``/``--exclude``, ``--phi-modules``, ``--save-modules``,
``rank_pattern``/``alpha_pattern`` keys, a string ``target_modules``) goes through :func:`compile_regex`
before any work starts, so a bad pattern is one line naming the option or file, never a traceback
halfway through a run.
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

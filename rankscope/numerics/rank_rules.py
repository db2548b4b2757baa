"""The rank rules of ``rankscope recommend`` as values: their options parsed, and one module's rank under a rule.

Parsing ``--rule`` / ``--snap`` / ``--alpha`` / ``--targets`` and :func:`rule_rank` are pure (no I/O, no tables).

Rules (``σ`` sorted descending, ``e_k = σ_k² / Σσ²``): ``energy:τ`` (:func:`rankscope.numerics.metrics.energy_rank`),
``gd`` (Gavish & Donoho 2014, :func:`rankscope.numerics.metrics.gavish_donoho_rank`), ``budget:N`` /
``avg-rank:r`` (global: :func:`rankscope.numerics.allocation.greedy_allocation`) and the kohya-ss
``kohya-fro:t`` / ``kohya-ratio:t`` / ``kohya-cumulative:t`` (:func:`rankscope.numerics.allocation.kohya_rank`).
See :mod:`rankscope.ranks` for how they are applied.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import RankscopeError
from . import metrics
from .allocation import GAINS, kohya_rank

RULES = ("energy", "gd", "budget", "avg-rank", "kohya-fro", "kohya-ratio", "kohya-cumulative")
RULE_FORMS = "energy:TAU, gd, budget:N, avg-rank:R, kohya-fro:T, kohya-ratio:T, kohya-cumulative:T"
ALL_LINEAR = "all-linear"
"""The ``--targets`` value meaning every 2-D module (embeddings and LM heads left out unless asked)."""


@dataclass(frozen=True)
class Rule:
    """A parsed ``--rule``: ``name`` in :data:`RULES` and its parameter (``None`` for ``gd``)."""

    name: str
    value: float | None = None

    @property
    def is_global(self) -> bool:
        """Budget rules allocate across modules; the others decide each module alone."""
        return self.name in ("budget", "avg-rank")

    def __str__(self) -> str:
        if self.value is None:
            return self.name
        return f"{self.name}:{int(self.value) if self.name == 'budget' else f'{self.value:g}'}"


_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9}


def _number(text: str, rule: str) -> float:
    t = text.strip().lower().replace("_", "").replace(",", "")
    scale = 1.0
    if rule == "budget" and t and t[-1] in _SUFFIX:
        t, scale = t[:-1], _SUFFIX[t[-1]]
    try:
        value = float(t) * scale
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise RankscopeError(f"--rule {rule}:{text}: '{text}' is not a number")
    return value


def parse_rule(text: str) -> Rule:
    """``energy:0.9`` → ``Rule("energy", 0.9)``; raises :class:`RankscopeError` naming ``--rule``."""
    raw = str(text).strip()
    name, sep, arg = raw.partition(":")
    name = name.strip().lower()
    if name not in RULES:
        raise RankscopeError(f"--rule {raw}: unknown rule '{name}' (choose from {RULE_FORMS})")
    if name == "gd":
        if sep:
            raise RankscopeError(f"--rule {raw}: gd takes no parameter")
        return Rule("gd")
    if not arg.strip():
        raise RankscopeError(f"--rule {raw}: {name} needs a parameter ({RULE_FORMS})")
    value = _number(arg, name)
    if name in ("energy", "kohya-fro", "kohya-cumulative") and not 0 < value <= 1:
        raise RankscopeError(f"--rule {raw}: the threshold must be in (0, 1]")
    if name == "kohya-ratio" and value <= 0:
        raise RankscopeError(f"--rule {raw}: the ratio must be positive (kohya uses 1 to 2)")
    if name == "budget" and (value < 1 or value != int(value)):
        raise RankscopeError(f"--rule {raw}: the budget must be a positive whole number of parameters")
    if name == "avg-rank" and value <= 0:
        raise RankscopeError(f"--rule {raw}: the average rank must be positive")
    return Rule(name, int(value) if name == "budget" else value)


def parse_snap(snap: str | Iterable[int] | None) -> tuple[int, ...] | None:
    """``"8,16,32,64"`` (or a sequence) → sorted unique positive ranks; ``None`` / empty → no snapping."""
    if snap is None:
        return None
    items = [s for s in snap.split(",") if s.strip()] if isinstance(snap, str) else list(snap)
    if not items:
        return None
    try:
        values = sorted({int(str(v).strip()) for v in items})
    except ValueError as exc:
        raise RankscopeError(f"--snap {snap}: not a comma-separated list of whole numbers") from exc
    if values[0] < 1:
        raise RankscopeError(f"--snap {snap}: ranks must be positive")
    return tuple(values)


@dataclass(frozen=True)
class AlphaPolicy:
    """``lora_alpha`` per module: ``coef·r`` (constant scale ``α/r = coef``) or ``coef`` for every module."""

    coef: float
    proportional: bool

    def alpha(self, rank: int) -> float:
        return self.coef * rank if self.proportional else self.coef

    def __str__(self) -> str:
        if self.proportional:
            return "r" if self.coef == 1 else f"{self.coef:g}r"
        return f"{self.coef:g}"


def parse_alpha(text: str | float) -> AlphaPolicy:
    """``"r"``, ``"2r"``, ``"0.5r"`` → ``α = c·r`` (scale ``α/r = c`` everywhere); ``"16"`` → ``α = 16`` everywhere."""
    t = str(text).strip().lower().replace(" ", "").replace("*", "")
    proportional = t.endswith("r")
    coef_text = (t[:-1] or "1") if proportional else t
    try:
        coef = float(coef_text)
    except ValueError:
        coef = math.nan
    if not math.isfinite(coef) or coef <= 0:
        raise RankscopeError(f"--alpha {text}: use r, 2r, <number>r (alpha proportional to the rank, constant "
                             f"scale alpha/r) or a positive number (the same alpha for every module)")
    return AlphaPolicy(coef, proportional)


def parse_targets(targets: str | Sequence[str] | None) -> tuple[str, ...]:
    """``None`` / ``"all-linear"`` → ``("all-linear",)``; ``"query,value"`` → ``("query", "value")``."""
    if targets is None:
        return (ALL_LINEAR,)
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    tokens = tuple(dict.fromkeys(str(t).strip() for t in items if str(t).strip()))
    if not tokens:
        raise RankscopeError("--targets: empty list (give module kinds such as query,value or all-linear)")
    if ALL_LINEAR in tokens and len(tokens) > 1:
        raise RankscopeError(f"--targets {','.join(tokens)}: all-linear cannot be combined with other targets")
    return tokens


def rule_rank(rule: Rule, sigma: np.ndarray, rows: int, cols: int) -> int:
    """Rank of one module under a per-module rule (before ``min_rank``/``max_rank``/``snap``)."""
    if rule.name == "energy":
        return metrics.energy_rank(sigma, float(rule.value))
    if rule.name == "gd":
        return metrics.gavish_donoho_rank(sigma, rows, cols)
    if rule.name.startswith("kohya-"):
        return kohya_rank(sigma, rule.name.removeprefix("kohya-"), float(rule.value))
    raise ValueError(f"{rule} is a global rule: use greedy_allocation")


def validate_rank_options(min_rank: int, max_rank: int | None, gain: str) -> None:
    """Check ``--min-rank``, ``--max-rank`` and ``--gain`` as `recommend` and `resize` take them (one line each)."""
    for name, value in (("--min-rank", min_rank), ("--max-rank", max_rank)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise RankscopeError(f"{name} {value!r}: must be a whole number")
    if min_rank < 0:
        raise RankscopeError(f"--min-rank {min_rank}: must be 0 or more")
    if max_rank is not None and max_rank < 1:
        raise RankscopeError(f"--max-rank {max_rank}: must be 1 or more")
    if max_rank is not None and max_rank < min_rank:
        raise RankscopeError(f"--max-rank {max_rank} is below --min-rank {min_rank}")
    if gain not in GAINS:
        raise RankscopeError(f"--gain {gain}: choose from {', '.join(GAINS)}")

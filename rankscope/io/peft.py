r"""A peft ``LoraConfig`` dictionary that gives each module exactly its planned rank, and its check.

peft matches ``rank_pattern`` / ``alpha_pattern`` keys with ``re.match(rf"(.*\.)?({key})$", module)`` and
``target_modules`` (a list) as exact names or ``"." + name`` suffixes.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import RankscopeError

# --------------------------------------------------------------------------------------------------
# the peft config
# --------------------------------------------------------------------------------------------------


def pattern_key(module: str) -> str:
    r"""``rank_pattern`` key for a module: its name with regex metacharacters escaped.

    peft matches a key ``k`` against a module's full name with ``re.match(rf"(.*\.)?({k})$", name)``
    (``peft.utils.other.get_pattern_key``), so the escaped prefix-free name matches that module
    whatever prefix the model adds (``bert.``, ``base_model.model.``) and nothing else.
    """
    return re.escape(module)


def _number_json(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def lora_config_dict(modules: Sequence[str], ranks: Sequence[int], alphas: Sequence[float],
                     task_type: str | None = None, modules_to_save: Sequence[str] | None = None) -> dict[str, Any]:
    """A ``LoraConfig`` as JSON: ``target_modules`` = the modules with a positive rank, ``r`` = their most
    common rank (so ``rank_pattern`` is short), ``lora_alpha`` = the most common alpha at that rank, and
    ``rank_pattern`` / ``alpha_pattern`` for every module that differs (keys from :func:`pattern_key`);
    ``task_type`` (peft picks its ``PeftModelFor*`` wrapper by it) and ``modules_to_save`` (task heads,
    trained whole; ``None`` when empty) as given.
    """
    active = [(m, int(r), float(a)) for m, r, a in zip(modules, ranks, alphas, strict=True) if r > 0]
    if not active:
        raise RankscopeError("no module gets a positive rank: nothing to adapt")
    counts = Counter(r for _, r, _ in active)
    r0 = min(counts, key=lambda r: (-counts[r], r))
    alpha_counts = Counter(a for _, r, a in active if r == r0)
    a0 = min(alpha_counts, key=lambda a: (-alpha_counts[a], a))
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "r": r0,
        "lora_alpha": _number_json(a0),
        "target_modules": [m for m, _, _ in active],
        "rank_pattern": {pattern_key(m): r for m, r, _ in active if r != r0},
        "alpha_pattern": {pattern_key(m): _number_json(a) for m, _, a in active if a != a0},
        "modules_to_save": list(modules_to_save or []) or None,
    }


def _peft_targets(target_modules: str | Sequence[str], key: str) -> bool:
    """peft's ``check_target_module_exists`` for ``target_modules`` (no layer/exclusion options)."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, key) is not None
    parts = key.split(".")
    return any(".".join(parts[k:]) in target_modules for k in range(len(parts)))


def _peft_pattern(key: str) -> re.Pattern[str]:
    """peft's ``rank_pattern`` / ``alpha_pattern`` rule for one key (``get_pattern_key``)."""
    return re.compile(rf"(.*\.)?({key})$")


def module_universe(names: Iterable[str]) -> set[str]:
    """Every dotted prefix of every tensor / module name: the module names a model would have."""
    out: set[str] = set()
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
    return out


def check_lora_config(config: dict[str, Any], intended: dict[str, tuple[int, float]], names: Iterable[str],
                      prefixes: Sequence[str] = ("",)) -> None:
    """Simulate peft's matching on every known module name (under each model prefix) and fail on any surprise.

    ``intended``: ``module -> (rank, alpha)`` for the modules to adapt.  Checks that ``target_modules``
    selects exactly them (peft's ``check_target_module_exists``: a list entry matches a name equal to
    it or ending with ``"." + entry``; nothing in or under a ``modules_to_save`` module, including the
    heads that peft adds for the ``task_type``, :data:`rankscope.pairing.model_layout.WRAPPED_HEADS`), that each
    resolves to its rank and alpha (the first matching pattern key wins, as in peft), and that every
    ``rank_pattern`` / ``alpha_pattern`` key matches exactly one module.
    """
    from ..pairing.model_layout import WRAPPED_HEADS, peft_excludes

    universe = sorted(module_universe([*names, *intended]))
    targets = config["target_modules"]
    targets = targets if isinstance(targets, str) else set(targets)
    saved = [*(config.get("modules_to_save") or []), *WRAPPED_HEADS.get(config.get("task_type") or "", ())]
    fields = (("rank_pattern", "r", 0), ("alpha_pattern", "lora_alpha", 1))
    compiled = {f: [(k, v, _peft_pattern(k)) for k, v in (config.get(f) or {}).items()] for f, _, _ in fields}
    for prefix in dict.fromkeys(prefixes):
        matched: Counter[tuple[str, str]] = Counter()
        for name in universe:
            key = prefix + name
            hit = _peft_targets(targets, key) and not peft_excludes(saved, key)
            if hit != (name in intended):
                what = "would also adapt" if hit else "would not adapt"
                raise RankscopeError(f"cannot express the plan for peft: target_modules {what} module '{key}' "
                                     f"(ambiguous module names)")
            for f, default, pos in fields:
                hits = [(k, v) for k, v, rx in compiled[f] if rx.match(key)]
                matched.update((f, k) for k, _ in hits)
                value = hits[0][1] if hits else config[default]
                if hit and float(value) != float(intended[name][pos]):
                    raise RankscopeError(f"cannot express the plan for peft: {f} gives module '{key}' {value} "
                                         f"instead of {intended[name][pos]} (ambiguous module names)")
        for f, _, _ in fields:
            for k, _, _ in compiled[f]:
                if matched[(f, k)] != 1:
                    raise RankscopeError(f"cannot express the plan for peft: {f} key '{k}' matches "
                                         f"{matched[(f, k)]} modules")

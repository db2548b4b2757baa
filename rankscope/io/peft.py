r"""The peft LoRA config and its naming rules, and the LoRA configs rankscope writes.

What a ``LoraConfig`` holds (:class:`LoraSpec`, :func:`check_lora_fields`), how peft matches its fields to module
names, how it names an adapter's tensors, and the configs of ``recommend`` and ``extract``.

Matching (peft 0.21, ``peft.tuners.tuners_utils.check_target_module_exists`` and ``peft.utils.other``):

* ``target_modules`` as a list matches a module named exactly so or ending in ``"." + item``
  (:func:`target_listed`); as a string it is a regular expression that must match the whole name
  (``re.fullmatch``); ``"all-linear"`` is every linear layer except the output embedding.
* ``rank_pattern`` / ``alpha_pattern`` keys match with ``re.match(rf"(.*\.)?({key})$", module)``, the first
  matching key winning (:func:`pattern_value`).
* ``modules_to_save`` — and the heads peft adds to it for a ``task_type`` (:data:`WRAPPED_HEADS`) — are trained
  whole and never adapted: every module matching ``re.match(rf"(^|.*\.){name}($|\..*)", key)``
  (:func:`peft_excludes`), i.e. the module and everything below it.

Tensor keys: ``base_model.model.<module>.lora_A.weight`` (``r x in``) / ``lora_B.weight`` (``out x r``), embeddings
``lora_embedding_A`` (``r x num_embeddings``) / ``lora_embedding_B`` (``dim x r``) (:data:`LORA_KEY`,
:func:`lora_tensor_keys`); a saved module's copy sits under ``<module>.modules_to_save.<adapter>.``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RankscopeError
from ..options import compile_regex, compile_regexes

PEFT_PREFIX = "base_model.model."
"""The prefix of every tensor key in a peft adapter file (``PeftModel`` → ``LoraModel`` → the model)."""
LORA_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<which>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector|lora_E)"
    r"(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$"
)
"""A LoRA factor's key (after :data:`PEFT_PREFIX`): current peft, or older files that keep the adapter name; AdaLoRA's
``lora_A`` / ``lora_E`` / ``lora_B`` (no ``.weight``) too."""
BIAS = ("none", "lora_only", "all")
"""peft's ``bias`` values."""

WRAPPED_HEADS = {"SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"),
                 "QUESTION_ANS": ("qa_outputs",)}
"""Heads that peft's ``PeftModelFor*.__init__`` puts in ``modules_to_save`` for these task types."""


# --------------------------------------------------------------------------------------------------
# matching module names
# --------------------------------------------------------------------------------------------------


def target_listed(names: Iterable[str], module: str) -> bool:
    """peft's rule for a list of names (``target_modules``, ``modules_to_save``): ``module`` equals one of them or
    ends with ``"." + name``."""
    return any(module == n or module.endswith("." + n) for n in names)


def pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's rule: the first pattern ``p`` with ``re.match(rf"(.*\\.)?({p})$", module)`` wins."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def compile_pattern_key(key: object, where: str) -> re.Pattern[str]:
    """A ``rank_pattern`` / ``alpha_pattern`` key compiled as peft matches it (``(.*\\.)?(key)$``), or one error line.

    The key must be a valid regular expression on its own and inside peft's wrapper (an inline flag such as
    ``(?i)`` is valid alone but not once wrapped).
    """
    compile_regex(key, where)
    try:
        return re.compile(rf"(.*\.)?({key})$")
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        raise RankscopeError(f"{where}: invalid regular expression '{key}' once peft wraps it as "
                             f"'(.*\\.)?({key})$' ({exc})") from exc


def pattern_key(module: str) -> str:
    r"""``rank_pattern`` key for a module: its name with regex metacharacters escaped.

    peft matches a key ``k`` against a module's full name with ``re.match(rf"(.*\.)?({k})$", name)``
    (``peft.utils.other.get_pattern_key``), so the escaped prefix-free name matches that module
    whatever prefix the model adds (``bert.``, ``base_model.model.``) and nothing else.
    """
    return re.escape(module)


def head_owner(name: str, heads: Iterable[str]) -> str | None:
    """The head module that ``name`` (a module or tensor name) is or lies in, else ``None``.

    peft's rule for ``modules_to_save`` (``check_target_module_exists``): a dotted component equal to a head
    name marks the head; everything below it belongs to it (``classifier.out_proj`` → ``classifier``).
    """
    parts = name.split(".")
    heads = tuple(heads)
    for i, part in enumerate(parts):
        if part in heads:
            return ".".join(parts[: i + 1])
    return None


def head_modules(names: Iterable[str], heads: Iterable[str]) -> list[str]:
    """The distinct head modules among ``names`` (module or tensor names), sorted."""
    heads = tuple(heads)
    return sorted({owner for n in names if (owner := head_owner(n, heads)) is not None})


def peft_excludes(modules_to_save: Iterable[str], key: str) -> bool:
    """peft never adapts a module matching ``modules_to_save`` (``re.match(rf"(^|.*\\.){m}($|\\..*)", key)``)."""
    return any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in modules_to_save)


# --------------------------------------------------------------------------------------------------
# tensor keys
# --------------------------------------------------------------------------------------------------


def saved_module_key(key: str) -> str:
    """A ``modules_to_save`` copy's key without peft's wrapper (``classifier.modules_to_save.default.weight`` →
    ``classifier.weight``)."""
    return re.sub(r"\.modules_to_save\.[^.]+\.", ".", key)


def lora_tensor_keys(module: str, embedding: bool, b: np.ndarray, a: np.ndarray) -> dict[str, np.ndarray]:
    """peft's keys for the factors ``B`` (out x r) and ``A`` (r x in) of ``module``: ``lora_A.weight`` = A and
    ``lora_B.weight`` = B; an embedding's ``lora_embedding_A`` (r x num_embeddings) = Bᵀ and ``lora_embedding_B``
    (dim x r) = Aᵀ."""
    prefix = f"{PEFT_PREFIX}{module}"
    if embedding:
        return {f"{prefix}.lora_embedding_A": np.ascontiguousarray(b.T),
                f"{prefix}.lora_embedding_B": np.ascontiguousarray(a.T)}
    return {f"{prefix}.lora_A.weight": a, f"{prefix}.lora_B.weight": b}


# --------------------------------------------------------------------------------------------------
# the fields of a config
# --------------------------------------------------------------------------------------------------


def lora_scale(alpha: float, r: int, use_rslora: bool) -> float:
    """``alpha / r`` (Hu et al. 2021) or ``alpha / sqrt(r)`` (rsLoRA, Kalajdzievski 2023)."""
    return alpha / np.sqrt(r) if use_rslora else alpha / r


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def check_lora_fields(config: dict[str, Any], where: str, min_pattern_rank: int = 0) -> None:
    """Type-check the LoRA fields of a peft config that are present (``None`` counts as absent).

    ``r`` a positive integer; ``lora_alpha`` a positive number; ``use_rslora`` / ``use_dora`` /
    ``fan_in_fan_out`` booleans; ``target_modules`` a string (a regular expression unless
    ``all-linear``) or a list of strings; ``rank_pattern`` / ``alpha_pattern`` objects whose keys are
    valid patterns and whose values are integers ``>= min_pattern_rank`` / positive numbers.  A
    problem is one :class:`RankscopeError` naming ``where`` (the file) and the field.
    """
    r, alpha = config.get("r"), config.get("lora_alpha")
    if r is not None and not (_is_int(r) and r > 0):
        raise RankscopeError(f"{where}: 'r' must be a positive integer, got {r!r}")
    if alpha is not None and not (_is_number(alpha) and alpha > 0):
        raise RankscopeError(f"{where}: 'lora_alpha' must be a positive number, got {alpha!r}")
    for key in ("use_rslora", "use_dora", "fan_in_fan_out"):
        if config.get(key) is not None and not isinstance(config[key], bool):
            raise RankscopeError(f"{where}: '{key}' must be true or false, got {config[key]!r}")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        if targets != "all-linear":
            compile_regex(targets, f"{where}: target_modules")
    elif targets is not None and not (isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise RankscopeError(f"{where}: 'target_modules' must be a string or a list of strings, got {targets!r}")
    for key, ok, wanted in (
        ("rank_pattern", lambda v: _is_int(v) and v >= min_pattern_rank, f"an integer >= {min_pattern_rank}"),
        ("alpha_pattern", lambda v: _is_number(v) and v > 0, "a positive number"),
    ):
        patterns = config.get(key)
        if patterns is None:
            continue
        if not isinstance(patterns, dict):
            raise RankscopeError(f"{where}: '{key}' must be an object {{module pattern: value}}, got {patterns!r}")
        for pattern, value in patterns.items():
            compile_pattern_key(pattern, f"{where}: {key}")
            if not ok(value):
                raise RankscopeError(f"{where}: {key}['{pattern}'] must be {wanted}, got {value!r}")


# --------------------------------------------------------------------------------------------------
# what to adapt: the LoRA spec of extract and train
# --------------------------------------------------------------------------------------------------


@dataclass
class LoraSpec:
    """What to adapt with LoRA, as a peft ``LoraConfig`` holds it: ranks, alphas, targets and what is saved whole.

    ``target_modules`` follows peft: a list matches a module named exactly so or ending in
    ``"." + item``; a string is a regular expression that must match the whole name (``re.fullmatch``);
    ``"all-linear"`` is every linear layer except embeddings, output heads and task heads; ``None`` (training)
    leaves it to peft's default for the architecture (BERT: query, value; Llama: q_proj, v_proj).
    ``rank_pattern`` / ``alpha_pattern``: ``{pattern: value}`` overrides (:func:`pattern_value`), or, for
    training, the path of a JSON file holding one.  ``dropout`` is peft's ``lora_dropout`` (training);
    ``exclude_modules``, ``modules_to_save`` and ``bias`` are peft's fields of those names; ``source`` names where
    the spec came from in messages (``rank`` for ``--rank``, else the config file).

    Built by :meth:`from_rank` (``extract --rank``), :meth:`from_config` (``extract --config``) or directly
    (``train``: ``LoraSpec(r, alpha, target_modules, rank_pattern, alpha_pattern, use_rslora, dropout)``).
    """

    r: int = 8
    alpha: float = 16
    target_modules: list[str] | str | None = None
    rank_pattern: dict[str, int] | str | None = field(default_factory=dict)
    alpha_pattern: dict[str, float] | str | None = field(default_factory=dict)
    use_rslora: bool = False
    dropout: float = 0.0
    exclude_modules: list[str] | str | None = None
    modules_to_save: list[str] = field(default_factory=list)
    bias: str = "none"
    source: str = "rank"

    def __post_init__(self) -> None:
        if isinstance(self.exclude_modules, str):
            compile_regexes([self.exclude_modules], f"{self.source}: exclude_modules")

    @classmethod
    def from_rank(cls, rank: int, alpha: float | None = None, targets: str | Sequence[str] = "all-linear",
                  use_rslora: bool = False) -> LoraSpec:
        """``--rank R`` (+ ``--alpha``, default ``α = R`` so that ``s = 1`` and ``B·A = ΔW_r`` as is)."""
        if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or rank < 1:
            raise RankscopeError(f"--rank: must be a positive integer, got {rank!r}")
        if alpha is not None and not alpha > 0:
            raise RankscopeError(f"--alpha: must be positive, got {alpha!r}")
        if isinstance(targets, str):
            targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
        if not targets:
            raise RankscopeError("--targets: no module names given")
        return cls(int(rank), float(alpha if alpha is not None else rank), targets if isinstance(targets, str)
                   else list(targets), use_rslora=use_rslora)

    @classmethod
    def from_config(cls, config: str | os.PathLike | dict[str, Any]) -> LoraSpec:
        """Read a peft ``LoraConfig`` (``adapter_config.json`` / ``lora_config.json``) or its dict (``extract --config``)."""
        where = "--config"
        if not isinstance(config, dict):
            path = Path(config)
            where = str(path / "adapter_config.json") if path.is_dir() else str(path)
            try:
                config = json.loads(Path(where).read_text())
            except FileNotFoundError as exc:
                raise RankscopeError(f"--config: no such file: {where}") from exc
            except (OSError, ValueError) as exc:
                raise RankscopeError(f"--config: {where} is not readable JSON ({exc})") from exc
        if not isinstance(config, dict):
            raise RankscopeError(f"{where}: a LoRA config must be a JSON object")
        return cls._parse(config, where)

    @classmethod
    def _parse(cls, config: dict[str, Any], where: str) -> LoraSpec:
        peft_type = str(config.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise RankscopeError(f"{where}: peft_type {peft_type} is not supported (only LORA)")
        if config.get("use_dora"):
            raise RankscopeError(f"{where}: use_dora is not supported (extract writes plain LoRA)")
        if config.get("layers_to_transform") not in (None, []):
            raise RankscopeError(f"{where}: layers_to_transform is not supported; list the modules in target_modules")
        r = config.get("r", 8)
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise RankscopeError(f"{where}: 'r' must be a positive integer, got {r!r}")
        alpha = config.get("lora_alpha", 8)
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
            raise RankscopeError(f"{where}: 'lora_alpha' must be a positive number, got {alpha!r}")
        targets = config.get("target_modules")
        if targets is None or (not isinstance(targets, str) and not targets):
            raise RankscopeError(f"{where}: 'target_modules' is missing or empty")
        if isinstance(targets, str):
            if targets != "all-linear":
                compile_regexes([targets], f"{where}: target_modules")
        elif not all(isinstance(t, str) for t in targets):
            raise RankscopeError(f"{where}: 'target_modules' must be a string or a list of strings")
        patterns = {}
        for key in ("rank_pattern", "alpha_pattern"):
            value = config.get(key) or {}
            if not isinstance(value, dict):
                raise RankscopeError(f"{where}: '{key}' must be an object {{module pattern: value}}")
            for pattern, v in value.items():
                compile_pattern_key(pattern, f"{where}: {key}")
                ok = isinstance(v, int) and v >= 0 if key == "rank_pattern" else isinstance(v, (int, float)) and v > 0
                if isinstance(v, bool) or not ok:
                    raise RankscopeError(f"{where}: {key}['{pattern}'] = {v!r} is not a valid "
                                         f"{'rank (integer >= 0)' if key == 'rank_pattern' else 'alpha (> 0)'}")
            patterns[key] = dict(value)
        bias = config.get("bias", "none") or "none"
        if bias not in BIAS:
            raise RankscopeError(f"{where}: 'bias' must be one of {', '.join(BIAS)}, got {bias!r}")
        return cls(r, float(alpha), targets if isinstance(targets, str) else list(targets),
                   patterns["rank_pattern"], patterns["alpha_pattern"], bool(config.get("use_rslora")),
                   exclude_modules=config.get("exclude_modules"),
                   modules_to_save=list(config.get("modules_to_save") or []), bias=bias, source=where)

    def targets(self, module: str, is_linear: bool) -> bool:
        """peft's ``target_modules`` / ``exclude_modules`` rule (``check_target_module_exists``)."""
        ex = self.exclude_modules
        if ex and (re.fullmatch(ex, module) if isinstance(ex, str) else target_listed(ex, module)):
            return False
        t = self.target_modules
        if t is None:
            raise ValueError("target_modules None (peft's default for the architecture) needs the model to decide")
        if t == "all-linear":
            return is_linear
        return bool(re.fullmatch(t, module)) if isinstance(t, str) else target_listed(t, module)

    def explicitly_targets(self, module: str) -> bool:
        """Whether ``target_modules`` names this module itself (not via ``all-linear``)."""
        return self.target_modules != "all-linear" and self.targets(module, False)

    def rank_alpha(self, module: str) -> tuple[int, float]:
        """``(r, lora_alpha)`` of ``module`` under ``rank_pattern`` / ``alpha_pattern`` (:func:`pattern_value`)."""
        return (int(pattern_value(self.rank_pattern, module, self.r)),
                float(pattern_value(self.alpha_pattern, module, self.alpha)))

    def describe(self) -> dict[str, Any]:
        """The spec for ``run.json`` (peft's field names)."""
        return {"source": self.source, "r": self.r, "lora_alpha": self.alpha, "target_modules": self.target_modules,
                "rank_pattern": self.rank_pattern, "alpha_pattern": self.alpha_pattern, "use_rslora": self.use_rslora,
                "exclude_modules": self.exclude_modules, "modules_to_save": self.modules_to_save, "bias": self.bias}


# --------------------------------------------------------------------------------------------------
# configs rankscope writes
# --------------------------------------------------------------------------------------------------


def _number_json(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def lora_config_dict(modules: Sequence[str], ranks: Sequence[int], alphas: Sequence[float],
                     task_type: str | None = None, modules_to_save: Sequence[str] | None = None) -> dict[str, Any]:
    """A ``LoraConfig`` as JSON (``recommend``): ``target_modules`` = the modules with a positive rank, ``r`` = their
    most common rank (so ``rank_pattern`` is short), ``lora_alpha`` = the most common alpha at that rank, and
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


def compact_patterns(values: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The most common value as the default and the exceptions as a pattern dict keyed by the escaped full
    module name (:func:`pattern_key`: matches that module and nothing else); ``(None, {})`` for no values."""
    if not values:
        return None, {}
    common = Counter(values.values()).most_common(1)[0][0]
    return common, {pattern_key(k): v for k, v in sorted(values.items()) if v != common}


def peft_version() -> str | None:
    """The installed peft's version, or ``None``."""
    try:
        return metadata.version("peft")
    except metadata.PackageNotFoundError:
        return None


def adapter_config(modules: dict[str, tuple[int, float]], spec: LoraSpec, task: str | None, base_path: str,
                   bias: str, fan_in_fan_out: bool, modules_to_save: Sequence[str]) -> dict[str, Any]:
    """An extracted adapter's ``adapter_config.json`` (``extract``): every module named exactly (full names,
    peft's list rule), ``modules: {name: (r, alpha)}`` compacted into ``r`` / ``lora_alpha`` and the patterns
    (:func:`compact_patterns`), falling back on ``spec``'s values."""
    r, rank_pattern = compact_patterns({m: ra[0] for m, ra in modules.items()})
    alpha, alpha_pattern = compact_patterns({m: ra[1] for m, ra in modules.items()})
    alpha = alpha if alpha is not None else spec.alpha
    return {
        "peft_type": "LORA",
        "task_type": task,
        "base_model_name_or_path": base_path,
        "r": int(r if r is not None else spec.r),
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "target_modules": sorted(modules),
        "rank_pattern": rank_pattern,
        "alpha_pattern": {k: int(v) if float(v).is_integer() else v for k, v in alpha_pattern.items()},
        "use_rslora": spec.use_rslora,
        "fan_in_fan_out": fan_in_fan_out,
        "modules_to_save": list(modules_to_save) or None,
        "bias": bias,
        "lora_dropout": 0.0,
        "init_lora_weights": True,
        "inference_mode": True,
        "use_dora": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": None,
        "peft_version": peft_version(),
    }


# --------------------------------------------------------------------------------------------------
# checking a written config against the plan
# --------------------------------------------------------------------------------------------------


def _peft_targets(target_modules: str | Sequence[str], key: str) -> bool:
    """peft's ``check_target_module_exists`` for ``target_modules`` (no layer/exclusion options)."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, key) is not None
    parts = key.split(".")  # :func:`target_listed` by set lookups of the key's suffixes (thousands of names)
    return any(".".join(parts[k:]) in target_modules for k in range(len(parts)))


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
    heads that peft adds for the ``task_type``, :data:`WRAPPED_HEADS`), that each resolves to its rank and
    alpha (the first matching pattern key wins, as in peft), and that every ``rank_pattern`` /
    ``alpha_pattern`` key matches exactly one module.
    """
    universe = sorted(module_universe([*names, *intended]))
    targets = config["target_modules"]
    targets = targets if isinstance(targets, str) else set(targets)
    saved = [*(config.get("modules_to_save") or []), *WRAPPED_HEADS.get(config.get("task_type") or "", ())]
    fields = (("rank_pattern", "r", 0), ("alpha_pattern", "lora_alpha", 1))
    compiled = {f: [(k, v, re.compile(rf"(.*\.)?({k})$")) for k, v in (config.get(f) or {}).items()]
                for f, _, _ in fields}
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

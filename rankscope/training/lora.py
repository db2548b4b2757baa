"""The LoRA options of a training run as the user gives them (options, a peft config file), checked before any work.

They end up in the one :class:`rankscope.io.peft.LoraSpec` (re-exported here for the training modules); nothing
here depends on torch, peft or the rest of :mod:`rankscope.training`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import RankscopeError
from ..io.peft import LoraSpec

__all__ = ["INIT_TASKS", "INIT_TASKS_CAUSAL_LM", "LoraSpec", "TargetModulesRegex", "init_options", "load_pattern",
           "lora_options_from_config", "parse_target_modules"]

INIT_TASKS = (None, "SEQ_CLS", "FEATURE_EXTRACTION")
"""``task_type`` values of an adapter that ``train --init`` accepts: it trains a sequence classifier, whose backbone
a ``FEATURE_EXTRACTION`` adapter (of the bare model: a plan from a bare pair, such as the bundled one) also fits."""
INIT_TASKS_CAUSAL_LM = (None, "CAUSAL_LM", "FEATURE_EXTRACTION")
"""The same for ``train --objective causal-lm --init``: a causal-LM adapter, or one of the bare decoder."""


class TargetModulesRegex(str):
    """A ``target_modules`` regular expression from a config file (peft: ``re.fullmatch``), not a list of names."""


def parse_target_modules(value: str | Sequence[str] | None) -> list[str] | str | None:
    """``"query,value"`` -> ``["query", "value"]``; ``"all-linear"``, None and a config's regex pass through."""
    if value is None:
        return None
    if isinstance(value, TargetModulesRegex):
        from ..options import compile_regex

        compile_regex(value, "target_modules")  # validated with the file named by lora_options_from_config
        return str(value)
    if isinstance(value, str):
        if value.strip().lower() == "all-linear":
            return "all-linear"
        value = value.split(",")
    names = [v.strip() for v in value if v.strip()]
    if not names:
        raise RankscopeError("--target-modules is empty (give names such as query,value or all-linear)")
    return names


def lora_options_from_config(path: str | os.PathLike, option: str = "--lora-config") -> dict[str, Any]:
    """``r``, ``alpha``, ``target_modules``, ``rank_pattern``, ``alpha_pattern``, ``use_rslora`` of a peft
    ``lora_config.json`` / ``adapter_config.json`` (e.g. written by ``rankscope recommend``).

    Every field is type-checked (:func:`rankscope.io.adapters.check_lora_fields`) and every pattern compiled
    before any work: a problem is one :class:`RankscopeError` naming ``option``, the file and the field.
    """
    from ..io.adapters import check_lora_fields

    where = f"{option} {path}"
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise RankscopeError(f"{option}: cannot read {path} ({_first_line(exc)})") from exc
    if not isinstance(config, dict) or config.get("r") is None:
        raise RankscopeError(f"{option}: {path} is not a LoRA config (no 'r')")
    if str(config.get("peft_type") or "LORA").upper() != "LORA":
        raise RankscopeError(f"{where}: peft_type {config['peft_type']!r} is not LORA")
    check_lora_fields(config, where, min_pattern_rank=1)
    if config.get("use_dora"):
        raise RankscopeError(f"{where}: use_dora is not supported by rankscope train (plain LoRA only)")
    targets = config.get("target_modules")
    if isinstance(targets, list) and not targets:
        raise RankscopeError(f"{where}: 'target_modules' is empty")
    if isinstance(targets, str) and targets.strip().lower() != "all-linear":
        targets = TargetModulesRegex(targets)
    alpha = config.get("lora_alpha")
    return {"r": config["r"], "alpha": float(config["r"] if alpha is None else alpha), "target_modules": targets,
            "rank_pattern": config.get("rank_pattern") or None, "alpha_pattern": config.get("alpha_pattern") or None,
            "use_rslora": bool(config.get("use_rslora"))}


def init_options(adapter: str | os.PathLike, objective: str = "classification") -> dict[str, Any]:
    """The LoRA options of ``train --init ADAPTER`` from its ``adapter_config.json`` (:func:`lora_options_from_config`),
    plus ``folder``, ``weights`` (``adapter_model.safetensors``), ``task_type`` and ``base_model_name_or_path``.

    The adapter must be a folder holding both files, and its ``task_type`` one of :data:`INIT_TASKS`
    (:data:`INIT_TASKS_CAUSAL_LM` for ``objective="causal-lm"``): anything else is one :class:`RankscopeError`
    naming ``--init`` and the file.
    """
    from ..io.checkpoints import resolve

    folder = resolve(adapter)
    config_file, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not (folder.is_dir() and config_file.is_file()):
        raise RankscopeError(f"--init {adapter}: not a peft adapter folder (no adapter_config.json)")
    if not weights.is_file():
        raise RankscopeError(f"--init {adapter}: no adapter_model.safetensors (the factors to start from)")
    options = lora_options_from_config(config_file, option="--init")
    config = json.loads(config_file.read_text())
    task = config.get("task_type")
    causal = objective == "causal-lm"
    if task not in (INIT_TASKS_CAUSAL_LM if causal else INIT_TASKS):
        built = "causal LM (task_type CAUSAL_LM)" if causal else "sequence classifier (task_type SEQ_CLS)"
        raise RankscopeError(f"--init {config_file}: an adapter for a {task} model; rankscope train builds a {built}")
    base = config.get("base_model_name_or_path")
    return {**options, "folder": folder, "weights": weights, "task_type": task,
            "base_model_name_or_path": base if isinstance(base, str) else None}


def load_pattern(value: dict | str | os.PathLike | None, option: str) -> dict[str, Any] | None:
    """A rank/alpha pattern given as a dict, a JSON string or the path of a JSON file, checked before use.

    Keys must be valid patterns (as peft wraps them); values integers >= 1 for ``--rank-pattern``,
    positive numbers for ``--alpha-pattern``.  A problem is one :class:`RankscopeError` naming the
    option and the file.
    """
    from ..io.adapters import check_lora_fields

    if value is None:
        return None
    key = "rank_pattern" if "rank" in option else "alpha_pattern"
    if isinstance(value, dict):
        check_lora_fields({key: value}, option, min_pattern_rank=1)
        return value
    text = str(value)
    path = Path(text).expanduser()
    try:
        if path.is_file():
            text = path.read_text()
        elif not text.lstrip().startswith("{"):
            raise RankscopeError(f"{option}: file not found: {value}")
    except OSError as exc:
        raise RankscopeError(f"{option}: cannot read {value} ({exc.strerror or exc})") from exc
    try:
        pattern = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RankscopeError(f"{option}: {value} is not valid JSON ({_first_line(exc)})") from exc
    if not isinstance(pattern, dict):
        raise RankscopeError(f"{option}: {value} must be a JSON object of module pattern -> number")
    check_lora_fields({key: pattern}, f"{option} {value}", min_pattern_rank=1)
    return pattern


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__

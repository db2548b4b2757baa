"""What a rank plan's source says: its spectra, the signal they measure, the peft task and the heads to save.

:func:`rankscope.ranks.recommend` reads its SOURCE here: :func:`load_source` gives the spectra (a spectrum,
probe or lora result folder, a :class:`rankscope.spectrum.SpectrumResult`, or a ``BASE FINETUNED`` pair whose
spectra are computed on the fly) and :func:`check_spectra` checks them against the target rows.  Then:

* :func:`plan_signal` — what the spectra measure, by the SOURCE's ``run.json`` ``"command"``: ``full-FT ΔW``
  (``spectrum``, or none recorded), ``probe gradient`` / ``probe update`` (``probe``, by its ``"signal"``),
  ``adapter`` (``lora``);
* :func:`plan_task` — the peft ``task_type`` (:mod:`rankscope.pairing.model_layout`), from the ``architectures``
  recorded for the inputs, the fine-tune's when it is a task model (a bare ``BertModel`` fine-tuned into
  ``BertForSequenceClassification`` gives ``SEQ_CLS``); a probe's plan is ``SEQ_CLS`` when nothing says otherwise;
* :func:`heads_to_save` — the task heads for ``modules_to_save``: the heads peft wraps under that task type
  (``classifier``/``score`` for ``SEQ_CLS``, ``TOKEN_CLS``; ``qa_outputs`` for ``QUESTION_ANS``), and an output
  head that only the fine-tune has (``lm_head`` under ``CAUSAL_LM``), trained whole rather than with LoRA.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .errors import RankscopeError
from .io.checkpoints import is_in_memory, source_name
from .io.peft import WRAPPED_HEADS, head_modules
from .numerics.rank_rules import ALL_LINEAR
from .pairing.model_layout import EMBEDDING_OR_HEAD, OUTPUT_HEADS, TaskChoice, choose_task, describe_config

if TYPE_CHECKING:
    from .spectrum import SpectrumResult


def load_source(source: Any, finetuned: str | os.PathLike | None, targets: tuple[str, ...],
                exclude_embeddings: bool, device: str, workers: int | None,
                progress: bool) -> tuple[SpectrumResult, dict[str, Any], bool]:
    """(SpectrumResult, description of the inputs, computed on the fly?) of a plan's SOURCE: a
    :class:`SpectrumResult` in memory, a result folder with ``modules.csv`` and ``spectra.npz``, or the spectra of
    the ``BASE FINETUNED`` pair computed now (only the ``targets``, embeddings and heads left out unless
    ``exclude_embeddings`` is false)."""
    from .spectrum import SpectrumResult, spectrum

    if isinstance(source, SpectrumResult):
        return source, {"spectrum": "in memory", "spectrum_inputs": source.info.get("inputs")}, False
    if finetuned is None:
        if is_in_memory(source):
            raise RankscopeError(f"SOURCE {source_name(source)}: a model in memory is a base checkpoint; give the "
                                 f"fine-tune too (recommend(base, finetuned)), or a spectrum result")
        folder = Path(source)
        if not folder.exists():
            raise RankscopeError(f"SOURCE {source}: no such folder (give a rankscope spectrum result folder, "
                                 f"or BASE FINETUNED)")
        if not (folder.is_dir() and (folder / "modules.csv").is_file() and (folder / "spectra.npz").is_file()):
            raise RankscopeError(f"SOURCE {source}: not a rankscope spectrum result folder (no modules.csv and "
                                 f"spectra.npz); give BASE FINETUNED to compute the spectra")
        spec = SpectrumResult.load(folder)
        return spec, {"spectrum": str(folder), "spectrum_inputs": spec.info.get("inputs")}, False
    include = [] if targets == (ALL_LINEAR,) else [rf"(?:^|\.){re.escape(t)}$" for t in targets]
    exclude = [EMBEDDING_OR_HEAD.pattern] if exclude_embeddings else []
    try:
        spec = spectrum(source, finetuned, include=include, exclude=exclude, device=device, workers=workers,
                        progress=progress)
    except RankscopeError as exc:
        if str(exc).startswith("--include/--exclude"):
            raise RankscopeError(f"--targets {','.join(targets)}: matches no 2-D module of {source_name(source)}") from exc
        raise
    return spec, spec.info.get("inputs", {}), True


def check_spectra(table: pd.DataFrame, spectra: dict[str, np.ndarray]) -> None:
    """Every row of ``table`` has a spectrum in ``spectra`` with ``min(m, n)`` values (else an error)."""
    for row in table.itertuples():
        s = spectra.get(row.module)
        if s is None:
            raise RankscopeError(f"SOURCE: no spectrum for module '{row.module}' in spectra.npz")
        if s.size != min(int(row.rows), int(row.cols)):
            raise RankscopeError(f"SOURCE: spectrum of '{row.module}' has {s.size} values, expected min(m, n) = "
                                 f"{min(int(row.rows), int(row.cols))}")


SIGNALS = {"spectrum": "full-FT ΔW", "lora": "adapter"}
"""The signal of a plan by the SOURCE's ``run.json`` command (a probe: ``probe <its signal>``)."""


def plan_signal(info: dict[str, Any]) -> str:
    """What the spectra of a source measure: ``full-FT ΔW`` (``spectrum``, or no command recorded), ``probe gradient``
    / ``probe update`` (``probe``, by its ``"signal"``) or ``adapter`` (``lora``); another command is an error."""
    command = info.get("command")
    if command == "probe":
        signal = info.get("signal")
        if signal not in ("gradient", "update"):
            raise RankscopeError(f"SOURCE: a probe result whose run.json 'signal' is {signal!r} (expected gradient or "
                                 f"update)")
        return f"probe {signal}"
    if command is None:
        return SIGNALS["spectrum"]
    if command not in SIGNALS:
        raise RankscopeError(f"SOURCE: holds a '{command}' result, not spectra to plan from (give a spectrum, probe or "
                             f"lora result folder, or BASE FINETUNED)")
    return SIGNALS[command]


def plan_task(info: dict[str, Any]) -> TaskChoice:
    """The peft task of a spectrum result: :func:`rankscope.pairing.model_layout.choose_task` on the ``architectures`` that
    its ``run.json`` records for both inputs (:meth:`rankscope.io.checkpoints.Checkpoint.describe`); the fine-tune's
    when it has heads.  Unknown (no ``architectures``, a spectrum built in memory): ``task_type`` null."""
    inputs = info.get("inputs") if isinstance(info.get("inputs"), dict) else {}
    base, ft = inputs.get("base"), inputs.get("finetuned")
    name = lambda d, default: d.get("given", default) if isinstance(d, dict) else default  # noqa: E731
    choice = choose_task(describe_config(base), describe_config(ft), name(base, "the base"), name(ft, "the fine-tune"))
    if info.get("command") == "probe" and choice.task in (None, "FEATURE_EXTRACTION"):
        # a probe trains the sequence-classification model that `rankscope train` builds on its base
        return TaskChoice("SEQ_CLS", "base", choice.architecture, choice.config, choice.notes)
    return choice


def heads_to_save(spec: SpectrumResult, task: str | None) -> list[str]:
    """Task heads for ``modules_to_save``: every head peft wraps under ``task`` (``classifier``/``score``,
    ``qa_outputs``; :data:`rankscope.io.peft.WRAPPED_HEADS`) found in the pair, including one that only the
    fine-tune has (a fresh classifier), and an output head that only the fine-tune has (a fresh ``lm_head`` on a
    bare ``LlamaModel`` base, which ``AutoModelForCausalLM.from_pretrained(BASE)`` would initialise at random)."""
    align_info = spec.info.get("alignment", {}) or {}
    only_ft = list(align_info.get("only_in_finetuned") or [])
    vectors = list(spec.vectors["module"]) if len(getattr(spec, "vectors", [])) else []
    present = [*spec.table["module"], *vectors, *only_ft, *(align_info.get("only_in_base") or []),
               *(align_info.get("skipped") or {})]
    wrapped = head_modules(map(str, present), WRAPPED_HEADS.get(task or "", ()))
    fresh = head_modules(only_ft, OUTPUT_HEADS.get(task or "", ()))
    return sorted(set(wrapped) | set(fresh))

"""Which peft task a base / fine-tune pair is for, and which of its modules peft treats as task heads.

peft picks the model wrapper by ``task_type`` (``peft.auto.MODEL_TYPE_TO_PEFT_MODEL_MAPPING``) and the wrapper
decides what happens to the heads (peft 0.21, ``peft_model.py``):

* ``SEQ_CLS`` / ``TOKEN_CLS`` (``PeftModelForSequenceClassification`` / ``…TokenClassification``) append
  ``classifier`` and ``score`` to ``modules_to_save``; ``QUESTION_ANS`` appends ``qa_outputs``.  A module in
  ``modules_to_save`` is trained (and saved) whole and is never adapted: ``check_target_module_exists`` skips
  every module matching ``re.match(rf"(^|.*\\.){name}($|\\..*)", key)``, i.e. the head and everything below it.
* ``CAUSAL_LM``: no head is wrapped, but ``all-linear`` leaves the output embedding (``lm_head``) out
  (``_maybe_include_all_linear_layers``).

The architecture that decides (:func:`choose_task`) is the task model of the pair: a bare backbone
(``BertModel``, ``LlamaModel``) fine-tuned into ``BertForSequenceClassification`` / ``LlamaForCausalLM``
gives the fine-tune's task type and module names (``bert.…``, ``model.…``), because the adapter is loaded
into ``AutoModelFor<task>.from_pretrained(BASE)``, which has the fine-tune's layout.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import RankscopeError

TASK_SUFFIXES = (
    ("ForSequenceClassification", "SEQ_CLS"),
    ("ForTokenClassification", "TOKEN_CLS"),
    ("ForQuestionAnswering", "QUESTION_ANS"),
    ("ForCausalLM", "CAUSAL_LM"),
    ("LMHeadModel", "CAUSAL_LM"),
    ("ForSeq2SeqLM", "SEQ_2_SEQ_LM"),
)
"""peft task types by architecture suffix (``peft.TaskType``)."""

WRAPPED_HEADS = {"SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"),
                 "QUESTION_ANS": ("qa_outputs",)}
"""Heads that peft's ``PeftModelFor*.__init__`` puts in ``modules_to_save`` for these task types."""

OUTPUT_HEADS = {"CAUSAL_LM": ("lm_head", "embed_out", "output_layer")}
"""Output heads that peft does not wrap but ``all-linear`` leaves out (the model's output embeddings)."""


def architecture(config: dict[str, Any] | None) -> str | None:
    """``architectures[0]`` of a ``config.json`` dict, or ``None``."""
    archs = (config or {}).get("architectures") or []
    return archs[0] if archs and isinstance(archs[0], str) else None


def is_bare(arch: str) -> bool:
    """A base model class without heads (``BertModel``, ``LlamaModel``; not ``GPT2LMHeadModel``)."""
    return arch.endswith("Model") and "For" not in arch and "Head" not in arch


def task_type(config: dict[str, Any] | None) -> str | None:
    """peft ``task_type`` for a ``config.json``'s architecture (``architectures[0]``), or ``None``.

    ``*ForSequenceClassification`` → ``SEQ_CLS``, ``*ForTokenClassification`` → ``TOKEN_CLS``,
    ``*ForQuestionAnswering`` → ``QUESTION_ANS``, ``*ForCausalLM`` / ``*LMHeadModel`` → ``CAUSAL_LM``,
    ``*ForConditionalGeneration`` → ``SEQ_2_SEQ_LM`` if encoder–decoder else ``CAUSAL_LM``, a bare
    ``*Model`` → ``FEATURE_EXTRACTION``; anything else (``*ForMaskedLM``, no config) → ``None``.
    """
    arch = architecture(config)
    if arch is None:
        return None
    for suffix, task in TASK_SUFFIXES:
        if arch.endswith(suffix):
            return task
    if arch.endswith("ForConditionalGeneration"):
        return "SEQ_2_SEQ_LM" if (config or {}).get("is_encoder_decoder") else "CAUSAL_LM"
    if is_bare(arch):
        return "FEATURE_EXTRACTION"
    return None


def head_names(task: str | None) -> tuple[str, ...]:
    """Module names that are task heads under ``task``: peft's wrapped heads, then output heads."""
    return WRAPPED_HEADS.get(task or "", ()) + OUTPUT_HEADS.get(task or "", ())


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


@dataclass
class TaskChoice:
    """The task model of a pair: its peft ``task_type``, which side it is and why.

    ``side`` is ``"base"`` or ``"finetuned"``: module names (and the model cross-check) follow that
    checkpoint's layout.  ``notes`` are one-line warnings for the user.
    """

    task: str | None
    side: str
    architecture: str | None
    config: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"task_type": self.task, "from": self.side, "architecture": self.architecture}


def choose_task(base_config: dict[str, Any] | None, ft_config: dict[str, Any] | None, base: str = "the base",
                finetuned: str = "the fine-tune") -> TaskChoice:
    """The task model of a pair (see the module docstring): the fine-tune's architecture when it has heads.

    * the fine-tune is a task model (not a bare ``*Model``): its task type and layout, whatever the base is
      (a bare backbone, or a pre-training class such as ``BertForMaskedLM``);
    * otherwise a base with heads, then a bare base, then a bare fine-tune;
    * both task models of different task types (``LlamaForCausalLM`` → ``LlamaForSequenceClassification``):
      the fine-tune's, with a note; of the same task type but different classes: the fine-tune's, with a note.
    Raises :class:`RankscopeError` only for configs whose ``architectures`` is not a list of class names.
    """
    for given, cfg in ((base, base_config), (finetuned, ft_config)):
        archs = (cfg or {}).get("architectures")
        if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
            raise RankscopeError(f"{given}: config.json 'architectures' must be a list of class names, got {archs!r}")
    arch_b, arch_f = architecture(base_config), architecture(ft_config)
    task_b, task_f = task_type(base_config), task_type(ft_config)
    head_b = arch_b is not None and not is_bare(arch_b)
    head_f = arch_f is not None and not is_bare(arch_f)
    notes: list[str] = []
    if head_b and head_f and arch_b != arch_f:
        what = "task type" if task_b and task_f and task_b != task_f else "class"
        notes.append(f"{base} is a {arch_b} ({task_b or 'no peft task type'}) but {finetuned} a {arch_f} "
                     f"({task_f or 'no peft task type'}): different {what}; task_type and module names follow the "
                     f"fine-tune ({arch_f}); load the adapter into that class")
    if head_f:
        return TaskChoice(task_f, "finetuned", arch_f, ft_config, notes)
    if head_b:
        if arch_f is not None:
            notes.append(f"{finetuned} is a bare {arch_f} but {base} a {arch_b}: task_type {task_b} and module names "
                         "follow the base")
        return TaskChoice(task_b, "base", arch_b, base_config, notes)
    if arch_b is not None:
        return TaskChoice(task_b, "base", arch_b, base_config, notes)
    if arch_f is not None:
        return TaskChoice(task_f, "finetuned", arch_f, ft_config, notes)
    return TaskChoice(None, "base", None, None, notes)


def describe_config(description: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of a ``config.json`` that :func:`task_type` reads, from :meth:`Checkpoint.describe` (``run.json``)."""
    if not isinstance(description, dict) or not description.get("architectures"):
        return None
    return {"architectures": description["architectures"], "is_encoder_decoder": description.get("is_encoder_decoder")}

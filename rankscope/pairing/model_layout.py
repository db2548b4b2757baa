"""Model anatomy from names and configs: embeddings and heads, the peft task of a pair, the model peft wraps.

**Embeddings and heads** (one vocabulary, :data:`INPUT_EMBEDDING_NAMES` and :data:`OUTPUT_HEAD_NAMES`; the
predicates differ in what they decide and so in how widely they accept):

* :func:`is_input_embedding` / :func:`is_output_head` — the layer type ``extract`` guesses from a module's name
  (last component one of the names, or ``…embedding(s)``); an embedding or head is left to ``--embeddings``;
* :func:`is_embedding_or_head` — what ``recommend`` leaves out of ``all-linear`` (any last component containing
  ``embed``, case-insensitive; its regex :data:`EMBEDDING_OR_HEAD` is also the spectrum's ``--exclude``);
* :func:`may_have_vocabulary_rows` — a tensor whose row count may change with the vocabulary (a hint anywhere in
  the name), so that a shape mismatch is compared on the common rows instead of skipped.

**Task** (peft 0.21, ``peft_model.py``): peft picks the model wrapper by ``task_type``
(``peft.auto.MODEL_TYPE_TO_PEFT_MODEL_MAPPING``) and the wrapper decides what happens to the heads
(:data:`rankscope.io.peft.WRAPPED_HEADS`: ``SEQ_CLS`` / ``TOKEN_CLS`` wrap ``classifier`` and ``score``,
``QUESTION_ANS`` ``qa_outputs``); ``CAUSAL_LM`` wraps no head, but ``all-linear`` leaves the output embedding
(``lm_head``, :data:`OUTPUT_HEADS`) out (``_maybe_include_all_linear_layers``).

The architecture that decides (:func:`choose_task`) is the task model of the pair: a bare backbone
(``BertModel``, ``LlamaModel``) fine-tuned into ``BertForSequenceClassification`` / ``LlamaForCausalLM``
gives the fine-tune's task type and module names (``bert.…``, ``model.…``), because the adapter is loaded
into ``AutoModelFor<task>.from_pretrained(BASE)``, which has the fine-tune's layout.

**Layout**: :class:`ModelLayout` builds that class on torch's meta device to cross-check module names and layer
types; :func:`naming_suspicion` says when the checkpoint's names look unlike the class's.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import RankscopeError
from ..io.peft import WRAPPED_HEADS

TASK_SUFFIXES = (
    ("ForSequenceClassification", "SEQ_CLS"),
    ("ForTokenClassification", "TOKEN_CLS"),
    ("ForQuestionAnswering", "QUESTION_ANS"),
    ("ForCausalLM", "CAUSAL_LM"),
    ("LMHeadModel", "CAUSAL_LM"),
    ("ForSeq2SeqLM", "SEQ_2_SEQ_LM"),
)
"""peft task types by architecture suffix (``peft.TaskType``)."""

INPUT_EMBEDDING_NAMES = ("embed_tokens", "word_embeddings", "position_embeddings", "token_type_embeddings", "wte",
                         "wpe", "embed_positions", "embed_in", "tok_embeddings", "shared", "relative_attention_bias")
"""Last name components of input embeddings (any ``…embedding`` / ``…embeddings`` counts too)."""
OUTPUT_HEAD_NAMES = ("lm_head", "embed_out", "output_layer")
"""Last name components of output heads (the model's output embeddings)."""
OUTPUT_HEADS = {"CAUSAL_LM": OUTPUT_HEAD_NAMES}
"""Output heads that peft does not wrap but ``all-linear`` leaves out (the model's output embeddings)."""

_INPUT_EMBEDDING = re.compile(rf"(?:^|\.)(?:{'|'.join(INPUT_EMBEDDING_NAMES)}|\w*embeddings?)$")
_OUTPUT_HEAD = re.compile(rf"(?:^|\.)(?:{'|'.join(OUTPUT_HEAD_NAMES)})$")
EMBEDDING_OR_HEAD = re.compile(r"(?i)(?:^|\.)(?:[^.]*embed[^.]*|wte|wpe|lm_head|embed_out|shared|output_layer)$")
"""Input/output embeddings and LM heads by name, broadly (``word_embeddings``, ``embed_tokens``, ``wte``, ``lm_head``,
any last component containing ``embed``): every :data:`INPUT_EMBEDDING_NAMES` but T5's ``relative_attention_bias``,
every :data:`OUTPUT_HEAD_NAMES`.  Written out because its text is recorded (the spectrum's ``exclude`` option)."""
_VOCABULARY_HINT = re.compile("|".join(("embed", "wte", "shared", *OUTPUT_HEAD_NAMES)), re.I)


def is_input_embedding(module: str) -> bool:
    """A module named as an input embedding (:data:`INPUT_EMBEDDING_NAMES`, ``…embedding(s)``) that is no output head."""
    return bool(_INPUT_EMBEDDING.search(module)) and not is_output_head(module)


def is_output_head(module: str) -> bool:
    """A module named as an output head (:data:`OUTPUT_HEAD_NAMES`: ``lm_head``, ``embed_out``, ``output_layer``)."""
    return bool(_OUTPUT_HEAD.search(module))


def is_embedding_or_head(module: str) -> bool:
    """An input/output embedding or LM head by name, broadly (:data:`EMBEDDING_OR_HEAD`): left out of
    ``recommend``'s ``all-linear``."""
    return bool(EMBEDDING_OR_HEAD.search(module))


def may_have_vocabulary_rows(tensor: str) -> bool:
    """A tensor whose rows may follow the vocabulary (``embed``, ``wte``, ``shared`` or an output head anywhere in
    the name, any case): a different row count in the fine-tune is vocabulary growth, not another shape."""
    return bool(_VOCABULARY_HINT.search(tensor))


def layer_type_guess(module: str, transpose: bool) -> str:
    """``linear``, ``conv1d`` (stored transposed) or ``embedding`` from the name (refined by :class:`ModelLayout`)."""
    if transpose:
        return "conv1d"
    return "embedding" if is_input_embedding(module) else "linear"


def is_vocab_module(module: str, layer_type: str) -> bool:
    """Embeddings and output heads (``lm_head``): handled by ``extract --embeddings``, never by ``all-linear``."""
    return layer_type == "embedding" or is_output_head(module)


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


# --------------------------------------------------------------------------------------------------
# the model peft will wrap
# --------------------------------------------------------------------------------------------------


MODEL_CHECKS = ("auto", "always", "never")
"""When ``extract`` cross-checks names and layer types with :class:`ModelLayout` (``--model-check``)."""
_HEAD_FIRSTS = {"lm_head", "classifier", "score", "qa_outputs", "cls", "embed_out", "output"}
"""First name components of the heads a head class keeps next to its base model's prefix."""


def naming_suspicion(config: dict[str, Any] | None, tensor_names: Sequence[str]) -> str | None:
    """Why a checkpoint's tensor names (the task model's, :func:`choose_task`) might not be the module names of its
    architecture, or ``None``.

    ``save_pretrained`` of a head class (``…ForCausalLM``, ``…ForSequenceClassification``, …) nests the
    base model under one prefix (``model.``, ``transformer.``, ``bert.``) next to the heads; a bare
    ``…Model`` has no such prefix.  Checkpoints that break this (legacy Hub files such as GPT-2's
    ``h.0.attn…`` under ``GPT2LMHeadModel``, encoder–decoders such as T5) get the model cross-check.
    """
    archs = (config or {}).get("architectures") or []
    if not archs or not isinstance(archs[0], str):
        return None
    arch = archs[0]
    firsts = {n.split(".", 1)[0] for n in tensor_names if "." in n}
    body = firsts - _HEAD_FIRSTS
    if is_bare(arch):
        if len(firsts) == 1:
            return f"every tensor of the bare {arch} sits under '{next(iter(firsts))}.'"
        return None
    if len(body) != 1:
        return f"the {arch} checkpoint's tensors do not share one base-model prefix ({', '.join(sorted(body)[:4])})"
    return None


class ModelLayout:
    """Module names and layer types of the model peft will wrap, built on torch's meta device.

    The class is ``transformers.<architectures[0]>`` of the task model's ``config.json`` (the fine-tune's
    when it has heads, :func:`choose_task`) — what ``AutoModelFor<task>.from_pretrained(BASE)``
    builds — instantiated without memory or weights.  Built in a background thread (importing
    transformers takes seconds) while the SVDs run; :meth:`result` returns
    ``{module name: 'linear' | 'conv1d' | 'embedding' | class name}`` or ``None`` with :attr:`reason`.
    """

    def __init__(self, config: dict[str, Any] | None, background: bool = True) -> None:
        self.config, self.layout, self.reason = config, None, None
        self._thread = threading.Thread(target=self._build, daemon=True, name="rankscope-model-layout")
        if background:
            self._thread.start()
        else:
            self._build()

    def _build(self) -> None:
        arch = ((self.config or {}).get("architectures") or [None])[0]
        if not arch:
            self.reason = "the base has no config.json with 'architectures'"
            return
        try:
            import torch
            import transformers

            cls = getattr(transformers, arch, None)
            if cls is None:
                self.reason = f"transformers {transformers.__version__} has no class {arch}"
                return
            verbosity = transformers.logging.get_verbosity()
            transformers.logging.set_verbosity_error()
            try:
                cfg = cls.config_class.from_dict(dict(self.config))
                with torch.device("meta"):
                    model = cls(cfg)
            finally:
                transformers.logging.set_verbosity(verbosity)
            kinds = {"Linear": "linear", "Conv1D": "conv1d", "Embedding": "embedding"}
            self.layout = {n: kinds.get(type(mod).__name__, type(mod).__name__) for n, mod in model.named_modules()}
        except Exception as exc:  # any failure only means names and types are not cross-checked
            self.reason = f"could not build {arch} on the meta device ({type(exc).__name__}: {str(exc)[:160]})"

    def result(self, timeout: float = 300.0) -> dict[str, str] | None:
        """The layout, waiting for the background build (``None`` when it could not be built)."""
        if self._thread.is_alive() or self._thread.ident is not None:
            self._thread.join(timeout)
        return self.layout

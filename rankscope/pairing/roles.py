"""The role of every tensor of a pair in an extracted adapter: LoRA, ``modules_to_save`` copy, bias or left out.

Decided from the LoRA spec, the peft task and the model's names, before any SVD.

Module names are those of the task model's checkpoint (``side``, :func:`model_tensor`;
:func:`rankscope.pairing.model_layout.choose_task`), so targets, patterns and the adapter's keys follow the
model peft wraps.  A tensor belongs to a saved module when one of its enclosing modules (outermost first) is
named by the save names (peft's list rule, :func:`rankscope.io.peft.target_listed`) or matched by a save
pattern (``re.search``); all of that module's tensors are then copied whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import RankscopeError
from ..io.checkpoints import Checkpoint
from ..io.peft import WRAPPED_HEADS, LoraSpec, lora_scale, target_listed
from .align import Alignment, TensorPair, common_prefixes, module_name
from .model_layout import is_vocab_module, layer_type_guess


@dataclass
class ModulePlan:
    """What happens to one 2-D tensor: ``lora`` (rank ``r``), ``save`` (modules_to_save) or ``skip``."""

    pair: TensorPair
    name: str  # module name in the model peft wraps (the task model's checkpoint naming, no ``.weight``)
    role: str
    layer_type: str
    r: int = 0
    alpha: float = 0.0
    scale: float = 0.0


def model_tensor(pair: TensorPair, side: str) -> str:
    """The tensor's name in the model peft wraps: the stored name on the task model's ``side``
    (:func:`rankscope.pairing.model_layout.choose_task`; ``bert.encoder…`` for a ``BertModel`` →
    ``…ForSequenceClassification`` pair)."""
    return pair.finetuned.name if side == "finetuned" else pair.base.name


def saved_owner(tensor: str, names: tuple[str, ...], patterns: list[re.Pattern[str]]) -> str | None:
    """The outermost module enclosing ``tensor`` that is to be saved whole, if any (see the module docstring)."""
    parts = tensor.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if target_listed(names, prefix) or any(r.search(prefix) for r in patterns):
            return prefix
    return None


def plan_roles(pairs: list[TensorPair], spec: LoraSpec, embeddings: str, save_names: tuple[str, ...],
               save_patterns: list[re.Pattern[str]], exclude: list[re.Pattern[str]],
               side: str = "base") -> tuple[list[ModulePlan], list[str]]:
    """Decide the role of every 2-D tensor; returns the plans and the modules_to_save names.

    Embeddings and output heads (:func:`rankscope.pairing.model_layout.is_vocab_module`) follow ``embeddings``
    (``auto``: LoRA when the targets name them explicitly, else skip); other modules get LoRA when ``spec``
    targets them and no ``exclude`` regex matches (``re.search``); a pattern rank of 0 skips the module.
    """
    plans: list[ModulePlan] = []
    saved: set[str] = set()
    for p in pairs:
        tensor = model_tensor(p, side)
        name = module_name(tensor)
        owner = saved_owner(tensor, save_names, save_patterns)
        if owner is not None:
            saved.add(owner)
            continue
        if not p.is_matrix:
            continue
        if p.fused:  # one expert of a fused [E, ·, ·] tensor: no nn.Linear to adapt
            plans.append(ModulePlan(p, p.module, "skip", "other"))
            continue
        if len(p.base.shape) != 2 or not tensor.endswith(".weight"):
            plans.append(ModulePlan(p, name, "skip", "other"))
            continue
        ltype = layer_type_guess(name, p.transpose)
        excluded = any(r.search(name) for r in exclude)
        role = "skip"
        if is_vocab_module(name, ltype):
            mode = embeddings if embeddings != "auto" else ("lora" if spec.explicitly_targets(name) else "skip")
            role = "skip" if excluded else mode
        elif not excluded and spec.targets(name, is_linear=True):
            role = "lora"
        if role == "save":
            saved.add(name)
        plan = ModulePlan(p, name, role, ltype)
        if role == "lora":
            plan.r, plan.alpha = spec.rank_alpha(name)
            if plan.r == 0:  # a pattern rank of 0 means: leave this module out
                plan.role, plan.alpha = "skip", 0.0
            else:
                plan.scale = float(lora_scale(plan.alpha, plan.r, spec.use_rslora))
        plans.append(plan)
    return plans, sorted(saved)


def fine_tune_only_saves(alignment: Alignment, f_ckpt: Checkpoint, save_names: tuple[str, ...],
                         save_patterns: list[re.Pattern[str]], side: str = "base", task: str | None = None,
                         warnings: list[str] | None = None) -> list[tuple[str, str, str, np.ndarray]]:
    """(owner, model name, core name, fine-tuned values) of fine-tuned tensors that the base cannot give.

    Tensors the base lacks but ``save_names`` / ``--save-modules`` name: a classification head trained on top
    of a bare encoder (``BertModel`` base, ``...ForSequenceClassification`` fine-tune), or a fresh ``lm_head``
    on a bare ``LlamaModel``, exists only in the fine-tune; saved whole in ``modules_to_save`` it travels with
    the adapter.  So does a peft task head (:data:`rankscope.io.peft.WRAPPED_HEADS`) whose shape differs
    from the base's (another number of labels), with a note on how to load the base.
    """
    heads = WRAPPED_HEADS.get(task or "", ())
    changed = [c for c in alignment.skipped if saved_owner(c, heads, []) is not None]
    out, notes = [], {}
    for core in [*alignment.only_in_finetuned, *changed]:
        stored = alignment.finetuned_prefix + core
        name = stored if stored in f_ckpt.tensors else core
        model = name if side == "finetuned" else (alignment.base_prefix + core if name != core else core)
        owner = saved_owner(model, save_names, save_patterns)
        if owner is None:
            continue
        info = f_ckpt.tensors[name]
        out.append((owner, model, core, f_ckpt.read_rows(name).reshape(info.shape)))
        if owner.rsplit(".", 1)[-1] in heads and len(info.shape) == 2:
            notes[owner] = (info.shape[0], core in changed or notes.get(owner, (0, False))[1])
    labels = (f_ckpt.config or {}).get("id2label")
    for owner, (rows, resized) in sorted(notes.items()):
        n = len(labels) if isinstance(labels, dict) and labels else rows
        how = f"num_labels={n}" + (", ignore_mismatched_sizes=True" if resized else "")
        what = "has another shape in the base" if resized else "exists only in the fine-tune"
        if warnings is not None and task != "QUESTION_ANS":
            warnings.append(f"the task head '{owner}' {what}: the fine-tune's travels whole in modules_to_save; "
                            f"load the base with {how}")
    return out


def check_ranks(plans: list[ModulePlan]) -> None:
    """Every LoRA rank must fit its module: ``r <= min(m, n)``, else one :class:`RankscopeError`."""
    for plan in plans:
        if plan.role == "lora" and plan.r > min(plan.pair.rows, plan.pair.cols):
            raise RankscopeError(f"rank {plan.r} for module '{plan.name}' exceeds min(m, n) = "
                                 f"{min(plan.pair.rows, plan.pair.cols)} of its {plan.pair.rows}x{plan.pair.cols} ΔW: lower the rank, "
                                 "give the module its own rank (--config rank_pattern) or --exclude it")


def check_vocab(plans: list[ModulePlan], warnings: list[str]) -> None:
    """Modules_to_save copies must have the base's shape; LoRA covers the common rows only."""
    for p in plans:
        if p.pair.base.shape == p.pair.finetuned.shape or p.role == "skip":
            continue
        if p.role == "save":
            raise RankscopeError(f"module '{p.name}' has {p.pair.finetuned.shape[0]} rows in the fine-tune but "
                                 f"{p.pair.base.shape[0]} in the base (vocabulary changed): a modules_to_save copy "
                                 "would not fit the base model; use --embeddings lora or skip")
        warnings.append(f"module '{p.name}': vocabulary changed; the LoRA covers the {p.pair.rows} rows of the base, "
                        "the new tokens' rows are not in the adapter")


def drop_zero_updates(plans: list[ModulePlan], results: dict[str, Any], warnings: list[str]) -> None:
    """Targeted modules whose ``ΔW`` is exactly zero (``results[module][1]`` is ``None``: no factors) become
    ``skip`` (rank 0: not in ``target_modules`` nor the tensors, a LoRA of rank ``r`` would only add zero
    factors); raises when no targeted module is left."""
    zero = [p for p in plans if p.role == "lora" and results[p.pair.module][1] is None]
    for plan in zero:
        plan.role, plan.r, plan.alpha, plan.scale = "skip", 0, 0.0, 0.0
    if not zero:
        return
    listed = ", ".join(p.name for p in zero[:4]) + (" …" if len(zero) > 4 else "")
    if not any(p.role == "lora" for p in plans):
        raise RankscopeError(f"ΔW = 0 exactly in every targeted module ({listed}): the fine-tune did not change "
                             "them, nothing to extract (choose other --targets)")
    warnings.append(f"ΔW = 0 exactly in {len(zero)} targeted module(s), not adapted (rank 0, left out of "
                    f"target_modules): {listed}")


def apply_layout(plans: list[ModulePlan], saved: list[str], layout: dict[str, str] | None,
                 warnings: list[str]) -> dict[str, str]:
    """Cross-check names and layer types with the model peft will build (:class:`rankscope.pairing.model_layout.
    ModelLayout`); returns ``checkpoint name → model name``."""
    names = [p.name for p in plans if p.role == "lora"] + saved
    if layout is None:
        return {n: n for n in names}
    model_prefix, ckpt_prefix = common_prefixes(list(layout), names)
    mapping = {}
    for n in names:
        core = n[len(ckpt_prefix):] if ckpt_prefix and n.startswith(ckpt_prefix) else n
        mapping[n] = model_prefix + core if model_prefix + core in layout else n
    if model_prefix or ckpt_prefix:
        warnings.append(f"module names renamed to the model's: checkpoint prefix '{ckpt_prefix}' -> '{model_prefix}'")
    missing = [n for n in names if mapping[n] not in layout]
    if missing:
        raise RankscopeError(f"module '{missing[0]}' of the checkpoints does not exist in the model built from the task "
                             f"model's config.json ({len(missing)} such modules): cannot name the adapter's keys")
    for plan in plans:
        if plan.role != "lora":
            continue
        true_type = layout[mapping[plan.name]]
        if true_type == plan.layer_type:
            continue
        if true_type not in ("linear", "conv1d", "embedding") or {true_type, plan.layer_type} == {"linear", "conv1d"}:
            raise RankscopeError(f"module '{plan.name}' is a {true_type} layer (expected {plan.layer_type}): peft LoRA "
                                 f"cannot target it as extracted; exclude it with --exclude")
        plan.layer_type = true_type
    return mapping


def vector_tensors(pairs: list[TensorPair], bias: str, lora_names: set[str], saved: list[str],
                   side: str = "base") -> tuple[list[TensorPair], list[TensorPair]]:
    """1-D tensors: (those written because of ``bias``, the rest); tensors under modules_to_save are excluded."""
    written, rest = [], []
    for p in pairs:
        if p.is_matrix and len(p.base.shape) == 2:
            continue
        name = model_tensor(p, side)
        if any(name.startswith(s + ".") for s in saved):
            continue
        owner = name.rsplit(".", 1)[0]
        is_bias = name.endswith(".bias")
        if is_bias and (bias == "all" or (bias == "lora_only" and owner in lora_names)):
            written.append(p)
        else:
            rest.append(p)
    return written, rest

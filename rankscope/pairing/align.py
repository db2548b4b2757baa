"""Align two checkpoints tensor by tensor and name what each tensor is.

* **Prefixes.** The same weight is ``bert.encoder.layer.0...`` in a classification model,
  ``encoder.layer.0...`` in a bare ``BertModel`` and ``model.layers.0...`` in Llama.  The pair of
  prefixes (one per side, possibly empty) that matches the most tensor names wins; module names
  are reported without it.
* **Orientation.** GPT-2 style ``Conv1D`` stores weights as ``in x out``; they are transposed so
  that rows are always the output space (``U`` spans outputs).
* **Vocabulary growth.** Embedding / LM-head matrices whose row counts differ (new tokens) are
  compared on their common rows, with a warning.
* **Layer and kind.** ``layer`` is the block index; ``kind`` is the shortest dotted suffix of the
  in-block path that is unique within the block (``query``, ``q_proj``, ``intermediate.dense``,
  ``attention.output.dense``); outside blocks it is the whole module name.
* **Experts.** Mixture-of-experts tensors give one pair per expert with its ``expert`` index, per-expert
  2-D and fused 3-D alike, oriented by the architecture (:mod:`rankscope.pairing.experts`); experts share
  their kind (``gate_up_proj``).  Expert biases (``…_bias``, 2-D) are vectors.
* **Quantized weights.** FP8 block-scaled and MXFP4 weights are paired as the dequantized matrices
  (:mod:`rankscope.io.quantized`), so a bf16 fine-tune of an FP8 base is diffed exactly.
* **Tied embeddings.** An output head stored with the same values as the input embedding in both
  checkpoints (``tie_word_embeddings``) is analysed once, as the embedding; the head is listed as skipped
  with that reason.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from ..io.checkpoints import Checkpoint, TensorInfo
from ..io.skipped import dtype_reason, skipped_entry
from .experts import expert_module, expert_of, fused_layout, is_fused_experts, without_expert
from .model_layout import is_input_embedding, is_output_head, may_have_vocabulary_rows

CONV1D_MODEL_TYPES = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer"}
CONV1D_LEAVES = {"c_attn", "c_proj", "c_fc", "q_attn"}
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block|decoder_layers|encoder_layers)\.(\d+)\.")
_ANY_INDEX = re.compile(r"(?:^|\.)(\d+)\.")


@dataclass(frozen=True)
class TensorPair:
    """One tensor present in both checkpoints, ready to diff."""

    module: str  # name without prefix and without a trailing ``.weight``
    base: TensorInfo
    finetuned: TensorInfo
    rows: int  # oriented: output dimension (common rows when the vocabulary grew)
    cols: int
    transpose: bool  # stored as in x out (Conv1D)
    layer: int | None = None
    kind: str = ""
    expert: int | None = None  # the expert of an MoE tensor (for a fused [E, ·, ·] tensor: the slice read)

    @property
    def is_matrix(self) -> bool:
        return len(self.base.shape) >= 2 and not self.module.rsplit(".", 1)[-1].endswith("bias")

    @property
    def fused(self) -> bool:
        """One expert of a fused 3-D ``[E, ·, ·]`` tensor (read with ``expert=``)."""
        return self.expert is not None and len(self.base.shape) == 3

    @property
    def stored_rows(self) -> int:
        """Rows to read from storage (before orientation)."""
        return self.cols if self.transpose else self.rows

    @property
    def stored_cols(self) -> int:
        """Columns of the stored matrix (before orientation)."""
        return self.rows if self.transpose else self.cols

    @property
    def read_expert(self) -> int | None:
        """The ``expert=`` argument of :meth:`Checkpoint.read_rows` for this pair (fused experts only)."""
        return self.expert if self.fused else None


@dataclass
class Alignment:
    pairs: list[TensorPair]
    base_prefix: str
    finetuned_prefix: str
    only_in_base: list[str] = field(default_factory=list)
    only_in_finetuned: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> reason
    warnings: list[str] = field(default_factory=list)
    tied: dict[str, str] = field(default_factory=dict)
    """Output heads analysed once, as the input embedding they are tied to: ``{head module: embedding module}``."""
    skipped_tensors: list[dict[str, str]] = field(default_factory=list)
    """Every tensor left out of ``pairs``: ``{"tensor", "checkpoint" (base/finetuned/both), "dtype", "reason"}``."""


def _unpaired(base_all: dict[str, TensorInfo], ft_all: dict[str, TensorInfo]) -> list[dict[str, str]]:
    """Skipped-tensor entries for tensors on one side only and for dtypes that are not analysed."""
    out = []
    for core in sorted(base_all.keys() | ft_all.keys()):
        b, f = base_all.get(core), ft_all.get(core)
        if b is None or f is None:
            side, t = ("finetuned", f) if b is None else ("base", b)
            out.append(skipped_entry(core, side, t.dtype, f"only in {side}"))
        elif not (b.is_float and f.is_float):
            if b.dtype == f.dtype:
                out.append(skipped_entry(core, "both", b.dtype, dtype_reason(b.dtype)))
            else:
                bad, where = (f.dtype, " in finetuned") if b.is_float else (b.dtype, " in base")
                out.append(skipped_entry(core, "both", f"{b.dtype} in base, {f.dtype} in finetuned",
                                         dtype_reason(bad, where)))
    return out


def _suffix_index(names: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Map every dotted suffix to the (prefix, name) pairs it ends."""
    index: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name in names:
        parts = name.split(".")
        for k in range(len(parts)):
            index[".".join(parts[k:])].append((".".join(parts[:k]) + "." if k else "", name))
    return index


def common_prefixes(base_names: list[str], ft_names: list[str]) -> tuple[str, str]:
    """The (base prefix, finetuned prefix) pair under which the most names coincide."""
    base_index = _suffix_index(base_names)
    votes: Counter[tuple[str, str]] = Counter()
    for name in ft_names:
        parts = name.split(".")
        for k in range(len(parts)):
            core = ".".join(parts[k:])
            ft_prefix = ".".join(parts[:k]) + "." if k else ""
            for base_prefix, _ in base_index.get(core, ()):
                if base_prefix == "" or ft_prefix == "":
                    votes[(base_prefix, ft_prefix)] += 1
    if not votes:
        return "", ""
    best = max(votes.values())
    return min((p for p, v in votes.items() if v == best), key=lambda p: len(p[0]) + len(p[1]))


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix):] if prefix and name.startswith(prefix) else name


def module_name(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


def layer_of(module: str) -> tuple[int | None, str]:
    """Block index and the path inside the block (``None`` and the module for other tensors)."""
    match = _LAYER.search(module) or _ANY_INDEX.search(module)
    if not match:
        return None, module
    return int(match.group(1)), module[match.end():]


def assign_kinds(modules: list[str]) -> dict[str, tuple[int | None, str]]:
    """``module -> (layer, kind)`` with the shortest in-block suffix unique within its block."""
    by_layer: dict[int | None, list[tuple[str, list[str]]]] = defaultdict(list)
    for m in modules:
        layer, inner = layer_of(m)
        by_layer[layer].append((m, without_expert(inner).split(".")))  # experts share one kind
    out: dict[str, tuple[int | None, str]] = {}
    for layer, items in by_layer.items():
        for m, parts in items:
            if layer is None:
                out[m] = (None, m)
                continue
            for k in range(1, len(parts) + 1):
                kind = ".".join(parts[-k:])
                clash = any(".".join(o[-k:]) == kind for om, o in items if o != parts)
                if not clash:
                    break
            out[m] = (layer, kind)
    return out


def is_conv1d(ckpt: Checkpoint, module: str) -> bool:
    """Whether ``module`` is a GPT-2 style ``Conv1D`` (stored ``in x out``): by leaf name and ``model_type``."""
    leaf = module.rsplit(".", 1)[-1]
    if leaf not in CONV1D_LEAVES:
        return False
    model_type = (ckpt.config or {}).get("model_type")
    if not isinstance(model_type, str):  # absent (or not a name: a hand-edited config.json)
        return True
    return model_type in CONV1D_MODEL_TYPES if model_type else True


def align(base: Checkpoint, finetuned: Checkpoint) -> Alignment:
    """Pair the floating-point tensors of two checkpoints by name (see module docstring).

    Every tensor that is not paired is listed in ``skipped_tensors`` with the reason: only in one
    checkpoint, a dtype that is not analysed (FP8, integer, boolean, packed quantized), shapes
    that differ, or an empty tensor (a zero dimension: nothing to analyse, kept out of ``pairs``).
    """
    base_f = {n: t for n, t in base.tensors.items() if t.is_float}
    ft_f = {n: t for n, t in finetuned.tensors.items() if t.is_float}
    bp, fp = common_prefixes(list(base_f), list(ft_f))
    base_core = {_strip(n, bp): t for n, t in base_f.items()}
    ft_core = {_strip(n, fp): t for n, t in ft_f.items()}
    result = Alignment([], bp, fp)
    result.only_in_base = sorted(base_core.keys() - ft_core.keys())
    result.only_in_finetuned = sorted(ft_core.keys() - base_core.keys())
    skipped = _unpaired({_strip(n, bp): t for n, t in base.tensors.items()},
                        {_strip(n, fp): t for n, t in finetuned.tensors.items()})
    staged: list[tuple[str, TensorInfo, TensorInfo, int, int, bool, int | None]] = []
    for core, b in base_core.items():
        f = ft_core.get(core)
        if f is None:
            continue
        module = module_name(core)
        if b.shape != f.shape:
            grew = (
                len(b.shape) == 2 and len(f.shape) == 2 and b.shape[1] == f.shape[1] and may_have_vocabulary_rows(core)
            )
            if not grew:
                result.skipped[core] = f"shape {b.shape} in base vs {f.shape} in finetuned"
                result.warnings.append(f"skipping tensor '{core}': shape {b.shape} in base vs {f.shape} in finetuned")
                dtype = b.dtype if b.dtype == f.dtype else f"{b.dtype} in base, {f.dtype} in finetuned"
                skipped.append(skipped_entry(core, "both", dtype, result.skipped[core]))
                continue
            result.warnings.append(
                f"tensor '{core}': {b.shape[0]} rows in base vs {f.shape[0]} in finetuned "
                f"(vocabulary changed); comparing the {min(b.shape[0], f.shape[0])} common rows"
            )
        shape = (min(b.shape[0], f.shape[0]),) + b.shape[1:] if b.shape else (1,)
        if _prod(shape) == 0:
            skipped.append(skipped_entry(core, "both", b.dtype, "empty tensor, nothing to analyse"))
            continue
        if is_fused_experts(module, shape):
            in_out, why = fused_layout(module, shape, base.config or finetuned.config)
            if in_out is None:
                skipped.append(skipped_entry(core, "both", b.dtype, why))
                continue
            rows, cols = (shape[2], shape[1]) if in_out else (shape[1], shape[2])
            staged += [(expert_module(module, e), b, f, rows, cols, in_out, e) for e in range(shape[0])]
            continue
        cols = int(_prod(shape[1:]))
        transpose = len(shape) == 2 and is_conv1d(base, module)
        rows, cols = (cols, shape[0]) if transpose else (shape[0], cols)
        staged.append((module, b, f, rows, cols, transpose, expert_of(module) if len(shape) >= 2 else None))
    staged = _drop_tied_head(staged, base, finetuned, skipped, result)
    kinds = assign_kinds([s[0] for s in staged if len(s[1].shape) >= 2])
    for module, b, f, rows, cols, transpose, expert in staged:
        layer, kind = kinds.get(module, layer_of(module)[0:1] + (module,))
        result.pairs.append(TensorPair(module, b, f, rows, cols, transpose, layer, kind, expert))
    result.skipped_tensors = sorted(skipped, key=lambda s: (s["tensor"], s["checkpoint"]))
    return result


def _same_rows(ckpt: Checkpoint, a: TensorInfo, b: TensorInfo, rows: int = 8) -> bool:
    """Whether the first ``rows`` rows of two equally shaped tensors hold the same values (a tied copy)."""
    import numpy as np

    n = min(rows, a.shape[0])
    return bool(np.array_equal(ckpt.read_rows(a.name, 0, n), ckpt.read_rows(b.name, 0, n)))


def _drop_tied_head(staged: list, base: Checkpoint, finetuned: Checkpoint, skipped: list[dict[str, str]],
                    result: Alignment) -> list:
    """Analyse tied input/output embeddings once: drop the head when it stores the embedding's values on both sides."""
    heads = [s for s in staged if is_output_head(s[0]) and len(s[1].shape) == 2]
    embeddings = [s for s in staged if is_input_embedding(s[0]) and len(s[1].shape) == 2]
    drop = set()
    for head in heads:
        for emb in embeddings:
            if head[1].shape != emb[1].shape or head[2].shape != emb[2].shape:
                continue
            if _same_rows(base, head[1], emb[1]) and _same_rows(finetuned, head[2], emb[2]):
                drop.add(head[0])
                reason = f"tied to '{emb[0]}' (same values in both checkpoints): analysed once, as '{emb[0]}'"
                skipped.append(skipped_entry(_strip(head[1].name, result.base_prefix), "both", head[1].dtype, reason))
                result.tied[head[0]] = emb[0]
                break
    return [s for s in staged if s[0] not in drop]


def _prod(dims: tuple[int, ...]) -> int:
    out = 1
    for d in dims:
        out *= d
    return out

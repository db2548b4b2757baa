"""Mixture-of-experts tensors: which expert a module is, and how a fused 3-D expert tensor is oriented.

Two layouts hold the experts of an MoE block:

* **per-expert 2-D** — ``mlp.experts.7.gate_proj.weight`` (Qwen-MoE, DeepSeek), ``block_sparse_moe.experts.7.w1``
  (Mixtral on the Hub): ordinary ``out x in`` matrices; the expert index is part of the name.
* **fused 3-D** — one ``[E, ·, ·]`` tensor per projection: ``mlp.experts.gate_up_proj`` / ``down_proj``.
  The orientation depends on the architecture, not on the shapes: gpt-oss and Llama-4 store
  ``[E, in, out]`` (the forward pass is ``x @ W[e]``); transformers ≥ 5 Mixtral, Qwen2/3-MoE, DeepSeek-V2/V3,
  OLMoE and relatives store ``[E, out, in]`` (``F.linear(x, W[e])``).  For another ``model_type`` the
  orientation is read from ``config.json`` (``hidden_size`` is the input of ``gate``/``up`` projections and the
  output of ``down``); when that is ambiguous the tensor is skipped with the reason.

Either way every expert is one module (``…experts.7.gate_up_proj``) with its ``expert`` index, and the module
*kind* is shared by the experts (``gate_up_proj``, or ``experts.gate_proj`` beside a ``shared_expert.gate_proj``), so results aggregate over experts per layer × kind.
A fused ``gate_up_proj`` is one matrix per expert — what peft's ``target_parameters`` adapts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

EXPERT_INDEX = re.compile(r"(?:^|\.)(?:local_)?experts\.(\d+)\.")
"""``…experts.7.…`` (``local_experts`` in some Mixtral ports): the expert index of a per-expert tensor."""
FUSED_LEAF = re.compile(r"(?:^|\.)(?:local_)?experts\.([A-Za-z_][\w]*)$")
"""``…experts.gate_up_proj``: a fused tensor holding every expert (3-D)."""

IN_OUT_MODEL_TYPES = frozenset({"gpt_oss", "llama4", "llama4_text"})
"""Architectures whose fused experts are ``[E, in, out]``."""
OUT_IN_MODEL_TYPES = frozenset({
    "mixtral", "qwen2_moe", "qwen3_moe", "qwen3_next", "qwen3_vl_moe", "deepseek_v2", "deepseek_v3", "olmoe",
    "granitemoe", "granitemoeshared", "granitemoehybrid", "phimoe", "minimax", "jamba", "dots1", "glm4_moe",
    "ernie4_5_moe", "hunyuan_v1_moe", "flex_olmo", "lfm2_moe", "longcat_flash", "bailing_moe", "aria_text",
})
"""Architectures whose fused experts are ``[E, out, in]`` (transformers ≥ 5 ``nn.Parameter(E, out, in)``)."""
INPUT_IS_HIDDEN = ("gate_up_proj", "gate_proj", "up_proj", "w1", "w3", "w13")
OUTPUT_IS_HIDDEN = ("down_proj", "w2")


def expert_of(module: str) -> int | None:
    """The expert index in a per-expert module name (``…experts.7.w1`` → 7), else None."""
    match = EXPERT_INDEX.search(module)
    return int(match.group(1)) if match else None


def without_expert(path: str) -> str:
    """The name with the expert index removed (``mlp.experts.7.w1`` → ``mlp.experts.w1``): the shared kind."""
    return EXPERT_INDEX.sub(lambda m: m.group(0)[: -len(m.group(1)) - 1], path, count=1)


def is_fused_experts(module: str, shape: tuple[int, ...]) -> bool:
    """Whether a tensor is a fused ``[E, ·, ·]`` expert tensor (3-D, named ``…experts.<projection>``)."""
    return len(shape) == 3 and FUSED_LEAF.search(module) is not None


def expert_module(fused: str, expert: int) -> str:
    """The module name of one expert of a fused tensor: ``…experts.gate_up_proj`` → ``…experts.7.gate_up_proj``."""
    head, _, leaf = fused.rpartition(".")
    return f"{head}.{expert}.{leaf}"


def fused_layout(module: str, shape: tuple[int, ...], config: Mapping[str, Any] | None) -> tuple[bool | None, str]:
    """``(in_out, why)``: True when the experts are stored ``[E, in, out]``, False for ``[E, out, in]``.

    ``None`` (with the reason) when neither the architecture nor the config settles it.
    """
    config = config or {}
    model_type = config.get("model_type")
    text = config.get("text_config")
    if isinstance(text, dict) and model_type not in IN_OUT_MODEL_TYPES | OUT_IN_MODEL_TYPES:
        model_type = text.get("model_type", model_type)
        config = text
    if model_type in IN_OUT_MODEL_TYPES:
        return True, f"model_type {model_type}: experts stored [E, in, out]"
    if model_type in OUT_IN_MODEL_TYPES:
        return False, f"model_type {model_type}: experts stored [E, out, in]"
    hidden = config.get("hidden_size")
    leaf = module.rsplit(".", 1)[-1]
    if isinstance(hidden, int) and (shape[1] == hidden) != (shape[2] == hidden):
        if leaf in INPUT_IS_HIDDEN:
            return shape[1] == hidden, f"hidden_size {hidden} is the input of {leaf}"
        if leaf in OUTPUT_IS_HIDDEN:
            return shape[2] == hidden, f"hidden_size {hidden} is the output of {leaf}"
    return None, (f"fused expert tensor of model_type {model_type!r}: orientation ([E, in, out] or [E, out, in]) "
                  "is not known for this architecture")


def fused_expert_modules(info: Mapping[str, Any]) -> set[str]:
    """Module names of the experts of fused 3-D tensors in a spectrum result's run.json (``alignment.fused_experts``)."""
    fused = (info.get("alignment") or {}).get("fused_experts") or {}
    out: set[str] = set()
    for tensor, entry in fused.items():
        count = entry.get("experts", 0) if isinstance(entry, dict) else 0
        out.update(expert_module(tensor, e) for e in range(int(count)))
    return out

"""Bind each module of a LoRA adapter to the base checkpoint tensor it modifies: name, orientation and shape.

The adapter's module names and the base's tensor names are aligned by their common prefixes (as two checkpoints
are, :func:`rankscope.pairing.align.common_prefixes`: ``bert.encoder…`` against ``encoder…``); a GPT-2 style
``Conv1D`` base weight is read transposed so that both are ``out x in``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import RankscopeError
from ..io.adapters import Adapter, LoraModule
from ..io.checkpoints import Checkpoint, read_matrix
from .align import common_prefixes, is_conv1d, module_name


@dataclass
class BoundModule:
    """A LoRA module tied to its base tensor (if a base was given)."""

    module: str  # base tensor name without .weight (adapter name without base)
    lora: LoraModule
    base_tensor: str | None = None
    transpose: bool = False

    def base_weight(self, base: Checkpoint) -> np.ndarray:
        """The base weight, oriented ``out x in``, float64."""
        return read_matrix(base, self.base_tensor, transpose=self.transpose)


def bind_to_base(adapter: Adapter, base: Checkpoint | None) -> list[BoundModule]:
    """Name each adapter module as the base tensor it modifies and check shapes agree."""
    if base is None:
        return [BoundModule(m, lm) for m, lm in adapter.modules.items()]
    names = [f"{m}.weight" for m in adapter.modules]
    base_prefix, adapter_prefix = common_prefixes(list(base.tensors), names)
    bound = []
    for m, lm in adapter.modules.items():
        core = f"{m}.weight"[len(adapter_prefix):] if adapter_prefix and m.startswith(adapter_prefix) else f"{m}.weight"
        tensor = base_prefix + core
        if tensor not in base.tensors:
            raise RankscopeError(f"adapter module '{m}' has no weight in the base checkpoint {base.path} "
                                 f"(looked for '{tensor}'): is this the adapter's base model?")
        info = base.tensors[tensor]
        if not info.is_float:
            raise RankscopeError(f"{info.file}: base tensor '{tensor}' of adapter module '{m}' has dtype {info.dtype}, "
                                 f"which rankscope does not read (float32, float16, bfloat16 or float64 only)")
        transpose = len(info.shape) == 2 and is_conv1d(base, module_name(tensor))
        shape = (info.shape[1], info.shape[0]) if transpose else tuple(info.shape[:2])
        if shape != lm.shape:
            raise RankscopeError(f"adapter module '{m}' is {lm.shape[0]}x{lm.shape[1]} but base tensor '{tensor}' "
                                 f"is {shape[0]}x{shape[1]}: the adapter was trained on a different base model")
        bound.append(BoundModule(module_name(tensor), lm, tensor, transpose))
    return bound

"""Any saved result folder read back as the result object of its command: ``rankscope.load(folder)``.

``run.json`` names the command (``spectrum``, ``lora``, ``probe``, ``compare``, ``compare-adapters``,
``recommend``, ``extract``, ``resize``, ``train``, ``intrinsic-dim``); the folder is read by that result class's
``load`` (no recomputation), so ``rankscope.load(out).figures()`` redraws its figures in a notebook.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from .errors import RankscopeError
from .io.results import read_run_info

RESULT_CLASSES: dict[str, tuple[str, str]] = {
    "spectrum": ("rankscope.spectrum", "SpectrumResult"),
    "lora": ("rankscope.spectrum", "SpectrumResult"),
    "probe": ("rankscope.probe", "ProbeResult"),
    "compare": ("rankscope.compare", "CompareResult"),
    "compare-adapters": ("rankscope.compare", "CompareResult"),
    "recommend": ("rankscope.ranks", "RankPlan"),
    "extract": ("rankscope.extract", "ExtractResult"),
    "resize": ("rankscope.resize", "ResizeResult"),
    "train": ("rankscope.train", "TrainResult"),
    "intrinsic-dim": ("rankscope.subspace.intrinsic", "IntrinsicDimResult"),
}
"""``run.json`` command → (module, result class) that reads its folder."""


def result_class(command: str) -> type:
    """The result class of ``command`` (imported on first use: torch and peft stay unloaded until needed)."""
    if command not in RESULT_CLASSES:
        raise RankscopeError(f"no result class for command '{command}' (known: {', '.join(RESULT_CLASSES)})")
    module, name = RESULT_CLASSES[command]
    return getattr(importlib.import_module(module), name)


def load(folder: str | os.PathLike) -> Any:
    """The result saved in ``folder``, as the object its command returns (``SpectrumResult``, ``RankPlan``, …).

    A folder without a readable ``run.json``, or of a command rankscope does not know, is a :class:`RankscopeError`.
    """
    folder = Path(folder)
    return result_class(read_run_info(folder)["command"]).load(folder)

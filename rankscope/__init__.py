"""rankscope: how low-rank is fine-tuning, measured from the weights.

Python API (mirrors the CLI; one function per command, every one returning a result with ``.table``,
``.summary()``, ``.save(out)``, ``.load(out)``, ``.figures()`` and a Jupyter view, :mod:`rankscope.protocol`)::

    import rankscope
    result = rankscope.spectrum("base/", "finetuned/")   # exact ΔW spectra (or two nn.Modules / state dicts)
    result.table          # pandas DataFrame, one row per 2-D module
    result.summary()      # DataFrame, one row per module kind
    result.spectra        # {module: singular values, descending, float64}
    result.figures()      # {name: matplotlib Figure}, drawn in memory
    result.save("out/")   # modules.csv, vectors.csv, spectra.npz, summary.json, run.json, figures/
    plan = rankscope.recommend(result, rule="energy:0.9")
    plan.lora_config      # a peft.LoraConfig with the planned rank of every module

The other analyses (``lora_spectrum``, ``compare``, ``compare_adapters``, ``recommend``, ``extract``, ``resize``,
``probe``, ``train``, ``intrinsic_dimension``, ``report``, ``load``) are imported on first use, so that
``import rankscope`` loads neither torch nor peft.  Where a function shares its name with its module
(``compare``, ``extract``, ``resize``, ``probe``, ``train``, ``report``, and ``spectrum``), ``rankscope.<name>``
is the function; the module is ``sys.modules["rankscope.<name>"]`` (``from rankscope.compare import …`` works).
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import TYPE_CHECKING, Any

from .interrupts import install as _install_interrupts
from .interrupts import is_cli_process as _is_cli_process

if _is_cli_process():  # the `rankscope` command: Ctrl-C / SIGTERM end with one line, even while importing
    _install_interrupts()

# Idle OpenMP workers of torch sleep instead of spinning (must be set before torch loads libgomp).
# On a 2-core machine shared with one other busy process, spinning made a MiniLM step 10-20x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import summaries as _summaries  # noqa: E402, F401  (every result folder gets summary.json)
from .errors import RankscopeError  # noqa: E402
from .spectrum import SpectrumResult, spectrum  # noqa: E402  (binds the function over the submodule name)
from .version import __version__  # noqa: E402

if TYPE_CHECKING:  # what the lazy names below are (for type checkers, editors and tests/test_architecture.py)
    from .compare import CompareResult, compare, compare_adapters
    from .extract import ExtractResult, extract
    from .loader import load
    from .lora import lora_spectrum
    from .probe import ProbeResult, probe
    from .ranks import RankPlan, recommend
    from .report import Report, report
    from .resize import ResizeResult, resize
    from .subspace.intrinsic import IntrinsicDimResult, intrinsic_dimension
    from .train import TrainResult, train

_LAZY: dict[str, tuple[str, str]] = {
    "lora_spectrum": ("lora", "lora_spectrum"),
    "compare": ("compare", "compare"),
    "compare_adapters": ("compare", "compare_adapters"),
    "CompareResult": ("compare", "CompareResult"),
    "recommend": ("ranks", "recommend"),
    "RankPlan": ("ranks", "RankPlan"),
    "extract": ("extract", "extract"),
    "ExtractResult": ("extract", "ExtractResult"),
    "resize": ("resize", "resize"),
    "ResizeResult": ("resize", "ResizeResult"),
    "probe": ("probe", "probe"),
    "ProbeResult": ("probe", "ProbeResult"),
    "train": ("train", "train"),
    "TrainResult": ("train", "TrainResult"),
    "intrinsic_dimension": ("subspace.intrinsic", "intrinsic_dimension"),
    "IntrinsicDimResult": ("subspace.intrinsic", "IntrinsicDimResult"),
    "report": ("report", "report"),
    "Report": ("report", "Report"),
    "load": ("loader", "load"),
}
"""Public name → (submodule, attribute), imported on first access (PEP 562)."""

__all__ = ["spectrum", "SpectrumResult", "lora_spectrum", "compare", "compare_adapters", "CompareResult", "recommend",
           "RankPlan", "extract", "ExtractResult", "resize", "ResizeResult", "probe", "ProbeResult", "train",
           "TrainResult", "intrinsic_dimension", "IntrinsicDimResult", "report", "Report", "load", "RankscopeError",
           "__version__"]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{target[0]}"), target[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    loaded = {n for n, v in globals().items() if isinstance(v, types.ModuleType) and v.__name__ == f"{__name__}.{n}"}
    return sorted({*__all__, *loaded})


class _Facade(types.ModuleType):
    """The package object: importing a submodule named like a facade function (``rankscope.compare``, as the CLI
    does) must not replace the function, which Python's import system would do by setting the attribute."""

    def __setattr__(self, name: str, value: Any) -> None:
        target = _LAZY.get(name)
        if target is not None and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            value = getattr(value, target[1])
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Facade

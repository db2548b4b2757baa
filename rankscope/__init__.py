"""rankscope: how low-rank is fine-tuning, measured from the weights.

Python API (mirrors the CLI)::

    import rankscope
    result = rankscope.spectrum("base/", "finetuned/")   # exact ΔW spectra, per-module ranks
    result.table          # pandas DataFrame, one row per 2-D module
    result.spectra        # {module: singular values, descending, float64}
    result.save("out/")   # modules.csv, vectors.csv, spectra.npz, run.json, figures/
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["spectrum", "SpectrumResult", "RankscopeError", "__version__"]

if TYPE_CHECKING:
    from .errors import RankscopeError
    from .spectrum import SpectrumResult, spectrum


def __getattr__(name: str) -> Any:
    # Lazy: `import rankscope` stays fast; heavy modules load on first use.
    if name in ("spectrum", "SpectrumResult"):
        from . import spectrum as _spectrum

        return getattr(_spectrum, name)
    if name == "RankscopeError":
        from .errors import RankscopeError

        return RankscopeError
    raise AttributeError(f"module 'rankscope' has no attribute {name!r}")

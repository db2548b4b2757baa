"""rankscope: how low-rank is fine-tuning, measured from the weights.

Python API (mirrors the CLI)::

    import rankscope
    result = rankscope.spectrum("base/", "finetuned/")   # exact ΔW spectra, per-module ranks
    result.table          # pandas DataFrame, one row per 2-D module
    result.spectra        # {module: singular values, descending, float64}
    result.save("out/")   # modules.csv, vectors.csv, spectra.npz, run.json, figures/
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import RankscopeError  # noqa: E402
from .spectrum import SpectrumResult, spectrum  # noqa: E402  (binds the function over the submodule name)

__all__ = ["spectrum", "SpectrumResult", "RankscopeError", "__version__"]

"""rankscope: how low-rank is fine-tuning, measured from the weights.

Python API (mirrors the CLI)::

    import rankscope
    result = rankscope.spectrum("base/", "finetuned/")   # exact ΔW spectra, per-module ranks
    result.table          # pandas DataFrame, one row per 2-D module
    result.spectra        # {module: singular values, descending, float64}
    result.save("out/")   # modules.csv, vectors.csv, spectra.npz, run.json, figures/
"""

from __future__ import annotations

import os

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

__all__ = ["spectrum", "SpectrumResult", "RankscopeError", "__version__"]
# The other analyses load torch/peft lazily; import them from their modules:
#   rankscope.lora.lora_spectrum, rankscope.compare.compare / compare_adapters,
#   rankscope.ranks.recommend, rankscope.extract.extract, rankscope.train.train

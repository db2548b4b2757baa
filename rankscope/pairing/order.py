"""Whether BASE and FINETUNED look given in the wrong order, from their ``config.json`` ``_name_or_path``.

``save_pretrained`` (of older transformers versions; recent ones drop the field) records in ``config.json``
the ``_name_or_path`` the model was loaded from, so a fine-tune's config usually names its base.  The rule is
conservative — it fires only on positive evidence and never on a missing field:

* BASE's ``_name_or_path`` names FINETUNED: the string FINETUNED was given as (paths compared after
  ``normpath``, Hub ids without case), or an existing folder that is FINETUNED's folder;
* and FINETUNED's ``_name_or_path`` does not name BASE the same way (two configs that name each other, or the
  same checkpoint given twice, say nothing about the order).

Then BASE looks like a fine-tune of FINETUNED: ``ΔW = FINETUNED − BASE`` has the wrong sign (its spectra are the
same, but an extracted adapter or a LoRA comparison is made against the wrong base).  One warning, no error:
``_name_or_path`` is only a record of where a model was read from.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

SWAP_WARNING = "BASE looks like a fine-tune of FINETUNED"
"""The start of the warning :func:`swap_warning` returns (a result that merges warnings can find it by this)."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _name(config: dict[str, Any] | None) -> str | None:
    value = (config or {}).get("_name_or_path")
    return value.strip() if isinstance(value, str) and value.strip() else None


def _folder(path: str | os.PathLike | None) -> Path | None:
    """The checkpoint folder of a resolved path (a weights file's parent), as a real path; None when absent."""
    if path is None:
        return None
    try:
        p = Path(path).expanduser().resolve()
        if p.is_file():
            p = p.parent
        return p if p.is_dir() else None
    except (OSError, ValueError, RuntimeError):  # a name with NUL bytes, a symlink loop
        return None


def names(value: str, given: str, resolved: str | os.PathLike | None) -> bool:
    """Whether ``value`` (a ``_name_or_path``) names the checkpoint that was given as ``given`` and opened at
    ``resolved``: the same string (paths after ``normpath``, Hub ids ignoring case), or an existing folder that is
    the checkpoint's folder."""
    a, b = value.rstrip("/"), given.strip().rstrip("/")
    if not a or not b:
        return False
    if a == b or os.path.normpath(a) == os.path.normpath(b):
        return True
    if _HUB_ID.match(a) and _HUB_ID.match(b) and a.lower() == b.lower():
        return True
    there, here = _folder(a), _folder(resolved)
    return there is not None and here is not None and there == here


def swap_warning(base_config: dict[str, Any] | None, ft_config: dict[str, Any] | None, base_given: str,
                 ft_given: str, base_resolved: str | os.PathLike | None = None,
                 ft_resolved: str | os.PathLike | None = None) -> str | None:
    """The one-line warning when BASE looks like a fine-tune of FINETUNED (module docstring), else ``None``."""
    base_name, ft_name = _name(base_config), _name(ft_config)
    if base_name is None or not names(base_name, ft_given, ft_resolved):
        return None
    if names(base_name, base_given, base_resolved):  # the same checkpoint twice, or a name that fits both
        return None
    if ft_name is not None and names(ft_name, base_given, base_resolved):
        return None  # each names the other: no evidence of the order
    return (f"{SWAP_WARNING}: BASE's config.json _name_or_path is '{base_name}', which is FINETUNED ({ft_given}); "
            f"are the two swapped? ΔW = FINETUNED − BASE (give the original model first)")


def checkpoint_swap_warning(base: Any, finetuned: Any) -> str | None:
    """:func:`swap_warning` of two open checkpoints (:class:`rankscope.io.checkpoints.Checkpoint`: ``config``,
    ``given``, ``path``)."""
    return swap_warning(base.config, finetuned.config, str(base.given), str(finetuned.given), base.path,
                        finetuned.path)

"""The version of rankscope, kept in one place for the package, ``--version`` and every ``run.json`` marker."""

from __future__ import annotations

__version__ = "0.1.0"

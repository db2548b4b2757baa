"""The look every rankscope figure shares and the small helpers the figure modules have in common.

``pyplot()`` loads matplotlib (Agg backend) and seaborn with the common theme; ``panel_grid()`` lays out one
panel per item; ``layered_table()`` keeps the rows of numbered blocks; ``depth_colours()`` colours a
layer by its depth; ``save_figure()`` writes and releases a figure, or, inside ``capturing()``, keeps it in
memory instead (``result.figures()`` in a notebook: the same drawing code, no file written).
"""

from __future__ import annotations

import contextvars
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

DPI = 110
"""Resolution of every PNG rankscope writes."""
_CAPTURED: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("rankscope_figures", default=None)


NOTEBOOK_BACKENDS = ("inline", "ipympl", "widget", "nbagg")
"""Matplotlib backends of Jupyter, which :func:`pyplot` leaves in place (every other one becomes Agg)."""


def _notebook_backend() -> bool:
    name = os.environ.get("MPLBACKEND", "")
    if "matplotlib.pyplot" in sys.modules:  # the backend in use is already resolved
        import matplotlib

        name = matplotlib.get_backend()
    return any(key in name.lower() for key in NOTEBOOK_BACKENDS)


def pyplot() -> tuple[Any, Any]:
    """``(matplotlib.pyplot, seaborn)`` with rankscope's theme set, on the Agg backend (files only), except that
    Jupyter's own backend is left alone, so that a notebook still shows its other figures inline."""
    import matplotlib

    if not _notebook_backend():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return plt, sns


def panel_grid(n: int, plt: Any, width: float = 4.2, height: float = 3.3) -> tuple[Any, list[Any]]:
    """A figure with ``n`` panels, at most four per row (the unused ones hidden); returns ``(fig, axes)``."""
    ncols = min(4, max(1, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def layered_table(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Rows that belong to a numbered block, with the kinds in checkpoint order."""
    t = table[table["layer"].notna()]
    return t, list(dict.fromkeys(t["kind"]))


def depth_colours(layers: Sequence[int], plt: Any) -> Callable[[int], Any]:
    """A function from layer index to its viridis colour, scaled to the deepest of ``layers``."""
    cmap = plt.get_cmap("viridis")
    top = max(layers) if layers else 1
    return lambda layer: cmap(layer / max(top, 1))


@contextmanager
def capturing() -> Iterator[dict[str, Any]]:
    """Inside this block :func:`save_figure` writes nothing: it keeps each figure, by file stem, in the dict yielded
    (released from pyplot, so a notebook shows it only when asked)."""
    store: dict[str, Any] = {}
    token = _CAPTURED.set(store)
    try:
        yield store
    finally:
        _CAPTURED.reset(token)


def save_figure(fig: Any, path: Path) -> str:
    """Write ``fig`` to ``path`` and release it; returns the file name (inside :func:`capturing`: keeps it instead)."""
    import matplotlib.pyplot as plt

    store = _CAPTURED.get()
    if store is not None:
        store[path.stem] = fig
    else:
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path.name


def save_figure_replacing(fig: Any, path: Path) -> str:
    """Like :func:`save_figure`, through a temporary file in the same folder, so ``path`` is never half written."""
    if _CAPTURED.get() is not None:
        return save_figure(fig, path)  # captured under the final name: nothing written, nothing to move
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    save_figure(fig, tmp)
    os.replace(tmp, path)
    return path.name


def percent(x: float) -> str:
    """``0.123`` → ``"12.3%"``."""
    return f"{100 * x:.1f}%"


def note_panel(ax: Any, text: str) -> None:
    """A panel with nothing to draw says why: ``text`` (one line) in its middle, no axes, no grid; a title stays."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.25")
    ax.set_axis_off()

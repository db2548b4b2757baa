"""The look every rankscope figure shares and the small helpers the figure modules have in common.

``pyplot()`` loads matplotlib (Agg backend) and seaborn with the common theme; ``panel_grid()`` lays out one
panel per item; ``layered_table()`` keeps the rows of numbered blocks; ``depth_colours()`` colours a
layer by its depth; ``save_figure()`` writes and releases a figure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

DPI = 110
"""Resolution of every PNG rankscope writes."""


def pyplot() -> tuple[Any, Any]:
    """``(matplotlib.pyplot, seaborn)`` on the Agg backend with rankscope's theme set."""
    import matplotlib

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


def save_figure(fig: Any, path: Path) -> str:
    """Write ``fig`` to ``path`` and release it; returns the file name."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path.name


def save_figure_replacing(fig: Any, path: Path) -> str:
    """Like :func:`save_figure`, through a temporary file in the same folder, so ``path`` is never half written."""
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    save_figure(fig, tmp)
    os.replace(tmp, path)
    return path.name


def percent(x: float) -> str:
    """``0.123`` → ``"12.3%"``."""
    return f"{100 * x:.1f}%"


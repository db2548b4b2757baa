"""The notebook side every result shares: its answer in sentences, its figures in memory and a rich HTML view.

Every result of the Python API (:class:`~rankscope.spectrum.SpectrumResult`, ``ProbeResult``, ``CompareResult``,
``RankPlan``, ``ExtractResult``, ``ResizeResult``, ``TrainResult``, ``IntrinsicDimResult``) follows one protocol:

* ``table`` — a pandas DataFrame (one row per module, or per run / metric record); ``info`` — what ``run.json`` holds;
* ``summary()`` — a DataFrame (per module kind for the module analyses); ``summary_text()`` — the text the
  command line prints (``summary()`` formatted, plus totals);
* ``save(out)`` / ``load(out)`` — the result folder, written atomically, read back without recomputation;
* ``figures()`` — ``{name: matplotlib Figure}``: the figures ``save`` writes as ``figures/<name>.png``, drawn by
  the same code in memory (nothing is written);
* ``key_figures()`` / ``answer()`` — what ``summary.json`` holds and its sentences (:mod:`rankscope.summaries`),
  computed from the result in memory exactly as from its saved folder;
* ``_repr_html_()`` — Jupyter's view: the answer sentences and the head of the summary table.

The mixin :class:`ResultView` gives the last three to a result class that defines ``render_figures(folder)``
(the figure files of its ``save``) and ``result_files()`` (what its key figures read).
"""

from __future__ import annotations

import html
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .summaries import TITLES, ResultFiles, key_figures_of

if TYPE_CHECKING:
    import pandas as pd

HTML_ROWS = 12
"""Rows of the summary table shown by ``_repr_html_`` (the DataFrame holds all)."""


def inline_html(text: str) -> str:
    """Escape a sentence, turning `code` spans into ``<code>``."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def result_html(command: str, answer: list[str], table: pd.DataFrame | None, note: str = "") -> str:
    """The compact HTML of one result: its question, the answer sentences, the head of ``table`` and a ``note``."""
    e = html.escape
    parts = [f"<div class='rankscope-result'><p><b>rankscope {e(command)}</b>: "
             f"{e(TITLES.get(command, 'result'))}</p>"]
    if answer:
        parts.append("<ul>" + "".join(f"<li>{inline_html(s)}</li>" for s in answer) + "</ul>")
    if table is not None and len(table.columns):
        parts.append(table.head(HTML_ROWS).to_html(border=0, na_rep="–", float_format=lambda v: f"{v:.4g}"))
        if len(table) > HTML_ROWS:
            note = f"first {HTML_ROWS} of {len(table)} rows; {note}"
    if note:
        parts.append(f"<p><small>{e(note)}</small></p>")
    parts.append("</div>")
    return "\n".join(parts)


class ResultView:
    """The shared methods of every result (module docstring); subclasses define :meth:`render_figures` and
    :meth:`result_files`, and hold ``info`` (the ``run.json`` content)."""

    __slots__ = ()
    info: dict[str, Any]

    def render_figures(self, folder: Path) -> list[str]:
        """Draw the result's figures into ``folder``; returns the file names (none by default)."""
        return []

    def result_files(self) -> ResultFiles:
        """The tables, spectra and documents the key figures read (:class:`rankscope.summaries.ResultFiles`)."""
        return ResultFiles(tables={}, documents={})

    def figures(self) -> dict[str, Any]:
        """``{name: matplotlib.figure.Figure}``: the figures ``save`` writes as ``figures/<name>.png``, drawn in memory.

        Nothing is written (the drawing code runs with its file output captured).  The figures are released from
        pyplot: a notebook shows one when it is the value of a cell (``result.figures()["energy"]``).
        """
        from .figures.style import capturing

        with tempfile.TemporaryDirectory(prefix="rankscope-figures-") as tmp, capturing() as store:
            self.render_figures(Path(tmp) / "figures")
        return dict(store)

    def key_figures(self) -> dict[str, Any]:
        """What ``summary.json`` of the saved result holds: the key figures and the ``answer`` sentences."""
        return key_figures_of(self.result_files(), self.info)

    def answer(self) -> list[str]:
        """The sentences that answer the command's question with the result's numbers."""
        return list(self.key_figures().get("answer", []))

    def _repr_html_(self) -> str:
        summary = getattr(self, "summary", None)
        full = getattr(self, "table", None)
        size = f".table: {len(full)} rows × {len(full.columns)} columns" if full is not None else ""
        return result_html(str(self.info.get("command")), self.answer(), summary() if callable(summary) else None,
                           f".summary() above; {size}; .figures(), .save(out)")

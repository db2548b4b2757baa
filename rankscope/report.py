"""One self-contained page per result: the answer in sentences first, then key figures, figures and tables.

``report(results, out)`` reads one or more result folders of the same command (``run.json`` says which),
takes their key figures and answer sentences from :mod:`rankscope.summaries`, and writes

* ``--format html`` — one HTML file with every figure embedded (base64 PNG), the tables as HTML tables
  holding exactly the text of the CSVs (``data-file`` names the CSV), the provenance as an inert JSON
  block; no script, no network, no external file.  Several results appear side by side: one key-figure
  table with a column per result, each figure in a row across results.
* ``--format md`` — the same content as Markdown, figures linked relative to the page.

The page is written atomically and replaces only an earlier rankscope report (its first line is the
marker :data:`MARKER`); any other existing file at ``out`` is refused.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import RankscopeError
from .io.results import read_run_info, versions
from .protocol import inline_html
from .summaries import TITLES, key_figures

MARKER = "<!-- rankscope report -->"
MAX_ROWS = 2000
"""Rows of one table shown on the page (the CSV holds all)."""
TABLE_FILES = ("modules.csv", "ranks.csv", "extract.csv", "resize.csv", "compare.csv", "vectors.csv",
               "amplification.csv", "intruders.csv", "metrics.csv", "history.csv", "runs.csv")
FORMATS = ("html", "md")


@dataclass
class Report:
    """A rendered report page: ``text`` (HTML or Markdown), the results it covers and their key figures.

    Attributes:
        text, fmt: the page and its format (``html`` or ``md``).
        results: the result folders it covers.
        key_figures: each result's key figures (``summary.json``, :func:`rankscope.summaries.key_figures`).
        table: the key figures as the page shows them, one row per figure and one column per result
            (also :meth:`summary`).

    :meth:`figures` draws the results' figures in memory; :meth:`load` reads a saved page back.
    """

    text: str
    fmt: str
    results: list[Path]
    key_figures: list[dict[str, Any]] = field(default_factory=list)
    table: pd.DataFrame = field(default_factory=pd.DataFrame)

    def summary(self) -> pd.DataFrame:
        """The key-figure table (:attr:`table`)."""
        return self.table

    def figures(self) -> dict[str, Any]:
        """The figures of the results the page covers, drawn in memory from their folders
        (``{name: matplotlib Figure}``; ``"<folder>/<name>"`` when the page covers several results)."""
        from .loader import load

        out: dict[str, Any] = {}
        for folder in self.results:
            for name, fig in load(folder).figures().items():
                out[name if len(self.results) == 1 else f"{folder.name}/{name}"] = fig
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> Report:
        """A page written by :meth:`save`; the results it covers are read from its provenance block (HTML pages)
        and their key figures recomputed from the folders that still exist."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RankscopeError(f"{path}: cannot read the report ({exc})") from exc
        if text.split("\n", 1)[0].strip() != MARKER:
            raise RankscopeError(f"{path}: not a rankscope report (no '{MARKER}' on its first line)")
        fmt = "html" if "<!doctype html>" in text[:200] else "md"
        found = re.search(r'<script type="application/json" id="run-json">(.*?)</script>', text, re.S)
        runs = json.loads(found.group(1)) if found else []  # JSON reads the page's "<\/" as "</"
        runs = [r for r in runs if isinstance(r, dict) and (Path(str(r.get("folder"))) / "run.json").is_file()]
        folders = [Path(str(r["folder"])) for r in runs]
        figures = [key_figures(f) for f in folders]
        return cls(text, fmt, folders, figures, key_table(folders, [r.get("run") or {} for r in runs], figures))

    def save(self, out: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the page atomically (see module docstring for what may be replaced)."""
        path = Path(out)
        check_report_target(path, overwrite)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            tmp.write_text(self.text, encoding="utf-8")
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    def _repr_html_(self) -> str:
        return self.text if self.fmt == "html" else f"<pre>{html.escape(self.text)}</pre>"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_report_target(path: Path, overwrite: bool = False) -> None:
    """Refuse to replace a file that is not a rankscope report (``--overwrite`` does not change that)."""
    if path.is_dir():
        raise RankscopeError(f"-o {path}: is a folder; give the report's file name (e.g. {path}/report.html)")
    if not path.exists():
        return
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            first = fh.readline().strip()
    except OSError as exc:
        raise RankscopeError(f"-o {path}: cannot read the existing file ({exc.strerror})") from exc
    if first != MARKER:
        raise RankscopeError(f"-o {path}: exists and is not a rankscope report; choose another file name "
                             f"(rankscope replaces only its own reports)")


def _csv_text(path: Path) -> pd.DataFrame:
    """A CSV as text cells, exactly as written (no re-formatting of numbers)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _figure_files(folder: Path) -> list[Path]:
    figures = folder / "figures"
    return sorted(figures.glob("*.png")) if figures.is_dir() else []


def _flatten(figures: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in figures.items():
        if key in ("answer", "command"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        elif isinstance(value, list):
            out[name] = ", ".join(str(v) for v in value)
        else:
            out[name] = value
    return out


def _label(folder: Path, info: dict[str, Any]) -> str:
    inputs = info.get("inputs") or {}
    given = [v.get("given") for v in inputs.values() if isinstance(v, dict) and v.get("given")]
    return f"{folder.name}" + (f" ({' vs '.join(str(g) for g in given)})" if given else "")


def report(results: Sequence[str | os.PathLike], fmt: str = "html", out: str | os.PathLike | None = None) -> Report:
    """A report page for ``results`` (result folders of one command); ``out`` places Markdown image links."""
    if fmt not in FORMATS:
        raise RankscopeError(f"--format: unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if not results:
        raise RankscopeError("report: give at least one result folder")
    folders = [Path(r) for r in results]
    infos = [read_run_info(f) for f in folders]
    commands = sorted({str(i["command"]) for i in infos})
    if len(commands) > 1:
        raise RankscopeError(f"report: the results come from different commands ({', '.join(commands)}); "
                             f"make one report per command")
    figures = [key_figures(f, i) for f, i in zip(folders, infos, strict=True)]
    page = Page(commands[0], folders, infos, figures, Path(out).parent if out else Path.cwd())
    text = page.html() if fmt == "html" else page.markdown()
    return Report(text, fmt, folders, figures, page.key_table())


def key_table(folders: Sequence[Path], infos: Sequence[dict[str, Any]], figures: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The key figures of several results: one row per figure (nested keys joined by dots), one column per result."""
    flat = [_flatten(f) for f in figures]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    cols = {_label(folder, info): [f.get(k) for k in keys] for folder, info, f in zip(folders, infos, flat, strict=True)}
    return pd.DataFrame(cols, index=keys)


@dataclass
class Page:
    """The content of one report, rendered as HTML or Markdown."""

    command: str
    folders: list[Path]
    infos: list[dict[str, Any]]
    figures: list[dict[str, Any]]
    page_dir: Path

    @property
    def title(self) -> str:
        return f"rankscope {self.command}: {TITLES.get(self.command, 'result')}"

    def key_table(self) -> pd.DataFrame:
        return key_table(self.folders, self.infos, self.figures)

    def tables(self, folder: Path) -> list[tuple[str, pd.DataFrame, int]]:
        out = []
        for name in TABLE_FILES:
            path = folder / name
            if path.is_file():
                t = _csv_text(path)
                out.append((name, t.head(MAX_ROWS), len(t)))
        return out

    # --- HTML ------------------------------------------------------------------------------------

    def html(self) -> str:
        e = html.escape
        parts = [MARKER, "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
                 '<meta name="viewport" content="width=device-width, initial-scale=1">',
                 f"<title>{e(self.title)}</title><style>{STYLE}</style></head><body>",
                 f"<header><h1>{e(self.title)}</h1><p class='meta'>{len(self.folders)} result(s) · written "
                 f"{time.strftime('%Y-%m-%d %H:%M')} · rankscope {e(str(versions().get('rankscope', '')))}</p>"
                 "</header>"]
        parts.append('<section id="answer"><h2>Answer</h2>')
        for folder, info, fig in zip(self.folders, self.infos, self.figures, strict=True):
            if len(self.folders) > 1:
                parts.append(f"<h3>{e(_label(folder, info))}</h3>")
            parts.append("<ul class='answer'>" + "".join(f"<li>{inline_html(s)}</li>" for s in fig.get("answer", []))
                         + "</ul>")
        parts.append("</section>")
        key = self.key_table()
        parts.append('<section id="key-figures"><h2>Key figures</h2>'
                     + key.to_html(classes="key", border=0, na_rep="–", escape=True) + "</section>")
        parts.append(self._html_figures())
        parts.append('<section id="tables"><h2>Tables</h2>')
        for folder, info in zip(self.folders, self.infos, strict=True):
            for name, t, total in self.tables(folder):
                more = f" — first {len(t):,} of {total:,} rows; the CSV holds all" if total > len(t) else ""
                table = t.to_html(index=False, border=0, escape=True, classes="data")
                table = re.sub(r"^<table[^>]*>", f'<table class="dataframe data" data-file="{e(name)}" '
                               f'data-result="{e(folder.name)}">', table, count=1)
                parts.append(f"<details{' open' if name == TABLE_FILES[0] or total <= 60 else ''}><summary>"
                             f"{e(_label(folder, info))}: {e(name)} ({total:,} rows{e(more)})</summary>"
                             f"<div class='scroll'>{table}</div></details>")
        parts.append("</section>")
        provenance = json.dumps([{"folder": str(f), "run": i} for f, i in zip(self.folders, self.infos, strict=True)],
                                default=str, indent=1).replace("</", "<\\/")
        parts.append(f'<section id="provenance"><h2>Provenance</h2><p>Inputs, options, versions, seeds and timings '
                     f'of every result (its run.json):</p><script type="application/json" id="run-json">'
                     f"{provenance}</script>")
        for folder, info in zip(self.folders, self.infos, strict=True):
            parts.append(f"<details><summary>{e(_label(folder, info))}: run.json</summary><pre>"
                         f"{e(json.dumps(info, default=str, indent=1))}</pre></details>")
        parts.append("</section></body></html>")
        return "\n".join(parts)

    def _html_figures(self) -> str:
        names = list(dict.fromkeys(p.name for f in self.folders for p in _figure_files(f)))
        if not names:
            return '<section id="figures"><h2>Figures</h2><p>No figures in these results (--no-plots?).</p></section>'
        out = ['<section id="figures"><h2>Figures</h2>']
        for name in names:
            cells = []
            for folder, info in zip(self.folders, self.infos, strict=True):
                path = folder / "figures" / name
                if path.is_file():
                    data = base64.b64encode(path.read_bytes()).decode()
                    cap = html.escape(name if len(self.folders) == 1 else f"{_label(folder, info)}: {name}")
                    cells.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
                                 f"<figcaption>{cap}</figcaption></figure>")
            out.append(f"<div class='row' style='--n:{len(cells)}'>{''.join(cells)}</div>")
        out.append("</section>")
        return "\n".join(out)

    # --- Markdown --------------------------------------------------------------------------------

    def markdown(self) -> str:
        lines = [MARKER, f"# {self.title}", "", "## Answer", ""]
        for folder, info, fig in zip(self.folders, self.infos, self.figures, strict=True):
            if len(self.folders) > 1:
                lines += [f"### {_label(folder, info)}", ""]
            lines += [f"- {s}" for s in fig.get("answer", [])] + [""]
        lines += ["## Key figures", "", _md_table(self.key_table().reset_index().rename(columns={"index": "figure"})),
                  "", "## Figures", ""]
        for folder, info in zip(self.folders, self.infos, strict=True):
            for path in _figure_files(folder):
                rel = os.path.relpath(path.resolve(), self.page_dir.resolve())
                lines += [f"![{_label(folder, info)}: {path.name}]({rel})", ""]
        lines += ["## Tables", ""]
        for folder, info in zip(self.folders, self.infos, strict=True):
            for name, t, total in self.tables(folder):
                shown = t.head(60)
                more = f" (first {len(shown)} of {total} rows; see {name})" if total > len(shown) else ""
                lines += [f"### {_label(folder, info)}: {name}{more}", "", _md_table(shown), ""]
        return "\n".join(lines) + "\n"


def _md_table(t: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return "–" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v).replace("|", "\\|")

    head = "| " + " | ".join(cell(c) for c in t.columns) + " |"
    rule = "|" + "---|" * len(t.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in t.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:1.5rem;
color:#1b1f24;line-height:1.45}
h1{font-size:1.6rem;margin:0}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.meta{color:#666;margin:.2rem 0 1rem}
#answer{background:#f3f7fb;border-left:4px solid #2f6fad;padding:.2rem 1.2rem 1rem;border-radius:4px}
ul.answer li{margin:.35rem 0;font-size:1.08rem}
table{border-collapse:collapse;font-size:.85rem}th,td{padding:.2rem .55rem;border-bottom:1px solid #eee;
text-align:right;white-space:nowrap}th{background:#fafafa;position:sticky;top:0}
table.key td{text-align:left}
.scroll{max-height:32rem;overflow:auto;border:1px solid #eee}
.row{display:grid;grid-template-columns:repeat(var(--n),1fr);gap:1rem;margin:1rem 0}
figure{margin:0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.85rem}
details{margin:.6rem 0}summary{cursor:pointer;font-weight:600}pre{font-size:.75rem;overflow:auto;max-height:30rem}
code{background:#eef;padding:0 .2rem;border-radius:3px}
"""

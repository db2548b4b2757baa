"""``summary.json`` of every command, the answer sentences built from a result's numbers, and ``rankscope report``.

The report page is opened in a real browser: headless Chromium (the Debian ``chromium`` package; ``.ci/run``
installs it when missing) loads the file from disk; its console must stay free of errors, a screenshot must
not be blank, and the DOM's tables must hold exactly the numbers of the CSVs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
from click.testing import CliRunner

from rankscope.cli import main
from rankscope.summaries import LORA_RANKS, key_figures, uniform_energy

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def run_cli(*args: object) -> None:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def results(make_pair, tmp_path_factory) -> dict[str, Path]:
    """Result folders of the cheap commands on the tiny planted Llama pair."""
    pair = make_pair("llama")
    root = tmp_path_factory.mktemp("report")
    out = {name: root / name for name in ("spectrum", "recommend", "extract", "extract16", "lora", "compare",
                                          "compare-adapters", "resize")}
    run_cli("spectrum", pair.base, pair.finetuned, "-o", out["spectrum"], "-q")
    run_cli("recommend", out["spectrum"], "--rule", "avg-rank:4", "-o", out["recommend"], "-q")
    run_cli("extract", pair.base, pair.finetuned, "--rank", "4", "-o", out["extract"], "-q")
    run_cli("extract", pair.base, pair.finetuned, "--rank", "16", "-o", out["extract16"], "-q")
    run_cli("lora", out["extract"], "--base", pair.base, "-o", out["lora"], "-q")
    run_cli("compare", pair.base, pair.finetuned, out["extract"], "-o", out["compare"], "-q", "--no-plots")
    run_cli("compare-adapters", out["extract"], out["extract16"], "-o", out["compare-adapters"], "-q")
    run_cli("resize", out["extract16"], "--rule", "avg-rank:4", "-o", out["resize"], "-q")
    return out


@pytest.mark.parametrize("command", ["spectrum", "recommend", "extract", "lora", "compare", "compare-adapters",
                                     "resize"])
def test_every_command_writes_summary_json(results, command):
    folder = results[command]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["command"] == command and summary["answer"], summary
    assert summary == json.loads(json.dumps(key_figures(folder)))  # what the folder says, recomputed
    marker = json.loads((folder / "run.json").read_text())["rankscope"]
    assert "summary.json" in marker["files"]  # part of the result: replaced with it, never foreign


def test_json_flag_prints_the_summary(make_pair, tmp_path):
    pair = make_pair("llama")
    args = ["spectrum", pair.base, pair.finetuned, "-o", tmp_path / "s", "--json", "--no-plots"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output[result.output.index("{"):])
    assert printed == json.loads((tmp_path / "s" / "summary.json").read_text())


def test_spectrum_sentences_are_the_results_numbers(make_pair, results):
    """Rank range and uniform-LoRA energy recomputed from float64 LAPACK spectra of the planted pair."""
    from conftest import reference

    pair = make_pair("llama")
    ref = reference(pair.base, pair.finetuned, "llama")
    table = pd.read_csv(results["spectrum"] / "modules.csv")
    changed = table[table["delta_norm"] > 0]
    spectra = [scipy.linalg.svdvals(ref[m].delta) for m in changed["module"]]
    want = {str(r): sum(float(np.sum(s[:r] ** 2)) for s in spectra) / sum(float(np.sum(s ** 2)) for s in spectra)
            for r in LORA_RANKS}
    summary = key_figures(results["spectrum"])
    for r in LORA_RANKS:
        assert abs(summary["uniform_lora_energy"][str(r)] - want[str(r)]) < 1e-5
    assert uniform_energy(spectra)["8"] == pytest.approx(want["8"], rel=1e-5)
    text = " ".join(summary["answer"])
    lo, med, hi = changed["rank_90"].min(), changed["rank_90"].median(), changed["rank_90"].max()
    assert f"needs rank {lo}–{hi} (median {med:g})" in text
    assert f"at most {100 * want['8']:.0f} % of the update's energy" in text
    unchanged = int((table["delta_norm"] == 0).sum())
    assert (f"{unchanged} module(s) did not change" in text) == (unchanged > 0)


def test_compare_sentence_is_energy_weighted(results):
    t = pd.read_csv(results["compare"] / "compare.csv")
    w = t["full_norm"] ** 2
    held, optimal = (t["energy_both"] * w).sum() / w.sum(), (t["energy_optimal"] * w).sum() / w.sum()
    text = " ".join(key_figures(results["compare"])["answer"])
    assert f"hold {100 * held:.0f} % of the full fine-tune's update" in text
    assert f"{100 * held / optimal:.0f} % of the optimum" in text


def test_report_refuses_foreign_files_and_mixed_commands(results, tmp_path):
    foreign = tmp_path / "notes.html"
    foreign.write_text("my notes")
    bad = CliRunner().invoke(main, ["report", str(results["spectrum"]), "-o", str(foreign)])
    assert bad.exit_code == 2 and "not a rankscope report" in bad.output and foreign.read_text() == "my notes"
    mixed = CliRunner().invoke(main, ["report", str(results["spectrum"]), str(results["lora"]),
                                      "-o", str(tmp_path / "x.html")])
    assert mixed.exit_code == 2 and "different commands" in mixed.output
    missing = CliRunner().invoke(main, ["report", str(tmp_path / "nothere"), "-o", str(tmp_path / "y.html")])
    assert missing.exit_code == 2 and "nothere" in missing.output
    page = tmp_path / "r.md"
    run_cli("report", results["extract"], results["extract16"], "-o", page)
    run_cli("report", results["extract"], "-o", page)  # its own earlier report is replaced
    assert "## Answer" in page.read_text()


class Tables(HTMLParser):
    """The ``<table data-file=…>`` tables of a page: ``{(result, file): [[cell text, …], …]}`` (header first)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[tuple[str, str], list[list[str]]] = {}
        self.current: list[list[str]] | None = None
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "data-file" in a:
            self.current = self.tables.setdefault((a["data-result"], a["data-file"]), [])
        elif tag == "tr" and self.current is not None:
            self.current.append([])
        elif tag in ("td", "th") and self.current is not None:
            self.cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self.current = None
        elif tag in ("td", "th") and self.cell is not None and self.current is not None:
            self.current[-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def test_report_in_a_real_browser(results, tmp_path):
    assert CHROMIUM, "headless Chromium is needed for this test: apt-get install chromium (.ci/run does it)"
    page = tmp_path / "report.html"
    run_cli("report", results["spectrum"], "-o", page)
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text  # nothing fetched
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    shot = tmp_path / "shot.png"
    done = subprocess.run([*base, "--window-size=1280,900", f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.is_file(), done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.std() > 0.05  # not a blank page
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    parser = Tables()
    parser.feed(dom)
    csv = pd.read_csv(results["spectrum"] / "modules.csv", dtype=str, keep_default_na=False)
    rows = parser.tables[(results["spectrum"].name, "modules.csv")]
    assert rows[0] == list(csv.columns)
    assert rows[1:] == csv.values.tolist()  # the same numbers, character for character
    answer = re.search(r'<section id="answer">(.*?)</section>', dom, re.S)
    assert answer and "needs rank" in answer.group(1)

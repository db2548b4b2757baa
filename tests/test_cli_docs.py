"""Every CLI command is documented in README.md, and so is every option of it (sqlite-utils style).

A command is documented by a heading or a code line ``rankscope <command>``; its README text is the
section under its heading (down to the next heading of the same or a higher level), or the whole
README when it has no heading.  An option is documented when one of its flags (``-o`` or ``--out``)
appears there.  ``--help`` (click's) is not checked; ``--debug`` and ``--json``, on every command, are documented once.
Known gaps would be listed in :data:`UNDOCUMENTED` (none today).
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from rankscope.cli import main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
COMMON = {"help", "debug", "json_summary"}
UNDOCUMENTED: dict[str, list[str]] = {}
"""The options README.md does not mention in their command's section yet: document them there, then
remove them here (the test fails both for a new undocumented option and for a gap that was filled)."""
HEADING = re.compile(r"^(#+)\s+(.*)$")


def _commands() -> list[str]:
    return sorted(main.list_commands(click.Context(main)))


def _mentions(text: str, command: str) -> bool:
    """``rankscope <command>`` not followed by more of a name (``compare`` is not ``compare-adapters``)."""
    return re.search(rf"rankscope {re.escape(command)}(?![\w-])", text) is not None


def _in_code(line: str) -> bool:
    return line.lstrip().startswith("rankscope ") or "`rankscope " in line


def _headings() -> list[tuple[int, int, str]]:
    """``(line index, level, title)`` of every Markdown heading (``#`` comments in code blocks are not)."""
    found, fenced = [], False
    for i, line in enumerate(README.splitlines()):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (h := HEADING.match(line)):
            found.append((i, len(h.group(1)), h.group(2)))
    return found


def _section(command: str) -> str | None:
    """The README text under the first heading that names ``rankscope <command>`` (None without one)."""
    lines, headings = README.splitlines(), _headings()
    for k, (i, level, title) in enumerate(headings):
        if _mentions(title, command):
            end = next((j for j, lvl, _ in headings[k + 1:] if lvl <= level), len(lines))
            return "\n".join(lines[i:end])
    return None


def _flag_in(flag: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def _undocumented(command: str) -> list[str]:
    text = _section(command) or README
    cmd = main.get_command(click.Context(main), command)
    missing = []
    for param in cmd.params:
        if not isinstance(param, click.Option) or param.name in COMMON:
            continue
        flags = [*param.opts, *param.secondary_opts]
        if not any(_flag_in(flag, text) for flag in flags):
            missing.append("/".join(flags))
    return missing


def test_the_group_has_the_commands_of_the_readme():
    assert _commands() == ["compare", "compare-adapters", "extract", "intrinsic-dim", "lora", "plot", "probe",
                           "recommend", "report", "resize", "spectrum", "train"]


@pytest.mark.parametrize("command", _commands())
def test_every_command_is_documented(command):
    has_heading = _section(command) is not None
    has_code = any(_mentions(line, command) and _in_code(line) for line in README.splitlines())
    assert has_heading or has_code, f"README.md has no heading or code line `rankscope {command}`"


@pytest.mark.parametrize("command", _commands())
def test_every_option_is_documented_in_its_commands_section(command):
    assert _undocumented(command) == UNDOCUMENTED.get(command, []), (
        f"rankscope {command}: the options missing from its README section are not the known gaps")


def test_the_common_options_are_documented():
    assert _flag_in("--debug", README)

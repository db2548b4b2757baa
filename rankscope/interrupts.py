"""SIGINT and SIGTERM end a command-line run with one line and no traceback, at any moment.

Installed by :mod:`rankscope` itself when the process is the ``rankscope`` command (before numpy, torch
or pandas load), so an interrupt while the package is still importing also ends cleanly:

* until a command starts its work, a signal prints ``Error: interrupted (SIGINT); nothing was written``
  and exits at once (status 130 for SIGINT, 143 for SIGTERM) — nothing has been written yet;
* while a command works (:func:`raising`), the signal raises :class:`Interrupted` in the main thread,
  so the result folder's clean-up runs (the partial folder is removed) before the same line is printed;
* a second signal during that clean-up exits at once.

The library never installs handlers when imported from Python (a notebook keeps its own Ctrl-C).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
_state: dict[str, object] = {"mode": "exit", "installed": False, "wrote": None, "held": False, "pending": None}


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM while a command works."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 130)


def message(signum: int) -> str:
    """The one line printed for an interrupt (it says so when a complete result was written just before)."""
    name = signal.Signals(signum).name
    if _state.get("wrote"):
        return f"Error: interrupted ({name}) after {_state['wrote']} was written"
    return f"Error: interrupted ({name}); nothing was written"


def wrote(path: object) -> None:
    """Record that a complete result now exists at ``path`` (for :func:`message`)."""
    _state["wrote"] = str(path)


def hold() -> bool:
    """Defer SIGINT/SIGTERM until :func:`release` (while a work folder is made or installed); returns the previous state.

    Deferral is done in the handler itself, not with a signal mask: the kernel may deliver a signal to any
    thread, but Python always runs its handler in the main thread, so only the handler can wait reliably.
    """
    previous = bool(_state.get("held"))
    _state["held"] = True
    return previous


def release(previous: bool | None) -> None:
    """End a :func:`hold`; a signal that arrived meanwhile raises :class:`Interrupted` now. Returns None."""
    _state["held"] = bool(previous)
    pending = _state.get("pending")
    if not previous and pending is not None and _state["mode"] == "raise":
        _state["pending"] = None
        _state["mode"] = "exit"
        raise Interrupted(int(pending))
    return None


def _exit_now(signum: int) -> None:
    try:
        os.write(2, (message(signum) + "\n").encode())
    finally:
        os._exit(EXIT_CODES.get(signum, 130))


def _handler(signum: int, frame: object) -> None:
    if _state["mode"] == "raise":
        if _state.get("held"):
            _state["pending"] = signum  # raised by release(), once the folder operation is complete
            return
        _state["mode"] = "exit"  # a second signal during clean-up ends the process at once
        raise Interrupted(signum)
    _exit_now(signum)


def is_cli_process() -> bool:
    """Whether this process runs the ``rankscope`` command (console script or ``python -m rankscope.cli``)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) in ("rankscope", "rankscope.exe"):
        return True
    orig = list(getattr(sys, "orig_argv", []))
    if "-m" in orig[:-1]:
        module = orig[orig.index("-m") + 1]
        return module == "rankscope" or module.startswith("rankscope.cli")
    return False


def install() -> None:
    """Install the handlers (idempotent); only from the main thread."""
    if _state["installed"]:
        return
    try:
        for signum in EXIT_CODES:
            signal.signal(signum, _handler)
    except ValueError:  # not the main thread
        return
    _state["installed"] = True


@contextmanager
def raising() -> Iterator[None]:
    """While the block runs, a signal raises :class:`Interrupted` (clean-up runs) instead of exiting at once.

    Does nothing unless :func:`install` ran (the ``rankscope`` command): a host process such as a test
    runner keeps its own signal handling.
    """
    if not _state["installed"]:
        yield
        return
    previous = _state["mode"]
    _state["mode"] = "raise"
    try:
        yield
    finally:
        _state["mode"] = previous if previous != "raise" else "exit"

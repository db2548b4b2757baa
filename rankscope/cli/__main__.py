"""``python -m rankscope.cli``: the ``rankscope`` command."""

from . import main

main()

"""``python -m matseg``: the ``matseg`` command (where the console script is not on PATH)."""

from matseg.cli import main

main()

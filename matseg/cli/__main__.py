"""``python -m matseg.cli``: the ``matseg`` command."""

from matseg.cli import main

main()

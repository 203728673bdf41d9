"""Regenerate docs/cli.md from the commands' own --help texts.

    python docs/tools/cli_reference.py > docs/cli.md

tests/test_docs.py fails when docs/cli.md is out of date.
"""

from __future__ import annotations

import click

from matseg.cli import cli


def reference() -> str:
    parts = [
        "# Command-line reference",
        "",
        "Generated from `matseg <command> --help` by `docs/tools/cli_reference.py`.",
        "Exit codes: 0 success, 2 bad input or usage (one line on stderr, no file changed),",
        "1 out of memory (one line; a segment run resumes when run again) or an internal error.",
        "",
    ]
    settings = {**cli.context_settings, "terminal_width": 100}
    ctx = click.Context(cli, info_name="matseg", **settings)
    parts += ["## matseg", "", "```", cli.get_help(ctx), "```", ""]
    for name in sorted(cli.commands):
        command = cli.commands[name]
        sub = click.Context(command, info_name=name, parent=ctx, **settings)
        parts += [f"## matseg {name}", "", "```", command.get_help(sub), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(reference(), end="")

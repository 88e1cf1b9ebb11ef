"""The `latts` command line: runs on the user's machine.

`latts tune` drives the optimizer (which drives the workers); every other command reads storage
through the read side (latts.reporting). Errors are one line on stderr: exit 2 for bad input, 3
when no config fits.
"""

from latts.cli.commands import app

__all__ = ["app"]

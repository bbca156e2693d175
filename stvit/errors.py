"""Errors a user can cause (bad files, bad arguments), reported at the edge as one line.

Command-line entry points wrap their `main` with `run_cli`: a `UserError` becomes
`error: <message>` on stderr and exit code 2, without a traceback.
"""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """A problem with something the user gave us. `str(err)` is the whole one-line message."""

    def __init__(self, message: str, path: object | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command-line `main`; turn a `UserError` into one stderr line and exit code 2."""
    try:
        return int(main(argv) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

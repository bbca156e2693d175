"""Errors a user can cause (bad files, bad arguments), reported at the edge as one line.

Command-line entry points wrap their `main` with `run_cli`: a `UserError` becomes
`error: <message>` on stderr and exit code 2, without a traceback; a Python warning is one `warning: <message>`
line (not the file, line number and source line Python adds by default).
"""
from __future__ import annotations

import sys
import warnings
from typing import Callable


class UserError(Exception):
    """A problem with something the user gave us. `str(err)` is the whole one-line message."""

    def __init__(self, message: str, path: object | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command-line `main`; turn a `UserError` into one stderr line and exit code 2."""
    warnings.formatwarning = one_line_warning
    try:
        return int(main(argv) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

"""Errors a user can cause (bad files, bad arguments), reported at the edge as one line.

Command-line entry points wrap their `main` with `run_cli`: a `UserError` becomes
`error: <message>` on stderr and exit code 2, without a traceback; a Python warning is one `warning: <message>`
line (not the file, line number and source line Python adds by default); output into a pipe whose reader has
gone (`python -m stvit.data inspect FILE | head -n 1`) ends the command quietly with exit status 141.
"""
from __future__ import annotations

import os
import select
import sys
import warnings
from typing import Callable

# 128 + SIGPIPE: the status a shell reports for a program that SIGPIPE ends (`yes | head -n 1`), so that scripts
# (`set -o pipefail`) see what they see for any other command at the head of a pipe. Python ignores SIGPIPE, so
# it gets BrokenPipeError instead; the Python docs' recipe (signal module, "Note on SIGPIPE") exits with 1.
EXIT_BROKEN_PIPE = 141


class UserError(Exception):
    """A problem with something the user gave us. `str(err)` is the whole one-line message."""

    def __init__(self, message: str, path: object | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command-line `main`; turn a `UserError` into one stderr line and exit code 2, and a closed standard
    output into a quiet EXIT_BROKEN_PIPE (or the command's own error status)."""
    warnings.formatwarning = one_line_warning
    code = None
    try:
        try:
            code = int(main(argv) or 0)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            code = 2
        except SystemExit:  # argparse after --help or a usage error
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # here, not at exit: a closed pipe then fails inside this try
        return code
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # another pipe broke: a real failure, not a reader that had enough
        # Python flushes stdout again at exit; point it at devnull so that this does not fail too (the docs' recipe)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return code or EXIT_BROKEN_PIPE


def _stdout_closed() -> bool:
    """True if standard output is a pipe (or socket) whose reader has gone; also where that cannot be asked
    (no poll), as the docs' recipe assumes."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)  # errors and hang-ups are reported whatever the mask
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True

"""The errors a command ends with, and the one map from error to exit code.

Every command-line entry point wraps its `main` with `run_cli`, the front door: each error below becomes one
`error: <message>` line on stderr (followed by what is intact and how to continue, when the error says) and its
exit code, without a traceback:

    2  UserError       something the user gave (a file, an argument, a config value) cannot be used
    3  NonFiniteLoss   training stopped on a loss that stayed non-finite
    4  WriteError      a file could not be written (a full disk, a quota, a read-only file system)

A Python warning is one `warning: <message>` line (not the file, line number and source line Python adds by
default); output into a pipe whose reader has gone (`python -m stvit.data inspect FILE | head -n 1`) ends the
command quietly with exit status 141. Under torchrun only rank 0 prints (the others exit with the same code).
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

    exit_code = 2

    def __init__(self, message: str, path: object | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class NonFiniteLoss(RuntimeError):
    """Training stopped: the loss was not finite for too many steps in a row. `hint`: what is intact and how to
    continue (set by whoever knows the run directory)."""

    exit_code = 3
    hint: str | None = None

    def line(self) -> str:
        return f"training stopped: {self}" + (f"; {self.hint}" if self.hint else "")


class WriteError(Exception):
    """A file could not be written (a full disk, a quota, a read-only file system). The writes are atomic, so
    the previous version of the file is intact; `hint` says what is intact and how to continue."""

    exit_code = 4
    hint: str | None = None

    def __init__(self, path, err: OSError):
        from pathlib import Path

        self.path, self.reason = Path(path), err.strerror or str(err)
        super().__init__(f"{self.path}: cannot write ({self.reason})")

    def line(self) -> str:
        return str(self) + (f"; {self.hint}" if self.hint else "")


def exit_code(err: BaseException) -> int | None:
    """The exit code of an error this module knows (None for any other exception)."""
    return getattr(err, "exit_code", None) if isinstance(err, (UserError, NonFiniteLoss, WriteError)) else None


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command-line `main`: an error of this module becomes one stderr line and its exit code (2, 3, 4), a
    closed standard output a quiet EXIT_BROKEN_PIPE (or the command's own error status)."""
    warnings.formatwarning = one_line_warning
    code = None
    try:
        try:
            code = int(main(argv) or 0)
        except (UserError, NonFiniteLoss, WriteError) as err:
            if os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 alone says it
                print(f"error: {err.line() if hasattr(err, 'line') else err}", file=sys.stderr, flush=True)
            code = err.exit_code
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

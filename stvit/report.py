"""`python -m stvit.report DIR`: rebuild report.html of a run directory or a cross-validation directory from the
files in it (`stvit.training.report_page`), e.g. after `python -m stvit.explain` added brain maps, or for a run made
before reports existed.

A folder with cv.json or folds.json is a cross-validation; one with metrics.json, or config.json with log.jsonl, is a
run. Nothing but report.html is written, atomically, under the directory's lock (a run or cross-validation still
writing there is refused). Anything else (no such folder, neither kind, a file not as stvit writes it) is one
`error:` line, exit code 2, and nothing written.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from stvit import cli
from stvit.errors import UserError, run_cli
from stvit.training.report_page import write_report
from stvit.training.rundir import RunDir

EPILOG = """examples:
  python -m stvit.report runs/demo-20261203-101500       a run: its report.html again (with its maps, if any)
  python -m stvit.report runs/cv5                        a cross-validation

exit codes: 0 written; 2 not a run or cross-validation directory, or a file in it not as stvit writes it (one
'error:' line, nothing written); 4 report.html could not be written (disk full)."""


def build_parser():
    ap = cli.command_parser("python -m stvit.report", __doc__, EPILOG)
    ap.add_argument("dir", metavar="DIR", help="a run directory or a cross-validation directory")
    return ap


def kind_of(folder: Path) -> str:
    """'run' or 'cv', told apart by the files in `folder`; a UserError for anything else."""
    if not folder.exists():
        raise UserError("no such directory", folder)
    if not folder.is_dir():
        raise UserError("not a directory (give a run directory or a cross-validation directory)", folder)
    if (folder / "cv.json").is_file() or (folder / "folds.json").is_file():
        return "cv"
    if (folder / "metrics.json").is_file() or ((folder / "config.json").is_file() and (folder / "log.jsonl").is_file()):
        return "run"
    raise UserError("neither a run directory (metrics.json, or config.json and log.jsonl) nor a cross-validation "
                    "directory (cv.json or folds.json)", folder)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = Path(args.dir)
    kind = kind_of(folder)
    cli.check_writable(folder / "report.html", "file")
    run = RunDir(folder, main=True)
    run.lock()
    t0 = time.perf_counter()
    try:
        path = write_report(run, kind)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise UserError(f"cannot build its report: a file in it is not as stvit writes it ({type(e).__name__}: {e})",
                        folder) from None
    finally:
        run.close()
    print(f"{path} ({'cross-validation' if kind == 'cv' else 'run'}; {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

"""`python -m stvit.cv`: K-fold cross-validation grouped by subject and stratified by label, each fold a whole run
of the training code (`stvit.training.crossval`).

    python -m stvit.cv --data FILE [--folds 5] [--within-train] [--out DIR] [stvit.train flags]
    python -m stvit.cv --resume DIR      # an interrupted cross-validation continues with its unfinished folds

Each fold is a whole run of the run API on an in-memory data set (training: the other folds, with its own
validation split; test: fold k) in DIR/fold-k/; cv.json, cv.md and cv_accuracy.png summarize them. The folds, the
summary and resuming: see `stvit.training.crossval` and docs/evaluation.md.
"""
from __future__ import annotations

import logging
import sys

from stvit import cli
from stvit.errors import UserError, run_cli
from stvit.training import api
from stvit.training import distributed as DIST
from stvit.training.crossval import plan_cv, run_cv, summary_line

EPILOG = """examples:
  python -m stvit.cv --data HCP_emotion_4D_sample.mat --folds 5 --out runs/cv5     train and test pooled, 5 folds
  python -m stvit.cv --data FILE --within-train --preset demo --no-baseline      folds of the training split only
  python -m stvit.cv --resume runs/cv5                                            finish the unfinished folds

exit codes: 0 done; 2 bad input (one 'error:' line, nothing written); 3 a non-finite loss stopped a fold;
4 a file could not be written (disk full): continue with --resume."""

OWN = {"folds": 5, "within_train": False}  # the cross-validation's own flags and their defaults


def build_parser(argv: list[str] | None = None):
    """The run flags (the recipe of every fold; their defaults as `stvit.train --help` gives them for the preset
    and device of `argv`) and the cross-validation's own."""
    ap = cli.command_parser("python -m stvit.cv", __doc__, EPILOG)
    groups = cli.add_run_flags(ap, argv, skip=("--stage",), help_for={
        "--out": "the new cross-validation directory (absent or empty); default: runs/cv-<preset>-<date>-<time>",
        "--resume": "continue the cross-validation in DIR: its finished folds are read, the others run or continue"})
    run = cli.group(ap, groups, "run")
    run.add_argument("--folds", type=int, default=OWN["folds"], help=(
        "number of folds K, at least 2 and at most the number of subjects; default: 5"))
    run.add_argument("--within-train", action="store_true", help=(
        "cut the folds from the file's training split only; default: its train and test splits pooled"))
    return ap


def given_flags(args) -> list[str]:
    """The flags of `args` given on the command line (--resume and --quiet aside)."""
    flags = [cli.FLAG_OF_KEY[k] for k in cli.config_values(args)]
    flags += [f"--{k}" for k in ("preset", "config", "out") if getattr(args, k)]
    flags += [f"--{k.replace('_', '-')}" for k, v in OWN.items() if getattr(args, k) != v]
    return flags


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.INFO if DIST.is_main() else logging.WARNING, format="%(message)s")
    if args.resume and given_flags(args):
        raise UserError(f"--resume continues the cross-validation as it was set up; drop "
                        f"{', '.join(given_flags(args))}")
    DIST.init()
    try:
        error, plan = None, None
        try:
            plan = plan_cv(api.Request.from_flags(args), folds=args.folds, within_train=args.within_train)
        except UserError as e:
            error = e
        DIST.agree(error)
        cv = run_cv(plan, quiet=args.quiet or not sys.stderr.isatty())
        main_rank = DIST.is_main()
    finally:
        DIST.teardown()
    if main_rank:
        print(summary_line(cv, plan.out))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

"""`python -m stvit.cv`: K-fold cross-validation grouped by subject and stratified by label, each fold a whole run
of the training code (`stvit.training.crossval`), with the statistics of the result and, when asked, a
cross-validated permutation null.

    python -m stvit.cv --data FILE [--folds 5] [--within-train] [--permutations N] [--out DIR] [stvit.train flags]
    python -m stvit.cv --resume DIR      # an interrupted cross-validation continues with its unfinished folds

Each fold is a whole run of the run API on an in-memory data set (training: the other folds, with its own
validation split; test: fold k) in DIR/fold-k/; cv.json, cv.md, cv_accuracy.png and report.html summarize them:
per fold and pooled statistics, a bounded interval of the mean over folds, the corrected resampled t-test
(Nadeau & Bengio 2003) of model against baseline beside the plain one, the baseline's cross-validated refit null,
and with --permutations N the model's null (N whole cross-validations on permuted labels in DIR/permutation-i/).
The folds, the summary, the nulls and resuming: see `stvit.training.crossval` and docs/evaluation.md.
"""
from __future__ import annotations

import logging
import sys

from stvit import cli
from stvit.errors import UserError, run_cli
from stvit.training import api
from stvit.training import distributed as DIST
from stvit.training.crossval import BASELINE_PERMUTATIONS, plan_cv, run_cv, summary_line
from stvit.training.provenance import command_line
from stvit.training.stats import cv_sentence

EPILOG = """examples:
  python -m stvit.cv --data HCP_emotion_4D_sample.mat --folds 5 --out runs/cv5     train and test pooled, 5 folds
  python -m stvit.cv --data FILE --within-train --preset demo --no-baseline      folds of the training split only
  python -m stvit.cv --resume runs/cv5                                            finish the unfinished folds
  python -m stvit.cv --resume runs/cv5 --permutations 20                          add the model's null: 20 more cvs

exit codes: 0 done; 2 bad input (one 'error:' line, nothing written); 3 a non-finite loss stopped a fold;
4 a file could not be written (disk full): continue with --resume."""

# the cross-validation's own flags and their defaults; RESUMABLE may come with --resume
OWN = {"folds": 5, "within_train": False, "permutations": None, "baseline_permutations": None}
RESUMABLE = ("permutations", "baseline_permutations")


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
    ev = cli.group(ap, groups, "evaluation")
    ev.add_argument("--permutations", type=int, default=None, metavar="N", help=(
        "the model's cross-validated null: rerun the whole cross-validation N times on the labels permuted within "
        "subject and run (by whole blocks when the data carry onsets), each in DIR/permutation-i/, resumable; each "
        "costs about one cross-validation without the baseline; default: 0 (with --resume: as many as it asked for)"))
    ev.add_argument("--baseline-permutations", type=int, default=None, metavar="N", help=(
        "the baseline's cross-validated null: N refits of the baseline in every fold on permuted labels (seconds); "
        f"0: none; default: {BASELINE_PERMUTATIONS} (with --resume: as many as it asked for)"))
    return ap


def given_flags(args) -> list[str]:
    """The flags of `args` given on the command line (--resume and --quiet aside)."""
    flags = [cli.FLAG_OF_KEY[k] for k in cli.config_values(args)]
    flags += [f"--{k}" for k in ("preset", "config", "out") if getattr(args, k)]
    flags += [f"--{k.replace('_', '-')}" for k, v in OWN.items() if getattr(args, k) != v and k not in RESUMABLE]
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
            request = api.Request.from_flags(args, command_line("python -m stvit.cv", argv))
            plan = plan_cv(request, folds=args.folds, within_train=args.within_train, permutations=args.permutations,
                           baseline_permutations=args.baseline_permutations)
        except UserError as e:
            error = e
        DIST.agree(error)
        cv = run_cv(plan, quiet=args.quiet or not sys.stderr.isatty())
        main_rank = DIST.is_main()
    finally:
        DIST.teardown()
    if main_rank:
        print(summary_line(cv, plan.out))
        print(cv_sentence({**cv["stats"], "null": cv.get("null")}))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

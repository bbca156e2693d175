"""`python -m stvit.tune`: a hyperparameter search (Optuna) over subject-grouped folds of the training split
(`stvit.training.search`).

    python -m stvit.tune --data FILE --trials N [--folds K] [--space SPACE.json] [--study NAME] [--storage URL]
                         [--out DIR] [--preset P] [--config JSON] [stvit.train flags: the base recipe]

Each trial trains its config on K subject-grouped folds of the file's training split; its value is the mean best
validation accuracy; a median pruner stops weak trials; the test split is read once, by the final run of the best
config. The search space, the output folder, resuming and sharing a study between processes: see
`stvit.training.search` and docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import sys

from stvit import cli
from stvit.errors import run_cli
from stvit.training import api
from stvit.training.search import Options, Search, plan_search, run_search

EPILOG = """examples:
  python -m stvit.tune --data HCP_emotion_4D_sample.mat --trials 40 --out runs/tune-paper
  python -m stvit.tune --data FILE --trials 40 --out runs/tune-paper      the same command again: it continues
  python -m stvit.tune --data FILE --trials 40 --storage postgresql://user@host/db --sampler-seed 1 --no-final
                                                     (one of several processes sharing a study)

exit codes: 0 done; 2 bad input (one 'error:' line); 3 the final run stopped on a non-finite loss; 4 a file could
not be written: run the same command again."""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The run flags (the base recipe of every trial) and the search's own."""
    ap = cli.command_parser("python -m stvit.tune", __doc__, EPILOG)
    groups = cli.add_run_flags(ap, argv, help_for={
        "--out": "the tune directory; default: runs/tune-<preset>",
        "--resume": "not for a search: it continues when the same command runs again (same --out, --study)",
        "--stage": "not for a search: every trial runs pre-training and fine-tuning"})
    s = cli.group(ap, groups, "search")
    s.add_argument("--trials", type=int, required=True, metavar="N",
                   help="the search ends when the study holds N completed or pruned trials")
    s.add_argument("--folds", type=int, default=3, metavar="K",
                   help="subject-grouped folds of the training split; a trial trains K times; default: 3")
    s.add_argument("--space", metavar="FILE",
                   help="the search space, a JSON file of config keys; default: stvit/training/tune_space.json")
    s.add_argument("--study", default="stvit", metavar="NAME", help="the study's name in the storage; default: stvit")
    s.add_argument("--storage", metavar="URL",
                   help="the study's database, a URL Optuna takes (postgresql://...); default: sqlite:///DIR/study.db")
    s.add_argument("--sampler-seed", type=int, metavar="N",
                   help="the TPE sampler's seed; processes sharing a study each need their own; default: --seed")
    s.add_argument("--final", action=argparse.BooleanOptionalAction, default=True,
                   help="at the end, write the results and train + test the best config once; default: on")
    return ap


def plan_from_args(args: argparse.Namespace) -> Search:
    """The search the parsed command line asks for, checked (`stvit.training.search.plan_search`)."""
    options = Options(args.trials, args.folds, args.space, args.study, args.storage, args.sampler_seed, args.final)
    return plan_search(api.Request.from_flags(args), options)


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    search = plan_from_args(args)
    run_search(search, quiet=args.quiet or not sys.stderr.isatty())
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

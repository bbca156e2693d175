"""`python -m stvit.tune`: a hyperparameter search (Optuna) over subject-grouped folds of the training split
(`stvit.training.search`).

    python -m stvit.tune --data FILE --trials N [--folds K] [--space SPACE.json] [--study NAME] [--storage URL]
                         [--out DIR] [--preset P] [--config JSON] [stvit.train flags: the base recipe]

Each trial samples values from the search space (TPE) over the base config (preset, --config, flags) and trains
that config on K folds carved from the file's TRAINING split (`data.subject_folds`: whole subjects per fold,
stratified by label): fold k trains on the other folds and validates on fold k, through the trainer's own stages
(the run API with each fold's fixed split). The trial's value is the mean over folds of the best epoch's validation accuracy (the epoch
a run keeps as best.pt). After each fine-tune epoch the validation accuracy goes to a median pruner, which stops a
trial below the median of earlier trials at the same fold and epoch. The test split is never read during the
search: the folds' splits have none to give.

Then: best_config.json (the base config with the best trial's values: `python -m stvit.train --config` takes it),
Optuna's figures (optimization history, intermediate values, parameter importances once 2 trials completed), and
one run of the best config in final-trial-N/: pre-training, fine-tuning and the one evaluation of the test split
(with the same-split baseline where the trainer reports one). summary.json and summary.md hold the numbers.

The search space is a JSON file (default: stvit/training/tune_space.json) of config keys:
    {"params": {"finetune.lr": {"low": 0.3, "high": 3.0, "log": true, "times": "finetune.lr"},
                "model.dropout": {"low": 0.0, "high": 0.3},
                "model.dim": {"choices": [32, 64]},
                "augment.ops": {"choices": [["flip"], ["flip", "elastic", "scale", "noise"]]},
                "pretrain.epochs": {"value": 2}},
     "sampler": {"n_startup_trials": 5}, "pruner": {"n_startup_trials": 3, "n_warmup_steps": 1}}
A range ("low", "high"; "log", "step" optional) is searched as floats, or as whole numbers for a whole-number key;
"times" multiplies the range by the base config's value of that key, so one space fits every preset; "choices"
is a categorical choice, "value" a fixed value. "sampler" and "pruner" go to TPESampler and MedianPruner.

DIR (default runs/tune-<preset>):
    study.db            the study (SQLite), unless --storage names another database
    space.json          the search space, as read
    trials/N/fold-K/    each fold's run directory (config.json, log.jsonl; its checkpoints dropped when it ends)
    best_config.json, figures/*.png, final-trial-N/, summary.json, summary.md

Resume: run the same command again. Completed and pruned trials are kept; a trial that a kill interrupted is
found by its heartbeat (silent for GRACE_S seconds) and run again with its values, reusing the folds it finished;
trials go on until the study holds N; an interrupted final run continues (`stvit.train --resume`).
Several processes or machines share one study through a database server: the same `--study` and
`--storage postgresql://user@host/db` (any URL Optuna's RDBStorage takes) and each its own `--sampler-seed`;
each runs trials until the study holds N, and writes the results (`--no-final`: leave them to one of them).
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

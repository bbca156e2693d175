"""`python -m stvit.train`: pre-training (MAE) -> fine-tuning -> one final test evaluation.

The command line of the run API (`stvit.training.api`): its flags (`stvit.cli.FLAGS`) become a `Request`, `plan`
reads and checks everything before anything is written, `run` claims the run directory and runs the stages in
order, then the one evaluation of the test split with the checkpoint chosen on the validation split
(`--select-on-test` reproduces the seed's protocol, which picks the epoch on the test set, and says it leaks).

Run directory: config.json, split.json, log.jsonl (one line per epoch), checkpoints/{last,best,pretrain}.pt,
predictions.npz, metrics.json, figures/*.png (docs/training.md).

Under `torchrun --nproc-per-node=N -m stvit.train ...` the same run is data-parallel (docs/distributed.md): the
configured batch is the global batch, each rank steps on its shard of it, rank 0 alone writes the run directory,
and every rank resumes from it.
"""
from __future__ import annotations

import logging
import json
import sys

from stvit import cli
from stvit.errors import run_cli
from stvit.training import api
from stvit.training import distributed as DIST
from stvit.training.evaluation import result_line

EPILOG = """examples:
  python -m stvit.train                                  the built-in synthetic set, the preset for this machine
  python -m stvit.train --data HCP_emotion_4D_sample.mat --preset paper --out runs/paper-seed0
  python -m stvit.train --resume runs/paper-seed0        continue it exactly (--ft-epochs N to lengthen it)
  python -m stvit.train --stage finetune --out runs/r1   fine-tune the pre-trained encoder of an earlier run

exit codes: 0 done; 2 bad input (one 'error:' line, nothing written); 3 a non-finite loss stopped the run;
4 a file could not be written (disk full): continue with --resume. A run's files: docs/training.md."""


def build_parser(argv: list[str] | None = None):
    """The command line; its help gives each default as it is for the preset and device of `argv`."""
    cfg, device = cli.help_context(argv)
    about = (__doc__.split("\n\n")[0] + f" The defaults below are those of the {cfg.preset} preset on "
             f"{device.type}; --preset, --device and --config given with --help show others.")
    ap = cli.command_parser("python -m stvit.train", about, EPILOG)
    groups = cli.add_run_flags(ap, argv)
    cli.group(ap, groups, "evaluation").add_argument("--explain", action="store_true", help=(
        "after the final evaluation, write brain maps of the test split to RUN/maps (python -m stvit.explain with "
        "its defaults; needs pip install 'stvit[maps]'); default: off"))
    return ap


def main(argv: list[str] | None = None) -> int:
    """The command: exit code 0; errors end it through `run_cli` (2 bad input, 3 non-finite loss, 4 write error)."""
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.INFO if DIST.is_main() else logging.WARNING, format="%(message)s")
    try:
        plan = api.plan(api.Request.from_flags(args))
        if args.explain:
            from stvit.maps.job import check_explain  # every check of the maps, before the run writes anything

            check_explain(plan.run_dir / "maps", plan.stage)
        metrics, seconds = api.timed_run(plan)
        main_rank = DIST.is_main()
    finally:
        DIST.teardown()
    if metrics is None or not main_rank:
        return 0
    print(f"{result_line(metrics)}; total {seconds:.0f} s; {plan.run_dir / 'metrics.json'}")
    if args.explain:
        from stvit.maps.job import explain_run, plan_maps, summary_lines

        maps = plan_maps(plan.run_dir, device=api.device_of(plan.cfg).type, data=plan.data)
        path = explain_run(maps, quiet=args.quiet or not sys.stderr.isatty())
        line, note = summary_lines(maps, json.loads(path.read_text()))
        print(line)
        if note:
            print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

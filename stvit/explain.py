"""`python -m stvit.explain RUN_DIR`: where in the brain a trained classifier looks, as maps on the MNI grid.

Integrated Gradients (Captum) toward every class and attention rollout of the spatial encoder, each averaged over
the explained volumes (`stvit.maps.attribution`), written to DIR (default RUN_DIR/maps): one NIfTI per map, a stat
map in three planes and a glass brain per map over nilearn's bundled MNI152 template, peaks.csv (the largest
clusters of each map's top 1% of in-brain voxels, with MNI coordinates) and maps.json (what was computed, on which
volumes, with which checkpoint, the convergence deltas, the versions). See docs/maps.md.
"""
from __future__ import annotations

import json
import sys

from stvit import cli
from stvit.errors import run_cli
from stvit.maps.attribution import METHODS
from stvit.maps.job import explain_run, plan_maps, summary_lines

EPILOG = """examples:
  python -m stvit.explain runs/demo-20261202-101500                 every method, 64 test volumes -> RUN/maps
  python -m stvit.explain RUN --method ig --n 320 --steps 64 --out RUN/maps-ig

exit codes: 0 done; 2 bad input (one 'error:' line, nothing written); 4 a file could not be written."""


def build_parser(argv=None):
    ap = cli.command_parser("python -m stvit.explain", __doc__, EPILOG)
    ap.add_argument("run_dir", metavar="RUN_DIR", help="a run directory of python -m stvit.train (fine-tuned)")
    ap.add_argument("--checkpoint", choices=("best", "last"), default="best",
                    help="which fine-tuning checkpoint: best (chosen on validation) or last; default: best")
    ap.add_argument("--split", choices=("test", "val"), default="test",
                    help="explain volumes of the test split or of the run's validation split; default: test")
    ap.add_argument("--n", type=int, default=64, metavar="N",
                    help="volumes to explain, spread evenly over the split; default: 64")
    ap.add_argument("--method", choices=(*METHODS, "all"), default="all",
                    help="ig (Integrated Gradients), attention (rollout) or all; default: all")
    ap.add_argument("--steps", type=int, default=32, metavar="N",
                    help="Integrated Gradients integration steps; default: 32")
    ap.add_argument("--batch-size", type=int, metavar="N",
                    help="volumes per forward pass; default: the run's eval batch size")
    ap.add_argument("--out", metavar="DIR", help="output folder, new or empty; default: RUN_DIR/maps")
    ap.add_argument("--affine-from", metavar="FILE.nii",
                    help="take the voxel-to-world affine of this image (data stored right to left along axis 0); "
                         "default: SPM's 3 mm grid, axis 0 left to right")
    cli.add_run_flags(ap, argv, only=("--device", "--quiet"),
                      help_for={"--device": "where to compute the maps: auto (a CUDA GPU if there is one), cpu or "
                                            "cuda; default: auto"})
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    plan = plan_maps(args.run_dir, checkpoint=args.checkpoint, split=args.split, n=args.n, method=args.method,
                     steps=args.steps, batch_size=args.batch_size, out=args.out, affine_from=args.affine_from,
                     device=args.device)
    path = explain_run(plan, quiet=args.quiet or not sys.stderr.isatty())
    line, note = summary_lines(plan, json.loads(path.read_text()))
    print(line)
    if note:
        print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

"""`python -m stvit.predict RUN_DIR INPUT --out FILE.csv`: class probabilities of every volume of INPUT from a trained
run's classifier (checkpoints/best.pt), one CSV row per volume.

INPUT is any data file stvit reads (both splits, prepared as the run prepares its data) or a NIfTI series in MNI
space (.nii / .nii.gz, 4D or one 3D volume): resampled onto the model's grid through its affine, cleaned over time
as the importer cleans a run (detrend, each voxel z-scored; --no-clean for a series already cleaned and masked),
z-scored per volume. Columns: split, volume (position in its split or series), time (s: volume x TR of a series;
the onset a packed file records), subject, label, predicted, prob_<class> for each class. The run's own test volumes
give exactly the probabilities in its predictions.npz. See docs/library.md.
"""
from __future__ import annotations

import sys

import numpy as np

from stvit import cli
from stvit.errors import run_cli
from stvit.training import trained

EPILOG = """examples:
  python -m stvit.predict runs/paper-seed0 sub-01_task-emotion_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz \\
      --out sub-01.csv
  python -m stvit.predict runs/paper-seed0 HCP_emotion_4D_sample.mat --out all.csv --device cuda

exit codes: 0 done; 2 bad input (one 'error:' line, nothing written); 4 the file could not be written."""


def build_parser(argv=None):
    ap = cli.command_parser("python -m stvit.predict", __doc__, EPILOG)
    ap.add_argument("--out", required=True, metavar="FILE.csv", help="the CSV to write (a new file)")
    trained.add_input_flags(ap, argv)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    out = trained.check_out(args.out)
    run = trained.load(args.run_dir, device=args.device or "auto", precision=args.precision or "auto")
    inputs = trained.read_inputs(args.input, run, clean=args.clean, tr=args.tr)
    probs = np.concatenate([run.predict_proba(part, batch_size=args.batch_size, prepared=True)
                            for part in inputs.parts])
    text = trained.predictions_table(inputs, probs, run.classes)
    trained.write_output(out, lambda f: f.write(text.encode()))
    counts = np.bincount(probs.argmax(1), minlength=len(run.classes))
    print(f"predicted {len(inputs)} volumes of {inputs.source} ({inputs.how}): "
          f"{', '.join(f'{c} {n}' for c, n in zip(run.classes, counts))}; {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

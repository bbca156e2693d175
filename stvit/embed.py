"""`python -m stvit.embed RUN_DIR INPUT --out FILE.npz`: embeddings of every volume of INPUT from a trained run's
encoder, with the ids and labels beside them, for probes of your own (a linear probe: docs/library.md).

INPUT is read as `python -m stvit.predict` reads it (a data file, or a NIfTI series in MNI space). The .npz holds
`volume` (N, D): the temporal encoder's output mean-pooled over the slices, what the classifier's head reads;
with --slices also `slice` (N, 53, D): the spatial encoder's CLS of each sagittal slice; and per volume `split`,
`index` (position in its split or series), `time` (s, NaN when unknown), `subject`, `label` (-1 when unknown); then `class_names`, `run` and `source`.
"""
from __future__ import annotations

import sys

import numpy as np

from stvit import cli
from stvit.errors import run_cli
from stvit.training import trained

EPILOG = """examples:
  python -m stvit.embed runs/paper-seed0 HCP_emotion_4D_sample.mat --out embeddings.npz
  python -m stvit.embed runs/paper-seed0 sub-01_bold.nii.gz --out sub-01.npz --slices

exit codes: 0 done; 2 bad input (one 'error:' line, nothing written); 4 the file could not be written."""


def build_parser(argv=None):
    ap = cli.command_parser("python -m stvit.embed", __doc__, EPILOG)
    ap.add_argument("--out", required=True, metavar="FILE.npz", help="the .npz to write (a new file)")
    ap.add_argument("--slices", action="store_true", help="also the slice embeddings (N, 53, D); default: volume only")
    trained.add_input_flags(ap, argv)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    out = trained.check_out(args.out)
    run = trained.load(args.run_dir, device=args.device or "auto", precision=args.precision or "auto")
    inputs = trained.read_inputs(args.input, run, clean=args.clean, tr=args.tr)
    level = "both" if args.slices else "volume"
    parts = [run.embed(part, level, batch_size=args.batch_size, prepared=True) for part in inputs.parts]
    arrays = {"volume": np.concatenate([p[1] if args.slices else p for p in parts])}
    if args.slices:
        arrays["slice"] = np.concatenate([p[0] for p in parts])
    arrays.update(trained.embedding_rows(inputs, run))
    trained.write_output(out, lambda f: np.savez(f, **arrays))
    shape = " and ".join(f"{k} {' x '.join(map(str, arrays[k].shape[1:]))}" for k in ("volume", "slice") if k in arrays)
    print(f"embedded {len(inputs)} volumes of {inputs.source} ({inputs.how}): {shape}; {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

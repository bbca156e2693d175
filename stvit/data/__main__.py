"""`python -m stvit.data inspect FILE`, `python -m stvit.data synth --out FILE`,
`python -m stvit.data pack IN --out OUT` and `python -m stvit.data import SOURCE --out FILE` (stvit.data.importer).

inspect: the variables (from the headers), then the checked contents (label balance, subjects, value range,
in-brain voxels) and `valid`, or the problem as `error: <file>: <problem>` with exit code 2.
synth: writes the synthetic HCP-like set in the real layout, or straight into a packed file at any size
(refuses to overwrite without --force).
pack: converts any data file that can be read into a packed file (the in-brain voxels, float16 or float32).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from stvit.errors import WriteError, run_cli
from stvit.data.dataset import MAX_ABS, SPLITS, DataError, HCPData, fmt_shape
from stvit.data import packed
from stvit.data.files import FORMATS, describe, format_for, load_dataset, open_dataset
from stvit.data.synth import write_synthetic


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return ""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stvit.data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("inspect", help="show what is in a data file and whether it is valid",
                       description="The variables of a data file (from its headers), then its checked contents "
                                   "(label balance, subjects, value range, in-brain voxels) and 'valid'; or one "
                                   "'error: FILE: problem' line and exit code 2.")
    i.add_argument("file", help="a MAT (v5/v7/v7.3), HDF5 or .npz file, or a NIfTI folder (or its CSV)")
    i.add_argument("--nan-to-zero", action="store_true", help="count NaN/Inf voxels as repairable (set to 0), as "
                                                              "training with --nan-to-zero would; default: refuse")
    i.add_argument("--volume-shape", type=_positive, nargs=3, default=(53, 63, 46), metavar=("X", "Y", "Z"),
                   help="the volume shape the model expects; default: 53 63 46 (SPM's 3 mm grid)")
    i.add_argument("--num-classes", type=_positive, default=2, metavar="N",
                   help="labels must be 0 .. N-1; default: 2")
    i.add_argument("--max-abs", type=float, default=MAX_ABS, metavar="V",
                   help=f"refuse voxels beyond +-V (a unit or scaling error; z-scored data holds a few units); "
                        f"default: {MAX_ABS:g}, as training (data.max_abs)")
    s = sub.add_parser("synth", help="write a synthetic HCP-like set in the real layout",
                       description="Generate the synthetic HCP-like set (the one training uses by default) and "
                                   "write it in the course file's layout.")
    s.add_argument("--out", required=True, metavar="FILE",
                   help="output file (.mat, .npz, .h5), or a folder for --format nifti")
    s.add_argument("--n-train", type=_positive, default=480, metavar="N",
                   help="train volumes; default: 480 (the course file has 3200)")
    s.add_argument("--n-test", type=_positive, default=160, metavar="N",
                   help="test volumes; default: 160 (the course file has 800)")
    s.add_argument("--seed", type=int, default=0, metavar="N", help="the generator's seed; default: 0")
    s.add_argument("--format", choices=FORMATS, help="mat (v5), mat73 (HDF5), npz, nifti (a folder of .nii.gz "
                   "volumes and labels.csv), or packed (the in-brain voxels, written a few subjects at a time: any "
                   "size); default from the extension")
    s.add_argument("--dtype", choices=("float64", "float32", "float16"),
                   help="volume dtype in the file; float16 only for --format packed; default: float64 (as the course "
                        "file), float16 for --format packed")
    s.add_argument("--force", action="store_true", help="overwrite an existing file; default: refuse")
    k = sub.add_parser("pack", help="convert a data file into a packed file (in-brain voxels, float16 or float32)",
                       description="Read a data file (MAT v5/v7/v7.3, HDF5, .npz, a NIfTI folder, or a packed file) "
                                   "and write its volumes as a packed file: the voxels inside the mask of voxels "
                                   "non-zero in any volume, with labels, the train/test split and subject ids. A "
                                   "packed input is converted a block of rows at a time; other formats are read "
                                   "whole first (their readers' peak memory, about the float32 size).")
    k.add_argument("input", metavar="IN", help="the data file (or NIfTI folder) to convert")
    k.add_argument("--out", required=True, metavar="FILE", help="the packed file to write (refused if it exists)")
    k.add_argument("--dtype", choices=packed.DTYPES, default="float16",
                   help="stored voxel dtype: float16 (half the bytes; z-scored data needs no more) or float32; "
                        "default: float16")
    k.add_argument("--zscore", action="store_true",
                   help="z-score each volume over its non-zero voxels while packing (for data not yet normalized; "
                        "training does not z-score packed files); default: store the values as read")
    k.add_argument("--nan-to-zero", action="store_true", help="set NaN/Inf voxels to 0; default: refuse them")
    k.add_argument("--volume-shape", type=_positive, nargs=3, default=(53, 63, 46), metavar=("X", "Y", "Z"),
                   help="the volume shape of the input; default: 53 63 46 (SPM's 3 mm grid)")
    k.add_argument("--num-classes", type=_positive, default=2, metavar="N", help="labels must be 0 .. N-1; default: 2")
    k.add_argument("--force", action="store_true", help="overwrite an existing file; default: refuse")

    from stvit.data.importer.command import add_parser as add_import  # the importer of real studies

    add_import(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "import":
        from stvit.data.importer.command import main as import_main

        return import_main(args)
    return {"inspect": inspect, "synth": synth, "pack": pack}[args.command](args)


def inspect(args) -> int:
    path = Path(args.file)
    kind, variables = describe(path)
    size = f", {_size(path.stat().st_size)}" if path.is_file() else ""
    print(f"{path}: {kind}{size}")
    width = max((len(k) for k in variables), default=0)
    for name, info in variables.items():
        print(f"  {name:<{width}}  {fmt_shape(info.shape):<22} {info.dtype}")
    data = open_dataset(path, volume_shape=tuple(args.volume_shape), num_classes=args.num_classes,
                        nan_to_zero=args.nan_to_zero, max_abs=args.max_abs)  # a packed file: read block by block
    for line in summary(data):
        print(line)
    print("valid")
    return 0


def summary(data: HCPData) -> list[str]:
    """Label balance, subjects, value range and in-brain voxel count, computed a chunk at a time."""
    lines = []
    for split in SPLITS:
        X, y, ids = data.split(split)
        if X is None:
            lines.append(f"{split + ':':<6} none")
            continue
        labels = ", ".join(f"{c}: {n}" for c, n in zip(*np.unique(y, return_counts=True)))
        subjects = "no subject ids"
        if ids is not None:
            _, per = np.unique(ids, return_counts=True)
            each = f"{per[0]} volumes each" if per.min() == per.max() else f"{per.min()}-{per.max()} volumes each"
            subjects = f"{len(per)} subject{'s' * (len(per) != 1)} ({each})"
        lines.append(f"{split + ':':<6} {len(y)} volumes; labels {labels}; {subjects}")
    if data.ids_train is not None and data.ids_test is not None:
        both = np.intersect1d(data.ids_train, data.ids_test)
        lines.append(f"subjects in both splits: {len(both) if len(both) else 'none'}"
                     + (" (test accuracy will be optimistic)" if len(both) else ""))
    lo, hi, nonzero = np.inf, -np.inf, np.zeros(data.X_train.shape[1:], bool)
    for X in (data.X_train, data.X_test):
        if X is None:
            continue
        for s in range(0, len(X), 64):
            chunk = np.asarray(X[s:s + 64])  # a packed file's volumes are read here
            lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
            nonzero |= (chunk != 0).any(0)
    lines.append(f"values: min {lo:.3g}, max {hi:.3g}; in-brain voxels (non-zero in some volume): "
                 f"{int(nonzero.sum()):,} of {nonzero.size:,}")
    return lines


def synth(args) -> int:
    from stvit.cli import check_path

    out = check_path(args.out)
    fmt = args.format or format_for(out)
    if fmt is None:
        raise DataError(f"cannot tell the format from the name; pass --format {'|'.join(FORMATS)}", out)
    if not out.parent.is_dir():
        raise DataError("folder does not exist", out.parent)
    if out.exists() and not args.force:
        raise DataError("file exists; pass --force to overwrite it", out)
    dtype = args.dtype or ("float16" if fmt == "packed" else "float64")
    if fmt == "packed" and dtype not in packed.DTYPES:
        raise DataError(f"--dtype {dtype}: a packed file stores float16 or float32", out)
    if fmt != "packed" and dtype == "float16":
        raise DataError("--dtype float16 is for --format packed", out)
    folder = None
    if fmt == "nifti":  # many files into one folder: hold its lock (the one directory lock of every command)
        from stvit.training.rundir import RunDir

        folder = RunDir(out, main=True)
        folder.lock("folder", "wait for it to end, or choose another --out")
        if any(out.iterdir()) and not args.force:
            folder.close()
            raise DataError("folder exists and is not empty; pass --force to write into it", out)
    start = time.perf_counter()
    try:
        write_synthetic(out, args.n_train, args.n_test, args.seed, fmt=fmt, dtype=np.dtype(dtype),
                        replace=args.force)
    except OSError as err:  # a full disk, a quota: a file is written atomically, a folder volume by volume
        e = WriteError(out, err)
        e.hint = ("the folder holds part of the set: make room and run the command again with --force"
                  if fmt == "nifti" else "nothing was written; make room and run the command again")
        raise e from None
    finally:
        if folder is not None:
            folder.close()
    print(f"wrote {out}: {args.n_train} train + {args.n_test} test volumes, {fmt}, {dtype}, "
          f"{_size(out.stat().st_size)} in {time.perf_counter() - start:.1f} s")
    return 0


def pack(args) -> int:
    src, out = Path(args.input), Path(args.out)
    if not src.exists():
        raise DataError("no such file or folder", src)
    if not out.parent.is_dir():
        raise DataError("folder does not exist", out.parent)
    if out.exists() and not args.force:
        raise DataError("file exists; pass --force to overwrite it", out)
    if out.exists() and src.resolve() == out.resolve():
        raise DataError("is the input itself; write the packed file elsewhere", out)
    start = time.perf_counter()
    shape = tuple(args.volume_shape)
    try:
        if src.is_file() and packed.is_packed(src):
            n, width = packed.repack(src, out, dtype=args.dtype, zscore=args.zscore, nan_to_zero=args.nan_to_zero,
                                     volume_shape=shape, num_classes=args.num_classes)
        else:
            data = load_dataset(src, volume_shape=shape, num_classes=args.num_classes, nan_to_zero=args.nan_to_zero,
                                zscore=args.zscore)
            packed.write_packed(out, data, dtype=args.dtype, provenance={"packed_from": str(src)},
                                replace=args.force)
            n = len(data.y_train) + len(data.y_test)
            with packed.PackedFile(out) as p:
                width = p.voxels.shape[1]
    except ValueError as err:  # the writer's refusals: values beyond float16, voxels outside the mask
        raise DataError(f"cannot pack: {err}", src) from None
    except OSError as err:  # a full disk, a quota: the packed file is written atomically
        e = WriteError(out, err)
        e.hint = "nothing was written; make room and run the command again"
        raise e from None
    dense = n * int(np.prod(shape)) * 4
    size = out.stat().st_size
    print(f"packed {src} -> {out}: {n} volumes, {width:,} in-brain voxels each, {args.dtype}, {_size(size)} "
          f"({100 * size / dense:.1f}% of the {_size(dense)} of dense float32 volumes) in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

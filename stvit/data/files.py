"""Data files: tell the format, read and check a data set, write one. One module per format holds its reader and
its writer: `matv5` (MAT v5/v7), `mat73` (MAT v7.3 and plain HDF5), `npz`, `nifti` (a folder of volumes + CSV).

`load_dataset(path)` tells the format from the file's first bytes (not its name), checks every key, shape and
count from the headers before reading any volume, then streams each `X_*` into a preallocated C-order array of
the training dtype (peak memory near that array's size, not float64 plus copies), and checks the voxels.
`open_dataset(path)` is `load_dataset` for training: a packed file is opened, not read (its splits are
`packed.PackedVolumes`, rows read on demand, so a data set larger than memory can be trained on); any other file
is read as `load_dataset` reads it.
`write_dataset(path, data)` writes the real layout in any of the formats.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from stvit.data import mat73, matv5, nifti, npz, packed
from stvit.data.dataset import (MAX_ABS, SPLITS, VOLUME_SHAPE, DataError, HCPData, VarInfo, as_ids, as_labels, check_counts,
                      check_values, check_volumes_shape, keys, zscore_volumes)

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def sniff(path: Path) -> str:
    """`mat5`, `hdf5` or `npz` from the first bytes; DataError for an empty, truncated or foreign file."""
    size = path.stat().st_size
    if size == 0:
        raise DataError("file is empty", path)
    with open(path, "rb") as f:
        head = f.read(128)
        if head[:8] == HDF5_SIGNATURE:
            return "hdf5"
        offset = 512  # HDF5 looks for its superblock at 0, 512, 1024, 2048, ...
        while offset + 8 <= size:
            f.seek(offset)
            if f.read(8) == HDF5_SIGNATURE:
                return "hdf5"
            offset *= 2
    if matv5.is_mat5_header(head):
        return "mat5"
    if head.startswith(b"MATLAB 7.3"):
        raise DataError("file is truncated or damaged: a MAT v7.3 header without its HDF5 data", path)
    if head.startswith(b"MATLAB"):
        raise DataError("file is truncated or damaged: the MAT header is incomplete", path)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "npz"
    if head[:6] == b"\x93NUMPY":
        raise DataError("a single .npy array; save all six arrays into one .npz (numpy.savez)", path)
    raise DataError("not a MAT (v5/v7/v7.3), HDF5 or .npz file", path)


def _exists(path: Path) -> bool:
    """Whether `path` exists; a name the system refuses (a component over 255 bytes, ...) is a DataError."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        raise DataError(f"cannot use this path ({e.strerror})", path) from None
    return True


def open_source(path: Path):
    """The reader of a file's format (a context manager with `variables`, `read_small`, `read_volumes`)."""
    return {"mat5": matv5.Mat5Source, "hdf5": mat73.HDF5Source, "npz": npz.NpzSource}[sniff(path)](path)



def load_dataset(path, *, volume_shape=VOLUME_SHAPE, num_classes: int = 2, nan_to_zero: bool = False,
                 zscore: bool = False, dtype=np.float32, class_names=None, max_abs: float | None = MAX_ABS) -> HCPData:
    """Read and check a data file (MAT v5/v7/v7.3, HDF5, .npz) or a NIfTI folder / CSV.

    Returns volumes (N, *volume_shape) in `dtype`, labels (N,) int64, ids (N,) str or None. Raises
    `DataError("<path>: <problem>")` for anything wrong with the input. `nan_to_zero` repairs NaN/Inf voxels
    (with a warning) instead of refusing them; finite voxels beyond +-`max_abs` are refused (None: no bound);
    `zscore` z-scores each volume over its non-zero voxels.
    `class_names` lets a NIfTI CSV give labels by name.
    """
    path = Path(path)
    volume_shape = tuple(int(s) for s in volume_shape)
    if not _exists(path):
        raise DataError("no such file or folder", path)
    meta = None
    if path.is_dir() or path.suffix.lower() == ".csv":
        splits = nifti.read(path, volume_shape, num_classes, dtype, class_names)
    elif packed.is_packed(path):
        data = packed.read_packed(path, volume_shape=volume_shape, num_classes=num_classes, dtype=dtype)
        splits, meta = {s: data.split(s) for s in SPLITS}, data.meta
    else:
        if not os.access(path, os.R_OK):
            raise DataError("permission denied", path)
        with open_source(path) as src:
            splits = read_arrays(src, path, volume_shape, num_classes, dtype)
    for split, (X, y, ids) in splits.items():
        repaired = check_values(X, keys(split)[0], path, nan_to_zero, max_abs)
        if repaired:
            warnings.warn(f"{path}: set {repaired:,} NaN/Inf voxels of {keys(split)[0]} to 0", stacklevel=2)
        if zscore:
            zscore_volumes(X)
    (Xtr, ytr, itr), (Xte, yte, ite) = splits["train"], splits["test"]
    return HCPData(Xtr, ytr, itr, Xte, yte, ite, source=str(path), meta=meta)


def open_dataset(path, *, volume_shape=VOLUME_SHAPE, num_classes: int = 2, nan_to_zero: bool = False,
                 zscore: bool = False, class_names=None, max_abs: float | None = MAX_ABS,
                 placement: str = "auto") -> HCPData:
    """`load_dataset`, except that a packed file is opened (`packed.open_packed`: the same checks, from its
    statistics; the volumes read when indexed) rather than read. `placement` (`data.placement`): "stream" reads
    rows from a packed file, so it needs one (DataError otherwise, before anything is read); any file can be
    resident on the device, dense or packed."""
    path = Path(path)
    if path.is_file() and packed.is_packed(path):
        return packed.open_packed(path, volume_shape=volume_shape, num_classes=num_classes, nan_to_zero=nan_to_zero,
                                  max_abs=max_abs, zscore=zscore)
    if placement == "stream" and path.exists():
        raise DataError("data.placement stream reads the rows of a packed data file; this is not one "
                        f"(convert it: python -m stvit.data pack {path} --out FILE.h5)", path)
    return load_dataset(path, volume_shape=volume_shape, num_classes=num_classes, nan_to_zero=nan_to_zero,
                        zscore=zscore, class_names=class_names, max_abs=max_abs)


def read_arrays(src, path: Path, volume_shape, num_classes: int, dtype) -> dict:
    """Check every key, shape and count from the headers and the small arrays, then stream the volumes."""
    info = src.variables()
    plan = {}
    for split in SPLITS:
        xk, yk, ik = keys(split)
        for k in (xk, yk):
            if k not in info:
                found = ", ".join(sorted(info)) or "no variables"
                raise DataError(f"missing key '{k}' (the file has: {found})", path)
        xi = info[xk]
        if xi.empty:
            raise DataError(f"{xk} is empty (empty split)", path)
        if not xi.numeric:
            raise DataError(f"{xk} is {xi.dtype}, expected a real numeric array of volumes", path)
        n = check_volumes_shape(xk, xi.shape, volume_shape, path)
        y = as_labels(src.read_small(yk), yk, num_classes, path)
        ids = as_ids(src.read_small(ik), ik, path) if ik in info else None
        check_counts(split, n, y, ids, path)
        plan[split] = (n, y, ids)
    out = {}
    for split, (n, y, ids) in plan.items():
        X = np.empty((n,) + volume_shape, dtype)
        src.read_volumes(keys(split)[0], X)
        out[split] = (X, y, ids)
    return out


def describe(path) -> tuple[str, dict[str, VarInfo]]:
    """(format, variables) from the headers only (no volume is read); DataError if the file can't be opened."""
    path = Path(path)
    if not _exists(path):
        raise DataError("no such file or folder", path)
    if path.is_dir() or path.suffix.lower() == ".csv":
        csv_path, rows = nifti.read_csv(path)
        counts = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
        return f"NIfTI folder ({csv_path.name})", {
            f"{s} rows": VarInfo((counts[s],), "csv rows", False) for s in SPLITS}
    if packed.is_packed(path):
        with packed.PackedFile(path) as p:
            counts = {s: int((p.split == code).sum()) for code, s in enumerate(SPLITS)}
            info = {"voxels": VarInfo(tuple(p.voxels.shape), str(p.dtype), True),
                    "mask": VarInfo(p.volume_shape, f"{len(p.index):,} in-brain voxels", False),
                    **{f"{s} rows": VarInfo((counts[s],), "volumes", False) for s in SPLITS},
                    **{f"meta/{k}": VarInfo(v.shape, str(v.dtype), False) for k, v in p.meta.items()}}
            return f"packed stvit data ({p.dtype} in-brain voxels)", info
    with open_source(path) as src:
        return src.kind, src.variables()


# --- writing ----------------------------------------------------------------------------------------------

FORMATS = ("mat", "mat73", "npz", "nifti", "packed")


def format_for(path) -> str | None:
    """The default format for a file name: .mat -> MAT v5, .npz -> npz, .h5/.hdf5 -> MAT v7.3; a name without a
    suffix (a folder) -> nifti."""
    suffix = Path(path).suffix.lower()
    return {".mat": "mat", ".npz": "npz", ".h5": "mat73", ".hdf5": "mat73", "": "nifti"}.get(suffix)


def write_dataset(path, data: HCPData, *, fmt: str | None = None, dtype=np.float64, replace: bool = True) -> None:
    """Write `data` as MAT v5 (`mat`), MAT v7.3 (`mat73`: HDF5 with MATLAB's user block and attributes), `npz`,
    `packed` (`stvit.data.packed`: the in-brain voxels, float16 when `dtype` is float16, else float32),
    converting the volumes to `dtype` a block at a time, atomically (temp file + `os.replace`; `replace=False`:
    never over a file that exists); or as a NIfTI folder (`nifti`: `path` is the folder, float32 volumes)."""
    path = Path(path)
    fmt = fmt or format_for(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    dtype = np.dtype(dtype)
    if fmt == "nifti":
        nifti.write(path, data)
        return
    if fmt == "packed":  # float32 in-brain voxels (write_packed's default is float16)
        packed.write_packed(path, data, dtype="float16" if dtype == np.float16 else "float32", replace=replace)
        return
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        {"mat": matv5.write, "mat73": mat73.write, "npz": npz.write}[fmt](tmp, data, dtype)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # the mode any new file gets, not mkstemp's private 0600
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if `path` appeared meanwhile: never replaces a file another process wrote
    except FileExistsError:
        raise DataError("file exists (written meanwhile by another process); pass --force to overwrite it",
                        path) from None
    finally:
        Path(tmp).unlink(missing_ok=True)

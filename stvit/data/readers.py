"""Readers: MAT v5/v7 and v7.3 (HDF5), `.npz` and a folder of NIfTI volumes, all into one `HCPData`.

`load_dataset(path)` tells the format from the file's first bytes (not its name), checks every key, shape and
count from the headers before reading any volume, then streams each `X_*` into a preallocated C-order array
of the training dtype (peak memory near that array's size, not float64 plus copies), and checks the voxels.

Layouts:
- MAT v5/v7 (`scipy.io.loadmat` reads them): arrays column-major; `matv5` streams the big ones.
- MAT v7.3 (`save -v7.3`): HDF5 behind a 512-byte user block; every array is stored with its axes reversed
  (h5py shows `X_train` as (46, 63, 53, N)), char matrices as uint16 (L, N) with `MATLAB_class = "char"`.
  A plain HDF5 file (no MATLAB header, no `MATLAB_class` attributes) is read as stored (C order).
- `.npz` (`numpy.savez`): the same keys; ids as a string array (no pickled objects).
- NIfTI: a folder with a CSV (`labels.csv`, or the one CSV there, or the CSV itself as `path`) of columns
  `file,label,subject,split` (split `train` or `test`, file relative to the CSV); each volume a 53x63x46
  (or 53x63x46x1) `.nii` / `.nii.gz`, its voxel axes taken as stored. Needs nibabel (`pip install stvit[nifti]`).
"""
from __future__ import annotations

import csv
import math
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import matv5
from .dataset import (SPLITS, VOLUME_SHAPE, DataError, HCPData, as_ids, as_labels, check_counts, check_finite,
                      check_volumes_shape, keys, zscore_volumes)

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
BLOCK_BYTES = matv5.BLOCK_BYTES


@dataclass
class VarInfo:
    """What a file says about one variable, before reading it (shape in row-major / MATLAB terms)."""

    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, or the MATLAB class ("double", "char", "cell", ...)
    numeric: bool  # a real numeric array we can stream
    empty: bool = False


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


def open_source(path: Path):
    kind = sniff(path)
    return {"mat5": Mat5Source, "hdf5": HDF5Source, "npz": NpzSource}[kind](path)


class Mat5Source:
    """MAT v5/v7: headers and big numeric arrays through `matv5`, small variables through scipy."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.mat = matv5.Mat5File(path)
        except matv5.MatFormatError as err:
            raise DataError(str(err), path) from None
        self.kind = "MAT v7 (compressed)" if self.mat.compressed else "MAT v5/v7 (uncompressed)"

    def variables(self) -> dict[str, VarInfo]:
        return {name: VarInfo(v.dims, v.class_name, v.is_numeric, empty=math.prod(v.dims) == 0)
                for name, v in self.mat.vars.items()}

    def read_volumes(self, name: str, out: np.ndarray) -> None:
        try:
            self.mat.read_numeric(name, out)
        except matv5.MatFormatError as err:
            raise DataError(f"cannot read {name}: {err}", self.path) from None

    def read_small(self, name: str) -> np.ndarray:
        import scipy.io

        try:
            return scipy.io.loadmat(self.path, variable_names=[name], chars_as_strings=True)[name]
        except Exception as err:  # scipy raises many kinds on damaged data
            raise DataError(f"cannot read {name}: {type(err).__name__}: {err}", self.path) from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


class HDF5Source:
    """MAT v7.3 (HDF5 in MATLAB's column-major layout) or a plain HDF5 file (C order)."""

    def __init__(self, path: Path):
        import h5py

        self.path = path
        try:
            self.f = h5py.File(path, "r")
        except OSError as err:
            raise DataError(f"cannot open as HDF5 (truncated or damaged file?): {err}", path) from None
        with open(path, "rb") as fh:
            header = fh.read(128)
        self.matlab = header.startswith(b"MATLAB") or any(
            "MATLAB_class" in obj.attrs for obj in self.f.values())
        self.kind = "MAT v7.3 (HDF5)" if self.matlab else "HDF5"

    def _class(self, obj) -> str | None:
        c = obj.attrs.get("MATLAB_class")
        return c.decode() if isinstance(c, bytes) else (None if c is None else str(c))

    def variables(self) -> dict[str, VarInfo]:
        import h5py

        out = {}
        for name, obj in self.f.items():
            if name.startswith("#"):  # MATLAB's #refs# / #subsystem#
                continue
            cls = self._class(obj)
            if isinstance(obj, h5py.Group):
                out[name] = VarInfo((), cls or "group", False)
                continue
            shape = tuple(reversed(obj.shape)) if self.matlab else tuple(obj.shape)
            if obj.attrs.get("MATLAB_empty", 0):
                out[name] = VarInfo(shape, cls or str(obj.dtype), False, empty=True)
                continue
            numeric = obj.dtype.kind in "biuf" and cls not in ("char", "cell", "struct", "function_handle")
            out[name] = VarInfo(shape, cls or str(obj.dtype), numeric, empty=obj.size == 0)
        return out

    def read_volumes(self, name: str, out: np.ndarray) -> None:
        ds = self.f[name]
        try:
            fill_from_hdf5(ds, out.T if self.matlab else out)
        except (OSError, ValueError, RuntimeError) as err:
            raise DataError(f"cannot read {name}: {err}", self.path) from None

    def read_small(self, name: str) -> np.ndarray:
        import h5py

        obj = self.f[name]
        if not isinstance(obj, h5py.Dataset):
            raise DataError(f"{name} is a MATLAB {self._class(obj) or 'group'}, expected an array", self.path)
        try:
            if obj.attrs.get("MATLAB_empty", 0):
                return np.zeros((0,))
            cls = self._class(obj)
            data = obj[()]
            if cls == "cell":  # object references, one per cell, each a char array
                return np.array([_h5_chars(self.f[ref][()]) for ref in np.ravel(data.T)], dtype=str)
            if not self.matlab:
                return data
            data = np.asarray(data).T  # back to MATLAB's (row-major meaning) shape
            if cls == "char":  # (N, L) uint16 codes -> N strings
                codes = np.atleast_2d(data).astype(np.uint32)
                return np.array([_h5_chars(row) for row in codes], dtype=str)
            return data
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"cannot read {name}: {err}", self.path) from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _h5_chars(codes) -> str:
    return "".join(map(chr, np.ravel(codes).astype(np.uint32))).rstrip(" \x00")


def fill_from_hdf5(ds, dst: np.ndarray, block_bytes: int = BLOCK_BYTES) -> None:
    """Copy dataset `ds` into `dst` (same shape, any dtype) in blocks aligned to the dataset's chunks, so that
    each compressed chunk is decompressed once; blocks span up to 16 along axis 0 (whole cache lines of `dst`
    when it is a reversed view)."""
    shape = ds.shape
    if not shape:
        dst[...] = ds[()]
        return
    unit = list(ds.chunks or (1,) * (len(shape) - 1) + (shape[-1],))
    item = ds.dtype.itemsize
    blk = list(unit)
    grow0 = unit[0] * max(1, math.ceil(min(16, shape[0]) / unit[0]))
    if math.prod(blk) * item * grow0 // unit[0] <= block_bytes:
        blk[0] = min(shape[0], grow0)
    for ax in reversed(range(1, len(shape))):  # then whole inner axes, innermost first, while they fit
        per = math.prod(blk) // blk[ax] * item
        fit = max(1, block_bytes // max(1, per) // unit[ax]) * unit[ax]
        blk[ax] = min(shape[ax], max(blk[ax], fit))
        if blk[ax] < shape[ax]:
            break
    grid = [range(0, s, b) for s, b in zip(shape, blk)]
    for starts in np.ndindex(*(len(g) for g in grid)):
        sel = tuple(slice(g[i], min(s, g[i] + b)) for i, g, s, b in zip(starts, grid, shape, blk))
        dst[sel] = ds[sel]


class NpzSource:
    """`numpy.savez` archives; each array's .npy header is read without loading its data."""

    def __init__(self, path: Path):
        self.path = path
        self.kind = "npz"
        try:
            self.zf = zipfile.ZipFile(path)
            self.headers = {}
            for member in self.zf.namelist():
                if member.endswith(".npy"):
                    with self.zf.open(member) as fp:
                        self.headers[member[:-4]] = _npy_header(fp)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            raise DataError(f"damaged or truncated .npz file ({err})", path) from None

    def variables(self) -> dict[str, VarInfo]:
        return {name: VarInfo(tuple(shape), dtype.str[1:] if dtype.kind in "US" else dtype.name,
                              dtype.kind in "biuf", empty=math.prod(shape) == 0)
                for name, (shape, fortran, dtype) in self.headers.items()}

    def read_volumes(self, name: str, out: np.ndarray) -> None:
        shape, fortran, dtype = self.headers[name]
        try:
            with self.zf.open(name + ".npy") as fp:
                _npy_header(fp)
                fill = matv5.fill_fortran_stream if fortran else matv5.fill_c_stream
                fill(out, lambda mv: matv5.readinto_exact(fp, mv, EOFError), dtype)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            raise DataError(f"cannot read {name}: damaged or truncated .npz file ({err})", self.path) from None

    def read_small(self, name: str) -> np.ndarray:
        try:
            with self.zf.open(name + ".npy") as fp:
                return np.lib.format.read_array(fp, allow_pickle=False)
        except ValueError as err:
            if "pickle" in str(err).lower() or "object" in str(err).lower():
                problem = f"{name} holds Python objects; save it as a string or number array"
                raise DataError(problem, self.path) from None
            raise DataError(f"cannot read {name}: {err}", self.path) from None
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise DataError(f"cannot read {name}: damaged or truncated .npz file ({err})", self.path) from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zf.close()


def _npy_header(fp) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fp)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(fp)
    return tuple(shape), bool(fortran), dtype


# --- the one entry point -------------------------------------------------------------------------------------


def load_dataset(path, *, volume_shape=VOLUME_SHAPE, num_classes: int = 2, nan_to_zero: bool = False,
                 zscore: bool = False, dtype=np.float32, class_names=None) -> HCPData:
    """Read and check a data file (MAT v5/v7/v7.3, HDF5, .npz) or a NIfTI folder / CSV.

    Returns volumes (N, *volume_shape) in `dtype`, labels (N,) int64, ids (N,) str or None. Raises
    `DataError("<path>: <problem>")` for anything wrong with the input. `nan_to_zero` repairs NaN/Inf voxels
    (with a warning) instead of refusing them; `zscore` z-scores each volume over its non-zero voxels.
    `class_names` lets a NIfTI CSV give labels by name.
    """
    path = Path(path)
    volume_shape = tuple(int(s) for s in volume_shape)
    if not path.exists():
        raise DataError("no such file or folder", path)
    if path.is_dir() or path.suffix.lower() == ".csv":
        splits = read_nifti(path, volume_shape, num_classes, dtype, class_names)
    else:
        if not os.access(path, os.R_OK):
            raise DataError("permission denied", path)
        with open_source(path) as src:
            splits = read_arrays(src, path, volume_shape, num_classes, dtype)
    for split, (X, y, ids) in splits.items():
        repaired = check_finite(X, keys(split)[0], path, nan_to_zero)
        if repaired:
            warnings.warn(f"{path}: set {repaired:,} NaN/Inf voxels of {keys(split)[0]} to 0", stacklevel=2)
        if zscore:
            zscore_volumes(X)
    (Xtr, ytr, itr), (Xte, yte, ite) = splits["train"], splits["test"]
    return HCPData(Xtr, ytr, itr, Xte, yte, ite, source=str(path))


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
    if not path.exists():
        raise DataError("no such file or folder", path)
    if path.is_dir() or path.suffix.lower() == ".csv":
        csv_path, rows = _read_csv(path)
        counts = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
        return f"NIfTI folder ({csv_path.name})", {
            f"{s} rows": VarInfo((counts[s],), "csv rows", False) for s in SPLITS}
    with open_source(path) as src:
        return src.kind, src.variables()


# --- NIfTI -------------------------------------------------------------------------------------------------

CSV_COLUMNS = ("file", "label", "subject", "split")


def _find_csv(path: Path) -> Path:
    if path.is_file():
        return path
    if (path / "labels.csv").is_file():
        return path / "labels.csv"
    found = sorted(path.glob("*.csv"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError("no CSV of volumes in this folder (expected labels.csv with columns "
                        f"{','.join(CSV_COLUMNS)})", path)
    raise DataError(f"{len(found)} CSV files in this folder; name the one to use (or call it labels.csv)", path)


def _read_csv(path: Path) -> tuple[Path, list[dict]]:
    csv_path = _find_csv(path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip().lower() for c in (reader.fieldnames or [])]
            missing = [c for c in CSV_COLUMNS if c not in fields and c != "subject"]
            if missing:
                raise DataError(f"CSV lacks the column(s) {', '.join(missing)} (expected header "
                                f"{','.join(CSV_COLUMNS)})", csv_path)
            rows = []
            for line, raw in enumerate(reader, start=2):
                row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
                split = row["split"].lower()
                if split not in SPLITS:
                    raise DataError(f"line {line}: split '{row['split']}' is not train or test", csv_path)
                rows.append(dict(row, split=split, line=line))
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read the CSV ({err})", csv_path) from None
    return csv_path, rows


def _label(value: str, line: int, class_names, csv_path: Path) -> int:
    """A CSV label: a class index (0, 1, "1.0"), or a class name when `class_names` is given."""
    if class_names and value in class_names:
        return list(class_names).index(value)
    try:
        v = float(value)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v != int(v):
        names = f" or a class name ({', '.join(class_names)})" if class_names else ""
        raise DataError(f"line {line}: label '{value}' is not a class index{names}", csv_path)
    return int(v)


def read_nifti(path: Path, volume_shape, num_classes: int, dtype, class_names=None) -> dict:
    csv_path, rows = _read_csv(path)
    try:
        import nibabel
    except ImportError:
        raise DataError("reading NIfTI volumes needs nibabel: pip install 'stvit[nifti]' (or nibabel)",
                        csv_path) from None
    has_subject = all("subject" in r for r in rows)
    out = {}
    for split in SPLITS:
        sel = [r for r in rows if r["split"] == split]
        if not sel:
            raise DataError(f"no volumes for split '{split}' (empty split)", csv_path)
        labels = [_label(r["label"], r["line"], class_names, csv_path) for r in sel]
        y = as_labels(np.array(labels), f"labels of split '{split}'", num_classes, csv_path)
        ids = np.array([r["subject"] for r in sel], dtype=str) if has_subject else None
        X = np.empty((len(sel),) + volume_shape, dtype)
        for i, r in enumerate(sel):
            X[i] = _nifti_volume(nibabel, csv_path.parent / r["file"], r["line"], csv_path, volume_shape)
        out[split] = (X, y, ids)
    return out


def _nifti_volume(nibabel, file: Path, line: int, csv_path: Path, volume_shape) -> np.ndarray:
    if not file.is_file():
        raise DataError(f"no such file (line {line} of {csv_path.name})", file)
    try:
        data = nibabel.load(file).get_fdata(dtype=np.float32, caching="unchanged")
    except Exception as err:  # nibabel, gzip, zlib and OS errors alike: the file is not a readable volume
        raise DataError(f"cannot read this NIfTI volume ({type(err).__name__}: {err})", file) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.shape != volume_shape:
        raise DataError(f"volume is {'x'.join(map(str, data.shape))}, expected {'x'.join(map(str, volume_shape))}",
                        file)
    return data

""".npz data sets (`numpy.savez`): reader and writer.

The same keys as the MAT file (`X_train`, `y_train`, `ids_train`, ...); ids as a string array (never pickled
objects). Each array's .npy header is read without loading its data, and the volumes are streamed into the
training dtype (C or Fortran order, as the header says).
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from stvit.data.dataset import DataError, HCPData, VarInfo
from stvit.data.matv5 import fill_c_stream, fill_fortran_stream, readinto_exact


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
                fill = fill_fortran_stream if fortran else fill_c_stream
                fill(out, lambda mv: readinto_exact(fp, mv, EOFError), dtype)
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


def write(path: str, data: HCPData, dtype: np.dtype) -> None:
    """`data` as an uncompressed .npz (what `numpy.savez` writes), labels (N,) int64, the volumes in `dtype`
    streamed a block at a time (np.savez would need the whole converted array in memory)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in data.variables():
            if name.startswith("X_"):
                out = dtype
            elif name.startswith("y_"):
                arr, out = arr.reshape(-1), np.dtype(np.int64)
            else:
                out = arr.dtype
            with zf.open(name + ".npy", "w", force_zip64=True) as fp:
                header = {"descr": np.lib.format.dtype_to_descr(out), "fortran_order": False, "shape": arr.shape}
                np.lib.format.write_array_header_2_0(fp, header)
                flat = arr.reshape(-1)
                step = max(1, (16 << 20) // out.itemsize)
                for s in range(0, flat.size, step):
                    fp.write(flat[s:s + step].astype(out).tobytes())

"""MAT v7.3 (`save -v7.3`) and plain HDF5 data sets: reader and writer.

MAT v7.3 is HDF5 behind a 512-byte MATLAB header (the HDF5 user block). MATLAB stores every array column-major,
so h5py shows each with its axes reversed (`X_train` as (46, 63, 53, N)), and a char matrix as uint16 codes
(L, N) with the attribute `MATLAB_class = "char"`. A plain HDF5 file (no MATLAB header, no `MATLAB_class`
attributes) is read as stored (C order).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from stvit.data.dataset import DataError, HCPData, VarInfo
from stvit.data.matv5 import BLOCK_BYTES


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


def write(path: str, data: HCPData, dtype: np.dtype) -> None:
    """`data` as MAT v7.3: HDF5 behind MATLAB's 512-byte header, axes reversed, char ids as uint16 (L, N), the
    volumes in `dtype` written a block at a time."""
    import h5py

    header = "MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: stvit HDF5 schema 1.00 ."
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, arr in data.variables():
            if arr.dtype.kind == "U":  # char matrix (N, L) -> uint16 (L, N)
                width = max(1, max(len(s) for s in arr))
                codes = np.array([[ord(c) for c in s.ljust(width)] for s in arr], dtype=np.uint16)
                ds = f.create_dataset(name, data=codes.T)
                ds.attrs["MATLAB_class"] = np.bytes_("char")
                ds.attrs["MATLAB_int_decode"] = np.int32(2)
                continue
            out_dtype = dtype if name.startswith("X_") else arr.dtype
            ds = f.create_dataset(name, shape=arr.shape[::-1], dtype=out_dtype)
            ds.attrs["MATLAB_class"] = np.bytes_({"f8": "double", "f4": "single"}.get(out_dtype.str[1:], "double"))
            rev = arr.T
            step = max(1, (16 << 20) // max(1, rev[0].nbytes))
            for k in range(0, len(rev), step):
                ds[k:k + step] = rev[k:k + step]
    with open(path, "r+b") as f:
        f.write(header.encode().ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")

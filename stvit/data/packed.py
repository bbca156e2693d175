"""Packed data sets: the in-brain voxels of every volume under one shared mask, with labels and per-volume metadata.

A packed file is HDF5 (h5py), readable by any HDF5 tool:

    attrs      stvit_format = "stvit-packed", version = 1, volume_shape (3,), class_names (JSON list),
               provenance (JSON object: where the volumes came from and how they were made)
    mask       (X, Y, Z) uint8, 1 = in the brain; the voxels of a row are the mask's voxels in C order
    voxels     (N, V) float16 or float32: row i is volume i's in-brain voxels; chunks of whole rows
    labels     (N,) int64 class indices
    split      (N,) uint8: 0 train, 1 test
    meta/<f>   (N,) per-volume metadata, each optional: subject, session, run, condition (UTF-8 strings),
               volume (int64: index of the frame in its run), onset (float64: acquisition time in s)

Background voxels are exactly 0 in every volume, so unpacking a row (`unpack`) gives back the dense volume. With
~60% of a (53, 63, 46) volume outside the brain and float16 storage, a packed file is about a fifth of the dense
float32 data.

`PackedWriter` appends volumes (dense or already packed) and moves the finished file into place atomically; the
same volumes written in the same order give the same bytes. `PackedFile` reads rows, labels and metadata;
`read_packed` loads a packed file as an `HCPData`, so every command reads it like any other data file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stvit.data.dataset import SPLITS, DataError, HCPData

FORMAT = "stvit-packed"
VERSION = 1
DTYPES = ("float16", "float32")
STRING_META = ("subject", "session", "run", "condition")
NUMBER_META = {"volume": np.int64, "onset": np.float64}
META_FIELDS = STRING_META + tuple(NUMBER_META)
FLOAT16_MAX = float(np.finfo(np.float16).max)


def is_packed(path: Path | str) -> bool:
    """Whether `path` is an HDF5 file written by `PackedWriter` (False for anything else, never an error)."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return f.attrs.get("stvit_format") == FORMAT
    except (OSError, ImportError):
        return False


def flat_index(mask: np.ndarray) -> np.ndarray:
    """(V,) int64 positions of the mask's voxels in the flattened volume, in C order (a row's voxel order)."""
    return np.flatnonzero(np.asarray(mask, bool).reshape(-1))


def unpack(rows: np.ndarray, index: np.ndarray, volume_shape: Sequence[int], out: np.ndarray | None = None,
           dtype=np.float32) -> np.ndarray:
    """Rows (B, V) -> dense volumes (B, *volume_shape) in `dtype`, 0 outside the mask (`index`: `flat_index`)."""
    B = len(rows)
    if out is None:
        out = np.zeros((B, int(np.prod(volume_shape))), dtype)
    else:
        out = out.reshape(B, -1)
        out.fill(0)
    out[:, index] = rows
    return out.reshape(B, *volume_shape)


class PackedWriter:
    """Write a packed file volume by volume: `add` appends, `close` moves the file into place (atomic: until then
    the target is untouched; `abort`, or an exception inside `with`, leaves nothing behind).

    mask: (X, Y, Z) bool, the voxels kept (every voxel outside it must be 0 in every volume added).
    dtype: "float16" (half the bytes; z-scored data needs no more) or "float32"."""

    def __init__(self, path: Path | str, mask: np.ndarray, *, dtype: str = "float16",
                 class_names: Sequence[str] = (), provenance: dict[str, Any] | None = None):
        import h5py

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.path = Path(path)
        self.mask = np.asarray(mask, bool)
        self.index = flat_index(self.mask)
        self.dtype = np.dtype(dtype)
        self.n = 0
        self.meta: dict[str, list[np.ndarray]] = {}
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.f = h5py.File(self.tmp, "w", libver=("earliest", "v110"))
        a = self.f.attrs
        a["stvit_format"], a["version"] = FORMAT, VERSION
        a["volume_shape"] = np.asarray(self.mask.shape, np.int64)
        a["class_names"] = json.dumps(list(class_names))
        a["provenance"] = json.dumps(provenance or {}, sort_keys=True)
        self.f.create_dataset("mask", data=self.mask.astype(np.uint8), track_times=False)
        V = len(self.index)
        self.voxels = self.f.create_dataset("voxels", shape=(0, V), maxshape=(None, V), dtype=self.dtype,
                                            chunks=(1, max(V, 1)), track_times=False)
        self.labels: list[np.ndarray] = []
        self.splits: list[np.ndarray] = []

    def add(self, volumes: np.ndarray, labels: np.ndarray, split: str | Sequence[str] | np.ndarray,
            **meta: Any) -> None:
        """Append B volumes: dense (B, X, Y, Z) or packed (B, V); labels (B,); split "train"/"test" (one for all,
        or one per volume); meta: per-volume arrays of `META_FIELDS` (each field given in every call or never)."""
        volumes = np.asarray(volumes)
        B = len(volumes)
        if volumes.ndim == 4:
            flat = volumes.reshape(B, -1)
            outside = np.ones(flat.shape[1], bool)
            outside[self.index] = False
            if outside.any() and np.any(flat[:, outside]):
                raise ValueError("volumes have non-zero voxels outside the mask")
            rows = flat[:, self.index]
        else:
            rows = volumes
        if self.dtype == np.float16 and not (np.abs(rows) <= FLOAT16_MAX).all():  # NaN fails too
            raise ValueError(f"voxels beyond float16's range (+-{FLOAT16_MAX:g}) or not finite: store float32")
        stored = rows.astype(self.dtype)
        self.voxels.resize(self.n + B, axis=0)
        self.voxels[self.n:self.n + B] = stored
        self.labels.append(np.asarray(labels, np.int64).reshape(B))
        codes = np.asarray([split] * B if isinstance(split, str) else split).reshape(B)
        if codes.dtype.kind in "US":
            bad = set(codes.astype(str).tolist()) - set(SPLITS)
            if bad:
                raise ValueError(f"split must be train or test, got {sorted(bad)}")
            codes = (codes.astype(str) == "test").astype(np.uint8)
        self.splits.append(codes.astype(np.uint8))
        unknown = set(meta) - set(META_FIELDS)
        if unknown:
            raise ValueError(f"unknown metadata {sorted(unknown)} (known: {', '.join(META_FIELDS)})")
        if self.n and set(meta) != set(self.meta):
            raise ValueError(f"metadata fields {sorted(meta)} differ from the first call's {sorted(self.meta)}")
        for k, v in meta.items():
            v = np.asarray(v).reshape(B)
            self.meta.setdefault(k, []).append(v.astype(str) if k in STRING_META else v.astype(NUMBER_META[k]))
        self.n += B

    def close(self) -> Path:
        """Write labels, split and metadata, and move the file into place."""
        import h5py

        try:
            self.f.create_dataset("labels", data=_cat(self.labels, np.int64), track_times=False)
            self.f.create_dataset("split", data=_cat(self.splits, np.uint8), track_times=False)
            if self.meta:
                group = self.f.create_group("meta", track_order=True)
                for k in META_FIELDS:
                    if k not in self.meta:
                        continue
                    v = np.concatenate(self.meta[k])
                    if k in STRING_META:
                        group.create_dataset(k, data=v.astype(object), dtype=h5py.string_dtype("utf-8"),
                                             track_times=False)
                    else:
                        group.create_dataset(k, data=v, track_times=False)
            self.f.close()
            os.chmod(self.tmp, 0o666 & ~_umask())
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop the temporary file."""
        try:
            self.f.close()
        except Exception:  # noqa: BLE001 - closing a file that failed to write
            pass
        Path(self.tmp).unlink(missing_ok=True)

    def __enter__(self) -> "PackedWriter":
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def _cat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class PackedFile:
    """A packed file opened for reading: the small arrays in memory, the voxels read by row."""

    def __init__(self, path: Path | str):
        import h5py

        self.path = Path(path)
        try:
            self.f = h5py.File(self.path, "r")
        except OSError as err:
            raise DataError(f"cannot open as HDF5 (truncated or damaged file?): {err}", self.path) from None
        a = self.f.attrs
        if a.get("stvit_format") != FORMAT:
            self.f.close()
            raise DataError("not a packed stvit data file", self.path)
        if int(a.get("version", 0)) > VERSION:
            self.f.close()
            raise DataError(f"packed format version {int(a['version'])} is newer than this stvit reads ({VERSION})",
                            self.path)
        try:
            self.volume_shape = tuple(int(s) for s in a["volume_shape"])
            self.class_names = json.loads(a["class_names"])
            self.provenance = json.loads(a["provenance"])
            self.mask = np.asarray(self.f["mask"][()], bool)
            self.voxels = self.f["voxels"]
            self.labels = np.asarray(self.f["labels"][()], np.int64)
            self.split = np.asarray(self.f["split"][()], np.uint8)
            self.meta = {k: _read_meta(self.f["meta"][k], k) for k in META_FIELDS if "meta" in self.f
                         and k in self.f["meta"]}
        except (KeyError, ValueError, OSError) as err:
            self.f.close()
            raise DataError(f"damaged packed file ({type(err).__name__}: {err})", self.path) from None
        self.index = flat_index(self.mask)
        n = self.voxels.shape[0]
        if self.mask.shape != self.volume_shape or self.voxels.shape[1] != len(self.index) or \
                len(self.labels) != n or len(self.split) != n or any(len(v) != n for v in self.meta.values()):
            self.f.close()
            raise DataError("damaged packed file: mask, voxels, labels, split and metadata disagree in size",
                            self.path)

    @property
    def n(self) -> int:
        return int(self.voxels.shape[0])

    @property
    def dtype(self) -> np.dtype:
        return self.voxels.dtype

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx), V) voxels of the rows `idx` (any order, repeats allowed), in the stored dtype."""
        idx = np.asarray(idx, np.int64)
        if len(idx) == 0:
            return np.zeros((0, self.voxels.shape[1]), self.dtype)
        order, inverse = np.unique(idx, return_inverse=True)  # h5py reads increasing rows
        return self.voxels[order][inverse]

    def dense(self, idx: np.ndarray, dtype=np.float32) -> np.ndarray:
        """(len(idx), *volume_shape) volumes of the rows `idx`, in `dtype`."""
        return unpack(self.rows(idx), self.index, self.volume_shape, dtype=dtype)

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> "PackedFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_meta(ds, name: str) -> np.ndarray:
    v = ds[()]
    if name in STRING_META:
        return np.array([s.decode() if isinstance(s, bytes) else str(s) for s in v], dtype=str)
    return np.asarray(v, NUMBER_META[name])


BLOCK_ROWS = 256  # rows per read while loading a whole file


def read_packed(path: Path | str, *, volume_shape=None, num_classes: int | None = None, dtype=np.float32) -> HCPData:
    """A packed file as dense train and test splits (`HCPData`, with its per-volume metadata in `.meta`), read a
    block of rows at a time into preallocated arrays."""
    from stvit.data.dataset import as_labels

    with PackedFile(path) as p:
        if volume_shape is not None and tuple(volume_shape) != p.volume_shape:
            raise DataError(f"volumes are {'x'.join(map(str, p.volume_shape))}, expected "
                            f"{'x'.join(map(str, volume_shape))}", path)
        if num_classes is not None:
            as_labels(p.labels, "labels", num_classes, path)
        out = {}
        for code, split in enumerate(SPLITS):
            rows = np.flatnonzero(p.split == code)
            if len(rows) == 0:
                raise DataError(f"no volumes for split '{split}' (empty split)", path)
            X = np.empty((len(rows), *p.volume_shape), dtype)
            for s in range(0, len(rows), BLOCK_ROWS):
                block = rows[s:s + BLOCK_ROWS]
                unpack(p.voxels[block[0]:block[-1] + 1][block - block[0]], p.index, p.volume_shape,
                       out=X[s:s + len(block)])
            ids = p.meta["subject"][rows] if "subject" in p.meta else None
            out[split] = (X, p.labels[rows], ids, {k: v[rows] for k, v in p.meta.items()})
    (Xtr, ytr, itr, mtr), (Xte, yte, ite, mte) = out["train"], out["test"]
    return HCPData(Xtr, ytr, itr, Xte, yte, ite, source=str(path), meta={"train": mtr, "test": mte})


def write_packed(path: Path | str, data: HCPData, *, dtype: str = "float16", class_names: Sequence[str] = (),
                 provenance: dict[str, Any] | None = None, block: int = BLOCK_ROWS) -> Path:
    """`data` as a packed file, under the mask of voxels non-zero in any of its volumes (train and test)."""
    mask = np.zeros(data.X_train.shape[1:], bool)
    for X in (data.X_train, data.X_test):
        for s in range(0, len(X), block):
            mask |= (X[s:s + block] != 0).any(0)
    with PackedWriter(path, mask, dtype=dtype, class_names=class_names, provenance=provenance) as w:
        for split in SPLITS:
            X, y, ids = data.split(split)
            meta_all = (data.meta or {}).get(split, {})
            for s in range(0, len(X), block):
                meta = {k: v[s:s + block] for k, v in meta_all.items()}
                if ids is not None and "subject" not in meta:
                    meta["subject"] = ids[s:s + block]
                w.add(X[s:s + block], y[s:s + block], split, **meta)
    return Path(path)

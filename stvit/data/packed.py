"""Packed data sets: the in-brain voxels of every volume under one shared mask, with labels and per-volume metadata.

A packed file is HDF5 (h5py), readable by any HDF5 tool:

    attrs      stvit_format = "stvit-packed", version = 1, volume_shape (3,), class_names (JSON list),
               provenance (JSON object: where the volumes came from and how they were made),
               max_abs (largest finite |voxel|), nonfinite (count of NaN/Inf voxels): the checks a reader makes
               without reading the voxels (absent in files written before them: the reader computes them)
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

Reading rows fast: each row is one HDF5 chunk, stored uncompressed, so its bytes sit at one offset of the file.
`row_offsets` lists those offsets once (one pass over the chunk index), and `RowReader` reads any set of rows with
`os.pread` (runs of adjacent rows in one call), without HDF5 and without a memory map: what it reads stays in the
page cache, never in the reading process. A file whose rows are stored otherwise (compressed by another tool) is
read through h5py. `open_packed` gives the splits of a packed file as `PackedVolumes`, dense volumes read on
demand, so that training can keep the rows packed (on the device, or streamed from the file: `stvit.data.placement`).
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
                 class_names: Sequence[str] = (), provenance: dict[str, Any] | None = None, replace: bool = True):
        import h5py

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.path, self.replace = Path(path), replace
        self.mask = np.asarray(mask, bool)
        self.index = flat_index(self.mask)
        self.dtype = np.dtype(dtype)
        self.n = 0
        self.meta: dict[str, list[np.ndarray]] = {}
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.f = None
        try:
            # no chunk cache: each row is one whole chunk, written when added, so a full disk fails in `add`
            # and leaves no dirty chunks behind for the close to write
            self.f = h5py.File(self.tmp, "w", libver=("earliest", "v110"), rdcc_nbytes=0)
            a = self.f.attrs
            a["stvit_format"], a["version"] = FORMAT, VERSION
            a["volume_shape"] = np.asarray(self.mask.shape, np.int64)
            a["class_names"] = json.dumps(list(class_names))
            a["provenance"] = json.dumps(provenance or {}, sort_keys=True)
            self.f.create_dataset("mask", data=self.mask.astype(np.uint8), track_times=False)
            V = len(self.index)
            self.voxels = self.f.create_dataset("voxels", shape=(0, V), maxshape=(None, V), dtype=self.dtype,
                                                chunks=(1, max(V, 1)), track_times=False)
        except OSError as err:  # a full disk already: nothing of the file is kept
            if self.f is not None:
                self.abort()
            Path(self.tmp).unlink(missing_ok=True)
            raise _os_error(err, self.path) from None
        self.labels: list[np.ndarray] = []
        self.splits: list[np.ndarray] = []
        self.max_abs, self.nonfinite = 0.0, 0  # written at close: the value checks a reader makes for free

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
        beyond = ValueError(f"voxels beyond float16's range (+-{FLOAT16_MAX:g}) or not finite: store float32")
        if self.dtype == np.float16 and rows.dtype != np.float16 and not (np.abs(rows) <= FLOAT16_MAX).all():
            raise beyond  # NaN fails too
        stored = rows.astype(self.dtype, copy=False)
        top, bad = _value_stats(stored)
        if self.dtype == np.float16 and bad:  # float16 rows given as they are
            raise beyond
        self.max_abs, self.nonfinite = max(self.max_abs, top), self.nonfinite + bad
        try:
            self.voxels.resize(self.n + B, axis=0)
            self.voxels[self.n:self.n + B] = stored
        except OSError as err:
            raise _os_error(err, self.path) from None
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
        """Write labels, split, metadata and the value statistics, and move the file into place."""
        import h5py

        try:
            self.f.attrs["max_abs"] = np.float64(self.max_abs)
            self.f.attrs["nonfinite"] = np.int64(self.nonfinite)
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
            self.f.flush()  # a full disk fails here, with the file still open (see `abort`)
            self.f.close()
            os.chmod(self.tmp, 0o666 & ~_umask())
            if self.replace:
                os.replace(self.tmp, self.path)
            else:  # fails if `path` appeared meanwhile: never replaces a file another process wrote
                os.link(self.tmp, self.path)
                os.unlink(self.tmp)
        except OSError as err:
            self.abort()
            raise _os_error(err, self.path) from None
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop the temporary file. On a full disk HDF5 cannot flush its metadata, so the file is emptied first:
        its close then succeeds (a file left open by a failed close crashes the interpreter when collected)."""
        try:
            os.truncate(self.tmp, 0)
        except OSError:
            pass
        self.voxels = None
        try:
            if self.f is not None and self.f.id.valid:
                self.f.flush()
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


def _os_error(err: OSError, path: Path) -> OSError:
    """HDF5's write errors as the OSError they are: h5py's OSError carries HDF5's whole report as its message
    (a full disk: "Driver write request failed (file write failed: ..., errno = 28, ...)"), which the one-line write
    error would print whole; this keeps the errno and the system's words for it."""
    import errno as E
    import re

    m = re.search(r"errno = (\d+)", str(err))
    code = err.errno or (int(m.group(1)) if m else E.EIO)
    return OSError(code, os.strerror(code), str(path))


def _value_stats(v: np.ndarray) -> tuple[float, int]:
    """(largest finite |value|, count of NaN/Inf) of float16 or float32 values; float16 through its bits (numpy's
    float16 arithmetic is emulated and slow): |v|'s bits order like its values, NaN/Inf have all exponent bits."""
    if v.size == 0:
        return 0.0, 0
    if v.dtype == np.float16:
        bits = v.view(np.uint16) & np.uint16(0x7FFF)
        finite = bits < 0x7C00
        top = np.max(bits, where=finite, initial=0).astype(np.uint16).reshape(1).view(np.float16)[0]
        return float(top), int(v.size - np.count_nonzero(finite))
    finite = np.isfinite(v)
    return float(np.max(np.abs(v), where=finite, initial=0.0)), int(v.size - np.count_nonzero(finite))


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
            stats = a.get("max_abs"), a.get("nonfinite")
            self.stats = None if None in stats else (float(stats[0]), int(stats[1]))  # (max |finite voxel|, NaN/Inf)
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

    def reader(self) -> "RowReader":
        """A `RowReader` of this file's rows (picklable: a worker process opens the file itself)."""
        return RowReader(self.path, self.dtype, self.voxels.shape[1], row_offsets(self.voxels))

    def value_stats(self, block: int = 256) -> tuple[float, int]:
        """(largest finite |voxel|, count of NaN/Inf voxels): from the attributes, else read a block at a time."""
        if self.stats is not None:
            return self.stats
        top, bad = 0.0, 0
        for s in range(0, self.n, block):
            t, b = _value_stats(self.voxels[s:s + block])
            top, bad = max(top, t), bad + b
        return top, bad

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
                 provenance: dict[str, Any] | None = None, block: int = BLOCK_ROWS, replace: bool = True) -> Path:
    """`data` as a packed file, under the mask of voxels non-zero in any of its volumes (train and test);
    `replace=False`: never over an existing file."""
    mask = np.zeros(data.X_train.shape[1:], bool)
    for X in (data.X_train, data.X_test):
        for s in range(0, len(X), block):
            mask |= (X[s:s + block] != 0).any(0)
    with PackedWriter(path, mask, dtype=dtype, class_names=class_names, provenance=provenance,
                      replace=replace) as w:
        for split in SPLITS:
            X, y, ids = data.split(split)
            meta_all = (data.meta or {}).get(split, {})
            for s in range(0, len(X), block):
                meta = {k: v[s:s + block] for k, v in meta_all.items()}
                if ids is not None and "subject" not in meta:
                    meta["subject"] = ids[s:s + block]
                w.add(X[s:s + block], y[s:s + block], split, **meta)
    return Path(path)


# --- reading rows straight from the file ----------------------------------------------------------------------


def row_offsets(ds) -> np.ndarray | None:
    """(N,) int64 byte offset in the file of each row of the `voxels` dataset `ds`, when its rows can be read
    straight from the file: stored without filters (no compression, shuffle or checksum), contiguously or as one
    allocated chunk per whole row. None otherwise (rows are then read through h5py)."""
    import h5py

    n, width = ds.shape
    if n == 0 or ds.compression or ds.shuffle or ds.fletcher32 or ds.scaleoffset is not None:
        return None
    if ds.id.get_create_plist().get_layout() == h5py.h5d.CONTIGUOUS:
        base = ds.id.get_offset()
        return None if base is None else base + np.arange(n, dtype=np.int64) * (width * ds.dtype.itemsize)
    if ds.chunks != (1, width):
        return None
    offsets = np.full(n, -1, np.int64)
    nbytes = width * ds.dtype.itemsize
    whole = [True]

    def visit(info) -> None:
        if info.filter_mask or info.size != nbytes:
            whole[0] = False
        offsets[info.chunk_offset[0]] = info.byte_offset

    try:
        ds.id.chunk_iter(visit)  # HDF5 >= 1.12.3: one pass over the chunk index
    except AttributeError:
        for i in range(ds.id.get_num_chunks()):
            visit(ds.id.get_chunk_info(i))
    return offsets if whole[0] and (offsets >= 0).all() else None


class RowReader:
    """Rows of a packed file by number, into a (k, V) array of the stored dtype.

    With `offsets` (`row_offsets`): `os.pread` at each row's offset, one call per run of rows adjacent in the file,
    after a `posix_fadvise(WILLNEED)` for every run of the request so that the disk serves them in parallel. No
    memory map: the bytes read stay in the page cache (reclaimable), never in the reading process's memory.
    Without offsets: through h5py. The file is opened on first use in each process, so a reader pickled into a
    DataLoader worker (forked or spawned) opens its own handle."""

    def __init__(self, path: Path | str, dtype, width: int, offsets: np.ndarray | None):
        self.path, self.dtype, self.width, self.offsets = str(path), np.dtype(dtype), int(width), offsets
        self.row_bytes = self.width * self.dtype.itemsize
        self._pid, self._fd, self._h5 = None, None, None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pid": None, "_fd": None, "_h5": None}

    def _open(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        if self.offsets is not None:
            self._fd = os.open(self.path, os.O_RDONLY)
        else:
            import h5py

            self._h5 = h5py.File(self.path, "r")["voxels"]

    def read(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(len(rows), V) voxels of `rows` (any order, repeats allowed); into `out` when given."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        if out is None:
            out = np.empty((len(rows), self.width), self.dtype)
        if len(rows) == 0:
            return out
        if len(rows) > 1 and not (rows[1:] > rows[:-1]).all():
            order, inverse = np.unique(rows, return_inverse=True)
            out[:] = self._read_sorted(order, np.empty((len(order), self.width), self.dtype))[inverse.reshape(-1)]
            return out
        return self._read_sorted(rows, out)

    def _read_sorted(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """`read` of strictly increasing rows: what is read from the file."""
        self._open()
        if self.offsets is None:
            out[:] = self._h5[rows]
            return out
        runs = self._runs(self.offsets[rows])
        if len(runs) > 1:
            self._advise(runs)
        for a, b, at in runs:
            _pread_full(self._fd, memoryview(out[a:b].reshape(-1).view(np.uint8)), at, self.path)
        return out

    def hint(self, rows: np.ndarray) -> None:
        """Tell the kernel these rows will be read soon (`posix_fadvise(WILLNEED)`: it starts reading them in the
        background); what a streaming loader does for the batches its workers will read next."""
        if self.offsets is None or len(rows) == 0:
            return
        self._open()
        self._advise(self._runs(np.sort(self.offsets[np.asarray(rows, np.int64)])))

    def _advise(self, runs: list[tuple[int, int, int]]) -> None:
        if hasattr(os, "posix_fadvise"):
            for a, b, at in runs:
                os.posix_fadvise(self._fd, at, (b - a) * self.row_bytes, os.POSIX_FADV_WILLNEED)

    def _runs(self, offsets: np.ndarray) -> list[tuple[int, int, int]]:
        """(first, end, file offset) of each run of requested rows that lie back to back in the file."""
        cut = np.flatnonzero(np.diff(offsets) != self.row_bytes) + 1
        starts = np.concatenate([[0], cut])
        ends = np.concatenate([cut, [len(offsets)]])
        return [(int(a), int(b), int(offsets[a])) for a, b in zip(starts, ends)]

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.file.close()
        self._pid, self._fd, self._h5 = None, None, None


def _pread_full(fd: int, buf: memoryview, offset: int, path: str) -> None:
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n == 0:
            raise DataError("file is truncated: a row ends past its end", path)
        done += n


# --- the splits of a packed file, read on demand --------------------------------------------------------------


class PackedSource:
    """What every view of one packed file shares: its reader, mask and shapes; `nan_to_zero` sets NaN/Inf voxels
    to 0 as they are read (`data.nan_to_zero`)."""

    def __init__(self, path: Path | str, reader: RowReader, mask: np.ndarray, nan_to_zero: bool = False):
        self.path, self.reader, self.nan_to_zero = Path(path), reader, nan_to_zero
        self.mask = np.asarray(mask, bool)
        self.volume_shape = tuple(self.mask.shape)
        self.index = flat_index(self.mask)

    @property
    def dtype(self) -> np.dtype:
        """The stored dtype of the rows (float16 or float32)."""
        return self.reader.dtype

    @property
    def width(self) -> int:
        """In-brain voxels per row (V)."""
        return self.reader.width


class PackedVolumes:
    """The volumes (n, *volume_shape), float32, of some rows of a packed file, read when they are indexed.

    Like a numpy array: a basic slice is another view (nothing is read); an integer, an integer array or a boolean
    mask reads those volumes into a new dense array; `np.asarray(view)` reads them all; `reshape(n, -1)` is a view
    whose reads are flat (n, X*Y*Z). `rows` are the rows of the file, `source` the file (`PackedSource`)."""

    dtype = np.dtype(np.float32)

    def __init__(self, source: PackedSource, rows: np.ndarray, flat: bool = False):
        self.source, self.rows, self.flat = source, np.asarray(rows, np.int64), flat

    @property
    def shape(self) -> tuple[int, ...]:
        tail = (int(np.prod(self.source.volume_shape)),) if self.flat else self.source.volume_shape
        return (len(self.rows), *tail)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def packed_nbytes(self) -> int:
        """Bytes of these rows as stored in the file."""
        return len(self.rows) * self.source.width * self.source.dtype.itemsize

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return PackedVolumes(self.source, self.rows[key], self.flat)
        if isinstance(key, tuple) or key is Ellipsis:
            raise TypeError("a packed view takes one index: a slice, an integer, an integer array or a mask")
        if np.ndim(key) == 0:
            return self._read(self.rows[[int(key)]])[0]
        return self._read(self.rows[np.asarray(key)])

    def __array__(self, dtype=None, copy=None):
        out = self._read(self.rows)
        return out if dtype is None else out.astype(dtype, copy=False)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape
        if tuple(shape) not in ((len(self), -1), (len(self), int(np.prod(self.source.volume_shape)))):
            raise ValueError(f"a packed view reshapes only to ({len(self)}, -1), got {shape}")
        return PackedVolumes(self.source, self.rows, flat=True)

    def packed(self, key=slice(None)) -> np.ndarray:
        """The stored rows (k, V) of `key` (as `__getitem__` takes it), without unpacking."""
        return self.source.reader.read(self.rows[key])

    def _read(self, rows: np.ndarray) -> np.ndarray:
        src = self.source
        out = np.empty((len(rows), *self.shape[1:]), np.float32)
        for s in range(0, len(rows), BLOCK_ROWS):
            block = src.reader.read(rows[s:s + BLOCK_ROWS])
            if src.nan_to_zero:
                block = np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)
            unpack(block, src.index, src.volume_shape, out=out[s:s + BLOCK_ROWS])
        return out

    def __repr__(self) -> str:
        return f"PackedVolumes({str(self.source.path)!r}, {len(self)} rows, {self.source.dtype})"


def check_packed(p: "PackedFile", path, volume_shape, num_classes: int | None, nan_to_zero: bool,
                 max_abs: float | None) -> int:
    """The checks `load_dataset` makes, from a packed file's header and statistics: the volume shape, the labels,
    the NaN/Inf voxels (refused unless `nan_to_zero`) and the largest value; returns the count of NaN/Inf voxels."""
    from stvit.data.dataset import as_labels

    if volume_shape is not None and tuple(volume_shape) != p.volume_shape:
        raise DataError(f"volumes are {'x'.join(map(str, p.volume_shape))}, expected "
                        f"{'x'.join(map(str, volume_shape))}", path)
    if num_classes is not None:
        as_labels(p.labels, "labels", num_classes, path)
    top, bad = p.value_stats()
    if bad and not nan_to_zero:
        raise DataError(f"voxels has {bad:,} NaN/Inf voxels; --nan-to-zero (nan_to_zero=True) sets them to 0", path)
    if max_abs is not None and top > max_abs:
        raise DataError(f"voxels has values beyond +-{max_abs:g} (largest |value| {top:.3g}): a unit or scaling "
                        "error? z-scored volumes hold values of a few units; data.max_abs raises the bound", path)
    return bad


def open_packed(path: Path | str, *, volume_shape=None, num_classes: int | None = None, nan_to_zero: bool = False,
                max_abs: float | None = None, zscore: bool = False) -> HCPData:
    """A packed file's train and test splits as `PackedVolumes` (nothing read but the mask, labels, split and
    metadata), with the checks `load_dataset` makes: the shape, the labels, non-empty splits, and the voxels'
    values from the file's statistics (`max_abs`, `nonfinite`; computed by one pass when a file lacks them)."""
    path = Path(path)
    if zscore:
        raise DataError("data.zscore does not apply to a packed file (its rows are read as stored); z-score the "
                        "volumes when packing them: python -m stvit.data pack IN --out OUT --zscore", path)
    with PackedFile(path) as p:
        bad = check_packed(p, path, volume_shape, num_classes, nan_to_zero, max_abs)
        source = PackedSource(path, p.reader(), p.mask, nan_to_zero=bool(bad) and nan_to_zero)
        out = {}
        for code, split in enumerate(SPLITS):
            rows = np.flatnonzero(p.split == code)
            if len(rows) == 0:
                raise DataError(f"no volumes for split '{split}' (empty split)", path)
            ids = p.meta["subject"][rows] if "subject" in p.meta else None
            out[split] = (PackedVolumes(source, rows), p.labels[rows], ids, {k: v[rows] for k, v in p.meta.items()})
    (Xtr, ytr, itr, mtr), (Xte, yte, ite, mte) = out["train"], out["test"]
    return HCPData(Xtr, ytr, itr, Xte, yte, ite, source=str(path), meta={"train": mtr, "test": mte})


def repack(src: Path | str, out: Path | str, *, dtype: str = "float16", zscore: bool = False,
           nan_to_zero: bool = False, volume_shape=None, num_classes: int | None = None,
           block: int = BLOCK_ROWS) -> tuple[int, int]:
    """A packed file into another (`dtype`; each volume z-scored with `zscore`), a block of rows at a time: memory
    independent of the file's size. Same mask, labels, split, metadata and class names; the source's provenance
    with `packed_from` added. Returns (rows, in-brain voxels per row)."""
    from stvit.data.dataset import MAX_ABS, zscore_volumes

    with PackedFile(src) as p:
        bad = check_packed(p, src, volume_shape, num_classes, nan_to_zero, MAX_ABS)
        reader = p.reader()
        provenance = {**p.provenance, "packed_from": str(src)}
        with PackedWriter(out, p.mask, dtype=dtype, class_names=p.class_names, provenance=provenance) as w:
            for s in range(0, p.n, block):
                e = min(s + block, p.n)
                rows = reader.read(np.arange(s, e)).astype(np.float32)
                if bad:
                    np.nan_to_num(rows, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
                if zscore:
                    zscore_volumes(rows)  # over each row's non-zero voxels: the volume's, background stays 0
                w.add(rows, p.labels[s:e], p.split[s:e], **{k: v[s:e] for k, v in p.meta.items()})
        reader.close()
        return p.n, len(p.index)

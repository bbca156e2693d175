"""The in-memory dataset every reader returns (`HCPData`), `DataError`, and the checks every file goes through.

Errors a user can cause with a data file are `DataError("<problem>", path)`: one line, `<path>: <problem>`,
which the command-line edge prints as `error: <path>: <problem>` with exit code 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from stvit.errors import UserError

SPLITS = ("train", "test")
VOLUME_SHAPE = (53, 63, 46)  # SPM 3 mm grid: left-right, posterior-anterior, inferior-superior
VOXEL_MM = 3.0
# MNI coordinates (mm) of the centre of voxel (0, 0, 0): the corner of SPM's bounding box [-78 -112 -50; 78 76 85].
# Assumption: the index of each axis grows towards +x (right), +y (anterior), +z (superior), as the course file
# reads through scipy; an image stored the other way round along x needs another affine.
ORIGIN_MM = (-78.0, -112.0, -50.0)
CHUNK_VOLUMES = 16  # volumes per pass of the in-place checks (temporaries of ~10 MB at most)


class DataError(UserError):
    """A data file (or one of its volumes) that cannot be used; `str(err)` is `<path>: <problem>`."""


def grid_affine() -> np.ndarray:
    """The 4x4 voxel -> MNI mm affine of the 53x63x46 grid (see ORIGIN_MM for the axis directions)."""
    a = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    a[:3, 3] = ORIGIN_MM
    return a


def keys(split: str) -> tuple[str, str, str]:
    """The real file's keys for a split: (`X_<split>`, `y_<split>`, `ids_<split>`)."""
    return f"X_{split}", f"y_{split}", f"ids_{split}"


@dataclass(repr=False)
class HCPData:
    """Train and test splits in memory: volumes (N, 53, 63, 46) C-order (axis 0 = left-right), labels (N,)
    int64 in [0, num_classes), subject ids (N,) str or None when the file has none."""

    X_train: np.ndarray
    y_train: np.ndarray
    ids_train: np.ndarray | None
    X_test: np.ndarray
    y_test: np.ndarray
    ids_test: np.ndarray | None
    source: str
    # per-volume metadata of each split, {"train": {field: (N,) array}, "test": {...}} (subject, session, run,
    # volume, onset, condition: `stvit.data.packed.META_FIELDS`), when the file carries it (packed files)
    meta: dict[str, dict[str, np.ndarray]] | None = None

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(X, y, ids) of `train` or `test`."""
        if name not in SPLITS:
            raise ValueError(f"unknown split '{name}' (choose from {', '.join(SPLITS)})")
        return getattr(self, f"X_{name}"), getattr(self, f"y_{name}"), getattr(self, f"ids_{name}")

    def variables(self) -> Iterator[tuple[str, np.ndarray]]:
        """(key, array) in the real file's layout, for the writers: X (N, 53, 63, 46), y (N, 1) float64 (MATLAB's
        double column), ids (N,) str when there are ids."""
        for split in SPLITS:
            X, y, ids = self.split(split)
            xk, yk, ik = keys(split)
            yield xk, X
            yield yk, y.reshape(-1, 1).astype(np.float64)
            if ids is not None:
                yield ik, ids

    def __repr__(self) -> str:
        parts = [f"{s}: {self.split(s)[0].shape} {self.split(s)[0].dtype}" for s in SPLITS]
        return f"HCPData({self.source!r}, {', '.join(parts)})"


def fmt_shape(shape: tuple[int, ...]) -> str:
    return " x ".join(map(str, shape)) if shape else "scalar"


def check_volumes_shape(name: str, shape: tuple[int, ...], volume_shape: tuple[int, ...], path) -> int:
    """Rank and volume shape of an `X_*` variable, before any data is read; returns N."""
    want = "x".join(map(str, volume_shape))
    if len(shape) == 1 + len(volume_shape) and tuple(shape[:-1]) == tuple(volume_shape):
        raise DataError(f"{name} is {fmt_shape(shape)}: volumes stacked along the last axis (MATLAB's X(:,:,:,n) "
                        f"layout?); store them first, as N x {fmt_shape(volume_shape)} (MATLAB: permute(X, [4 1 2 3]))",
                        path)
    if len(shape) != 1 + len(volume_shape):
        raise DataError(f"{name} has rank {len(shape)} ({fmt_shape(shape)}), expected rank {1 + len(volume_shape)}: "
                        f"N volumes of {want}", path)
    if tuple(shape[1:]) != tuple(volume_shape):
        raise DataError(f"{name} volumes are {'x'.join(map(str, shape[1:]))}, expected {want}", path)
    if shape[0] == 0:
        raise DataError(f"{name} has no volumes (empty split)", path)
    return shape[0]


def as_labels(a, name: str, num_classes: int, path) -> np.ndarray:
    """Labels stored as (N,), (N, 1) or (1, N), any integer, bool or float type -> (N,) int64, checked."""
    a = np.asarray(a)
    if a.ndim > 2 or (a.ndim == 2 and 1 not in a.shape):
        raise DataError(f"{name} has shape {fmt_shape(a.shape)}, expected a vector: N, N x 1 or 1 x N", path)
    if a.dtype.kind not in "biuf":
        raise DataError(f"{name} is not numeric (dtype {a.dtype}), expected class indices 0..{num_classes - 1}", path)
    flat = a.reshape(-1)
    if flat.dtype.kind == "f":
        if not np.isfinite(flat).all():
            raise DataError(f"{name} has NaN/Inf labels", path)
        if (flat != np.round(flat)).any():
            bad = flat[flat != np.round(flat)][0]
            raise DataError(f"{name} has non-integer labels (e.g. {bad:g}), expected 0..{num_classes - 1}", path)
    outside = (flat < 0) | (flat >= num_classes)  # before the cast: 1e300 has no int64
    if outside.any():
        found = ", ".join(f"{v:g}" if flat.dtype.kind == "f" else str(v) for v in np.unique(flat[outside])[:5])
        hint = ""
        if flat.min() >= 1 and flat.max() == num_classes:
            hint = " (1-based labels? subtract 1)"
        elif num_classes == 2 and set(np.unique(flat).tolist()) == {-1, 1}:
            hint = " (labels -1/1? map -1 to 0: y = (y + 1) / 2)"
        raise DataError(f"{name} has labels outside the class set {{{', '.join(map(str, range(num_classes)))}}}: "
                        f"{found} ({int(outside.sum())} volumes){hint}", path)
    return flat.astype(np.int64)


def as_ids(a, name: str, path) -> np.ndarray:
    """Subject ids -> (N,) str: strings (a char matrix read as strings, trailing blanks dropped), cells of
    strings, or numbers (written without a decimal point when integral)."""
    a = np.asarray(a)
    if a.ndim > 2 or (a.ndim == 2 and 1 not in a.shape):
        raise DataError(f"{name} has shape {fmt_shape(a.shape)}, expected one id per volume", path)
    flat = a.reshape(-1)
    if flat.dtype.kind == "S":
        flat = np.char.decode(flat, "utf-8", "replace")
    if flat.dtype.kind == "U":
        return np.char.rstrip(flat, " \x00").astype(str)
    if flat.dtype.kind in "biuf":
        if flat.dtype.kind == "f" and (~np.isfinite(flat)).any():
            raise DataError(f"{name} has NaN/Inf ids", path)
        integral = flat.dtype.kind != "f" or (flat == np.round(flat)).all()
        return np.array([str(int(v)) if integral else repr(float(v)) for v in flat], dtype=str)
    if flat.dtype.kind == "O":
        out = []
        for v in flat:
            v = np.asarray(v)
            if v.size != 1 and v.dtype.kind not in "US":
                raise DataError(f"{name} has an entry that is not one id ({v.dtype}, {fmt_shape(v.shape)})", path)
            out.append(as_ids(v.reshape(-1)[:1] if v.size else np.array([""]), name, path)[0])
        return np.array(out, dtype=str)
    raise DataError(f"{name} has unsupported type {a.dtype}", path)


def check_counts(split: str, n: int, y: np.ndarray, ids: np.ndarray | None, path) -> None:
    xk, yk, ik = keys(split)
    if len(y) != n:
        raise DataError(f"{xk} has {n} volumes but {yk} has {len(y)} labels", path)
    if ids is not None and len(ids) != n:
        raise DataError(f"{xk} has {n} volumes but {ik} has {len(ids)} ids", path)


MAX_ABS = 1e6  # default bound on |voxel|: z-scored volumes hold a few units, raw scanner intensities ~1e4


def check_values(X: np.ndarray, name: str, path, nan_to_zero: bool, max_abs: float | None = MAX_ABS) -> int:
    """Refuse NaN/Inf voxels (or, with `nan_to_zero`, set them to 0 in place) and finite voxels beyond
    +-`max_abs` (a unit or scaling error: 1e30 trains into skipped steps and NaN predictions); returns how many
    voxels were repaired. Chunk by chunk: temporaries stay small."""
    bad_total, bad_volumes, first = 0, 0, None
    big_volumes, big_first, biggest = 0, None, 0.0
    for s in range(0, len(X), CHUNK_VOLUMES):
        chunk = X[s:s + CHUNK_VOLUMES]
        finite = np.isfinite(chunk)
        if not finite.all():
            bad = ~finite
            per = bad.reshape(len(chunk), -1).sum(1)
            bad_total += int(per.sum())
            bad_volumes += int((per > 0).sum())
            if first is None:
                first = s + int(np.flatnonzero(per)[0])
            if nan_to_zero:
                chunk[bad] = 0
        if max_abs is not None:
            peak = np.abs(np.where(finite, chunk, 0)).reshape(len(chunk), -1).max(1).astype(np.float64)
            over = np.flatnonzero(peak > max_abs)
            if len(over):
                big_volumes += len(over)
                big_first = s + int(over[0]) if big_first is None else big_first
                biggest = max(biggest, float(peak.max()))
    if bad_total and not nan_to_zero:
        raise DataError(f"{name} has {bad_total:,} NaN/Inf voxels in {bad_volumes} volumes (first: volume {first}); "
                        "--nan-to-zero (nan_to_zero=True) sets them to 0", path)
    if big_volumes:
        raise DataError(f"{name} has {big_volumes} volume(s) with voxels beyond +-{max_abs:g} (largest |value| "
                        f"{biggest:.3g}; first: volume {big_first}): a unit or scaling error? z-scored volumes hold "
                        "values of a few units; data.max_abs raises the bound", path)
    return bad_total


def zscore_volumes(X: np.ndarray) -> np.ndarray:
    """Per-volume z-scoring in place over the non-zero voxels (the brain); the background stays exactly 0.
    For inputs that are not already normalized (the course file is). Constant volumes are only centered."""
    if not X.flags.c_contiguous:
        raise ValueError("zscore_volumes works in place on a C-contiguous array")
    for s in range(0, len(X), CHUNK_VOLUMES):
        v = X[s:s + CHUNK_VOLUMES].reshape(min(CHUNK_VOLUMES, len(X) - s), -1)  # a view: X is C-contiguous
        inside = v != 0
        n = np.maximum(inside.sum(1), 1)
        mean = v.sum(1, dtype=np.float64) / n
        var = (np.square(v - mean[:, None].astype(v.dtype)) * inside).sum(1, dtype=np.float64) / n
        std = np.sqrt(var)
        std[std == 0] = 1.0
        v -= mean[:, None].astype(v.dtype)
        v /= std[:, None].astype(v.dtype)
        v[~inside] = 0
    return X


@dataclass
class VarInfo:
    """What a file says about one variable, before reading it (shape in row-major / MATLAB terms)."""

    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, or the MATLAB class ("double", "char", "cell", ...)
    numeric: bool  # a real numeric array we can stream
    empty: bool = False

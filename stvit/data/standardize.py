"""Per-voxel standardization fitted on a run's training split alone (`data.standardize`, `--standardize`).

When to use it: for a data file whose volumes were NOT cleaned per voxel over time: a volume z-scored over the
brain (the course file's normalization) still carries the mean brain image, which is nearly all of its signal,
and the small condition effect sits on top of it; a model can stay at chance on such input while the
logistic-regression baseline, which standardizes each voxel, learns. Each voxel is then centred on its training
mean and divided by its training standard deviation, as the baseline's `StandardScaler` does. A file written by
`python -m stvit.data import` is already detrended and standardized per voxel within each run: leave it off there.

No leak: the statistics come from the volumes of the training split alone (`rows`: the positions of the training
volumes in the file's training split, the validation volumes excluded); validation and test volumes are only
transformed with them. In-brain voxels: those non-zero in at least one training volume (the baseline's rule);
every other voxel is set to 0 in every volume, so the background stays exactly 0. A voxel constant over the
training volumes is only centred. Memory: blocks of `BLOCK` volumes, float64 sums; the volumes change in place.

A run with `data.standardize` keeps its statistics in its directory (`STATS_FILE`: mask, mean, std, n), and a
trained run (`stvit.load`, `python -m stvit.predict`, `python -m stvit.embed`) applies them to every volume it
is given, after the preparation the run's data file had: new input is transformed exactly as the test split was.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 64  # volumes per pass (~40 MB of (53, 63, 46) float32 temporaries)
STATS_FILE = "standardize.npz"  # in the run directory: the training split's statistics


@dataclass
class VoxelStats:
    """Per-voxel statistics of a training split: mask (V_all,) bool over the flattened volume; mean and std
    (V_in,) float64 over the masked voxels, in mask order."""

    mask: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n: int  # training volumes they come from

    def arrays(self) -> dict[str, np.ndarray]:
        """What `STATS_FILE` holds."""
        return {"mask": self.mask, "mean": self.mean, "std": self.std, "n": np.int64(self.n)}

    @classmethod
    def read(cls, path) -> VoxelStats:
        """The statistics in an .npz written from `arrays` (ValueError when it is not one)."""
        with np.load(path) as f:
            try:
                stats = cls(f["mask"].astype(bool), f["mean"].astype(np.float64), f["std"].astype(np.float64),
                            int(f["n"]))
            except KeyError as e:
                raise ValueError(f"not a file of per-voxel statistics (no {e})") from None
        if stats.mean.shape != (int(stats.mask.sum()),) or stats.std.shape != stats.mean.shape:
            raise ValueError(f"{stats.mask.sum()} masked voxels but {len(stats.mean)} means, {len(stats.std)} stds")
        return stats


def fit_voxel_stats(X: np.ndarray, rows: np.ndarray, block: int = BLOCK) -> VoxelStats:
    """Mean and standard deviation (ddof 0) of each in-brain voxel over the volumes `X[rows]` (X: (N, ...)).
    Two passes over the rows (the mask, then the sums), each a block at a time; sums of the centred values in
    float64 (no catastrophic cancellation on data with a large mean)."""
    rows = np.sort(np.asarray(rows, np.int64))
    flat = X.reshape(len(X), -1)
    mask = np.zeros(flat.shape[1], bool)
    for s in range(0, len(rows), block):
        mask |= (flat[rows[s:s + block]] != 0).any(axis=0)
    total = np.zeros(int(mask.sum()))
    for s in range(0, len(rows), block):
        total += flat[rows[s:s + block]][:, mask].sum(axis=0, dtype=np.float64)
    mean = total / max(len(rows), 1)
    squares = np.zeros_like(mean)
    for s in range(0, len(rows), block):
        centred = flat[rows[s:s + block]][:, mask] - mean  # (B, V_in) float64
        squares += np.einsum("bv,bv->v", centred, centred)
    std = np.sqrt(squares / max(len(rows), 1))
    std[std == 0] = 1.0  # constant voxel: only centred
    return VoxelStats(mask, mean, std, len(rows))


def apply_voxel_stats(X: np.ndarray, stats: VoxelStats, block: int = BLOCK) -> np.ndarray:
    """Standardize every volume of X (N, ...) in place with `stats`; voxels outside the mask set to 0."""
    flat = X.reshape(len(X), -1)  # a view: X is C-contiguous (every reader returns it so)
    if flat.shape[1] != len(stats.mask):
        raise ValueError(f"volumes of {flat.shape[1]} voxels, statistics of {len(stats.mask)}")
    mean, std = stats.mean.astype(X.dtype), stats.std.astype(X.dtype)
    for s in range(0, len(X), block):
        values = (flat[s:s + block][:, stats.mask] - mean) / std
        flat[s:s + block] = 0
        flat[s:s + block, stats.mask] = values
    return X


def standardize_split(data, train_rows: np.ndarray) -> VoxelStats:
    """Fit on `data.X_train[train_rows]` (the run's training volumes) and standardize, in place, the file's whole
    training split (training and validation volumes) and its test split. Returns the statistics."""
    if not (data.X_train.flags.c_contiguous and data.X_test.flags.c_contiguous):
        raise ValueError("standardize_split works in place on C-contiguous volumes")
    stats = fit_voxel_stats(data.X_train, train_rows)
    apply_voxel_stats(data.X_train, stats)
    apply_voxel_stats(data.X_test, stats)
    return stats

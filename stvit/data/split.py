"""The validation split, carved from train: grouped by subject, stratified by label, deterministic by seed; and
subject-grouped folds of a split (`subject_folds`, the hyperparameter search's folds).

Grouping keeps every volume of a subject on one side, so validation accuracy measures what the test split
measures (new subjects). Without subject ids the split falls back to stratified random, with a warning.
The split is written to the run directory (`split.json`) so that a resumed or re-evaluated run uses it again.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

SPLIT_FILE = "split.json"


def split_train_val(ids: np.ndarray | None, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): sorted int64 positions; about `fraction` of the volumes (and of each class) in
    validation, whole subjects at a time. Same inputs and seed, same split."""
    y = np.asarray(y).reshape(-1)
    n = len(y)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0 or n < 2:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed % 2**63, 0x5A1])
    if ids is None:
        warnings.warn("no subject ids: the validation split is stratified random, so volumes of one subject "
                      "can fall on both sides and validation accuracy is optimistic", stacklevel=2)
        return _stratified_random(y, fraction, rng)
    ids = np.asarray(ids).reshape(-1)
    if len(ids) != n:
        raise ValueError(f"{len(ids)} subject ids for {n} labels")
    subjects, group = np.unique(ids, return_inverse=True)
    if len(subjects) < 2:
        warnings.warn("a single subject: the validation split is stratified random, not grouped", stacklevel=2)
        return _stratified_random(y, fraction, rng)
    _, label = np.unique(y, return_inverse=True)
    counts = np.zeros((len(subjects), label.max() + 1))
    np.add.at(counts, (group, label), 1)
    chosen = _choose_groups(counts, fraction, rng)
    in_val = chosen[group]
    return np.flatnonzero(~in_val).astype(np.int64), np.flatnonzero(in_val).astype(np.int64)


def subject_folds(ids: np.ndarray, y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(N,) int64: the fold (0..k-1) of each volume; whole subjects per fold, label proportions kept
    (scikit-learn's `StratifiedGroupKFold`, shuffled by `seed`: same inputs and seed, same folds). ValueError when
    there are fewer subjects than folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    ids, y = np.asarray(ids).reshape(-1), np.asarray(y).reshape(-1)
    subjects = len(np.unique(ids))
    if not 2 <= k <= subjects:
        raise ValueError(f"{subjects} subjects cannot make {k} folds (each fold needs subjects of its own)")
    fold = np.empty(len(y), np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed % 2**32)
    for f, (_, held) in enumerate(splitter.split(np.zeros(len(y)), y, ids)):
        fold[held] = f
    return fold


def _choose_groups(counts: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Greedy over subjects in random order: take one if it brings the per-class validation counts closer
    (L1) to `fraction` of each class. At least one subject on each side."""
    target = fraction * counts.sum(0)
    have = np.zeros_like(target)
    chosen = np.zeros(len(counts), bool)
    order = rng.permutation(len(counts))
    for g in order:
        if np.abs(have + counts[g] - target).sum() < np.abs(have - target).sum():
            chosen[g] = True
            have += counts[g]
    if not chosen.any():  # every subject overshoots: take the smallest
        chosen[order[np.argmin(counts[order].sum(1))]] = True
    if chosen.all():
        chosen[order[-1]] = False
    return chosen


def _stratified_random(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    val = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        val.append(rng.permutation(members)[:int(round(fraction * len(members)))])
    val = np.concatenate(val)
    if len(val) == 0:  # tiny split: still one volume in validation
        val = rng.permutation(len(y))[:1]
    in_val = np.zeros(len(y), bool)
    in_val[val] = True
    if in_val.all():
        in_val[val[-1]] = False
    return np.flatnonzero(~in_val).astype(np.int64), np.flatnonzero(in_val).astype(np.int64)


def save_split(path, train_idx: np.ndarray, val_idx: np.ndarray, *, ids: np.ndarray | None = None,
               seed: int | None = None, fraction: float | None = None) -> Path:
    """Write the split as JSON (to `path`, or `path/split.json` when `path` is a folder); returns the file."""
    path = Path(path)
    if path.is_dir():
        path = path / SPLIT_FILE
    grouped = ids is not None and len(np.unique(np.asarray(ids))) >= 2  # split_train_val's own test
    record = {"fraction": fraction, "seed": seed, "grouped_by_subject": grouped,
              "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
              "val_subjects": sorted(set(np.asarray(ids)[val_idx].tolist())) if ids is not None else None,
              "train": np.asarray(train_idx).tolist(), "val": np.asarray(val_idx).tolist()}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    tmp.replace(path)
    return path


def load_split(path) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) from a file written by `save_split` (or the folder holding `split.json`)."""
    path = Path(path)
    if path.is_dir():
        path = path / SPLIT_FILE
    record = json.loads(path.read_text())
    return np.asarray(record["train"], dtype=np.int64), np.asarray(record["val"], dtype=np.int64)


def fingerprint(y: np.ndarray, ids: np.ndarray | None) -> str:
    """A digest of labels and subject ids: a resumed cross-validation or search checks it is on the same volumes."""
    import hashlib

    h = hashlib.sha256(np.asarray(y, np.int64).tobytes())
    if ids is not None:
        h.update("\n".join(np.asarray(ids).astype(str).tolist()).encode())
    return h.hexdigest()[:16]

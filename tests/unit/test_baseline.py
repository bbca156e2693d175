"""The linear baseline: the same numbers as an independent scikit-learn fit on the same split, its voxels gathered
in float32 blocks. Its place in a run: tests/e2e/test_baseline.py."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from stvit.training import baseline as B
from stvit import data as D
from stvit.training.metrics import classification_metrics

from helpers import VOLUME

CLASSES = ["face", "shape"]


def brainy(n_train=60, n_test=20, seed=0) -> D.HCPData:
    """Tiny volumes with an exactly-zero background, a class signal that C changes the validation accuracy of (and
    a tie broken by the log-loss), 4 volumes per subject; voxel (0, 0, 0)
    is non-zero in the test split only (the training mask must leave it out)."""
    rng = np.random.default_rng(seed)

    def make(n, first):
        y = np.arange(n) % 2
        X = rng.normal(size=(n, *VOLUME)).astype(np.float32)
        X[:, :, :3] = 0  # background
        X[y == 1, 1:3, 5:9, 3:5] += 1.0
        return X, y.astype(np.int64), np.array([f"S{first + i // 4:03d}" for i in range(n)])

    Xtr, ytr, itr = make(n_train, 0)
    Xte, yte, ite = make(n_test, 100)
    Xte[:, 0, 0, 0] = 5.0
    return D.HCPData(Xtr, ytr, itr, Xte, yte, ite, source="brainy")


def test_baseline_equals_an_independent_sklearn_fit():
    data = brainy()
    tr, va = D.split_train_val(data.ids_train, data.y_train, 0.25, seed=3)
    section, probs = B.baseline_metrics(data, {"train": tr, "val": va}, CLASSES)

    # independently: the training-split mask, one plain Pipeline per C, the best validation accuracy (ties: lower
    # validation log-loss), the test split scored once
    mask = (data.X_train[tr] != 0).any(axis=0).reshape(-1)
    assert not mask[0] and mask.sum() == np.prod(VOLUME) - VOLUME[0] * 3 * VOLUME[2]
    flat = lambda X: X.reshape(len(X), -1)[:, mask]  # noqa: E731
    rows = []
    for C in B.C_GRID:
        pipe = Pipeline([("scale", StandardScaler()), ("logreg", LogisticRegression(C=C, max_iter=1000))])
        pipe.fit(flat(data.X_train[tr]), data.y_train[tr])
        p = pipe.predict_proba(flat(data.X_train[va])).astype(np.float64)
        yva = data.y_train[va]
        rows.append((-(p.argmax(1) == yva).mean(), -np.log(p[np.arange(len(yva)), yva]).mean(), C, pipe))
    acc, _, C, pipe = min(rows, key=lambda r: r[:3])
    expect = pipe.predict_proba(flat(data.X_test))

    assert section["C"] == C and section["val_accuracy"] == -acc
    assert [r["val_accuracy"] for r in section["grid"]] == [-r[0] for r in rows]
    np.testing.assert_allclose(probs, expect, atol=1e-4)
    assert section["n_voxels"] == mask.sum() and section["n_train"] == len(tr) and section["converged"]
    independent = classification_metrics(data.y_test, expect, CLASSES)
    for key in ("accuracy", "confusion_matrix", "n"):
        assert section[key] == independent[key]
    assert section["roc_auc"] == pytest.approx(independent["roc_auc"], abs=1e-6)


def test_voxels_are_float32_and_gathered_in_blocks():
    data = brainy(n_train=B.BLOCK + 9)
    rows = np.arange(len(data.y_train))[::-1]
    mask = B.inbrain_mask(data.X_train, rows)
    Z = B.voxels(data.X_train, rows, mask)
    assert Z.dtype == np.float32 and Z.shape == (len(rows), mask.sum())
    np.testing.assert_array_equal(Z, data.X_train[rows].reshape(len(rows), -1)[:, mask])

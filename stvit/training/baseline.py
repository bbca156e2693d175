"""The linear baseline every run reports beside the model: logistic regression on the standardized in-brain voxels.

It sees what the model sees: fitted on the run's training split, its regularization chosen on the run's
validation split, and scored once on the test split, inside the final evaluation (`stvit.evaluation`).

- In-brain voxels: the voxels that are non-zero in at least one volume of the TRAINING split (the data's
  background is exactly 0). The mask comes from the training split alone, so no validation or test volume shapes
  the features.
- Features: those voxels as float32, (N, V), gathered a few volumes at a time: neither the whole (N, 53, 63, 46)
  array nor a float64 copy of the features is ever made.
- Model: a scikit-learn `Pipeline(StandardScaler, LogisticRegression)`, L2 penalty, lbfgs. The scaler is fitted
  by `partial_fit` over blocks of rows and transforms in place: `StandardScaler.fit` on float32 input builds
  `X - mean` with a float64 mean, a float64 temporary the size of the whole matrix (scikit-learn 1.9), where
  blocks bound it to a block; the statistics are the same up to float rounding. `LogisticRegression` keeps
  float32 input as it is (scikit-learn 1.9, lbfgs included: no copy).
- C: each value of `C_GRID` is fitted from scratch on the training split; the one with the best validation
  accuracy wins (ties: the lower validation log-loss, then the smaller C). No refit on training + validation:
  the baseline is trained on exactly the volumes the model is trained on, and validation only chooses, as it
  only chooses the model's epoch.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

C_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # inverse L2 strength, from strong to weak, on standardized voxels
MAX_ITER = 1000
BLOCK = 64  # volumes per gather (~40 MB of (53, 63, 46) float32 temporaries)
DESCRIPTION = "logistic regression (L2) on the standardized in-brain voxels"


def inbrain_mask(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(V,) bool over the flattened volume: non-zero in at least one of the volumes `X[rows]`."""
    flat = X.reshape(len(X), -1)
    mask = np.zeros(flat.shape[1], bool)
    for s in range(0, len(rows), BLOCK):
        mask |= (flat[rows[s:s + BLOCK]] != 0).any(axis=0)
    return mask


def voxels(X: np.ndarray, rows: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
    """(len(rows), mask.sum()) float32: the masked voxels of the volumes `X[rows]` (every volume for None)."""
    rows = np.arange(len(X)) if rows is None else np.asarray(rows)
    flat = X.reshape(len(X), -1)
    out = np.empty((len(rows), int(mask.sum())), np.float32)
    for s in range(0, len(rows), BLOCK):
        out[s:s + BLOCK] = flat[rows[s:s + BLOCK]][:, mask]
    return out


def fit_scaler(Xtr: np.ndarray):
    """A StandardScaler fitted on `Xtr` block by block (no float64 copy of `Xtr`); it transforms in place."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler(copy=False)
    for s in range(0, len(Xtr), 4 * BLOCK):
        scaler.partial_fit(Xtr[s:s + 4 * BLOCK])
    return scaler


def class_probs(model, X: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, num_classes) probabilities of a fitted classifier or pipeline (a class absent from the training split
    gets 0)."""
    probs = np.zeros((len(X), num_classes))
    probs[:, model.classes_] = model.predict_proba(X)
    return probs


@dataclass
class Baseline:
    """A fitted baseline: the pipeline, its voxel mask, and how C was chosen."""

    pipeline: Any  # sklearn Pipeline(scale, logreg), fitted
    mask: np.ndarray  # (V,) bool over the flattened volume
    C: float
    val: list[dict[str, float]]  # per C of the grid: C, val accuracy, val log-loss, iterations
    num_classes: int

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, C) probabilities of the volumes X (N, 53, 63, 46)."""
        return class_probs(self.pipeline, voxels(X, None, self.mask), self.num_classes)  # scales in place


def fit_baseline(X: np.ndarray, y: np.ndarray, index: dict[str, np.ndarray], num_classes: int,
                 grid: Sequence[float] = C_GRID) -> Baseline:
    """Fit on `X[index['train']]`, choose C on `X[index['val']]` (X: the file's training volumes (N, ...), y (N,))."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    tr, va = index["train"], index["val"]
    mask = inbrain_mask(X, tr)
    Xtr, Xva = voxels(X, tr, mask), voxels(X, va, mask)
    scaler = fit_scaler(Xtr)
    Xtr, Xva = scaler.transform(Xtr), scaler.transform(Xva)  # in place
    ytr, yva = y[tr], y[va]
    best, scores = None, []
    for C in grid:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # recorded as iterations == MAX_ITER
            clf = LogisticRegression(C=C, max_iter=MAX_ITER).fit(Xtr, ytr)
        p = class_probs(clf, Xva, num_classes)
        row = {"C": C, "val_accuracy": float((p.argmax(1) == yva).mean()),
               "val_log_loss": float(-np.log(np.clip(p[np.arange(len(yva)), yva], 1e-15, None)).mean()),
               "iterations": int(np.max(clf.n_iter_))}
        scores.append(row)
        if best is None or (-row["val_accuracy"], row["val_log_loss"]) < (-best[0]["val_accuracy"],
                                                                          best[0]["val_log_loss"]):
            best = (row, clf)
    pipeline = Pipeline([("scale", scaler), ("logreg", best[1])])
    return Baseline(pipeline, mask, best[0]["C"], scores, num_classes)


def baseline_metrics(data, index: dict[str, np.ndarray], class_names: Sequence[str],
                     grid: Sequence[float] = C_GRID) -> tuple[dict[str, Any], np.ndarray]:
    """The baseline of a run: fitted on the training split of `data` (an `HCPData`), C chosen on the validation
    split (`index`: positions of train and val in the file's training split), then the test split read and
    scored once. Returns (the metrics.json `baseline` section, the test probabilities (N, C))."""
    from stvit.training.metrics import classification_metrics

    t0 = time.perf_counter()
    fitted = fit_baseline(data.X_train, data.y_train, index, len(class_names), grid)
    X_test, y_test, _ = data.split("test")
    probs = fitted.predict_proba(X_test)
    chosen = next(r for r in fitted.val if r["C"] == fitted.C)
    section = {
        "model": DESCRIPTION,
        **classification_metrics(y_test, probs, class_names),
        "C": fitted.C,
        "val_accuracy": chosen["val_accuracy"],
        "converged": chosen["iterations"] < MAX_ITER,
        "n_voxels": int(fitted.mask.sum()),
        "n_train": int(len(index["train"])),
        "grid": fitted.val,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return section, probs


def refitter(Xtr: np.ndarray, Xte: np.ndarray, C: float, num_classes: int, rtol: float = 1e-6, tol: float = 1e-7,
             max_iter: int = 20_000) -> "Refitter":
    """fit_predict(labels) -> test predictions, for the baseline's permutation null (`stats.refit_null`,
    `stats.cv_refit_null`): the L2 logistic regression with the chosen C (intercept unpenalized, as scikit-learn's)
    fitted again on the standardized training features Xtr (N, V) with the given labels (N,) or (P, N), predicting
    the standardized test features Xte (M, V): (M,) or (P, M).

    Each refit costs an (N, N) problem instead of an (N, V) one, exactly: the L2-penalized solution lies in the row
    space of Xtr (the representer theorem: a weight component orthogonal to every training row changes no training
    score and adds to the penalty). With the thin decomposition Xtr = U S W^T (U, S from the eigendecomposition of
    the Gram matrix Xtr Xtr^T; directions whose eigenvalue is below `rtol` times the largest are dropped), w = W S^-1 a
    gives training scores U a + b and the penalty sum(a^2 / s^2) / 2C; a test row's score is (Xte Xtr^T) U S^-2 a + b.

    Two classes: every permutation of a batch is solved at once (matrix products over the (N, P) label matrix) by
    majorization-minimization with Nesterov momentum and adaptive restart (O'Donoghue & Candes 2015): the logistic
    loss's Hessian is bounded by 1/4 of the Gram matrix (Boehning 1992), which in these coordinates is the identity
    (U^T U = I), so each step solves an arrowhead system (the diagonal plus the intercept's row) in O(N P). It stops
    when no coordinate moves by more than `tol`; on the built-in set its test scores agree with scikit-learn's lbfgs
    (at tol 1e-8) to 1e-4. More classes: scikit-learn's LogisticRegression on the (N, r) coordinates, one permutation
    at a time."""
    gram = (Xtr @ Xtr.T).astype(np.float64)  # (N, N)
    eig, U = np.linalg.eigh(gram)
    keep = eig > rtol * eig.max()
    s2, U = eig[keep], U[:, keep]  # (r,), (N, r)
    Kte = (Xte @ Xtr.T).astype(np.float64) @ (U / s2)  # (M, r): test scores per unit of a
    return Refitter(U, s2, Kte, C, num_classes, tol, max_iter)


@dataclass
class Refitter:
    """The baseline refitted on other labels (see `refitter`); `unconverged` counts fits stopped at `max_iter`."""

    U: np.ndarray  # (N, r) orthonormal basis of the training rows' space
    s2: np.ndarray  # (r,) eigenvalues of the Gram matrix
    Kte: np.ndarray  # (M, r)
    C: float
    num_classes: int
    tol: float
    max_iter: int
    batch: int = 128  # permutations per solve
    unconverged: int = 0

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels)
        Y = np.atleast_2d(labels)  # (P, N)
        out = np.empty((len(Y), len(self.Kte)), np.int64)
        for s in range(0, len(Y), self.batch):
            out[s:s + self.batch] = (self.binary(Y[s:s + self.batch]) if self.num_classes == 2
                                     else self.multiclass(Y[s:s + self.batch]))
        return out[0] if labels.ndim == 1 else out

    def binary(self, Y: np.ndarray) -> np.ndarray:
        """(P, M) test predictions of the fits to the label rows Y (P, N) in {0, 1}."""
        U, n = self.U, self.U.shape[0]
        T = Y.T.astype(np.float64)  # (N, P)
        pen = (1.0 / (self.C * self.s2))[:, None]  # (r, 1)
        d = 0.25 + pen  # the bound's diagonal for a
        v = U.T @ np.full(n, 0.25)  # (r,) its coupling with the intercept (0 for centred features, up to rounding)
        schur = n / 4 - v @ (v / d[:, 0])
        a, b = np.zeros((U.shape[1], len(Y))), np.zeros(len(Y))
        ya, yb, t = a.copy(), b.copy(), 1.0
        for it in range(self.max_iter):
            g = 1.0 / (1.0 + np.exp(-(U @ ya + yb))) - T  # (N, P) residuals
            ga, gb = U.T @ g + pen * ya, g.sum(0)
            db = (gb - v @ (ga / d)) / schur  # the arrowhead system [[diag d, v], [v^T, n/4]] [da; db] = [ga; gb]
            da = (ga - v[:, None] * db) / d
            an, bn = ya - da, yb - db
            restart = ((ga * (an - a)).sum(0) + gb * (bn - b)) > 0  # momentum pointing uphill
            tn = (1 + math.sqrt(1 + 4 * t * t)) / 2
            ya, yb = an + (t - 1) / tn * (an - a), bn + (t - 1) / tn * (bn - b)
            ya[:, restart], yb[restart] = an[:, restart], bn[restart]
            moved = max(float(np.abs(an - a).max()), float(np.abs(bn - b).max()))
            a, b, t = an, bn, (1.0 if restart.all() else tn)
            if moved < self.tol:
                break
        else:
            self.unconverged += len(Y)
        return ((self.Kte @ a + b) > 0).T.astype(np.int64)

    def multiclass(self, Y: np.ndarray) -> np.ndarray:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        Z, Zte = self.U * np.sqrt(self.s2), self.Kte * np.sqrt(self.s2)  # (N, r) = U S, (M, r) = Xte W
        out = []
        for labels in Y:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf = LogisticRegression(C=self.C, max_iter=MAX_ITER).fit(Z, labels)
            out.append(class_probs(clf, Zte, self.num_classes).argmax(1))
        return np.stack(out)

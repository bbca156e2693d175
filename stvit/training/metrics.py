"""Classification metrics from saved predictions (scikit-learn does the counting)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, ROC-AUC, confusion matrix (rows = true, columns = predicted) and per-class precision, recall,
    F1 and support, from labels (N,) and class probabilities (N, C).

    A volume whose probabilities are not finite (a model that diverged on it) has no prediction: it counts as an
    error in accuracy and recall, is left out of the confusion matrix and of ROC-AUC, and is counted in
    `n_nonfinite`. The metrics of everything else are still computed: an evaluation never fails on them."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    labels = list(range(len(class_names)))
    finite = np.isfinite(probs).all(axis=1)
    y_pred = np.where(finite, np.nan_to_num(probs).argmax(axis=1), -1)  # -1: no prediction
    p, r, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    yt, pr = y_true[finite], probs[finite]
    if len(np.unique(yt)) < 2:
        auc = None  # undefined with one class present
    elif len(labels) == 2:
        auc = float(roc_auc_score(yt, pr[:, 1]))
    else:
        auc = float(roc_auc_score(yt, pr, multi_class="ovr", labels=labels))
    if auc is not None and not np.isfinite(auc):
        auc = None  # a class absent from the labels leaves its one-vs-rest AUC undefined (sklearn: NaN)
    return {
        "n": int(len(y_true)),
        "n_nonfinite": int((~finite).sum()),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "roc_auc": auc,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(class_names)},
    }

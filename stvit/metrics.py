"""Classification metrics from saved predictions (scikit-learn does the counting)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, ROC-AUC, confusion matrix (rows = true, columns = predicted) and per-class precision, recall,
    F1 and support, from labels (N,) and class probabilities (N, C)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    labels = list(range(len(class_names)))
    y_pred = probs.argmax(axis=1)
    p, r, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    if len(np.unique(y_true)) < 2:
        auc = None  # undefined with one class present
    elif len(labels) == 2:
        auc = float(roc_auc_score(y_true, probs[:, 1]))
    else:
        auc = float(roc_auc_score(y_true, probs, multi_class="ovr", labels=labels))
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "roc_auc": auc,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(class_names)},
    }

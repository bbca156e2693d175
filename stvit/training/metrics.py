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


def chance_level(y_train: np.ndarray) -> float:
    """The accuracy of always answering the most frequent class of the training labels (N,)."""
    _, counts = np.unique(np.asarray(y_train), return_counts=True)
    return float(counts.max() / counts.sum()) if len(counts) else 0.0


def learned_nothing(records: Sequence[dict[str, Any]], test_pred: np.ndarray, test_true: np.ndarray,
                    y_train: np.ndarray, class_names: Sequence[str]) -> str | None:
    """A warning text when the fine-tuned model learned nothing, else None (a pure function of what a run logged
    and predicted).

    records: the log.jsonl records (the fine-tuning ones, with `train_acc`, are read); test_pred and test_true:
    the predicted and true classes of the test volumes (N,); y_train: the labels of the training volumes.

    Two signs, either one enough: (1) training accuracy at chance in every fine-tuning epoch: at most the
    majority-class share plus max(0.02, two binomial standard errors of that share over the training volumes);
    a model that fits nothing of its own training data has nothing to transfer. (2) every test volume predicted
    as one class while the test split holds several."""
    n, chance = len(y_train), chance_level(y_train)
    accs = [r["train_acc"] for r in records if r.get("stage") == "finetune" and r.get("train_acc") is not None]
    margin = max(0.02, 2.0 * np.sqrt(chance * (1.0 - chance) / max(n, 1)))
    signs = []
    if accs and max(accs) <= chance + margin:
        signs.append(f"training accuracy stayed at chance in all {len(accs)} fine-tuning epochs (at most "
                     f"{max(accs):.3f}; chance {chance:.3f} on {n} training volumes)")
    test_pred, test_true = np.asarray(test_pred), np.asarray(test_true)
    if len(test_pred) and len(np.unique(test_pred)) == 1 and len(np.unique(test_true)) > 1:
        k = int(test_pred[0])
        name = class_names[k] if 0 <= k < len(class_names) else str(k)
        signs.append(f"every one of the {len(test_pred)} test volumes was predicted '{name}'")
    if not signs:
        return None
    return ("WARNING: the model learned nothing: " + "; ".join(signs) + ". Its test accuracy is not a result. "
            "Likely causes: input not normalized per voxel (the mean brain image is nearly all of a raw volume's "
            "signal: import the study with python -m stvit.data import, which cleans each run, or train with "
            f"--standardize), too few training volumes ({n} here), or a recipe that does not fit the data "
            "(learning rate, epochs).")

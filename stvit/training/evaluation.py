"""The one evaluation of the test split, with the checkpoint chosen during fine-tuning (`best.pt`).

Writes predictions.npz (the probabilities behind every number), metrics.json (scikit-learn's counts: accuracy,
ROC-AUC, confusion matrix, per-class precision/recall/F1, for test and validation; and the same for the linear
baseline of `stvit.baseline`, fitted here on the same training split, unless `train.baseline` is off) and the
confusion matrix figure. The test split is read here and nowhere else (unless `--select-on-test`, which says it
leaks). Under torchrun every rank predicts its shards; rank 0 alone fits the baseline and writes.
"""
from __future__ import annotations

from typing import Any

import torch

from stvit.training import steps
from stvit.config import Config
from stvit.data import HCPData
from stvit.data.placement import DEFAULT_SHARE, features_fit
from stvit.errors import UserError
from stvit.training.fit import LEAK_WARNING, Splits, predict_split
from stvit.model.precision import Precision
from stvit.training.rundir import RunDir
from stvit.training.stages import choose_ops


def evaluate(run: RunDir, cfg: Config, splits: Splits, device: torch.device, precision: Precision,
             data: HCPData) -> dict[str, Any]:
    """Metrics of the best checkpoint on the test and validation splits of `data`, and of the baseline; writes
    them (rank 0)."""
    if not run.has("best.pt"):
        raise UserError("no checkpoints/best.pt to evaluate (run the finetune stage first)", run.path)
    ops = choose_ops(cfg, device, precision)
    trained = run.model("best.pt", device=device, ops=ops.ops)
    clf, best = trained.model, trained.state
    fn = steps.build(steps.classifier_logits, clf, precision, compile=False, name="evaluation")
    names = list(cfg.data.class_names)
    v_probs, v_y, _, _ = predict_split(fn, clf, splits.val, cfg)
    probs, y, idx, _ = predict_split(fn, clf, splits.test(), cfg)
    from stvit.training.metrics import classification_metrics  # scikit-learn, only when metrics are computed

    metrics = {
        "test": classification_metrics(y, probs, names),
        "val": classification_metrics(v_y, v_probs, names),
        "best_epoch": int(best["epoch"]),
        "selected_on": best.get("selected_on", "val"),
        "class_names": names,
        "data": data.source,
        "kernels": ops.to_json(),
        "data_placement": splits.placement,  # where the data lived, why, the budget and the bytes
    }
    if metrics["selected_on"] == "test":
        metrics["warning"] = LEAK_WARNING
    arrays = {}
    fits, need, budget = features_fit(data, splits.index) if cfg.train.baseline else (True, 0, 0)
    if cfg.train.baseline and run.main and not fits:  # a streamed data set larger than memory
        metrics["baseline_skipped"] = (f"its float32 features ({need / 1e9:.1f} GB) exceed {budget / 1e9:.1f} GB, "
                                       f"{DEFAULT_SHARE:g} of the free host memory")
        run.note(f"note: no baseline: {metrics['baseline_skipped']}")
    elif cfg.train.baseline and run.main:
        from stvit.training.baseline import baseline_metrics  # scikit-learn, only when the baseline is fitted

        metrics["baseline"], arrays["baseline_test_probs"] = baseline_metrics(data, splits.index, names)
    run.write_arrays("predictions.npz", test_probs=probs, test_labels=y, test_index=idx, val_probs=v_probs,
                     val_labels=v_y, val_index=splits.index["val"], **arrays)
    run.write_json("metrics.json", metrics)

    def draw(folder):
        from stvit.training.figures import plot_confusion  # matplotlib, only when figures are drawn

        plot_confusion(metrics["test"]["confusion_matrix"], names, folder / "confusion_matrix.png",
                       f"test, best epoch {metrics['best_epoch']}")

    run.write_figure(draw)
    return metrics


def result_line(m: dict) -> str:
    """The model's test metrics beside the baseline's, on one line (what a run ends with)."""
    def scores(t):
        auc = "n/a" if t["roc_auc"] is None else f"{t['roc_auc']:.3f}"
        lost = f", {t['n_nonfinite']} without a finite prediction" if t.get("n_nonfinite") else ""
        return f"accuracy {t['accuracy']:.3f}, ROC-AUC {auc}{lost}"

    line = (f"test: {scores(m['test'])} on {m['test']['n']} volumes (best epoch {m['best_epoch']} by "
            f"{m['selected_on']} accuracy; val accuracy {m['val']['accuracy']:.3f})")
    b = m.get("baseline")
    if b is not None:
        line += f" | baseline (logistic regression, C {b['C']:g}): {scores(b)}"
    return line

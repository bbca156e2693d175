"""The one evaluation of the test split, with the checkpoint chosen during fine-tuning (`best.pt`).

Writes predictions.npz (the probabilities behind every number, and each test volume's subject, and its session,
run, frame, onset and condition when the data carry them), metrics.json (scikit-learn's counts: accuracy,
ROC-AUC, confusion matrix, per-class precision/recall/F1, for test and validation; the same for the linear baseline
of `stvit.training.baseline`, fitted here on the same training split, unless `train.baseline` is off; `stats`, the
statistics of `stvit.training.stats.run_statistics`; `provenance`, what was run) and the confusion matrix figure.
The test split is read here and nowhere else (unless `--select-on-test`, which says it leaks). Under torchrun
every rank predicts its shards; rank 0 alone fits the baseline, computes the statistics and writes.
"""
from __future__ import annotations

from typing import Any

import numpy as np
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


def volume_meta(data: HCPData, idx: np.ndarray) -> dict[str, np.ndarray]:
    """The per-volume metadata of the test volumes at positions `idx` (N,) of the test split: subject (the ids),
    and session, run, volume, onset, condition when the data carry them (a packed file's metadata)."""
    meta = {k: np.asarray(v)[idx] for k, v in ((data.meta or {}).get("test") or {}).items()}
    if data.ids_test is not None:
        meta["subject"] = np.asarray(data.ids_test)[idx]
    return {k: v.astype(str) if v.dtype.kind in "OSU" else v for k, v in meta.items()}


def evaluate(run: RunDir, cfg: Config, splits: Splits, device: torch.device, precision: Precision,
             data: HCPData, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Metrics of the best checkpoint on the test and validation splits of `data`, of the baseline, and their
    statistics (`train.permutations` permutations and resamples, seeded by `train.seed`), with `provenance`;
    writes them (rank 0)."""
    if not run.has("best.pt"):
        raise UserError("no checkpoints/best.pt to evaluate (run the finetune stage first)", run.path)
    ops = choose_ops(cfg, device, precision)
    trained = run.model("best.pt", device=device, ops=ops.ops)
    clf, best = trained.model, trained.state
    fn = steps.build(steps.classifier_logits, clf, precision, compile=False, name="evaluation")
    names = list(cfg.data.class_names)
    v_probs, v_y, _, _ = predict_split(fn, clf, splits.val, cfg)
    probs, y, idx, _ = predict_split(fn, clf, splits.test(), cfg)
    from stvit.training.metrics import classification_metrics, learned_nothing  # scikit-learn, when computed

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
    warned = [LEAK_WARNING] if metrics["selected_on"] == "test" else []
    nothing = learned_nothing(run.records(), probs.argmax(1), y, data.y_train[splits.index["train"]], names)
    if nothing is not None:
        run.note(nothing)
        warned.append(nothing)
    if warned:  # "warning": every text in one string, as before; "warnings": one entry each
        metrics["warning"], metrics["warnings"] = " ".join(warned), warned
    arrays = {}
    fits, need, budget = features_fit(data, splits.index) if cfg.train.baseline else (True, 0, 0)
    if cfg.train.baseline and run.main and not fits:  # a streamed data set larger than memory
        metrics["baseline_skipped"] = (f"its float32 features ({need / 1e9:.1f} GB) exceed {budget / 1e9:.1f} GB, "
                                       f"{DEFAULT_SHARE:g} of the free host memory")
        run.note(f"note: no baseline: {metrics['baseline_skipped']}")
    elif cfg.train.baseline and run.main:
        from stvit.training.baseline import baseline_metrics  # scikit-learn, only when the baseline is fitted

        metrics["baseline"], arrays["baseline_test_probs"] = baseline_metrics(data, splits.index, names)
    meta = volume_meta(data, idx)
    if run.main:
        from stvit.training.stats import run_statistics  # scipy, only when the statistics are computed

        n = cfg.train.permutations
        metrics["stats"] = run_statistics(y, probs, len(names), meta, arrays.get("baseline_test_probs"), n_perm=n,
                                          n_boot=n, seed=cfg.train.seed)
    if provenance is not None:
        metrics["provenance"] = provenance
    run.write_arrays("predictions.npz", test_probs=probs, test_labels=y, test_index=idx, val_probs=v_probs,
                     val_labels=v_y, val_index=splits.index["val"], **arrays,
                     **{f"test_{k}": v for k, v in meta.items()})
    run.write_json("metrics.json", metrics)

    def draw(folder):
        from stvit.training.figures import plot_confusion  # matplotlib, only when figures are drawn

        plot_confusion(metrics["test"]["confusion_matrix"], names, folder / "confusion_matrix.png",
                       f"test, best epoch {metrics['best_epoch']}")

    run.write_figure(draw)
    return metrics


def result_line(m: dict) -> str:
    """The model's test metrics (with balanced accuracy, chance and the permutation test's p when metrics.json has
    statistics) beside the baseline's, on one line (what a run ends with)."""
    def scores(t, extra=""):
        auc = "n/a" if t["roc_auc"] is None else f"{t['roc_auc']:.3f}"
        lost = f", {t['n_nonfinite']} without a finite prediction" if t.get("n_nonfinite") else ""
        return f"accuracy {t['accuracy']:.3f}{extra}, ROC-AUC {auc}{lost}"

    s = m.get("stats")
    extra = ""
    if s is not None:
        from stvit.training.stats import fmt_p

        perm = s.get("permutation")
        extra = (f" (balanced {s['balanced_accuracy']:.3f}; chance {s['chance']['majority']:.3f}, "
                 + (f"permutation {fmt_p(perm['p'], None)}" if perm else "no permutation test") + ")")
    line = (f"test: {scores(m['test'], extra)} on {m['test']['n']} volumes (best epoch {m['best_epoch']} by "
            f"{m['selected_on']} accuracy; val accuracy {m['val']['accuracy']:.3f})")
    b = m.get("baseline")
    if b is not None:
        line += f" | baseline (logistic regression, C {b['C']:g}): {scores(b)}"
    for w in m.get("warnings", []):  # the gist of each (stderr and metrics.json "warnings" have them whole)
        head, _, text = w.partition(": ")
        line += f" | {head}: {text.split('. ')[0].split(': ')[0]}"
    return line

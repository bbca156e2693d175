"""The statistics a decoding result is reported with: chance, balanced accuracy, accuracy per subject, tests against
chance that respect the design's blocks, the model against its baseline, and across folds the corrected resampled
t-test. Pure numpy/scipy; every result is a plain dict that is strict JSON (None where a number is undefined).

Conventions (nilearn, PyMVPA, BrainIAK; Varoquaux et al. 2017, "Assessing and tuning brain decoders"):
- Chance: the majority rate of the test labels (what always answering the commonest class scores) is the chance
  level the tests use: it is the higher, so the conservative, of the two; 1/k is reported beside it.
- The unit of the data is the subject: volumes of one subject are not independent. Intervals resample subjects
  (a cluster bootstrap; runs when the data hold a single subject), so an accuracy or ROC-AUC interval stays inside
  [0, 1] by construction; a t-interval on a bounded mean would not.
- Permutation test against chance (Ojala & Garriga 2010; Winkler et al. 2014 on exchangeability blocks): the
  trained classifier's test predictions are fixed and the test labels are permuted, never across subjects. What
  is exchangeable under the null in a block design is the assignment of conditions to whole blocks within a run,
  not the label of each volume: neighbouring volumes share the slow haemodynamic response and the noise, so a
  volume-wise shuffle gives a null that is too narrow and a p-value that is too small. `exchangeability_blocks`
  therefore builds condition blocks (consecutive volumes of one run with one label) when the data carry onsets or
  frame indices, and permutes the labels of whole blocks among the blocks of the same subject and run; with
  subjects (and runs) but no timing it can only shuffle volumes within subject (and run), and says so in a caveat.
  p = (1 + #{null >= observed}) / (1 + n_permutations) (Phipson & Smyth 2010): never 0.
- Model against baseline on the same test volumes: the exact McNemar test (a binomial test on the discordant
  volumes; it assumes independent volumes) and the difference in accuracy with a percentile interval from
  resampling subjects, which does not.
- Across folds: the corrected resampled t-test of Nadeau & Bengio (2003), whose variance is inflated by
  (1/K + n_test/n_train) because folds share training data, beside the plain paired t-test.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import special
from scipy import stats as st

ALPHA = 0.05  # what "above chance" means in the sentences
N_PERMUTATIONS = 10_000
N_BOOTSTRAP = 10_000
LEVEL = 0.95
CHUNK = 1 << 22  # elements of a (permutations, units) matrix per pass: ~16 MB of int32 indices
HISTOGRAM_BINS = 40
VOLUME_CAVEAT = ("labels were shuffled volume by volume: neighbouring fMRI volumes are not independent, so this "
                 "null is too narrow and its p-value optimistic; onsets or frame indices per run (a packed data "
                 "file's metadata) allow whole condition blocks to be permuted instead")
BLOCK_ASSUMPTION = ("the conditions of a run's blocks are taken to be exchangeable: exact when their order was "
                    "randomized, the usual approximation for a fixed or counterbalanced order")


# --- small helpers ----------------------------------------------------------------------------------------------------

def number(x: Any) -> float | None:
    """A finite float, or None (strict JSON has no NaN or Infinity)."""
    return float(x) if x is not None and math.isfinite(x) else None


def interval(values: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """The percentile interval [lo, hi] of the finite values (R,), or None when there are none."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def predictions(probs: np.ndarray) -> np.ndarray:
    """(N,) int64 predicted class of probabilities (N, C); -1 (no prediction, always wrong) where a row is not finite,
    as `stvit.training.metrics` counts them."""
    probs = np.asarray(probs, np.float64)
    finite = np.isfinite(probs).all(axis=1)
    return np.where(finite, np.nan_to_num(probs).argmax(axis=1), -1)


def codes(*columns: np.ndarray | None) -> np.ndarray | None:
    """(N,) int64 id of each distinct combination of the given per-volume columns (None columns left out); None
    when every column is None."""
    cols = [np.asarray(c).astype(str) for c in columns if c is not None]
    if not cols:
        return None
    key = cols[0]
    for c in cols[1:]:
        key = np.char.add(np.char.add(key, "\x1f"), c)
    return np.unique(key, return_inverse=True)[1].astype(np.int64).ravel()


# --- accuracy and chance ----------------------------------------------------------------------------------------------

def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean over the classes present in y (N,) of their recall (scikit-learn's `balanced_accuracy_score`; a
    prediction of -1 counts as wrong)."""
    y, pred = np.asarray(y), np.asarray(pred)
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def chance_levels(y: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Chance of the test labels y (N,): the majority rate (used by the tests) and 1/k (beside it)."""
    counts = np.bincount(np.asarray(y, np.int64), minlength=num_classes)
    return {"majority": float(counts.max() / counts.sum()), "majority_class": int(counts.argmax()),
            "uniform": 1.0 / num_classes, "k": int(num_classes), "used": "majority",
            "why": "the majority rate is what always answering the commonest test class scores; it is >= 1/k, so "
                   "testing against it is the conservative choice"}


def binomial_test(n_correct: int, n: int, chance: float) -> dict[str, Any]:
    """Exact one-sided binomial test of n_correct of n against `chance` (scipy.stats.binomtest). It takes the volumes
    as independent: a reference beside the block permutation test, not a substitute for it."""
    p = st.binomtest(int(n_correct), int(n), float(chance), alternative="greater").pvalue
    return {"n_correct": int(n_correct), "n": int(n), "chance": float(chance), "p": float(p),
            "method": "exact binomial test, one-sided (accuracy > chance), against the majority rate; it treats "
                      "volumes as independent"}


# --- the grouping unit ------------------------------------------------------------------------------------------------

@dataclass
class Units:
    """The unit that intervals resample and that per-unit accuracy is given for."""

    code: np.ndarray  # (N,) int64 in [0, n): each volume's unit
    ids: list[str]  # (n,) the units' names
    name: str  # "subjects", "runs" (one subject) or "volumes" (nothing known)

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def singular(self) -> str:
        return self.name[:-1]


def units_of(meta: Mapping[str, np.ndarray | None], n: int) -> Units:
    """The test subjects; the runs (session and run) when the volumes are of one subject; the volumes themselves when
    neither is known. `meta`: per-volume (n,) arrays under the keys subject, session, run (each optional)."""
    subject, session, run = (meta.get(k) for k in ("subject", "session", "run"))
    if subject is not None and len(np.unique(np.asarray(subject).astype(str))) >= 2:
        ids, code = np.unique(np.asarray(subject).astype(str), return_inverse=True)
        return Units(code.astype(np.int64).ravel(), ids.tolist(), "subjects")
    runs = codes(session, run)
    if runs is not None and runs.max() >= 1:
        parts = [np.asarray(c).astype(str) for c in (session, run) if c is not None]
        names = np.array(["/".join(t) for t in zip(*parts)])
        ids = [str(names[runs == r][0]) for r in range(runs.max() + 1)]
        return Units(runs, ids, "runs")
    return Units(np.arange(n, dtype=np.int64), [str(i) for i in range(n)], "volumes")


def unit_accuracy(y: np.ndarray, pred: np.ndarray, units: Units) -> dict[str, Any]:
    """Accuracy of each unit and their mean, sd (ddof 1), min and max over the units (each unit weighs the same)."""
    correct = (np.asarray(pred) == np.asarray(y)).astype(np.float64)
    n_u = np.bincount(units.code, minlength=units.n)
    acc = np.bincount(units.code, weights=correct, minlength=units.n) / n_u
    return {"unit": units.name, "n": units.n, "mean": float(acc.mean()),
            "sd": float(acc.std(ddof=1)) if units.n >= 2 else None, "min": float(acc.min()), "max": float(acc.max()),
            "rows": [{"id": units.ids[i], "n": int(n_u[i]), "accuracy": float(acc[i])} for i in range(units.n)]}


# --- exchangeability blocks -------------------------------------------------------------------------------------------

@dataclass
class Blocks:
    """What a permutation moves and within what: labels of whole units (condition blocks, or single volumes) are
    permuted among the units of one group (a subject's run, a subject, or the whole test set)."""

    unit: np.ndarray  # (N,) int64 in [0, B): each volume's unit; one label per unit
    group: np.ndarray  # (B,) int64: each unit's group
    kind: str  # "blocks" or "volumes"
    within: str  # "subject and run", "subject", "the whole test set" (what a group is)
    caveat: str | None

    def describe(self) -> dict[str, Any]:
        return {"units": self.kind, "n_units": int(len(self.group)), "within": self.within,
                "n_groups": int(len(np.unique(self.group))), "caveat": self.caveat,
                "assumption": BLOCK_ASSUMPTION if self.kind == "blocks" else None}


def exchangeability_blocks(y: np.ndarray, meta: Mapping[str, np.ndarray | None] | None = None,
                           gap: float | None = None) -> Blocks:
    """The exchangeability blocks of test volumes with labels y (N,) and per-volume metadata `meta` (subject,
    session, run, onset in s, volume = frame index in its run; each optional, (N,) arrays).

    Groups: subject x session x run when runs are known, else subject, else the whole set. Units: when timing is
    known (onset, else the frame index) and unique within each group, condition blocks: volumes of a group in time
    order, a new block at every change of label and wherever the time step exceeds `gap` (default: 1.5 times the
    median step within groups, the repetition time, so that two blocks of one condition separated by excluded
    fixation volumes stay two blocks). Otherwise each volume is its own unit, with `VOLUME_CAVEAT`."""
    meta = dict(meta or {})
    y = np.asarray(y, np.int64)
    n = len(y)
    subject = meta.get("subject")
    has_run = meta.get("run") is not None or meta.get("session") is not None
    group = codes(subject, meta.get("session"), meta.get("run"))
    within = ("subject and run" if subject is not None else "run") if has_run else \
        ("subject" if subject is not None else "the whole test set")
    group = np.zeros(n, np.int64) if group is None else group
    time_ = meta.get("onset") if meta.get("onset") is not None else meta.get("volume")
    if time_ is not None:
        t = np.asarray(time_, np.float64)
        order = np.lexsort((t, group))
        g, ts, ys = group[order], t[order], y[order]
        same = g[1:] == g[:-1]
        step = np.diff(ts)
        if np.all(step[same] > 0):  # unique times within each group: one timeline per group
            if gap is None:
                gap = 1.5 * float(np.median(step[same])) if same.any() else math.inf
            new = np.r_[True, ~same | (ys[1:] != ys[:-1]) | (step > gap)]
            unit = np.empty(n, np.int64)
            unit[order] = np.cumsum(new) - 1
            return Blocks(unit, g[new], "blocks", within, None)
        caveat = "times are missing or repeat within a group (runs not known?); " + VOLUME_CAVEAT
    else:
        caveat = VOLUME_CAVEAT
    return Blocks(np.arange(n, dtype=np.int64), group, "volumes", within, caveat)


def log10_arrangements(labels: np.ndarray, group: np.ndarray) -> float:
    """log10 of the number of distinct label arrangements the permutations can reach: the product over groups of
    the multinomial coefficient of the group's unit labels (labels, group: (B,))."""
    total = 0.0
    for g in np.unique(group):
        counts = np.bincount(labels[group == g])
        total += special.gammaln(counts.sum() + 1) - special.gammaln(counts + 1).sum()
    return float(total / math.log(10))


def permute_sorted(values: np.ndarray, group: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """(n_perm, B) `values` (B,) of the units, shuffled within their groups (group: (B,)) independently in every row,
    with the units in group order: column j is unit `np.argsort(group, kind="stable")[j]`. Each group is a
    contiguous slice shuffled row by row (`Generator.permuted`): a loop over groups, none over permutations."""
    order = np.argsort(group, kind="stable")
    g, v = group[order], values[order]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
    out = np.empty((n_perm, len(group)), values.dtype)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        out[:, lo:hi] = rng.permuted(np.broadcast_to(v[lo:hi], (n_perm, hi - lo)), axis=1)
    return out


def permutation_indices(group: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """(n_perm, B) int32: in permutation p, unit b takes the label of unit idx[p, b], always a unit of b's own group
    (group: (B,)): `permute_sorted` of the unit numbers, back in unit order."""
    idx = np.empty((n_perm, len(group)), np.int32)
    idx[:, np.argsort(group, kind="stable")] = permute_sorted(np.arange(len(group), dtype=np.int32), group, n_perm,
                                                              rng)
    return idx


def permuted_labels(y: np.ndarray, blocks: Blocks, seed: int | Sequence[int]) -> np.ndarray:
    """(N,) one permutation of the labels y within `blocks`, a function of `seed` alone (for a cross-validation
    rerun on permuted labels: permutation i of a resumable null uses seed (base, i))."""
    labels = unit_labels(y, blocks)
    idx = permutation_indices(blocks.group, 1, np.random.default_rng(seed))[0]
    return labels[idx][blocks.unit]


def unit_labels(y: np.ndarray, blocks: Blocks) -> np.ndarray:
    """(B,) the label of each unit (every volume of a unit has it)."""
    labels = np.empty(len(blocks.group), np.int64)
    labels[blocks.unit] = y
    return labels


# --- tests against chance ---------------------------------------------------------------------------------------------

def null_summary(null: np.ndarray, observed: float) -> dict[str, Any]:
    """Mean, sd, 95th and 99th percentiles, max and a histogram (edges, counts) of a null distribution (P,), with
    p = (1 + #{null >= observed}) / (1 + P)."""
    null = np.asarray(null, np.float64)
    values, counts = np.unique(null, return_counts=True)
    if 2 <= len(values) <= 2 * HISTOGRAM_BINS:  # a discrete null (accuracy = count / N): one bar per value
        half = np.diff(values).min() / 2
        edges = np.r_[values[0] - half, (values[1:] + values[:-1]) / 2, values[-1] + half]
    else:
        counts, edges = np.histogram(null, bins=HISTOGRAM_BINS)
    return {"p": float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null))), "n_permutations": int(len(null)),
            "mean": float(null.mean()), "sd": float(null.std(ddof=1)) if len(null) > 1 else None,
            "q95": float(np.quantile(null, 0.95)), "q99": float(np.quantile(null, 0.99)), "max": float(null.max()),
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}


def permutation_null(y: np.ndarray, pred: np.ndarray, blocks: Blocks, n_perm: int, seed: int) -> np.ndarray:
    """(n_perm,) int64 numbers of correct predictions pred (N,) under labels y (N,) permuted within `blocks`.

    Per unit b and class c, hits[b, c] = #{volumes of b predicted c}; a permutation giving unit b the label L[b']
    scores sum_b hits[b, L[b']]: for each class, a (P, B) indicator times a (B,) vector, in chunks of permutations."""
    num_classes = int(max(y.max(), pred.max())) + 1
    B = len(blocks.group)
    valid = pred >= 0  # -1: no prediction, never a hit
    hits = np.bincount(blocks.unit[valid] * num_classes + pred[valid], minlength=B * num_classes)
    order = np.argsort(blocks.group, kind="stable")  # `permute_sorted`'s column order
    hits = hits.reshape(B, num_classes)[order].astype(np.float32)  # counts < 2^24: exact in float32
    labels = unit_labels(y, blocks).astype(np.int8 if num_classes < 128 else np.int64)
    rng = np.random.default_rng(seed)
    out = np.empty(n_perm, np.int64)
    step = max(1, CHUNK // max(B, 1))
    for s in range(0, n_perm, step):
        lp = permute_sorted(labels, blocks.group, min(step, n_perm - s), rng)  # (P, B) permuted unit labels
        score = sum((lp == c).astype(np.float32) @ hits[:, c] for c in range(num_classes))
        out[s:s + len(score)] = np.rint(score)
    return out


def permutation_test(y: np.ndarray, pred: np.ndarray, blocks: Blocks, n_perm: int = N_PERMUTATIONS,
                     seed: int = 0) -> dict[str, Any]:
    """Permutation test of the accuracy of fixed predictions pred (N,) against chance: the labels y (N,) permuted
    within `blocks` n_perm times; one-sided, p = (1 + #{null >= observed}) / (1 + n_perm)."""
    t0 = time.perf_counter()
    y, pred = np.asarray(y, np.int64), np.asarray(pred, np.int64)
    null = permutation_null(y, pred, blocks, n_perm, seed) / len(y)
    observed = float(np.mean(pred == y))
    return {"statistic": "accuracy", "observed": observed, **null_summary(null, observed), "seed": int(seed),
            **blocks.describe(),
            "log10_arrangements": log10_arrangements(unit_labels(y, blocks), blocks.group),
            "seconds": round(time.perf_counter() - t0, 3)}


def refit_null(fit_predict: Callable[[np.ndarray], np.ndarray], y_train: np.ndarray, train_blocks: Blocks,
               y_test: np.ndarray, observed: float, n_perm: int = 100, seed: int = 0) -> dict[str, Any]:
    """Permutation null of a classifier fitted again on each permutation (a linear baseline is cheap to refit): the
    training labels y_train (N_train,) permuted within `train_blocks`; fit_predict(labels (P, N_train)) returns the
    test predictions (P, N_test), scored against y_test. p as in `permutation_test`, against the `observed` accuracy
    of the fit on the true labels."""
    t0 = time.perf_counter()
    labels = unit_labels(np.asarray(y_train, np.int64), train_blocks)
    idx = permutation_indices(train_blocks.group, n_perm, np.random.default_rng(seed))
    null = np.mean(np.asarray(fit_predict(labels[idx][:, train_blocks.unit])) == np.asarray(y_test), axis=1)
    seconds = time.perf_counter() - t0
    return {"statistic": "accuracy", "observed": float(observed), **null_summary(null, observed), "seed": int(seed),
            **train_blocks.describe(), "refit": True, "seconds": round(seconds, 3),
            "seconds_per_permutation": round(seconds / max(n_perm, 1), 4)}


def permuted_label_matrix(y: np.ndarray, blocks: Blocks, seeds: Sequence[Any]) -> np.ndarray:
    """(P, N) the labels y (N,) permuted within `blocks`, row i as `permuted_labels(y, blocks, seeds[i])`."""
    return np.stack([permuted_labels(y, blocks, s) for s in seeds]) if len(seeds) else np.empty((0, len(y)), np.int64)


def cv_refit_null(folds: Sequence[tuple[Callable[[np.ndarray], np.ndarray], np.ndarray, np.ndarray]], y: np.ndarray,
                  blocks: Blocks, observed: float, seeds: Sequence[Any]) -> dict[str, Any]:
    """The cross-validated permutation null of a classifier refitted in every fold: permutation i permutes the
    labels y (N,) of the whole pool within `blocks` (`permuted_labels(y, blocks, seeds[i])`, the labels of the
    model's cross-validated permutation i), and in each fold (fit_predict, training rows, test rows) the fit to
    the permuted training labels predicts the test rows, scored against their permuted labels; the statistic is the
    pooled accuracy over the folds' test rows, against the `observed` one of the fits to the true labels."""
    t0 = time.perf_counter()
    L = permuted_label_matrix(np.asarray(y, np.int64), blocks, seeds)  # (P, N)
    correct, total = np.zeros(len(L)), 0
    for fit_predict, train, test in folds:
        correct += np.sum(np.asarray(fit_predict(L[:, train])) == L[:, test], axis=1)
        total += len(test)
    null = correct / total
    seconds = time.perf_counter() - t0
    return {"statistic": "cross-validated accuracy", "observed": float(observed), **null_summary(null, observed),
            **blocks.describe(), "refit": True, "seconds": round(seconds, 3),
            "seconds_per_permutation": round(seconds / max(len(L), 1), 4)}


# --- intervals and the paired comparison ------------------------------------------------------------------------------

def bootstrap_weights(units: Units, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_units) how many times each unit is drawn in each resample (units drawn with replacement, as many
    as there are: a multinomial count per replicate)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(units.n, np.full(units.n, 1.0 / units.n), size=n_boot).astype(np.float64)


def replicate_accuracy(weights: np.ndarray, correct: np.ndarray, units: Units) -> np.ndarray:
    """(R,) accuracy of each resample: correct volumes over volumes of the drawn units (a ratio of counts, so within
    [0, 1]); weights (R, n_units), correct (N,) bool."""
    hits = np.bincount(units.code, weights=correct.astype(np.float64), minlength=units.n)
    sizes = np.bincount(units.code, minlength=units.n).astype(np.float64)
    return (weights @ hits) / (weights @ sizes)


def replicate_auc(weights: np.ndarray, y: np.ndarray, score: np.ndarray, units: Units) -> np.ndarray:
    """(R,) ROC-AUC of each resample (binary labels y (N,), score (N,) for class 1; non-finite scores left out): the
    Mann-Whitney statistic with each volume weighted by its unit's draw count. Volumes sorted by score once; per
    replicate, the negative weight below each tie group plus half the one inside it, summed over positives, over
    (positive weight) x (negative weight). Chunks of replicates bound the (R, N) temporaries."""
    keep = np.isfinite(score)
    order = np.argsort(score[keep], kind="stable")
    s, pos, code = score[keep][order], (y[keep] == 1)[order], units.code[keep][order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # (U,) first volume of each tie group
    out = np.empty(len(weights))
    step = max(1, CHUNK // max(len(s), 1))
    for r in range(0, len(weights), step):
        w = weights[r:r + step][:, code]  # (r, N) each volume's weight
        wpos, wneg = np.add.reduceat(w * pos, starts, axis=1), np.add.reduceat(w * ~pos, starts, axis=1)  # (r, U)
        below = np.cumsum(wneg, axis=1) - wneg
        with np.errstate(invalid="ignore", divide="ignore"):
            out[r:r + step] = (wpos * (below + 0.5 * wneg)).sum(1) / (wpos.sum(1) * wneg.sum(1))
    return out


def accuracy_interval(y: np.ndarray, pred: np.ndarray, units: Units, score: np.ndarray | None = None,
                      n_boot: int = N_BOOTSTRAP, seed: int = 0, level: float = LEVEL) -> dict[str, Any]:
    """Percentile intervals of accuracy (and ROC-AUC from `score`, binary labels only) by resampling units with
    replacement (a cluster bootstrap): each lies in [0, 1] by construction. None when there is one unit."""
    out = {"level": level, "unit": units.name, "n_units": units.n, "n_boot": int(n_boot), "seed": int(seed),
           "method": f"percentile bootstrap, resampling {units.name} with replacement", "accuracy": None,
           "roc_auc": None}
    if units.n < 2:
        return {**out, "method": f"none: one of {units.name}, nothing to resample"}
    if n_boot == 0:
        return {**out, "method": "none: no resamples asked for (train.permutations 0)"}
    w = bootstrap_weights(units, n_boot, seed)
    out["accuracy"] = interval(replicate_accuracy(w, np.asarray(pred) == np.asarray(y), units), level)
    if score is not None and set(np.unique(y)) <= {0, 1}:
        out["roc_auc"] = interval(replicate_auc(w, np.asarray(y), np.asarray(score, np.float64), units), level)
    return out


def mcnemar(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> dict[str, Any]:
    """Exact McNemar test of two classifiers on the same volumes: the two-sided binomial test (p = 1/2) of the
    volumes only a got right among the discordant ones. p = 1 without discordant volumes."""
    a, b = np.asarray(pred_a) == y, np.asarray(pred_b) == y
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    p = st.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"only_first": only_a, "only_second": only_b, "p": float(p),
            "method": "exact McNemar: two-sided binomial test on the discordant volumes"}


def paired_comparison(y: np.ndarray, pred: np.ndarray, pred_baseline: np.ndarray, units: Units,
                      n_boot: int = N_BOOTSTRAP, seed: int = 0, level: float = LEVEL) -> dict[str, Any]:
    """Model against baseline on the same test volumes (all (N,)): the difference in accuracy (model - baseline) with
    a percentile interval from resampling units (the difference may be negative: nothing is clipped), the baseline's
    accuracy interval from the same resamples, and the exact McNemar test."""
    y, pred, pred_baseline = (np.asarray(a) for a in (y, pred, pred_baseline))
    m, b = pred == y, pred_baseline == y
    out = {"model_accuracy": float(m.mean()), "baseline_accuracy": float(b.mean()),
           "baseline_balanced_accuracy": balanced_accuracy(y, pred_baseline),
           "difference": float(m.mean() - b.mean()), "ci": None, "baseline_ci": None, "level": level,
           "unit": units.name, "n_units": units.n, "n_boot": int(n_boot), "seed": int(seed),
           "method": f"percentile bootstrap, resampling {units.name} with replacement",
           "mcnemar": mcnemar(y, pred, pred_baseline)}
    if units.n >= 2 and n_boot > 0:
        w = bootstrap_weights(units, n_boot, seed)
        acc_m, acc_b = replicate_accuracy(w, m, units), replicate_accuracy(w, b, units)
        out.update(ci=interval(acc_m - acc_b, level), baseline_ci=interval(acc_b, level))
    return out


def fold_mean_intervals(y: np.ndarray, fold: np.ndarray, units: Units, scores: Mapping[str, tuple[np.ndarray,
                        np.ndarray | None]], n_boot: int = N_BOOTSTRAP, seed: int = 0,
                        level: float = LEVEL) -> dict[str, Any]:
    """Percentile intervals of the mean over folds of the folds' test accuracy and ROC-AUC, for each classifier of
    `scores` ({name: (predictions (N,), score of class 1 (N,) or None)}) and, with two classifiers, for their paired
    difference (first - second). Each replicate resamples the test units of every fold with replacement within that
    fold (every unit lies in one fold's test part), the folds' trained models held fixed: the intervals bound the
    test sampling, not the training's variation; a mean of accuracies or ROC-AUCs stays within [0, 1].
    y, fold (N,): labels, fold in [0, K)."""
    y, fold = np.asarray(y), np.asarray(fold, np.int64)
    k = int(fold.max()) + 1
    names = list(scores)
    out = {"level": level, "unit": units.name, "n_boot": int(n_boot), "seed": int(seed),
           "method": f"percentile bootstrap of the mean over folds, resampling {units.name} within each fold",
           **{n: {"accuracy": None, "roc_auc": None} for n in names}}
    if len(names) == 2:
        out["difference"] = {"accuracy": None, "roc_auc": None}
    if n_boot == 0:
        return {**out, "method": "none: no resamples asked for"}
    reps = {(n, m): np.zeros(n_boot) for n in names for m in ("accuracy", "roc_auc")}
    binary = set(np.unique(y)) <= {0, 1}
    for f in range(k):
        rows = fold == f
        ids, code = np.unique(units.code[rows], return_inverse=True)
        part = Units(code.astype(np.int64).ravel(), [units.ids[i] for i in ids], units.name)
        w = bootstrap_weights(part, n_boot, seed + f)
        for n, (pred, score) in scores.items():
            reps[n, "accuracy"] += replicate_accuracy(w, np.asarray(pred)[rows] == y[rows], part) / k
            auc = replicate_auc(w, y[rows], np.asarray(score, np.float64)[rows], part) \
                if score is not None and binary else np.full(n_boot, np.nan)
            reps[n, "roc_auc"] += auc / k
    for m in ("accuracy", "roc_auc"):
        for n in names:
            out[n][m] = interval(reps[n, m], level)
        if len(names) == 2:
            out["difference"][m] = interval(reps[names[0], m] - reps[names[1], m], level)
    return out


# --- across folds -----------------------------------------------------------------------------------------------------

def ttest_row(mean: float, var_of_mean: float, df: int, level: float) -> dict[str, Any]:
    """t, two-sided p and the interval mean +- t(level) * se for a mean with the given variance; None where the
    variance is 0 (every fold gave the same difference)."""
    se = math.sqrt(var_of_mean)
    half = st.t.ppf((1 + level) / 2, df) * se
    t = mean / se if se > 0 else None
    return {"t": number(t), "df": int(df), "p": None if t is None else float(2 * st.t.sf(abs(t), df)),
            "se": se, "ci": [mean - half, mean + half] if se > 0 else None}


def corrected_ttest(diffs: Sequence[float], n_train: float | Sequence[float], n_test: float | Sequence[float],
                    level: float = LEVEL) -> dict[str, Any]:
    """Corrected resampled t-test (Nadeau & Bengio 2003, Machine Learning 52:239) of per-fold differences (K,), e.g.
    model accuracy - baseline accuracy, beside the plain paired t-test.

    Plain: t = mean / sqrt(s^2 / K). Corrected: t = mean / sqrt((1/K + n_test/n_train) s^2), where s^2 is the sample
    variance (ddof 1) of the K differences and n_test/n_train the ratio of test to training volumes (averaged over
    folds when they differ): the folds' training sets overlap, so their scores are correlated and s^2 / K is too
    small. Both with K - 1 degrees of freedom, two-sided p. The interval of the corrected row is unbounded like any
    t-interval, fit for a difference; bounded accuracies get `accuracy_interval`."""
    d = np.asarray(diffs, np.float64)
    k = len(d)
    ratio = float(np.mean(n_test) / np.mean(n_train))
    mean = float(d.mean())
    var = float(d.var(ddof=1)) if k >= 2 else math.nan
    out = {"k": k, "mean": mean, "sd": number(math.sqrt(var)) if k >= 2 else None, "n_train": float(np.mean(n_train)),
           "n_test": float(np.mean(n_test)), "test_train_ratio": ratio, "level": level,
           "corrected": None, "plain": None,
           "method": "corrected resampled t-test (Nadeau & Bengio 2003): variance x (1/K + n_test/n_train)"}
    if k >= 2:
        out["corrected"] = {**ttest_row(mean, (1 / k + ratio) * var, k - 1, level), "variance_factor": 1 / k + ratio}
        out["plain"] = {**ttest_row(mean, var / k, k - 1, level), "variance_factor": 1 / k}
    return out


# --- one run, one cross-validation ------------------------------------------------------------------------------------

def run_statistics(y: np.ndarray, probs: np.ndarray, num_classes: int,
                   meta: Mapping[str, np.ndarray | None] | None = None, baseline_probs: np.ndarray | None = None,
                   n_perm: int = N_PERMUTATIONS, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """Every statistic of one test set: labels y (N,), class probabilities probs (N, C) of the model (and of the
    baseline), per-volume `meta` (subject, session, run, onset, volume; each optional, (N,)). The layout of
    metrics.json's `stats` (see the module's docstring for the methods). n_perm 0: no permutation test
    (`permutation` None); n_boot 0: no intervals."""
    t0 = time.perf_counter()
    meta = dict(meta or {})
    y = np.asarray(y, np.int64)
    pred = predictions(probs)
    units = units_of(meta, len(y))
    chance = chance_levels(y, num_classes)
    n_correct = int(np.sum(pred == y))
    score = np.asarray(probs, np.float64)[:, 1] if num_classes == 2 else None
    out = {"n": int(len(y)), "n_correct": n_correct, "accuracy": n_correct / len(y),
           "balanced_accuracy": balanced_accuracy(y, pred), "chance": chance,
           "units": {"name": units.name, "n": units.n},
           "per_unit": unit_accuracy(y, pred, units) if units.name != "volumes" else None,
           "interval": accuracy_interval(y, pred, units, score, n_boot, seed),
           "binomial": binomial_test(n_correct, len(y), chance["majority"]),
           "permutation": permutation_test(y, pred, exchangeability_blocks(y, meta), n_perm, seed) if n_perm else None,
           "baseline": None}
    if baseline_probs is not None:
        out["baseline"] = paired_comparison(y, pred, predictions(baseline_probs), units, n_boot, seed)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def cv_statistics(y: np.ndarray, probs: np.ndarray, fold: np.ndarray, num_classes: int, n_train: Sequence[int],
                  meta: Mapping[str, np.ndarray | None] | None = None, baseline_probs: np.ndarray | None = None,
                  n_perm: int = N_PERMUTATIONS, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """Every statistic of a cross-validation from its pooled test predictions: labels y (N,), probabilities (N, C),
    fold (N,) int in [0, K) of each volume, n_train (K,) training volumes of each fold, `meta` as in
    `run_statistics`. Per fold and pooled: `run_statistics`; the pooled accuracy's interval resamples subjects of
    the pooled predictions (bounded), its permutation test holds the predictions fixed (a refitting null is
    `--permutations`); `fold_mean`: intervals of the mean over folds (`fold_mean_intervals`); model against
    baseline across folds: `corrected_ttest` of the per-fold differences."""
    meta = {k: None if v is None else np.asarray(v) for k, v in dict(meta or {}).items()}
    fold = np.asarray(fold, np.int64)
    k = int(fold.max()) + 1
    per_fold = []
    for f in range(k):
        rows = fold == f
        per_fold.append(run_statistics(
            np.asarray(y)[rows], np.asarray(probs)[rows], num_classes,
            {key: None if v is None else v[rows] for key, v in meta.items()},
            None if baseline_probs is None else np.asarray(baseline_probs)[rows], n_perm, n_boot, seed + f + 1))
    out = {"k": k, "folds": per_fold,
           "pooled": run_statistics(y, probs, num_classes, meta, baseline_probs, n_perm, n_boot, seed),
           "comparison": None}
    binary = num_classes == 2
    scores = {"model": (predictions(probs), np.asarray(probs, np.float64)[:, 1] if binary else None)}
    if baseline_probs is not None:
        scores["baseline"] = (predictions(baseline_probs),
                              np.asarray(baseline_probs, np.float64)[:, 1] if binary else None)
    out["fold_mean"] = fold_mean_intervals(y, fold, units_of(meta, len(fold)), scores, n_boot, seed)
    if baseline_probs is not None:
        diffs = [s["baseline"]["difference"] for s in per_fold]
        n_test = [s["n"] for s in per_fold]
        out["comparison"] = corrected_ttest(diffs, n_train, n_test)
    return out


def cv_null(observed: float, null: Sequence[float], seconds_per_permutation: float | None = None) -> dict[str, Any]:
    """The cross-validated permutation test: `null` (P,) the cross-validated accuracy of each whole cross-validation
    rerun on labels permuted within blocks (`permuted_labels`), against the `observed` one."""
    return {"statistic": "cross-validated accuracy", "observed": float(observed),
            **null_summary(np.asarray(null, np.float64), observed), "refit": True,
            "seconds_per_permutation": number(seconds_per_permutation)}


# --- in words ---------------------------------------------------------------------------------------------------------

def fmt_p(p: float, floor: float | None = 0.001) -> str:
    """'p < 0.001' below `floor`, else 'p = ' and two decimals from 0.1 ('p = 0.80'), two significant digits below
    ('p = 0.045', 'p = 0.0001')."""
    if floor is not None and p < floor:
        return f"p < {floor:g}"
    if p >= 0.1:
        return f"p = {p:.2f}"
    return "p = " + np.format_float_positional(p, precision=2, unique=False, fractional=False, trim="-")


def fmt_range(ci: list[float] | None, digits: int = 2) -> str:
    return "n/a" if ci is None else f"{ci[0]:.{digits}f} to {ci[1]:.{digits}f}"


def where(s: dict[str, Any]) -> str:
    """'on 320 volumes of 20 subjects' (the volumes alone when no unit is known)."""
    units = s["units"]
    return f"on {s['n']:,} volumes" + ("" if units["name"] == "volumes" else f" of {units['n']} {units['name']}")


def against_chance(s: dict[str, Any], null: dict[str, Any] | None = None) -> str:
    """'above the chance level of 0.500 (exact binomial ...; block permutation ...)' of a `run_statistics` result;
    with a cross-validated `null`, that null decides and is named last."""
    perm, chance = s["permutation"], s["chance"]
    if perm is None and null is None:
        p = s["binomial"]["p"]
        return (f"{'above' if p < ALPHA else 'not distinguishable from'} the chance level of {chance['majority']:.3f} "
                f"(exact binomial {fmt_p(p)}, which takes volumes as independent; no permutation test was run)")
    if perm is None:
        return (f"{'above' if null['p'] < ALPHA else 'not distinguishable from'} the chance level of "
                f"{chance['majority']:.3f} (exact binomial {fmt_p(s['binomial']['p'])}; cross-validated null "
                f"{fmt_p(null['p'], None)}, {null['n_permutations']:,} cross-validations on permuted labels)")
    kind = "block" if perm["units"] == "blocks" else "volume"
    what = f"whole blocks within {perm['within']}" if perm["units"] == "blocks" else \
        f"volume labels within {perm['within']}"
    p = (null or perm)["p"]
    text = (f"{'above' if p < ALPHA else 'not distinguishable from'} the chance level of {chance['majority']:.3f} "
            f"(exact binomial {fmt_p(s['binomial']['p'])}; {kind} permutation {fmt_p(perm['p'], None)}, "
            f"{perm['n_permutations']:,} permutations of {what}"
            + ("; volumes are not independent, so this p is optimistic" if perm["caveat"] else ""))
    if null is not None:
        text += (f"; cross-validated null {fmt_p(null['p'], None)}, {null['n_permutations']:,} cross-validations on "
                 "permuted labels")
    return text + ")"


def sentence(s: dict[str, Any], baseline: str = "the logistic baseline") -> str:
    """One plain-English sentence of `run_statistics`' result."""
    per = s["per_unit"]
    text = (f"Test accuracy {s['accuracy']:.3f} (balanced {s['balanced_accuracy']:.3f}) {where(s)}, "
            f"{against_chance(s)}")
    if per is not None and per["sd"] is not None:
        text += (f"; per {per['unit'][:-1]} {per['mean']:.2f} ± {per['sd']:.2f} "
                 f"({per['min']:.2f}-{per['max']:.2f})")
    b = s.get("baseline")
    if b is not None:
        d = b["difference"]
        side = "above" if d > 0 else "below" if d < 0 else "level with"
        how = f"95% CI {fmt_range(b['ci'])} by resampling {b['unit']}, " if b["ci"] is not None else ""
        text += (f"; the model's accuracy is {abs(d):.2f} {side} {baseline}'s "
                 f"({how}McNemar {fmt_p(b['mcnemar']['p'])})")
    return text + "."


def cv_sentence(cv: dict[str, Any], baseline: str = "the logistic baseline") -> str:
    """One plain-English sentence of `cv_statistics`' result (and of the cross-validated null, `cv['null']`, when
    there is one: it then decides whether the accuracy is above chance)."""
    pooled = cv["pooled"]
    ci = pooled["interval"]
    how = f"; 95% CI {fmt_range(ci['accuracy'], 3)} by resampling {ci['unit']}" if ci["accuracy"] else ""
    text = (f"Cross-validated accuracy {pooled['accuracy']:.3f} (balanced {pooled['balanced_accuracy']:.3f}{how}) "
            f"over {cv['k']} folds "
            f"{where(pooled)}, {against_chance(pooled, cv.get('null'))}")
    c = cv.get("comparison")
    if c is not None and c["corrected"] is not None:
        corr, plain = c["corrected"], c["plain"]
        side = "above" if c["mean"] > 0 else "below" if c["mean"] < 0 else "level with"
        t_c = "n/a" if corr["p"] is None else fmt_p(corr["p"], None)
        t_p = "n/a" if plain["p"] is None else fmt_p(plain["p"], None)
        text += (f"; the model is {abs(c['mean']):.2f} {side} {baseline} on average over folds "
                 f"(corrected resampled t-test {t_c}, 95% CI {fmt_range(corr['ci'])}; the plain paired t-test, "
                 f"which ignores the folds' shared training data, gives {t_p})")
    return text + "."

"""The statistics of `stvit.training.stats` (and the baseline's refit for its null) on data with a known answer:
uniform p-values when predictions are independent of the labels, the smallest p for a perfect classifier, no label
moved across subjects or runs, the exact null of a tiny case, the corrected t-test worked by hand, bounded intervals,
McNemar as scipy's binomial test, strict JSON everywhere, and the time of 10,000 permutations."""
from __future__ import annotations

import itertools
import json
import math
import time

import numpy as np
import pytest
from scipy import stats as st
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from stvit.training import baseline as B
from stvit.training import stats as S

TR = 0.72  # s, HCP's repetition time


def block_design(rng, subjects=6, runs=2, blocks=6, length=8, fixation=5):
    """A block design: per subject and run, `blocks` condition blocks of `length` volumes (half of each condition,
    in random order: the exchangeable null holds by construction), separated by `fixation` volumes that are not in
    the data (so consecutive blocks of one condition are two blocks). Returns labels (N,) and the metadata."""
    subject, run, onset, y = [], [], [], []
    for s, r in itertools.product(range(subjects), range(runs)):
        t = 0.0
        for label in rng.permutation(np.repeat([0, 1], blocks // 2)):
            for _ in range(length):
                subject.append(f"sub-{s:02d}"), run.append(f"run-{r}"), onset.append(t), y.append(label)
                t += TR
            t += fixation * TR
    return np.array(y), {"subject": np.array(subject), "run": np.array(run), "onset": np.array(onset)}


def smooth_predictions(rng, n, stretch=8):
    """(n,) 0/1 predictions constant over random stretches (mean length `stretch`): autocorrelated like a
    classifier's output on neighbouring volumes, and independent of any labels."""
    return (np.cumsum(rng.random(n) < 1 / stretch) + rng.integers(0, 2)) % 2


def strict_json(x):
    """x survives strict JSON (no NaN, no Infinity) unchanged."""
    text = json.dumps(x, allow_nan=False)
    assert json.loads(text) == x
    return text


# --- accuracy, chance, units ------------------------------------------------------------------------------------------

def test_balanced_accuracy_and_chance_levels():
    """Balanced accuracy is scikit-learn's; chance is the majority rate (0.75 here), with 1/k = 0.5 beside it; a
    prediction of -1 (no finite probabilities) counts as wrong."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30, int), np.ones(10, int)]
    pred = rng.integers(0, 2, 40)
    assert S.balanced_accuracy(y, pred) == pytest.approx(balanced_accuracy_score(y, pred))
    chance = S.chance_levels(y, 2)
    assert (chance["majority"], chance["majority_class"], chance["uniform"]) == (0.75, 0, 0.5)
    probs = np.tile([0.9, 0.1], (40, 1))
    probs[3] = np.nan
    assert S.predictions(probs)[3] == -1 and S.balanced_accuracy(y, S.predictions(probs)) == pytest.approx(29 / 60)


def test_units_are_named_for_what_they_are():
    """Subjects when there are several; the runs of a single subject; the volumes when nothing is known."""
    runs = np.repeat(["1", "2", "3"], 4)
    assert S.units_of({"subject": np.repeat(["a", "b"], 6), "run": runs}, 12).name == "subjects"
    one = S.units_of({"subject": np.repeat(["a"], 12), "session": np.repeat(["x"], 12), "run": runs}, 12)
    assert (one.name, one.n, one.ids) == ("runs", 3, ["x/1", "x/2", "x/3"])
    assert S.units_of({}, 12).name == "volumes"
    y = np.r_[np.zeros(6, int), np.ones(6, int)]
    per = S.unit_accuracy(y, y, one)
    assert (per["unit"], per["n"], per["mean"], [r["n"] for r in per["rows"]]) == ("runs", 3, 1.0, [4, 4, 4])


# --- blocks and permutations ------------------------------------------------------------------------------------------

def test_blocks_follow_conditions_runs_and_gaps():
    """Condition blocks from onsets: one per run of consecutive same-label volumes, split at a fixation gap; the same
    partition whatever order the volumes come in; frame indices serve when onsets are absent."""
    rng = np.random.default_rng(0)
    y, meta = block_design(rng, subjects=2, runs=2, blocks=4, length=5)
    b = S.exchangeability_blocks(y, meta)
    assert (b.kind, b.within, len(b.group), b.caveat) == ("blocks", "subject and run", 2 * 2 * 4, None)
    assert all(len(set(y[b.unit == u])) == 1 and (b.unit == u).sum() == 5 for u in range(len(b.group)))
    shuffle = rng.permutation(len(y))
    b2 = S.exchangeability_blocks(y[shuffle], {k: v[shuffle] for k, v in meta.items()})
    same = {tuple(np.flatnonzero(b.unit[shuffle] == u)) for u in range(len(b.group))}
    assert same == {tuple(np.flatnonzero(b2.unit == u)) for u in range(len(b2.group))}
    frames = {**meta, "onset": None, "volume": np.rint(meta["onset"] / TR).astype(int)}
    assert len(S.exchangeability_blocks(y, frames).group) == len(b.group)


def test_blocks_fall_back_to_volumes_with_a_caveat():
    """Without timing, or with onsets that repeat within a subject (runs unknown), every volume is a unit of its own
    and the result says why its p-value is optimistic."""
    rng = np.random.default_rng(0)
    y, meta = block_design(rng, subjects=2)
    no_time = S.exchangeability_blocks(y, {"subject": meta["subject"], "run": meta["run"]})
    repeats = S.exchangeability_blocks(y, {"subject": meta["subject"], "onset": meta["onset"]})
    for b, within in ((no_time, "subject and run"), (repeats, "subject")):
        assert (b.kind, b.within, len(b.group)) == ("volumes", within, len(y))
        assert "not independent" in b.caveat
    assert S.exchangeability_blocks(y).within == "the whole test set"


def test_no_permutation_moves_a_label_across_subjects_or_runs():
    """Every one of 2,000 permutations gives each block the label of a block of its own subject and run, and each
    volume a label from its own subject and run; each run keeps its multiset of block labels; the same for the
    volume-level fallback within subject, and for the one-permutation helper of a cross-validated null."""
    rng = np.random.default_rng(0)
    y, meta = block_design(rng, subjects=4, runs=3)
    b = S.exchangeability_blocks(y, meta)
    idx = S.permutation_indices(b.group, 2000, rng)  # (P, B)
    assert np.array_equal(np.sort(idx, axis=1), np.broadcast_to(np.arange(len(b.group)), idx.shape))
    assert (b.group[idx] == b.group).all()
    first = np.array([np.flatnonzero(b.unit == u)[0] for u in range(len(b.group))])  # a volume of each block
    source = first[idx[:, b.unit]]  # (P, N) a volume of the block each volume's label comes from
    for key in ("subject", "run"):
        assert (meta[key][source] == meta[key]).all()
    labels = S.unit_labels(y, b)
    for seed in range(20):
        permuted = S.permuted_labels(y, b, (7, seed))
        for g in np.unique(b.group):
            vols = np.isin(b.unit, np.flatnonzero(b.group == g))
            assert all(len(set(permuted[b.unit == u])) == 1 for u in np.flatnonzero(b.group == g))
            assert sorted(S.unit_labels(permuted, b)[b.group == g]) == sorted(labels[b.group == g])
    vol = S.exchangeability_blocks(y, {"subject": meta["subject"]})
    idx = S.permutation_indices(vol.group, 2000, rng)
    assert (meta["subject"][idx] == meta["subject"]).all()


def test_permutation_null_of_a_tiny_case_is_exact():
    """One group of 6 volumes (3 per class): the 720 orderings give an exact null; the p of 20,000 random
    permutations is within 4 standard errors of the exact p, and the null's mean is the exact mean."""
    y = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([0, 0, 1, 1, 1, 0])
    blocks = S.exchangeability_blocks(y)
    exact = np.array([np.sum(pred == y[list(p)]) for p in itertools.permutations(range(6))])
    p_exact = np.mean(exact >= 4)  # observed: 4 correct (the tie counts, as in the p of the test)
    r = S.permutation_test(y, pred, blocks, 20_000, seed=3)
    se = math.sqrt(p_exact * (1 - p_exact) / 20_000)
    assert r["observed"] == pytest.approx(4 / 6) and abs(r["p"] - p_exact) < 4 * se + 1 / 20_001
    assert r["mean"] == pytest.approx(exact.mean() / 6, abs=4 * exact.std() / 6 / math.sqrt(20_000))


def test_perfect_classifier_gets_the_smallest_p():
    """Perfect predictions: no permutation reaches them (the chance of drawing the true arrangement is below
    1e-20 here), so p = 1 / (N + 1), for block and volume permutations and for the binomial test's reference."""
    y, meta = block_design(np.random.default_rng(0), subjects=8, runs=2)
    for b in (S.exchangeability_blocks(y, meta), S.exchangeability_blocks(y, {"subject": meta["subject"]})):
        r = S.permutation_test(y, y.copy(), b, 999)
        assert r["log10_arrangements"] > 20 and r["p"] == 1 / 1000 and r["observed"] == 1.0


def test_p_values_are_uniform_when_predictions_ignore_the_labels():
    """300 simulated block designs (6 subjects x 2 runs x 6 blocks of 8 volumes, conditions randomized within each
    run) with autocorrelated predictions independent of the labels. Block permutation (199 each): the p-values are
    uniform (Kolmogorov-Smirnov p > 0.001: fails for a largest CDF gap above ~0.11) and P(p <= 0.05) is at most
    0.05 + 3 binomial standard errors (0.088; not far below either: >= 0.01, the slack that ties in the discrete
    accuracy leave). Shuffling volumes instead, on the same data, rejects far too often (> 0.12 at 0.05): the
    caveat of the volume fallback, and proof that this test can tell."""
    rng = np.random.default_rng(1)
    p_block, p_volume = [], []
    for i in range(300):
        y, meta = block_design(rng)
        pred = smooth_predictions(rng, len(y))
        p_block.append(S.permutation_test(y, pred, S.exchangeability_blocks(y, meta), 199, seed=i)["p"])
        vol = S.exchangeability_blocks(y, {"subject": meta["subject"], "run": meta["run"]})
        p_volume.append(S.permutation_test(y, pred, vol, 199, seed=i)["p"])
    p_block, p_volume = np.array(p_block), np.array(p_volume)
    se = math.sqrt(0.05 * 0.95 / 300)
    print(f"P(p <= 0.05): blocks {np.mean(p_block <= 0.05):.3f}, volumes {np.mean(p_volume <= 0.05):.3f}")
    assert st.kstest(p_block, "uniform").pvalue > 0.001
    assert 0.01 <= np.mean(p_block <= 0.05) <= 0.05 + 3 * se
    assert np.mean(p_volume <= 0.05) > 0.12


def test_ten_thousand_permutations_of_a_thousand_volumes_take_seconds():
    """10,000 permutations of 1,000 test volumes (20 subjects of 50) within subject: under 5 s on 2 shared cores
    (the goal for a whole run's statistics is 2 s; the time is printed)."""
    rng = np.random.default_rng(0)
    subject = np.repeat([f"sub-{i}" for i in range(20)], 50)
    y = np.tile(np.repeat([0, 1], 25), 20)
    pred = np.where(rng.random(1000) < 0.7, y, 1 - y)
    blocks = S.exchangeability_blocks(y, {"subject": subject})
    t0 = time.perf_counter()
    r = S.permutation_test(y, pred, blocks, 10_000)
    seconds = time.perf_counter() - t0
    print(f"10,000 permutations of 1,000 volumes: {seconds:.2f} s")
    assert r["n_permutations"] == 10_000 and r["p"] == 1 / 10_001 and seconds < 5


# --- intervals and the paired comparison ------------------------------------------------------------------------------

def test_bootstrap_intervals_stay_within_zero_and_one():
    """An accuracy of 0.99 over 10 subjects: the subject bootstrap's interval is inside [0, 1] and contains the
    estimate, where the t-interval over the subjects' accuracies passes 1; the ROC-AUC interval too."""
    rng = np.random.default_rng(0)
    subject = np.repeat([f"sub-{i}" for i in range(10)], 20)
    y = np.tile([0, 1], 100)
    pred = y.copy()
    pred[[5, 77]] = 1 - pred[[5, 77]]
    units = S.units_of({"subject": subject}, 200)
    score = np.where(y == 1, rng.uniform(0.4, 1, 200), rng.uniform(0, 0.6, 200))
    r = S.accuracy_interval(y, pred, units, score, n_boot=2000)
    lo, hi = r["accuracy"]
    assert 0 <= lo <= 0.99 <= hi <= 1 and 0 <= r["roc_auc"][0] <= r["roc_auc"][1] <= 1
    per = np.array([row["accuracy"] for row in S.unit_accuracy(y, pred, units)["rows"]])
    assert per.mean() + st.t.ppf(0.975, 9) * per.std(ddof=1) / math.sqrt(10) > 1  # what a t-interval would say
    assert (r["unit"], r["n_units"]) == ("subjects", 10)


def test_resampled_accuracy_and_auc_match_a_direct_resample():
    """The weighted forms of the bootstrap equal resampling volumes outright: accuracy by repeating each unit's
    volumes, ROC-AUC as scikit-learn's weighted ROC-AUC (scores with ties)."""
    rng = np.random.default_rng(0)
    n = 120
    units = S.units_of({"subject": np.repeat(list("abcdefgh"), 15)}, n)
    y = rng.integers(0, 2, n)
    score = np.round(np.clip(0.3 * y + rng.random(n), 0, 1), 1)  # rounded: many ties
    correct = rng.random(n) < 0.7
    w = S.bootstrap_weights(units, 50, seed=1)
    acc = S.replicate_accuracy(w, correct, units)
    auc = S.replicate_auc(w, y, score, units)
    for r in range(50):
        rows = np.repeat(np.arange(n), w[r, units.code].astype(int))
        assert acc[r] == pytest.approx(correct[rows].mean())
        assert auc[r] == pytest.approx(roc_auc_score(y, score, sample_weight=w[r, units.code]))
    assert (w.sum(axis=1) == units.n).all()


def test_mcnemar_is_the_binomial_test_of_the_discordant_volumes():
    """p is scipy's two-sided binomtest(only model right, discordant, 1/2); without discordant volumes, p = 1."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    a = np.where(rng.random(200) < 0.8, y, 1 - y)
    b = np.where(rng.random(200) < 0.7, y, 1 - y)
    r = S.mcnemar(y, a, b)
    only_a, only_b = int(np.sum((a == y) & (b != y))), int(np.sum((a != y) & (b == y)))
    assert (r["only_first"], r["only_second"]) == (only_a, only_b)
    assert r["p"] == pytest.approx(st.binomtest(only_a, only_a + only_b, 0.5).pvalue)
    assert S.mcnemar(y, a, a)["p"] == 1.0


def test_paired_difference_keeps_its_sign_and_its_unit():
    """A baseline better than the model: the difference (model - baseline) and its whole interval are negative (nothing
    clipped), the baseline's own interval is inside [0, 1], and the unit is named."""
    rng = np.random.default_rng(0)
    subject = np.repeat([f"sub-{i}" for i in range(12)], 30)
    y = rng.integers(0, 2, 360)
    model = np.where(rng.random(360) < 0.6, y, 1 - y)
    base = np.where(rng.random(360) < 0.9, y, 1 - y)
    r = S.paired_comparison(y, model, base, S.units_of({"subject": subject}, 360), n_boot=2000)
    assert r["difference"] == pytest.approx(np.mean(model == y) - np.mean(base == y))
    assert r["ci"][0] <= r["difference"] <= r["ci"][1] < 0
    assert 0 <= r["baseline_ci"][0] <= r["baseline_ci"][1] <= 1 and r["unit"] == "subjects"


# --- across folds -----------------------------------------------------------------------------------------------------

def test_corrected_resampled_ttest_worked_example():
    """Five folds, model - baseline accuracy d = (0.02, 0.05, -0.01, 0.04, 0.03), 800 training and 200 test volumes
    per fold. By hand: mean 0.026; deviations (-0.006, 0.024, -0.036, 0.014, 0.004), squares summing to 0.00212,
    s^2 = 0.00212 / 4 = 0.00053.
    Plain: se = sqrt(0.00053 / 5) = 0.010296, t = 0.026 / 0.010296 = 2.5253, df 4, two-sided p = 0.0650 (t table:
    t(0.95, 4) = 2.132 < 2.525 < t(0.975, 4) = 2.776, so 0.05 < p < 0.10).
    Corrected: factor 1/5 + 200/800 = 0.45, se = sqrt(0.45 * 0.00053) = 0.015443, t = 1.6836, p = 0.1676 (1.533 =
    t(0.90, 4) < 1.684 < 2.132: 0.10 < p < 0.20); 95% CI 0.026 -+ 2.7764 * 0.015443 = -0.0169 to 0.0689.
    The same differences with identical folds (s = 0) give no t and no p (None), never Infinity."""
    r = S.corrected_ttest([0.02, 0.05, -0.01, 0.04, 0.03], 800, 200)
    assert (r["k"], r["mean"], r["test_train_ratio"]) == (5, pytest.approx(0.026), 0.25)
    plain, corr = r["plain"], r["corrected"]
    assert (plain["se"], plain["df"]) == (pytest.approx(0.010296, abs=1e-6), 4)
    assert plain["t"] == pytest.approx(2.5253, abs=1e-4)
    assert plain["p"] == pytest.approx(0.0650, abs=1e-4)
    assert (corr["variance_factor"], corr["se"]) == (pytest.approx(0.45), pytest.approx(0.015443, abs=1e-6))
    assert (corr["t"], corr["p"]) == (pytest.approx(1.6836, abs=1e-4), pytest.approx(0.1676, abs=1e-4))
    assert corr["ci"] == [pytest.approx(-0.0169, abs=1e-4), pytest.approx(0.0689, abs=1e-4)]
    flat = S.corrected_ttest([0.02] * 5, [800] * 5, [200] * 5)
    assert flat["corrected"]["t"] is None and flat["corrected"]["p"] is None
    strict_json(flat)


def test_cv_statistics_per_fold_and_pooled():
    """Three folds of a block design: each fold's statistics, the pooled ones (interval resampling subjects, bounded)
    and the corrected comparison, whose p is larger than the plain one's."""
    rng = np.random.default_rng(0)
    y, meta = block_design(rng, subjects=9, runs=1)
    fold = np.repeat(np.arange(3), len(y) // 3)  # subjects 0-2, 3-5, 6-8
    probs = np.stack([1 - (p := np.clip(0.35 * y + 0.65 * rng.random(len(y)), 0, 1)), p], axis=1)
    bp = np.stack([1 - (q := np.clip(0.2 * y + 0.8 * rng.random(len(y)), 0, 1)), q], axis=1)
    cv = S.cv_statistics(y, probs, fold, 2, [len(y) * 2 // 3] * 3, meta, bp, n_perm=999, n_boot=1000)
    assert cv["k"] == 3 and [f["n"] for f in cv["folds"]] == [len(y) // 3] * 3
    assert cv["pooled"]["permutation"]["units"] == "blocks"
    lo, hi = cv["pooled"]["interval"]["accuracy"]
    assert 0 <= lo <= cv["pooled"]["accuracy"] <= hi <= 1 and cv["pooled"]["interval"]["unit"] == "subjects"
    assert cv["comparison"]["corrected"]["p"] > cv["comparison"]["plain"]["p"]
    strict_json(cv)
    text = S.cv_sentence({**cv, "null": S.cv_null(0.7, rng.uniform(0.4, 0.6, 50), 12.5)})
    assert "corrected resampled t-test" in text and "50 cross-validations on permuted labels" in text


def test_fold_mean_intervals_resample_subjects_within_folds():
    """The interval of the mean over folds: [1, 1] for a perfect classifier; the replicates are those of a direct
    resampling of each fold's subjects with the same draws; bounded; the paired difference keeps its sign; the
    summary's `fold_mean` is this. No resamples: no intervals."""
    rng = np.random.default_rng(0)
    subject = np.repeat([f"sub-{i:02d}" for i in range(12)], 10)
    y = np.tile(np.repeat([0, 1], 5), 12)
    fold = np.repeat([0, 1, 2], 40)
    units = S.units_of({"subject": subject}, len(y))
    model = np.where(rng.random(len(y)) < 0.75, y, 1 - y)
    base = np.where(rng.random(len(y)) < 0.95, y, 1 - y)
    score = np.clip(0.5 * y + 0.7 * rng.random(len(y)), 0, 1)
    perfect = S.fold_mean_intervals(y, fold, units, {"model": (y, y.astype(float))}, n_boot=500)
    assert perfect["model"] == {"accuracy": [1.0, 1.0], "roc_auc": [1.0, 1.0]} and perfect["unit"] == "subjects"
    r = S.fold_mean_intervals(y, fold, units, {"model": (model, score), "baseline": (base, None)}, n_boot=400, seed=3)
    direct = np.zeros(400)
    for f in range(3):  # the same draws, each resample's accuracy counted volume by volume
        ids = np.unique(subject[fold == f])
        w = S.bootstrap_weights(S.Units(np.arange(len(ids)), list(ids), "subjects"), 400, 3 + f)
        for b in range(400):
            rows = np.concatenate([np.flatnonzero(subject == ids[j]).repeat(int(w[b, j])) for j in range(len(ids))])
            direct[b] += np.mean(model[rows] == y[rows]) / 3
    assert r["model"]["accuracy"] == pytest.approx(np.quantile(direct, [0.025, 0.975]).tolist())
    for name in ("model", "baseline"):
        lo, hi = r[name]["accuracy"]
        assert 0 <= lo <= np.mean([np.mean((model if name == "model" else base)[fold == f] == y[fold == f])
                                   for f in range(3)]) <= hi <= 1
    assert r["baseline"]["roc_auc"] is None and r["difference"]["accuracy"][1] < 0
    assert 0 <= r["model"]["roc_auc"][0] <= r["model"]["roc_auc"][1] <= 1
    none = S.fold_mean_intervals(y, fold, units, {"model": (model, score)}, n_boot=0)
    assert none["model"] == {"accuracy": None, "roc_auc": None}
    strict_json(r)


def test_no_permutations_asked_for_means_no_permutation_test_and_no_intervals():
    """train.permutations 0: the binomial and McNemar tests, chance and per-subject accuracy remain; the permutation
    test and the intervals are None, and the sentence says no permutation test was run."""
    rng = np.random.default_rng(0)
    y, meta = block_design(rng, subjects=4)
    probs = np.stack([1 - (p := np.clip(0.6 * y + 0.4 * rng.random(len(y)), 0, 1)), p], axis=1)
    s = S.run_statistics(y, probs, 2, meta, baseline_probs=probs[::-1], n_perm=0, n_boot=0)
    assert s["permutation"] is None and s["interval"]["accuracy"] is None and s["baseline"]["ci"] is None
    assert s["binomial"]["p"] < 0.001 and s["baseline"]["mcnemar"]["p"] is not None and s["per_unit"]["n"] == 4
    assert "no permutation test was run" in S.sentence(s)
    strict_json(s)


# --- the baseline's null ----------------------------------------------------------------------------------------------

def test_baseline_refit_is_exact_in_the_training_rows_space():
    """The refit on (N, N) coordinates predicts what LogisticRegression on the full (N, V) features predicts (tight
    tolerance on both fits: the two problems have the same solution)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 180)
    X = rng.normal(size=(180, 3000)).astype(np.float32)
    X[:, :20] += 0.5 * y[:, None]
    Xtr, Xte = X[:120], X[120:]
    mean, sd = Xtr.mean(0), Xtr.std(0)
    Xtr, Xte = (Xtr - mean) / sd, (Xte - mean) / sd
    refit = B.refitter(Xtr, Xte, 0.01, 2, tol=1e-10, max_iter=100_000)
    full = LogisticRegression(C=0.01, tol=1e-10, max_iter=10_000).fit(Xtr, y[:120])
    assert np.array_equal(refit(y[:120]), full.predict(Xte)) and refit.unconverged == 0
    labels = np.stack([y[:120], rng.permutation(y[:120]), rng.permutation(y[:120])])  # a batch: each row its own fit
    batch = refit(labels)
    assert batch.shape == (3, 60) and np.array_equal(batch[0], full.predict(Xte))
    for row, pred in zip(labels[1:], batch[1:]):
        assert np.array_equal(pred, LogisticRegression(C=0.01, tol=1e-10, max_iter=10_000).fit(Xtr, row).predict(Xte))


def test_refit_null_permutes_training_labels_within_blocks():
    """A refitting null: every label vector handed to the fit keeps each subject's labels; a fit that ignores its
    labels gives a null equal to the observed accuracy (p = 1); a nearest-neighbour fit whose test volumes are
    near-copies of training volumes is perfect with the true labels and no better than its permuted labels with the
    others, so the observed accuracy is above every refit (p = 1 / (N + 1))."""
    rng = np.random.default_rng(0)
    subject = np.repeat([f"sub-{i}" for i in range(10)], 12)
    y = np.tile(np.repeat([0, 1], 6), 10)
    X = rng.normal(size=(120, 5))
    X_test, y_test = X[::3] + 1e-3 * rng.normal(size=(40, 5)), y[::3]
    blocks = S.exchangeability_blocks(y, {"subject": subject})
    seen = []

    def nearest_neighbour(labels):  # (P, N) label rows -> (P, M) predictions
        seen.extend(np.atleast_2d(labels))
        return labels[..., np.argmin(((X_test[:, None] - X) ** 2).sum(-1), axis=1)]

    observed = np.mean(nearest_neighbour(y) == y_test)
    r = S.refit_null(nearest_neighbour, y, blocks, y_test, observed, n_perm=99)
    assert observed == 1.0 and r["p"] == 1 / 100 and r["refit"] and r["seconds_per_permutation"] >= 0
    assert len(seen) == 100
    for labels in seen[1:]:
        for s in np.unique(subject):
            assert sorted(labels[subject == s]) == sorted(y[subject == s])
    fixed = S.refit_null(lambda labels: np.broadcast_to(y_test, (len(labels), len(y_test))), y, blocks, y_test, 1.0,
                         n_perm=20)
    assert fixed["p"] == 1.0
    strict_json(r)


def test_cv_refit_null_permutes_the_pool_within_subjects_and_matches_the_model_permutations():
    """The cross-validated refit null: every fold's fit gets the training rows of permutation i, which is the
    model's permutation i (`permuted_labels` with seed i), each subject keeping its labels; a nearest-neighbour fit
    on two well-separated classes is perfect on the true labels and near chance on permuted ones (scored against
    the permuted test labels), so p = 1 / (N + 1)."""
    rng = np.random.default_rng(0)
    subject = np.repeat([f"sub-{i}" for i in range(12)], 8)
    y = np.tile(np.repeat([0, 1], 4), 12)
    X = 10.0 * y[:, None] + rng.normal(size=(96, 6))
    fold = np.repeat([0, 1, 2], 32)  # subjects 0-3, 4-7, 8-11
    blocks = S.exchangeability_blocks(y, {"subject": subject})
    seen = {}

    def fitter(f, train, test):
        near = np.argmin(((X[test][:, None] - X[train]) ** 2).sum(-1), axis=1)

        def fit_predict(labels):  # (P, N_train) -> (P, N_test)
            seen[f] = labels
            return labels[..., near]
        return fit_predict

    folds = [(fitter(f, np.flatnonzero(fold != f), np.flatnonzero(fold == f)), np.flatnonzero(fold != f),
              np.flatnonzero(fold == f)) for f in range(3)]
    observed = np.mean(np.concatenate([fp(y[tr]) == y[te] for fp, tr, te in folds]))
    seeds = [(0, i) for i in range(1, 50)]
    r = S.cv_refit_null(folds, y, blocks, observed, seeds)
    assert observed == 1.0 and r["p"] == 1 / 50 and r["n_permutations"] == 49 and r["within"] == "subject"
    assert 0.3 < r["mean"] < 0.7
    L = S.permuted_label_matrix(y, blocks, seeds)
    assert np.array_equal(L[4], S.permuted_labels(y, blocks, (0, 5)))
    for f, (_, train, _) in enumerate(folds):  # per fold, the training rows of every permutation
        np.testing.assert_array_equal(seen[f], L[:, train])
    for row in L:
        for s in np.unique(subject):
            assert sorted(row[subject == s]) == sorted(y[subject == s])
    strict_json(r)


# --- one run: JSON and words ------------------------------------------------------------------------------------------

def test_run_statistics_are_strict_json_in_degenerate_cases():
    """Strict JSON for a usual run and for the edge cases: one subject of one run (units are volumes, no per-unit
    spread), one class in the test labels (no ROC-AUC), a volume without finite probabilities, predictions all
    of one class."""
    rng = np.random.default_rng(0)
    y, meta = block_design(rng, subjects=5, runs=2)
    probs = np.stack([1 - (p := rng.random(len(y))), p], axis=1)
    cases = {"usual": (y, probs, meta),
             "one subject, one run": (y[:48], probs[:48], {k: v[:48] for k, v in meta.items()}),
             "one class": (np.zeros(60, int), probs[:60], {"subject": meta["subject"][:60]}),
             "constant": (y, np.tile([0.9, 0.1], (len(y), 1)), meta)}
    nan = probs.copy()
    nan[0] = np.nan
    cases["non-finite"] = (y, nan, meta)
    for name, (yy, pp, mm) in cases.items():
        s = S.run_statistics(yy, pp, 2, mm, baseline_probs=pp[::-1], n_perm=199, n_boot=200)
        strict_json(s)
        assert S.sentence(s).endswith(".")
    one = S.run_statistics(y[:48], probs[:48], 2, {k: v[:48] for k, v in meta.items()}, n_perm=99, n_boot=100)
    assert one["units"]["name"] == "volumes" and one["per_unit"] is None
    yy, pp, mm = cases["one class"]
    assert S.run_statistics(yy, pp, 2, mm, n_perm=99, n_boot=100)["interval"]["roc_auc"] is None


def test_sentence_says_what_was_found():
    """The sentence names the accuracy, balanced accuracy, volumes and subjects, chance, both tests with the number
    and kind of permutations, the per-subject spread and the comparison with its interval's unit; a chance-level
    classifier is 'not distinguishable from' chance; a single subject's unit is runs."""
    rng = np.random.default_rng(0)
    y, meta = block_design(rng, subjects=10, runs=2)
    good = np.stack([1 - (p := np.clip(0.6 * y + 0.4 * rng.random(len(y)), 0, 1)), p], axis=1)
    s = S.run_statistics(y, good, 2, meta, baseline_probs=good[rng.permutation(len(y))], n_perm=999, n_boot=500)
    text = S.sentence(s)
    print(text)
    for part in (f"Test accuracy {s['accuracy']:.3f} (balanced", f"on {len(y):,} volumes of 10 subjects",
                 "above the chance level of 0.500", "exact binomial p < 0.001", "block permutation p = 0.001",
                 "999 permutations of whole blocks within subject and run", "per subject",
                 "above the logistic baseline's", "by resampling subjects", "McNemar p"):
        assert part in text
    chance = S.run_statistics(y, good[rng.permutation(len(y))], 2, meta, n_perm=999, n_boot=100)
    assert "not distinguishable from the chance level" in S.sentence(chance)
    single = {k: v[meta["subject"] == "sub-00"] for k, v in meta.items()}
    rows = meta["subject"] == "sub-00"
    runs = S.run_statistics(y[rows], good[rows], 2, {**single, "onset": None}, n_perm=99, n_boot=100)
    assert "of 2 runs" in S.sentence(runs) and "volumes are not independent" in S.sentence(runs)

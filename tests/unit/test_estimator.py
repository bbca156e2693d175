"""`stvit.STViTClassifier` as scikit-learn sees it, on tiny volumes (5 x 14 x 6, `helpers.TINY_RUN`'s model).

scikit-learn's own check functions run where they apply to a classifier of volumes: those that need no data or
only call an unfitted estimator. `check_estimator` itself skips every check for an estimator whose tags say it takes
no 2D table (ours: volumes), and the checks that fit draw tables of a few features; those are written here in the
same terms on volumes (fit returns self, parameters untouched, pickling, classes_ from labels, subset and order
invariance, idempotent refits, read-only input, dtypes, bad input), each named after the check it mirrors. The
list of checks run and skipped, and why, is in docs/library.md.
"""
from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils import estimator_checks as C

import stvit
from helpers import TINY_RUN, VOLUME
from stvit.training.estimator import InputError

# TINY_RUN with one pre-training and two fine-tuning epochs: a fit takes a few seconds
FAST = copy.deepcopy(TINY_RUN)
FAST["pretrain"]["epochs"], FAST["finetune"]["epochs"] = 1, 2
LABELS = np.array(["face", "house", "shape"])


def volumes(n: int = 24, seed: int = 0):
    """(X (n, 5, 14, 6) float32, labels of three classes as strings, subject ids: 4 volumes per subject)."""
    rng = np.random.default_rng(seed)
    k = np.arange(n) % 3
    X = rng.normal(size=(n, *VOLUME)).astype(np.float32)
    X[:, :2, 3:10, 1:4] += k[:, None, None, None].astype(np.float32)
    return X, LABELS[k], np.array([f"sub-{i // 4:02d}" for i in range(n)])


def estimator(**kw):
    return stvit.STViTClassifier(config=FAST, **kw)


@pytest.fixture(scope="module")
def fitted():
    """(a fitted estimator, its training data, its parameters before fit, its __dict__ keys before fit)."""
    X, y, g = volumes()
    est = estimator(seed=3)
    before, keys = est.get_params(deep=False), set(vars(est))
    assert est.fit(X, y, groups=g) is est  # check_estimators_fit_returns_self
    return est, (X, y, g), before, keys


# --- scikit-learn's own checks that apply as they are --------------------------------------------------------------

SKLEARN_CHECKS = ["check_estimator_cloneable", "check_estimator_tags_renamed", "check_valid_tag_types",
                  "check_estimator_repr", "check_no_attributes_set_in_init",
                  "check_do_not_raise_errors_in_init_or_set_params", "check_mixin_order",
                  "check_parameters_default_constructible", "check_get_params_invariance", "check_set_params",
                  "check_estimators_unfitted"]


@pytest.mark.parametrize("name", SKLEARN_CHECKS)
def test_sklearn_check(name):
    getattr(C, name)("STViTClassifier", estimator(run_dir="runs", device="cpu"))


def test_check_estimator_sees_a_volume_classifier_and_skips_the_table_checks():
    """What `check_estimator` does with it: the tag says no 2D input, so it runs the clone check and skips the rest
    with one warning (the checks above and below stand in)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = C.check_estimator(estimator(), on_fail=None)
    assert [r["status"] for r in results] == ["passed"]
    assert any("Can't test estimator STViTClassifier" in str(w.message) for w in caught)


def test_clone_keeps_every_parameter_and_set_params_changes_one():
    est = estimator(run_dir="runs", seed=2, finetune_epochs=4, verbose=True)
    twin = clone(est)
    assert twin.get_params() == est.get_params() and twin is not est
    assert twin.set_params(seed=5) is twin and twin.seed == 5 and est.seed == 2


# --- the checks that fit, on volumes -------------------------------------------------------------------------------

def test_fit_leaves_the_parameters_alone_and_adds_only_fitted_attributes(fitted):
    """check_estimators_overwrite_params and check_dont_overwrite_parameters."""
    est, _, before, keys = fitted
    assert est.get_params(deep=False) == before
    added = set(vars(est)) - keys
    assert added and all(k.endswith("_") and not k.startswith("_") for k in added), added


def test_classes_come_from_string_labels_and_predictions_are_labels(fitted):
    """check_classifiers_classes: three string classes, predictions among them, probabilities in their order."""
    est, (X, y, _), _, _ = fitted
    assert list(est.classes_) == list(LABELS)
    assert est.trained_.classes == tuple(LABELS)
    probs = est.predict_proba(X)
    assert probs.shape == (len(X), 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert set(est.predict(X)) <= set(LABELS)
    assert np.array_equal(est.predict(X), LABELS[probs.argmax(1)])
    assert 0 <= est.score(X, y) <= 1


def test_decision_function_ranks_as_predict_proba(fitted):
    """check_decision_proba_consistency, and the decision's argmax is the prediction."""
    est, (X, _, _), _, _ = fitted
    d, p = est.decision_function(X), est.predict_proba(X)
    assert d.shape == p.shape
    assert np.array_equal(np.argsort(d, axis=1, kind="stable"), np.argsort(p, axis=1, kind="stable"))


def test_pickle_round_trip_predicts_the_same(fitted):
    """check_estimators_pickle: the fitted model travels with the estimator (joblib's n_jobs pickles it)."""
    est, (X, _, _), _, _ = fitted
    back = pickle.loads(pickle.dumps(est))
    assert np.array_equal(back.predict_proba(X), est.predict_proba(X))
    assert list(back.classes_) == list(est.classes_)


def test_predictions_do_not_depend_on_the_batch_around_a_volume(fitted):
    """check_methods_subset_invariance and check_methods_sample_order_invariance (float tolerance: another batch
    size may take another BLAS path)."""
    est, (X, _, _), _, _ = fitted
    whole = est.predict_proba(X)
    order = np.random.default_rng(1).permutation(len(X))
    assert np.allclose(est.predict_proba(X[order]), whole[order], atol=1e-5)
    assert np.allclose(est.predict_proba(X[3:7]), whole[3:7], atol=1e-5)


def test_predict_takes_other_dtypes_and_layouts(fitted):
    """check_estimators_dtypes, check_f_contiguous_array_estimator, check_classifier_data_not_an_array; and the
    estimator's __dict__ does not change in predict (check_dict_unchanged)."""
    est, (X, _, _), _, _ = fitted
    ref = est.predict_proba(X[:5])
    state = dict(vars(est))
    assert np.allclose(est.predict_proba(X[:5].astype(np.float64)), ref, atol=1e-6)
    assert np.allclose(est.predict_proba(np.asfortranarray(X[:5])), ref, atol=1e-6)
    assert np.allclose(est.predict_proba(X[:5].tolist()), ref, atol=1e-6)
    assert est.predict(np.round(X[:5]).astype(np.int16)).shape == (5,)
    assert vars(est) == state


def test_refit_on_read_only_input_gives_the_same_model(fitted, tmp_path):
    """check_fit_idempotent and check_readonly_memmap_input: a second fit with the same seed on a read-only memmap
    of the same volumes predicts bit for bit the same."""
    est, (X, y, g), _, _ = fitted
    path = tmp_path / "X.npy"
    np.save(path, X)
    ro = np.load(path, mmap_mode="r")
    again = clone(est).fit(ro, y, groups=g)
    assert np.array_equal(again.predict_proba(X), est.predict_proba(X))


def test_not_fitted_is_an_error_for_every_method():
    X, _, _ = volumes(4)
    from sklearn.exceptions import NotFittedError

    for method in ("predict", "predict_proba", "decision_function", "embed"):
        with pytest.raises(NotFittedError):
            getattr(estimator(), method)(X)


# --- bad input: one line, a ValueError, before any training --------------------------------------------------------

@pytest.mark.parametrize("case, match", [
    ("one class", "single class"),  # check_classifiers_one_label
    ("continuous y", "Unknown label type"),  # check_classifiers_regression_target
    ("table X", r"X is 24 x 3, expected N volumes of 5 x 14 x 6"),  # check_fit2d_*: a table is not volumes
    ("one volume", r"one volume .*X\[None\]"),
    ("empty X", "no labels"),  # check_estimators_empty_data_messages
    ("NaN", "NaN/Inf voxels"),  # check_estimators_nan_inf
    ("complex", "not numeric"),  # check_complex_data
    ("object", "not numeric"),  # check_dtype_object
    ("y length", "X has 24 volumes but y has 23 labels"),
    ("groups length", "X has 24 volumes but groups has 3 entries"),
    ("unknown key", "unknown config key 'finetune.lrr'"),
    ("bad value", r"finetune.epochs"),
    ("both", "finetune_epochs=3 and config\\['finetune.epochs'\\] both set"),
    ("class names", "the classes come from the labels"),
    ("preset", "unknown preset 'huge'"),
])
def test_bad_input_is_one_line_value_error(case, match, tmp_path):
    X, y, g = volumes()
    est = estimator(run_dir=tmp_path / "runs")
    if case == "one class":
        y = np.full(len(y), "face")
    elif case == "continuous y":
        y = np.linspace(0, 1, len(y))
    elif case == "table X":
        X = np.zeros((24, 3))
    elif case == "one volume":
        X = X[0]
    elif case == "empty X":
        X, y = X[:0], y[:0]
    elif case == "NaN":
        X[3, 0, 0, 0] = np.nan
    elif case == "complex":
        X = X.astype(np.complex64)
    elif case == "object":
        X = X.astype(object)
    elif case == "y length":
        y = y[:-1]
    elif case == "groups length":
        g = g[:3]
    elif case == "unknown key":
        est.set_params(config={**FAST, "finetune.lrr": 1.0})
    elif case == "bad value":
        est.set_params(config={"finetune": {"epochs": -1}})
    elif case == "both":
        est.set_params(config={"finetune.epochs": 2}, finetune_epochs=3)
    elif case == "class names":
        est.set_params(config={"data": {"class_names": ["a", "b", "c"]}})
    elif case == "preset":
        est.set_params(preset="huge")
    with pytest.raises(ValueError, match=match) as err:
        est.fit(X, y, groups=g)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))


def test_predict_refuses_volumes_of_another_shape(fitted):
    est = fitted[0]
    with pytest.raises(InputError, match=r"X is 2 x 53 x 63 x 46, expected N volumes of 5 x 14 x 6"):
        est.predict(np.zeros((2, 53, 63, 46), np.float32))


# --- inside scikit-learn's model selection -------------------------------------------------------------------------

def test_cross_val_score_with_group_kfold_gives_every_fold_its_own_grouped_run(tmp_path):
    """cross_val_score clones the estimator per fold; `groups=` makes the folds (whole subjects), `params` hands
    each fold's subjects to fit, whose validation split then takes whole subjects of the fold's training part."""
    import json

    from sklearn.model_selection import GroupKFold, cross_val_score

    X, y, g = volumes(36)
    est = estimator(run_dir=tmp_path / "runs")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # an ungrouped validation split would warn
        scores = cross_val_score(est, X, y, groups=g, cv=GroupKFold(n_splits=3), params={"groups": g})
    assert scores.shape == (3,) and ((0 <= scores) & (scores <= 1)).all()
    assert not hasattr(est, "classes_")  # the original is never fitted: clones are
    runs = sorted((tmp_path / "runs").iterdir())
    assert [r.name for r in runs] == ["fit-001", "fit-002", "fit-003"]
    for run, (train, test) in zip(runs, GroupKFold(n_splits=3).split(X, y, g)):
        split = json.loads((run / "split.json").read_text())
        assert split["grouped_by_subject"] and split["n_train"] + split["n_val"] == len(train)
        assert set(split["val_subjects"]) <= set(g[train]) and not set(split["val_subjects"]) & set(g[test])


def test_fit_without_groups_warns_that_validation_is_not_by_subject():
    """And a column of labels is taken with scikit-learn's warning (check_supervised_y_2d)."""
    from sklearn.exceptions import DataConversionWarning

    X, y, _ = volumes(16)
    with pytest.warns(UserWarning) as caught:
        est = estimator().fit(X, y[:, None])
    said = [str(w.message) for w in caught]
    assert any("no subject ids: the validation split is stratified random" in m for m in said), said
    assert any(issubclass(w.category, DataConversionWarning) for w in caught), said
    assert est.predict(X).shape == (16,) and est.run_dir_ is None and est.history_  # temporary run gone, log kept


def test_a_fit_refused_by_the_run_api_leaves_no_run_folder(tmp_path):
    """The run API's own checks (here: fewer training volumes than one batch) stop a fit before anything is written."""
    X, y, g = volumes(8)
    est = stvit.STViTClassifier(config={**FAST, "train": {**FAST["train"], "batch_size": 64}}, run_dir=tmp_path / "runs")
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        est.fit(X, y, groups=g)
    assert list((tmp_path / "runs").iterdir()) == []

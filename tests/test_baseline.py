"""The linear baseline: the same numbers as an independent scikit-learn fit on the same split, its place in a run
(metrics.json, predictions.npz, the final line), and a test split read only inside the final evaluation."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from stvit.training import baseline as B
from stvit import data as D
from stvit.training import fit as FIT
from stvit.training import api as API
from stvit.data import load_split
from stvit.training.metrics import classification_metrics
from stvit.training.rundir import RunDir

from helpers import TINY_RUN, VOLUME, run_main, write_tiny_data

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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-baseline")
    cfg = d / "tiny.json"
    cfg.write_text(json.dumps({**TINY_RUN, "pretrain": {**TINY_RUN["pretrain"], "epochs": 1},
                               "finetune": {**TINY_RUN["finetune"], "epochs": 2}}))
    return write_tiny_data(d / "tiny.npz"), cfg


def test_a_run_reports_its_baseline_and_reads_test_only_at_the_end(tiny, tmp_path, monkeypatch, capsys):
    data, cfg = tiny
    events = []
    real_log, real_test, real_split, real_fit = RunDir.log, FIT.Splits.test, D.HCPData.split, B.fit_baseline
    real_evaluate = API.evaluate
    monkeypatch.setattr(RunDir, "log", lambda self, r: (events.append("epoch"), real_log(self, r))[1])
    monkeypatch.setattr(FIT.Splits, "test", lambda self: (events.append("test"), real_test(self))[1])
    monkeypatch.setattr(D.HCPData, "split", lambda self, name: (events.append(f"split {name}"),
                                                                real_split(self, name))[1])
    monkeypatch.setattr(B, "fit_baseline", lambda *a: (events.append("baseline fit"), real_fit(*a))[1])
    monkeypatch.setattr(API, "evaluate", lambda *a: (events.append("evaluate"), real_evaluate(*a))[1])
    out = tmp_path / "run"
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet"]) == 0

    # the model's test split and the baseline's test volumes are read once each, inside the final evaluation,
    # after every epoch, and the baseline only after its fit and choice of C on train and validation
    assert events.count("test") == 1 and events.count("split test") == 1
    first = min(events.index("test"), events.index("split test"))
    assert events.index("evaluate") < first and "epoch" not in events[first:]
    assert events.index("baseline fit") < events.index("split test")

    m = json.loads((out / "metrics.json").read_text())
    b = m["baseline"]
    assert {"accuracy", "roc_auc", "confusion_matrix", "per_class", "C", "n_voxels", "seconds"} <= b.keys()
    assert b["C"] in B.C_GRID and b["n_voxels"] == np.prod(VOLUME)
    pred = np.load(out / "predictions.npz")
    assert b["accuracy"] == classification_metrics(pred["test_labels"], pred["baseline_test_probs"],
                                                   m["class_names"])["accuracy"]
    # the same numbers as a baseline fitted afresh on the run's own split
    tr, va = load_split(out)
    again, _ = B.baseline_metrics(D.load_dataset(data, volume_shape=VOLUME), {"train": tr, "val": va},
                                  m["class_names"])
    assert again["accuracy"] == b["accuracy"] and again["C"] == b["C"]
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"test: accuracy {m['test']['accuracy']:.3f}")
    assert f"| baseline (logistic regression, C {b['C']:g}): accuracy {b['accuracy']:.3f}" in line


def test_no_baseline_flag(tiny, tmp_path):
    data, cfg = tiny
    out = tmp_path / "plain"
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet", "--no-baseline",
                     "--pretrain-epochs", "0", "--ft-epochs", "1"]) == 0
    assert "baseline" not in json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "config.json").read_text())["train"]["baseline"] is False
    assert "baseline_test_probs" not in np.load(out / "predictions.npz")

"""`python -m stvit.cv`: folds grouped by subject, stratified, deterministic; the pooled volumes; the refusals. The
cross-validation runs (summary, killed and resumed): tests/e2e/test_cv.py."""
from __future__ import annotations

import json

import numpy as np
import pytest

from stvit import cv as CV
from stvit.training import crossval
from stvit import data as D
from stvit.errors import run_cli
from stvit.training.rundir import RunDir

from helpers import TINY_RUN, write_tiny_data

# two short stages: the killer stops the 2nd fine-tune epoch of the first fold
CV_RUN = {**TINY_RUN, "pretrain": {**TINY_RUN["pretrain"], "epochs": 1},
          "finetune": {**TINY_RUN["finetune"], "epochs": 2}}


def subjects(n_subjects=23, seed=0):
    """Ids and labels of subjects of 2 to 9 volumes, each with its own class balance (~30% class 1 overall)."""
    rng = np.random.default_rng(seed)
    ids, y = [], []
    for s in range(n_subjects):
        n = int(rng.integers(2, 10))
        ids += [f"sub-{s:02d}"] * n
        y += (rng.random(n) < rng.uniform(0.1, 0.5)).astype(int).tolist()
    return np.array(ids), np.array(y)


def test_folds_are_grouped_stratified_and_deterministic():
    ids, y = subjects()
    fold = D.subject_folds(ids, y, 5, seed=7)
    assert sorted(set(fold.tolist())) == [0, 1, 2, 3, 4]
    for s in np.unique(ids):
        assert len(set(fold[ids == s].tolist())) == 1, s  # no subject in two folds
    overall = y.mean()
    for f in range(5):
        assert abs(y[fold == f].mean() - overall) < 0.15, (f, y[fold == f].mean(), overall)
    np.testing.assert_array_equal(fold, D.subject_folds(ids, y, 5, seed=7))
    assert not np.array_equal(fold, D.subject_folds(ids, y, 5, seed=8))


def test_pool_is_train_and_test_or_train_alone():
    data = D.HCPData(np.zeros((4, 1)), np.array([0, 1, 0, 1]), np.array(list("aabb")), np.ones((2, 1)),
                     np.array([0, 1]), np.array(["c", "c"]), source="x")
    pooled, train = crossval.pool_volumes(data, within_train=False), crossval.pool_volumes(data, within_train=True)
    assert pooled.X[:, 0].tolist() == [0, 0, 0, 0, 1, 1] and pooled.ids.tolist() == list("aabbcc")
    assert train.X.shape == (4, 1) and train.y.tolist() == [0, 1, 0, 1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-cv")
    (d / "cv.json").write_text(json.dumps(CV_RUN))
    return write_tiny_data(d / "tiny.npz"), d / "cv.json"  # 8 + 3 subjects


def cv(*args: str) -> int:
    return run_cli(CV.main, list(args))


def test_refusals_are_one_line_and_write_nothing(tiny, tmp_path, capsys):
    data, cfg = tiny
    out = tmp_path / "never"
    assert cv("--data", str(data), "--config", str(cfg), "--out", str(out), "--folds", "12") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data}: 11 subjects for 12 folds") and err.count("\n") == 1
    no_ids = tmp_path / "no_ids.npz"
    np.savez(no_ids, **{k: v for k, v in np.load(data).items() if not k.startswith("ids_")})
    assert cv("--data", str(no_ids), "--config", str(cfg), "--out", str(out), "--folds", "2") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {no_ids}: no subject ids: the folds cannot be grouped") and err.count("\n") == 1
    assert cv("--data", str(data), "--config", str(cfg), "--out", str(out), "--folds", "1") == 2
    assert "--folds must be >= 2" in capsys.readouterr().err
    assert not out.exists()
    busy = RunDir(tmp_path / "busy")
    busy.lock()  # another process's cross-validation holds the directory (flock: per open file, so this works here)
    try:
        assert cv("--data", str(data), "--config", str(cfg), "--out", str(busy.path), "--folds", "2") == 2
        assert "another stvit process is using this run directory" in capsys.readouterr().err
    finally:
        busy.close()
    assert list(busy.path.iterdir()) == []

"""`python -m stvit.cv`: folds grouped by subject, stratified, deterministic; the refusals; a cross-validation
killed in the middle of a fold and resumed ends with the summary of an uninterrupted one."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from stvit import cv as CV
from stvit.training import crossval
from stvit import data as D
from stvit.errors import run_cli
from stvit.training.rundir import RunDir

from helpers import ROOT, TINY_RUN, killer_script, write_tiny_data

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


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    data, cfg = tiny
    out = tmp_path_factory.mktemp("cv") / "whole"
    assert cv("--data", str(data), "--config", str(cfg), "--out", str(out), "--folds", "2", "--quiet") == 0
    return out


def test_summary_and_folds_on_disk(tiny, uninterrupted):
    out = uninterrupted
    summary = json.loads((out / "cv.json").read_text())
    record = json.loads((out / "folds.json").read_text())
    ids = np.concatenate([np.load(tiny[0])[k] for k in ("ids_train", "ids_test")])
    fold = np.array(record["fold"])
    assert len(fold) == len(ids) == summary["n_volumes"] and not set(ids[fold == 0]) & set(ids[fold == 1])
    for f, row in enumerate(summary["folds"]):
        m = json.loads((out / f"fold-{f + 1}" / "metrics.json").read_text())
        assert row["model"]["accuracy"] == m["test"]["accuracy"] and row["n_test"] == (fold == f).sum()
        assert row["baseline"]["accuracy"] == m["baseline"]["accuracy"]
        assert row["difference"]["accuracy"] == pytest.approx(m["test"]["accuracy"] - m["baseline"]["accuracy"])
    acc = [r["model"]["accuracy"] for r in summary["folds"]]
    s = summary["summary"]["model"]["accuracy"]
    half = 12.706204736 * np.std(acc, ddof=1) / np.sqrt(2)  # t(0.975, 1)
    assert s["mean"] == pytest.approx(np.mean(acc)) and s["ci95"] == pytest.approx([s["mean"] - half, s["mean"] + half])
    assert (out / "cv.md").read_text().startswith("# Cross-validation: 2 folds")
    assert (out / "cv_accuracy.png").is_file()


def test_killed_cross_validation_resumes_to_the_same_summary(tiny, uninterrupted, tmp_path, capsys):
    data, cfg = tiny
    out = tmp_path / "killed"
    script = killer_script(tmp_path / "killer.py", CV_RUN["finetune"], module="stvit.cv")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), "--data", str(data), "--config", str(cfg), "--out", str(out),
                           "--folds", "2", "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (out / "fold-1" / "checkpoints" / "last.pt").is_file() and not (out / "fold-1" / "metrics.json").exists()
    (out / "fold-2").mkdir()
    (out / "fold-2" / "config.json").write_text("{}")  # a fold stopped before its first checkpoint starts over
    assert cv("--resume", str(out), "--folds", "3") == 2
    assert "drop --folds" in capsys.readouterr().err
    assert cv("--data", str(data), "--out", str(out)) == 2
    assert "continue it with --resume" in capsys.readouterr().err
    assert cv("--resume", str(out), "--quiet") == 0
    assert json.loads((out / "cv.json").read_text()) == json.loads((uninterrupted / "cv.json").read_text())
    assert json.loads((out / "folds.json").read_text()) == json.loads((uninterrupted / "folds.json").read_text())

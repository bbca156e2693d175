"""`python -m stvit.cv` end to end: the summary and folds on disk; a cross-validation killed in the middle of a fold
and resumed ends with the summary of an uninterrupted one. The folds and the refusals: tests/unit/test_cv.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT, killer_script
from unit import test_cv as unit
from unit.test_cv import CV_RUN, cv

tiny = unit.tiny  # the fixture: the tiny data with CV_RUN, not the session's `tiny`


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

"""The synthetic HCP-like set: a calibrated difficulty (a linear classifier on 800 / 200 full-size volumes) and the
`synth` command in its own process. The set itself: tests/unit/test_data_synth.py."""
import os
import subprocess
import sys

from stvit.data import make_synthetic
from stvit.data.__main__ import main
from stvit.data.synth import brain_support
from stvit.errors import run_cli

from helpers import ROOT as REPO


def test_a_linear_classifier_is_above_chance_but_far_from_perfect():
    """Calibration: logistic regression on the raw voxels, 800 train / 200 test volumes (new subjects). The
    background columns are all zero and cannot change an L2 fit, so it runs on the in-brain voxels only."""
    from sklearn.linear_model import LogisticRegression

    data = make_synthetic(800, 200, seed=0)
    brain = brain_support()
    clf = LogisticRegression(max_iter=1000).fit(data.X_train[:, brain], data.y_train)
    accuracy = clf.score(data.X_test[:, brain], data.y_test)
    print(f"linear classifier test accuracy: {accuracy:.3f}")
    assert 0.75 <= accuracy <= 0.90


def test_synth_command(tmp_path, capsys):
    path = tmp_path / "s.npz"
    out = subprocess.run([sys.executable, "-m", "stvit.data", "synth", "--out", str(path), "--n-train", "16",
                          "--n-test", "16", "--seed", "2", "--dtype", "float32"], capture_output=True, text=True,
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"wrote {path}: 16 train + 16 test volumes, npz, float32")
    assert run_cli(main, ["synth", "--out", str(path), "--n-train", "16", "--n-test", "16", "--force"]) == 0
    capsys.readouterr()
    assert run_cli(main, ["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "train: 16 volumes; labels 0: 8, 1: 8; 1 subject (16 volumes each)" in out
    assert out.rstrip().endswith("valid")

"""A generated 12-subject block-design study (BIDS + fMRIPrep, int16, fMRIPrep's 2 mm grid) imported with
`python -m stvit.data import`, then trained with `python -m stvit.train --data FILE` (demo preset): the model and
the run's own baseline learn, beside an independent logistic regression computed from the generator's ground truth
on the same test subjects. (bench/studies/2026-12-02-import/ runs the same at 80 frames a run and records it.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stvit.data.importer.study import Design, Signal, make_study, truth_accuracy
from stvit.data.packed import PackedFile

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def test_twelve_subjects_imported_then_trained(tmp_path):
    design = Design(tr=2.0, frames=40, block=12.0, rest=8.0, lead=6.0)
    truth = make_study(tmp_path / "study", subjects=12, runs=2, design=design, signal=Signal(effect=2.0, noise=1.5))
    data = tmp_path / "study.h5"
    imp = subprocess.run([sys.executable, "-m", "stvit.data", "import", str(tmp_path / "study"), "--out", str(data),
                          "--conditions", "face", "house", "--test-subjects", "3", "--quiet"],
                         env=ENV, capture_output=True, text=True, timeout=3600)
    assert imp.returncode == 0, imp.stderr
    assert "12 subjects, 24 runs, 960 volumes" in imp.stdout and "test split: 3 whole subjects" in imp.stdout
    run = tmp_path / "run"
    tr = subprocess.run([sys.executable, "-m", "stvit.train", "--data", str(data), "--preset", "demo", "--out",
                         str(run), "--class-names", "face", "house", "--quiet"],
                        env=ENV, capture_output=True, text=True, timeout=3600)
    assert tr.returncode == 0, tr.stderr
    m = json.loads((run / "metrics.json").read_text())
    with PackedFile(data) as p:
        test_subjects = p.provenance["test_split"]["test"]
    reference = truth_accuracy(truth, test_subjects)
    print(f"model {m['test']['accuracy']:.3f}, baseline {m['baseline']['accuracy']:.3f}, "
          f"truth logistic regression {reference['accuracy']:.3f}")
    assert "warnings" not in m, m.get("warnings")
    assert reference["accuracy"] > 0.7 and m["baseline"]["accuracy"] > 0.7
    assert m["test"]["accuracy"] > 0.65

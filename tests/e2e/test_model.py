"""The model tree at the paper preset: its parameter count, and `python -m stvit.model --summary` saying the same.
The model itself: tests/unit/test_model.py."""
import subprocess
import sys

from stvit.config import preset
from stvit.model.vit import SpatioTemporalClassifier, count_parameters

from helpers import ROOT


def test_paper_parameter_count(capsys):
    clf = SpatioTemporalClassifier(preset("paper").model)
    n = count_parameters(clf)
    print(f"paper-preset classifier: {n:,d} parameters")
    assert 2_000_000 < n < 3_000_000
    out = subprocess.run([sys.executable, "-m", "stvit.model", "--summary", "--preset", "paper"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert f"{n:,d}" in out

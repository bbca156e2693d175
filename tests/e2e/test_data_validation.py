"""Every bad input is refused at the edge with one line `error: <file>: <problem>` and exit code 2: by
`python -m stvit.data inspect` in its own process, without a traceback. In this process:
tests/unit/test_data_validation.py."""
import os
import subprocess
import sys

import pytest
import scipy.io

from helpers import ROOT as REPO
from unit.test_data_validation import arrays


@pytest.mark.parametrize("case", ["missing", "not-mat", "wrong-shape"])
def test_cli_one_line_exit_2_no_traceback(tmp_path, case):
    path = tmp_path / "d.mat"
    if case == "not-mat":
        path.write_text("a,b,c\n1,2,3\n")
    elif case == "wrong-shape":
        scipy.io.savemat(path, arrays())
    out = subprocess.run([sys.executable, "-m", "stvit.data", "inspect", str(path)], capture_output=True, text=True,
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), out.stderr
    assert "Traceback" not in out.stderr

"""MAT v5/v7 files with the two headers damaged by hand (an unknown class id; dimensions over more values than the
data holds): refused with one sentence about the file, never an internal exception, in this process and by
`python -m stvit.data inspect` with exit code 2. Small variables and the header-mutation fuzz:
tests/unit/test_data_matv5.py.
"""
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import scipy.io

from stvit.data import matv5

from helpers import ROOT as REPO
from unit.test_data_matv5 import assert_clean_refusal, load_or_refuse
from unit.test_data_validation import arrays


# --- the two damaged headers found by hand, and the command line -----------------------------------------------

def _damaged(tmp_path: Path, case: str) -> Path:
    """y_test with an unknown class id, or with dimensions 16 x 4 over its 4 values."""
    path = tmp_path / f"{case}.mat"
    scipy.io.savemat(path, arrays())  # y_test is 4 x 1 doubles
    var = matv5.Mat5File(path).vars["y_test"]
    b = bytearray(path.read_bytes())
    if case == "class":
        b[var.offset + 8] = 23  # the class byte of the array flags
    else:
        b[var.offset + 24:var.offset + 32] = struct.pack("<2i", 16, 4)  # after the flags and the dims tag
    path.write_bytes(bytes(b))
    return path


@pytest.mark.parametrize("case,words", [("class", "variable 'y_test' has an unknown MATLAB class (id 23)"),
                                        ("dims", "variable 'y_test' is 16 x 4 (64 values of 8 bytes) but holds "
                                                 "32 bytes of data")])
def test_damaged_header_says_what_is_wrong_with_the_file(tmp_path, case, words):
    path = _damaged(tmp_path, case)
    data, message = load_or_refuse(path)
    assert data is None and words in message
    assert_clean_refusal(path, message)
    r = subprocess.run([sys.executable, "-m", "stvit.data", "inspect", str(path)], capture_output=True, text=True,
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert r.returncode == 2 and r.stderr == f"error: {message}\n", r.stderr

"""Loading a big float64 file (about 250 MB, MAT v5 and v7.3) in a fresh process peaks near its float32 size. The
readers themselves: tests/unit/test_data_readers.py."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from stvit.data import HCPData, write_dataset

from helpers import ROOT as REPO


def test_peak_memory_near_float32_size(tmp_path):
    """Load a float64 file (about 250 MB, v5 and v7.3) in a fresh process: the resident set grows by about the
    float32 size of the volumes (plus fixed working buffers), not by the float64 size or more."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc (Linux) to read the resident set")
    rng = np.random.default_rng(0)
    n_train, n_test = 160, 40
    X_train = rng.standard_normal((n_train, 53, 63, 46), np.float32)
    X_test = rng.standard_normal((n_test, 53, 63, 46), np.float32)
    labels = np.arange(n_train) % 2
    data = HCPData(X_train, labels, None, X_test, labels[:n_test], None, source="memory test")
    small = HCPData(X_train[:2], labels[:2], None, X_test[:2], labels[:2], None, source="warm-up")
    float32_bytes = X_train.nbytes + X_test.nbytes
    v5, v73 = tmp_path / "big.mat", tmp_path / "big73.mat"
    for path, fmt in ((v5, "mat"), (v73, "mat73")):
        write_dataset(path, data, fmt=fmt, dtype=np.float64)
        write_dataset(path.with_suffix(".small"), small, fmt=fmt)
    assert v5.stat().st_size > 1.99 * float32_bytes
    del data, small, X_train, X_test
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forked parent (this test process) across exec
    child = textwrap.dedent("""
        import sys
        from stvit.data import load_dataset
        def status(key):
            line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
            return int(line.split()[1]) * 1024
        load_dataset(sys.argv[2])  # the same format, small: imports and first-use allocations
        before = status("VmRSS")
        data = load_dataset(sys.argv[1])
        print(before, status("VmHWM"), data.X_train.nbytes + data.X_test.nbytes)
    """)
    for path in (v5, v73):
        out = subprocess.run([sys.executable, "-c", child, str(path), str(path.with_suffix(".small"))],
                             capture_output=True, text=True,
                             cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
        assert out.returncode == 0, out.stderr
        before, peak, nbytes = map(int, out.stdout.split())
        assert nbytes == float32_bytes
        growth = peak - before
        print(f"{path.name}: float32 {nbytes / 1e6:.0f} MB, peak growth {growth / 1e6:.0f} MB "
              f"({growth / nbytes:.2f}x)")
        assert growth < nbytes + 48e6, f"{path.name}: grew {growth / 1e6:.0f} MB for {nbytes / 1e6:.0f} MB"

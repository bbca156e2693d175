"""End-to-end runs of `python -m stvit.data import` as a user runs it, in real processes: killed with SIGKILL in
the middle of an import and run again (the same bytes as an import never interrupted, with another number of
jobs); a truncated file found by a worker process; a generated 12-subject study imported and then trained with
`python -m stvit.train --data FILE`, beside a logistic regression computed from the generator's own truth."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stvit.data.importer import ImportOptions, import_study
from stvit.data.importer.study import Design, make_study

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
DESIGN = Design(tr=2.0, frames=14, block=8.0, rest=4.0, lead=4.0)


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "stvit.data", "import", *args]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """4 subjects x 2 runs on fMRIPrep's grid, and the file of an uninterrupted in-process import (1 job)."""
    root = tmp_path_factory.mktemp("e2e") / "study"
    make_study(root, subjects=4, runs=2, design=DESIGN)
    whole = root.parent / "whole.h5"
    import_study(root, whole, ImportOptions(conditions=("face", "house"), test_subjects="1"))
    return root, whole


def test_kill_9_mid_import_then_rerun_gives_the_same_file(study, tmp_path):
    root, whole = study
    out = tmp_path / "killed.h5"
    parts = tmp_path / "killed.h5.parts"
    args = command(str(root), "--out", str(out), "--conditions", "face", "house", "--test-subjects", "1", "--quiet")
    p = subprocess.Popen(args + ["--jobs", "2"], env=ENV, start_new_session=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(parts.glob("*.npz"))) < 2 and p.poll() is None:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)  # the import and its two worker processes, as kill -9 of the group
    p.wait()
    done = len(list(parts.glob("*.npz")))
    assert p.returncode == -signal.SIGKILL and not out.exists()
    assert 2 <= done < 8, f"{done} of 8 runs done when killed"
    rerun = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"({done} runs reused from an interrupted import)" in rerun.stdout
    assert out.read_bytes() == whole.read_bytes()  # the same bytes as never interrupted, 2 jobs then 1
    assert not parts.exists()


def test_a_truncated_file_found_by_a_worker_process(study, tmp_path):
    import shutil

    root = Path(shutil.copytree(study[0], tmp_path / "study"))
    bold = next(root.glob("derivatives/fmriprep/sub-03/func/*run-2*_bold.nii.gz"))
    bold.write_bytes(bold.read_bytes()[:-20000])
    out = tmp_path / "t.h5"
    r = subprocess.run(command(str(root), "--out", str(out), "--conditions", "face", "house", "--jobs", "2",
                               "--quiet"), env=ENV, capture_output=True, text=True, timeout=600)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"error: {bold}: cannot read frames") and "truncated" in lines[0]
    assert not out.exists() and not (tmp_path / "t.h5.parts").exists()

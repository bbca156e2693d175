"""`python -m stvit.train` on a packed file, resident and streamed: a run killed with SIGKILL in the middle of an
epoch and resumed is the same run, bit for bit, as the uninterrupted run on the dense file (the same batches in
every placement); under torchrun (2 gloo ranks) a streamed run matches one process, each rank reading its own
rows."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from stvit.data import load_dataset, write_dataset
from stvit.training import checkpoint as ckpt

from helpers import ROOT, TINY_RUN, VOLUME, killer_script, losses, run_main
from e2e.test_ddp import DDP, N_TEST, torchrun


@pytest.fixture(scope="module")
def packed32(tiny, tmp_path_factory):
    """The tiny data set of the session's dense run (`tiny_run`) as a packed float32 file: the same volumes."""
    path = tmp_path_factory.mktemp("packed") / "tiny32.h5"
    write_dataset(path, load_dataset(tiny[0], volume_shape=VOLUME), fmt="packed", dtype=np.float32)
    return path


@pytest.mark.parametrize("placement", ["device", "stream"])
def test_killed_and_resumed_packed_run_is_the_dense_run(tiny, tiny_run, packed32, tmp_path, placement):
    _, cfg = tiny
    out = tmp_path / placement
    script = killer_script(tmp_path / "killer.py", TINY_RUN["finetune"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), "--data", str(packed32), "--config", str(cfg), "--out",
                           str(out), "--data-placement", placement, "--quiet"], env=env, cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert ckpt.load(out / "checkpoints" / "last.pt")["epoch"] == 1  # killed in fine-tuning's 2nd epoch
    assert run_main(["--resume", str(out), "--quiet"]) == 0
    assert losses(out) == losses(tiny_run)  # every loss and accuracy, bit for bit
    a, b = (json.loads((o / "metrics.json").read_text()) for o in (out, tiny_run))
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"] and a["baseline"]["C"] == b["baseline"]["C"]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    firsts = [r["data_placement"] for r in records if "data_placement" in r]
    assert [f["placement"] for f in firsts] == [placement] * len(firsts) and len(firsts) == 3  # each stage, the resume
    assert a["data_placement"]["placement"] == placement and b["data_placement"]["placement"] == "dense"


def test_resume_may_change_the_placement(tiny, tiny_run, packed32, tmp_path, monkeypatch):
    from stvit.training.rundir import RunDir

    _, cfg = tiny
    out = tmp_path / "moved"
    real_log = RunDir.log

    def stop_in_pretraining(self, record):
        real_log(self, record)
        if record["stage"] == "pretrain" and record["epoch"] == 2:  # logged; its checkpoint not yet saved
            raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "log", stop_in_pretraining)
    with pytest.raises(KeyboardInterrupt):
        run_main(["--data", str(packed32), "--config", str(cfg), "--out", str(out), "--data-placement", "stream",
                  "--quiet"])
    monkeypatch.undo()
    assert run_main(["--resume", str(out), "--data-placement", "device", "--quiet"]) == 0
    assert losses(out) == losses(tiny_run)


def test_stream_placement_needs_a_packed_file(tiny, tmp_path, capsys):
    data, cfg = tiny
    out = tmp_path / "never"
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--data-placement", "stream"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data}: data.placement stream") and "stvit.data pack" in err
    assert err.count("\n") == 1 and not out.exists()


def test_two_ranks_streaming_match_one_process(tmp_path):
    from helpers import write_tiny_data

    dense = write_tiny_data(tmp_path / "tiny.npz", n_test=N_TEST)
    packed = tmp_path / "tiny32.h5"
    write_dataset(packed, load_dataset(dense, volume_shape=VOLUME), fmt="packed", dtype=np.float32)
    (tmp_path / "ddp.json").write_text(json.dumps({**DDP, "data": {**DDP["data"], "placement": "stream"}}))
    two = tmp_path / "two"
    p = torchrun("--data", str(packed), "--config", str(tmp_path / "ddp.json"), "--out", str(two), "--quiet")
    assert p.returncode == 0, p.stderr[-3000:]
    one = tmp_path / "one"
    (tmp_path / "one.json").write_text(json.dumps(DDP))
    assert run_main(["--data", str(dense), "--config", str(tmp_path / "one.json"), "--out", str(one), "--quiet"]) == 0
    a, b = losses(two), losses(one)
    assert [r[:2] for r in a] == [r[:2] for r in b]
    for ra, rb in zip(a, b):
        for x, y in zip(ra[2:], rb[2:]):
            assert (x is None) == (y is None)
            if x is not None:
                assert x == pytest.approx(y, rel=1e-5, abs=1e-7), (ra, rb)
    ma, mb = (json.loads((o / "metrics.json").read_text()) for o in (two, one))
    assert ma["test"]["confusion_matrix"] == mb["test"]["confusion_matrix"] and ma["test"]["n"] == N_TEST
    first = json.loads((two / "log.jsonl").read_text().splitlines()[0])["data_placement"]
    assert first["placement"] == "stream" and first["processes_sharing_memory"] == 2

"""`torchrun` with 2 gloo ranks on CPU: the losses of one process with the same global batch, every test sample
counted once, rank 0 alone writing, exact resume after both ranks are killed mid-epoch, one-line errors.

Three launches of torchrun (most of their time is starting Python and importing torch in three processes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stvit.training import checkpoint as ckpt
from stvit import train as T

from helpers import ROOT, TINY_RUN, killer_script, losses, write_tiny_data

N_TEST = 9  # test batches of 4, 4, 1: rank 1's shard of the last one is empty
# dropout 0: dropout masks are drawn per rank, so only without dropout do 2 ranks compute what 1 process does
DDP = {**TINY_RUN, "model": {**TINY_RUN["model"], "dropout": 0.0}, "finetune": {**TINY_RUN["finetune"], "epochs": 2},
       "train": {**TINY_RUN["train"], "batch_size": 4, "eval_batch_size": 4}}


def torchrun(*args: str, script: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc-per-node=2` (a free loopback port) of stvit.train."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    target = [str(script)] if script else ["-m", "stvit.train"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *target, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    data = write_tiny_data(d / "tiny.npz", n_test=N_TEST)
    (d / "ddp.json").write_text(json.dumps(DDP))
    return d, data


@pytest.fixture(scope="module")
def two_ranks(setup):
    d, data = setup
    out = d / "two"
    t0 = time.perf_counter()
    p = torchrun("--data", str(data), "--config", str(d / "ddp.json"), "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr[-3000:]
    print(f"2-rank run: {time.perf_counter() - t0:.1f} s")
    return out, p


def test_two_ranks_match_one_process(setup, two_ranks):
    d, data = setup
    out, _ = two_ranks
    one = d / "one"
    assert T.run_cli(T.main, ["--data", str(data), "--config", str(d / "ddp.json"), "--out", str(one),
                              "--quiet"]) == 0
    a, b = losses(out), losses(one)
    assert [r[:2] for r in a] == [r[:2] for r in b] == [("pretrain", 1), ("pretrain", 2), ("finetune", 1),
                                                         ("finetune", 2)]
    for ra, rb in zip(a, b):
        for x, y in zip(ra[2:], rb[2:]):
            assert (x is None) == (y is None)
            if x is not None:
                assert x == pytest.approx(y, rel=1e-5, abs=1e-7), (ra, rb)
    ma, mb = (json.loads((o / "metrics.json").read_text()) for o in (out, one))
    assert ma["best_epoch"] == mb["best_epoch"]
    assert ma["test"]["confusion_matrix"] == mb["test"]["confusion_matrix"]
    pa, pb = np.load(out / "predictions.npz"), np.load(one / "predictions.npz")
    np.testing.assert_allclose(pa["test_probs"], pb["test_probs"], rtol=1e-4, atol=1e-6)


def test_metrics_count_every_sample_once_and_rank0_alone_writes(setup, two_ranks):
    d, data = setup
    out, p = two_ranks
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == N_TEST and sum(map(sum, metrics["test"]["confusion_matrix"])) == N_TEST
    pred = np.load(out / "predictions.npz")
    np.testing.assert_array_equal(pred["test_index"], np.arange(N_TEST))
    np.testing.assert_array_equal(pred["test_labels"], np.load(data)["y_test"].reshape(-1).astype(np.int64))
    assert len(pred["val_labels"]) == len(pred["val_index"]) == metrics["val"]["n"]
    assert p.stdout.count("run directory:") == 1 and p.stdout.count("test: accuracy") == 1  # rank 0 alone prints
    last = ckpt.load(out / "checkpoints" / "last.pt")
    assert len(last["rng_per_rank"]) == 2
    assert not torch.equal(last["rng_per_rank"][0]["torch"], last["rng_per_rank"][1]["torch"])
    assert not [f for f in out.rglob("*.tmp")]


def test_resume_after_both_ranks_are_killed_is_exact(setup, two_ranks, tmp_path):
    d, data = setup
    full, _ = two_ranks
    killed = tmp_path / "killed"
    script = killer_script(tmp_path / "killer.py", DDP["finetune"])
    p = torchrun("--data", str(data), "--config", str(d / "ddp.json"), "--out", str(killed), "--quiet", script=script)
    assert p.returncode != 0
    assert ckpt.load(killed / "checkpoints" / "last.pt")["epoch"] == 1
    p = torchrun("--resume", str(killed), "--quiet")
    assert p.returncode == 0, p.stderr[-3000:]
    assert losses(killed) == losses(full)
    a, b = (json.loads((o / "metrics.json").read_text()) for o in (killed, full))
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]


def test_batch_not_divisible_by_ranks_is_one_line(setup, tmp_path, monkeypatch, capsys):
    d, data = setup
    out = tmp_path / "never"
    monkeypatch.setattr(T.DIST, "world_size", lambda: 2)  # the check runs on every rank before anything is written
    assert T.run_cli(T.main, ["--data", str(data), "--config", str(d / "ddp.json"), "--out", str(out),
                              "--batch-size", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --batch-size 3 is not a multiple of the 2 processes") and err.count("\n") == 1
    assert not out.exists()

"""`python -m stvit.train` end to end on a tiny preset: run-directory contract, exact resume, honest selection. An
interrupted checkpoint write: tests/unit/test_train.py."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from stvit.training import checkpoint as ckpt
from stvit.training import fit as FIT
from stvit.training import stages
from stvit.training import api as API
from stvit.data import load_split
from stvit.training.metrics import classification_metrics
from stvit.training.rundir import RunDir, read_log

from helpers import ROOT, TINY_RUN, killer_script, losses, run_main

def test_end_to_end_writes_the_contract(tiny, tiny_run):
    out = tiny_run
    for rel in ("config.json", "split.json", "log.jsonl", "metrics.json", "predictions.npz",
                "checkpoints/last.pt", "checkpoints/best.pt", "checkpoints/pretrain.pt",
                "figures/pretrain_loss.png", "figures/finetune_loss.png", "figures/finetune_accuracy.png",
                "figures/confusion_matrix.png"):
        assert (out / rel).is_file(), rel
    records = read_log(out / "log.jsonl")
    assert [(r["stage"], r["epoch"]) for r in records] == [("pretrain", 1), ("pretrain", 2), ("finetune", 1),
                                                           ("finetune", 2), ("finetune", 3)]
    for r in records:
        assert {"lr", "samples_per_s", "seconds"} <= r.keys()
    metrics = json.loads((out / "metrics.json").read_text())
    pred = np.load(out / "predictions.npz")
    again = classification_metrics(pred["test_labels"], pred["test_probs"], metrics["class_names"])
    assert metrics["test"] == again
    assert metrics["test"]["n"] == 10 and sum(map(sum, metrics["test"]["confusion_matrix"])) == 10
    assert {"accuracy", "roc_auc", "confusion_matrix", "per_class"} <= metrics["test"].keys()
    assert metrics["val"]["accuracy"] == pytest.approx(
        max(r["val_acc"] for r in records if r["stage"] == "finetune"))
    assert metrics["best_epoch"] in (1, 2, 3) and metrics["selected_on"] == "val"
    tr, va = load_split(out)
    ids = np.load(tiny[0])["ids_train"]
    assert len(va) and not set(ids[tr]) & set(ids[va])


def test_checkpoints_load_weights_only(tiny_run):
    for name in ("last.pt", "best.pt", "pretrain.pt"):
        state = torch.load(tiny_run / "checkpoints" / name, weights_only=True)
        assert "model" in state and "config" in state
    last = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=True)
    assert {"optimizer", "scaler", "scheduler", "rng", "split", "epoch", "stage"} <= last.keys()
    assert {"python", "numpy", "torch"} <= last["rng"].keys()


def test_resume_after_stop_is_bit_identical(tiny, tiny_run, tmp_path, monkeypatch):
    data, cfg = tiny
    out = tmp_path / "stopped"
    real_log = RunDir.log

    def stop_after_first_finetune_epoch(self, record):
        real_log(self, record)
        if record["stage"] == "finetune" and record["epoch"] == 1:
            raise KeyboardInterrupt  # stopped after the epoch was logged, before its checkpoint was saved

    monkeypatch.setattr(RunDir, "log", stop_after_first_finetune_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet"])
    monkeypatch.undo()
    assert run_main(["--resume", str(out), "--quiet"]) == 0
    assert losses(out) == losses(tiny_run)
    a = json.loads((out / "metrics.json").read_text())
    b = json.loads((tiny_run / "metrics.json").read_text())
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]


def test_resume_after_sigkill_mid_epoch_is_bit_identical(tiny, tiny_run, tmp_path):
    data, cfg = tiny
    out = tmp_path / "killed"
    script = killer_script(tmp_path / "killer.py", TINY_RUN["finetune"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), "--data", str(data), "--config", str(cfg), "--out", str(out),
                           "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert ckpt.load(out / "checkpoints" / "last.pt")["epoch"] == 1
    assert run_main(["--resume", str(out), "--quiet"]) == 0
    assert losses(out) == losses(tiny_run)
    a = json.loads((out / "metrics.json").read_text())
    assert a["test"] == json.loads((tiny_run / "metrics.json").read_text())["test"]


def test_selection_never_touches_test_before_final_evaluation(tiny, tmp_path, monkeypatch):
    data, cfg = tiny
    events = []
    real_log, real_test, real_evaluate = RunDir.log, FIT.Splits.test, API.evaluate
    monkeypatch.setattr(RunDir, "log", lambda self, r: (events.append(("epoch", r["stage"])), real_log(self, r))[1])
    monkeypatch.setattr(FIT.Splits, "test", lambda self: (events.append(("test", None)), real_test(self))[1])
    monkeypatch.setattr(API, "evaluate", lambda *a: (events.append(("evaluate", None)), real_evaluate(*a))[1])
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    first_test = events.index(("test", None))
    assert events[first_test - 1] == ("evaluate", None)
    assert all(e[0] != "epoch" for e in events[first_test:])
    assert events.count(("test", None)) == 1


def test_select_on_test_says_it_leaks(tiny, tmp_path, capsys):
    data, cfg = tiny
    out = tmp_path / "leaky"
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet", "--select-on-test",
                     "--pretrain-epochs", "0", "--ft-epochs", "1"]) == 0
    assert "leaks" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selected_on"] == "test" and "leaks" in metrics["warning"]


def test_bad_input_is_one_line_and_writes_nothing(tiny, tiny_run, tmp_path):
    data, cfg = tiny
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "stvit.train", *args], env=env, capture_output=True, text=True,
                              timeout=300)

    out = tmp_path / "never"
    p = cli("--data", str(tmp_path / "missing.mat"), "--config", str(cfg), "--out", str(out))
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "missing.mat" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not out.exists()
    before = {f: f.stat().st_mtime_ns for f in tiny_run.rglob("*") if f.is_file()}
    p = cli("--data", str(data), "--config", str(cfg), "--out", str(tiny_run))
    assert p.returncode == 2 and str(tiny_run) in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert {f: f.stat().st_mtime_ns for f in tiny_run.rglob("*") if f.is_file()} == before
    bad_cfg = tmp_path / "bad.json"
    bad_cfg.write_text('{"model": {"no_such_key": 1}}')
    p = cli("--data", str(data), "--config", str(bad_cfg), "--out", str(out))
    assert p.returncode == 2 and "no_such_key" in p.stderr and str(bad_cfg) in p.stderr and not out.exists()
    bad_cfg.write_text('{"model": {"volume": [5, 14, 6], "patch": [21, 23]}}')  # the demo's patch, tiny slices
    p = cli("--data", str(data), "--config", str(bad_cfg), "--out", str(out))
    assert p.returncode == 2 and "does not fit a 14x6 slice" in p.stderr and str(bad_cfg) in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not out.exists()
    p = cli("--resume", str(tmp_path / "nowhere"))
    assert p.returncode == 2 and "nowhere" in p.stderr


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny, tmp_path, monkeypatch, capsys):
    data, cfg = tiny
    real = stages.PRETRAIN.loss
    calls = {"n": 0}

    def poisoned(model, precision, x, noise=None):
        calls["n"] += 1
        loss = real(model, precision, x, noise)
        return loss * float("nan") if calls["n"] > 6 else loss  # 6 steps = one epoch of 24 volumes / 4

    monkeypatch.setattr(API, "PRETRAIN", dataclasses.replace(stages.PRETRAIN, loss=poisoned))
    out = tmp_path / "nan"
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "not finite" in err and "last.pt" in err
    state = ckpt.load(out / "checkpoints" / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())

"""`python -m stvit.train` end to end on a tiny preset: run-directory contract, exact resume, honest selection."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stvit import checkpoint as ckpt
from stvit import train as T
from stvit.data import load_split
from stvit.metrics import classification_metrics

ROOT = Path(__file__).resolve().parents[1]
VOLUME = (5, 14, 6)
TINY = {
    "model": {"volume": list(VOLUME), "patch": [7, 2], "dim": 16, "depth": 1, "heads": 2, "temporal_depth": 1,
              "temporal_heads": 2, "head_hidden": 8, "decoder_dim": 8, "decoder_depth": 1, "decoder_heads": 2,
              "dropout": 0.1},
    "mae": {"epochs": 2, "lr": 1e-3, "warmup_epochs": 0.5},
    "finetune": {"epochs": 3, "lr": 3e-3, "warmup_epochs": 0.5},
    "train": {"batch_size": 4, "eval_batch_size": 5, "compile": False, "device": "cpu", "precision": "fp32"},
    "data": {"val_fraction": 0.25},
}


def write_tiny_data(path: Path, n_train=32, n_test=10, seed=0) -> Path:
    """A learnable toy set in the npz layout: class 1 has a bright blob in the left half of the slices."""
    rng = np.random.default_rng(seed)

    def make(n, subj_offset):
        y = np.arange(n) % 2
        X = rng.normal(size=(n, *VOLUME)).astype(np.float32)
        X[y == 1, :2, 3:10, 1:4] += 1.5
        ids = np.array([f"S{subj_offset + i // 4:03d}" for i in range(n)])
        return X, y.astype(np.float64).reshape(-1, 1), ids

    Xtr, ytr, itr = make(n_train, 0)
    Xte, yte, ite = make(n_test, 100)
    np.savez(path, X_train=Xtr, y_train=ytr, ids_train=itr, X_test=Xte, y_test=yte, ids_test=ite)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    data = write_tiny_data(d / "tiny.npz")
    cfg = d / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    return data, cfg


def run_main(args: list[str]) -> int:
    return T.run_cli(T.main, args)


def losses(run_dir: Path) -> list[tuple]:
    keys = ("loss", "train_loss", "train_acc", "val_loss", "val_acc")
    return [(r["stage"], r["epoch"], *(r.get(k) for k in keys)) for r in T.read_log(run_dir / "log.jsonl")]


@pytest.fixture(scope="module")
def full_run(tiny, tmp_path_factory):
    data, cfg = tiny
    out = tmp_path_factory.mktemp("runs") / "full"
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    return out


def test_end_to_end_writes_the_contract(tiny, full_run):
    out = full_run
    for rel in ("config.json", "split.json", "log.jsonl", "metrics.json", "predictions.npz",
                "checkpoints/last.pt", "checkpoints/best.pt", "checkpoints/mae.pt",
                "figures/mae_loss.png", "figures/finetune_loss.png", "figures/finetune_accuracy.png",
                "figures/confusion_matrix.png"):
        assert (out / rel).is_file(), rel
    records = T.read_log(out / "log.jsonl")
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


def test_checkpoints_load_weights_only(full_run):
    for name in ("last.pt", "best.pt", "mae.pt"):
        state = torch.load(full_run / "checkpoints" / name, weights_only=True)
        assert "model" in state and "config" in state
    last = torch.load(full_run / "checkpoints" / "last.pt", weights_only=True)
    assert {"optimizer", "scaler", "scheduler", "rng", "split", "epoch", "stage"} <= last.keys()
    assert {"python", "numpy", "torch"} <= last["rng"].keys()


def test_interrupted_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save(path, {"epoch": 1, "w": torch.ones(3)})

    def broken_save(obj, f):
        f.write(b"partial garbage")
        raise KeyboardInterrupt  # the process is interrupted in the middle of writing

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    state = ckpt.load(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_resume_after_stop_is_bit_identical(tiny, full_run, tmp_path, monkeypatch):
    data, cfg = tiny
    out = tmp_path / "stopped"
    real_log = T.Run.log_epoch

    def stop_after_first_finetune_epoch(self, record):
        real_log(self, record)
        if record["stage"] == "finetune" and record["epoch"] == 1:
            raise KeyboardInterrupt  # stopped after the epoch was logged, before its checkpoint was saved

    monkeypatch.setattr(T.Run, "log_epoch", stop_after_first_finetune_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet"])
    monkeypatch.undo()
    assert run_main(["--resume", str(out), "--quiet"]) == 0
    assert losses(out) == losses(full_run)
    a = json.loads((out / "metrics.json").read_text())
    b = json.loads((full_run / "metrics.json").read_text())
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]


KILLER = """
import os, signal, sys
import stvit.engine as E
import stvit.train as T
real = E.train_one_epoch
def killing(step, model, opt, scaler, batches, steps, cfg, epoch, **kw):
    if cfg.epochs == {ft} and cfg.lr == {lr} and epoch == 1:  # 2nd fine-tune epoch: die after two steps, mid-epoch
        def gen(src=batches):
            for i, b in enumerate(src):
                if i == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield b
        batches = gen()
    return real(step, model, opt, scaler, batches, steps, cfg, epoch, **kw)
T.train_one_epoch = killing
sys.exit(T.run_cli(T.main, sys.argv[1:]))
"""


def killer_script(path: Path, finetune: dict) -> Path:
    """A stvit.train entry point that SIGKILLs its own process in the middle of the 2nd fine-tune epoch."""
    path.write_text(KILLER.replace("{ft}", repr(finetune["epochs"])).replace("{lr}", repr(finetune["lr"])))
    return path


def test_resume_after_sigkill_mid_epoch_is_bit_identical(tiny, full_run, tmp_path):
    data, cfg = tiny
    out = tmp_path / "killed"
    script = killer_script(tmp_path / "killer.py", TINY["finetune"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), "--data", str(data), "--config", str(cfg), "--out", str(out),
                           "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert ckpt.load(out / "checkpoints" / "last.pt")["epoch"] == 1
    assert run_main(["--resume", str(out), "--quiet"]) == 0
    assert losses(out) == losses(full_run)
    a = json.loads((out / "metrics.json").read_text())
    assert a["test"] == json.loads((full_run / "metrics.json").read_text())["test"]


def test_selection_never_touches_test_before_final_evaluation(tiny, tmp_path, monkeypatch):
    data, cfg = tiny
    events = []
    real_log, real_test = T.Run.log_epoch, T.Run.test_split
    monkeypatch.setattr(T.Run, "log_epoch", lambda self, r: (events.append(("epoch", r["stage"])),
                                                            real_log(self, r))[1])
    monkeypatch.setattr(T.Run, "test_split", lambda self: (events.append(("test", None)), real_test(self))[1])
    monkeypatch.setattr(T.Run, "evaluate", lambda self, real=T.Run.evaluate: (events.append(("evaluate", None)),
                                                                               real(self))[1])
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    first_test = events.index(("test", None))
    assert events[first_test - 1] == ("evaluate", None)
    assert all(e[0] != "epoch" for e in events[first_test:])
    assert events.count(("test", None)) == 1


def test_select_on_test_says_it_leaks(tiny, tmp_path, capsys):
    data, cfg = tiny
    out = tmp_path / "leaky"
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet", "--select-on-test",
                     "--mae-epochs", "0", "--ft-epochs", "1"]) == 0
    assert "leaks" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selected_on"] == "test" and "leaks" in metrics["warning"]


def test_bad_input_is_one_line_and_writes_nothing(tiny, full_run, tmp_path):
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
    before = {f: f.stat().st_mtime_ns for f in full_run.rglob("*") if f.is_file()}
    p = cli("--data", str(data), "--config", str(cfg), "--out", str(full_run))
    assert p.returncode == 2 and str(full_run) in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert {f: f.stat().st_mtime_ns for f in full_run.rglob("*") if f.is_file()} == before
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
    import stvit.steps as S

    real = S.mae_loss
    calls = {"n": 0}

    def poisoned(model, precision, x, noise=None):
        calls["n"] += 1
        loss = real(model, precision, x, noise)
        return loss * float("nan") if calls["n"] > 6 else loss  # 6 steps = one epoch of 24 volumes / 4

    monkeypatch.setattr(S, "mae_loss", poisoned)
    out = tmp_path / "nan"
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "not finite" in err and "last.pt" in err
    state = ckpt.load(out / "checkpoints" / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())

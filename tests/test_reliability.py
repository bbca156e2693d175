"""Run directories that cannot be corrupted, configs checked before anything runs, data checked for finite garbage,
resumes that refuse to change a run, steps that never take a non-finite loss, and the small things users meet."""
from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stvit.training import checkpoint as ckpt
from stvit.training import engine
from stvit.config import OptimConfig
from stvit.data import load_split
from stvit.training.metrics import classification_metrics
from stvit.training.rundir import read_log

from helpers import ROOT, TINY_RUN, losses, run_main, write_tiny_data

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def cli(*args, module="stvit.train") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def one_error_line(err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for p in parts:
        assert p in lines[0], (p, lines[0])


def snapshot(d: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file()}


# --- 1. the lock ------------------------------------------------------------------------------------------------

def test_two_runs_racing_for_one_directory(tiny, tmp_path):
    """Two processes started together on one --out: exactly one runs; the directory holds that run only."""
    data, cfg = tiny
    out = tmp_path / "race"
    procs = {seed: cli("--data", data, "--config", cfg, "--out", out, "--seed", seed, "--quiet") for seed in (1, 2)}
    results = {}
    for seed, p in procs.items():
        stdout, stderr = p.communicate(timeout=600)
        results[seed] = (p.returncode, stdout, stderr)
    codes = sorted(rc for rc, _, _ in results.values())
    assert codes == [0, 2], {s: (rc, err[-500:]) for s, (rc, _, err) in results.items()}
    winner = next(s for s, (rc, _, _) in results.items() if rc == 0)
    loser_err = next(err for rc, _, err in results.values() if rc == 2)
    one_error_line(loser_err, str(out))
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == winner
    assert [(r["stage"], r["epoch"]) for r in read_log(out / "log.jsonl")] == [
        ("pretrain", 1), ("pretrain", 2), ("finetune", 1), ("finetune", 2), ("finetune", 3)]
    assert ckpt.load(out / "checkpoints" / "last.pt")["config"]["train"]["seed"] == winner


@pytest.mark.parametrize("how", ["resume", "evaluate"])
def test_a_locked_directory_is_refused(tiny_run, tmp_path, how, capsys):
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "run")
    fd = os.open(run, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running stvit process holds it
    try:
        before = snapshot(run)
        args = ["--resume", str(run)] if how == "resume" else ["--stage", "evaluate", "--out", str(run)]
        assert run_main(args + ["--quiet"]) == 2
        one_error_line(capsys.readouterr().err, "another stvit process")
        assert snapshot(run) == before
    finally:
        os.close(fd)
    assert run_main(["--stage", "evaluate", "--out", str(run), "--quiet"]) == 0  # released: it runs


# --- 2. config values, checked before anything is written ------------------------------------------------------

@pytest.mark.parametrize("values, message", [
    ({"train": {"select_on_test": "false"}}, 'train.select_on_test must be true or false, got "false"'),
    ({"finetune": {"lr": "3e-4"}}, 'finetune.lr must be a number, got "3e-4"'),
    ({"train": {"batch_size": "8"}}, 'train.batch_size must be a whole number, got "8"'),
    ({"data": {"val_fraction": "0.2"}}, 'data.val_fraction must be a number, got "0.2"'),
    ({"model": {"dim": "64"}}, 'model.dim must be a whole number, got "64"'),
    ({"model": {"dim": 18}}, "model.heads must divide dim 18"),
    ({"finetune": {"epochs": -1}}, "finetune.epochs must be >= 0"),
    ({"mae": {"lr": 0}}, "pretrain.lr must be > 0"),
    ([1, 2], "one JSON object"),
])
def test_bad_config_values_are_refused_before_anything_is_written(tiny, tmp_path, values, message, capsys):
    data, _ = tiny
    bad = tmp_path / "cfg.json"
    bad.write_text(json.dumps(values))
    out = tmp_path / "never"
    assert run_main(["--data", str(data), "--config", str(bad), "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, str(bad), message)
    assert not out.exists()


def test_bad_flag_value_names_the_flag(tiny, tmp_path, capsys):
    data, cfg = tiny
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(tmp_path / "n"), "--batch-size", "0"]) == 2
    one_error_line(capsys.readouterr().err, "--batch-size must be >= 1, got 0")


# --- 3. finite garbage in the data --------------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "test"])
def test_huge_finite_voxels_are_refused_at_load(tmp_path, split, capsys):
    path = write_tiny_data(tmp_path / "big.npz")
    arrays = dict(np.load(path))
    arrays[f"X_{split}"][3, 1, 2, 3] = 1e30  # a unit or scaling error
    np.savez(path, **arrays)
    out = tmp_path / "never"
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY_RUN))
    assert run_main(["--data", str(path), "--config", str(cfg), "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, str(path), f"X_{split} has 1 volume(s)", "1e+30", "volume 3")
    assert not out.exists()
    p = subprocess.run([sys.executable, "-m", "stvit.data", "inspect", str(path), "--volume-shape", "5", "14", "6"],
                       env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2 and "valid" not in p.stdout.splitlines()
    one_error_line(p.stderr, "1e+30")


def test_the_bound_is_a_setting(tmp_path):
    path = write_tiny_data(tmp_path / "raw.npz")
    arrays = dict(np.load(path))
    arrays["X_train"] *= 2e6  # raw intensities of an unusual scanner: allowed with a larger bound
    np.savez(path, **arrays)
    cfg = {**TINY_RUN, "data": {**TINY_RUN["data"], "max_abs": 1e9, "zscore": True},
           "pretrain": {**TINY_RUN["pretrain"], "epochs": 0}, "finetune": {**TINY_RUN["finetune"], "epochs": 1}}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert run_main(["--data", str(path), "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "r"),
                     "--quiet"]) == 0


def test_evaluation_reports_what_it_cannot_compute():
    y = np.array([0, 1, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [np.nan, np.nan], [0.6, 0.4], [0.1, 0.9]])
    m = classification_metrics(y, probs, ["a", "b"])
    assert m["n"] == 5 and m["n_nonfinite"] == 1
    assert m["accuracy"] == pytest.approx(3 / 5)  # the volume without a prediction counts as an error
    assert sum(map(sum, m["confusion_matrix"])) == 4 and m["roc_auc"] is not None


# --- 4. resume refuses to change the run, and may lengthen it ----------------------------------------------------

@pytest.mark.parametrize("extra, named", [
    (["--batch-size", "2"], "--batch-size"),
    (["--seed", "7"], "--seed"),
    (["--preset", "paper"], "--preset"),
    (["--precision", "bf16"], "--precision"),
    (["--kernels", "fused"], "--kernels"),
    (["--data", "/no/such/file.npz"], "--data"),
    (["--ft-epochs", "2"], "--ft-epochs"),  # shorter than the run
])
def test_resume_refuses_flags_that_change_the_run(tiny_run, extra, named, capsys):
    before = snapshot(tiny_run)
    assert run_main(["--resume", str(tiny_run), "--quiet", *extra]) == 2
    one_error_line(capsys.readouterr().err, str(tiny_run), named)
    assert snapshot(tiny_run) == before


def test_later_stage_on_an_existing_directory_refuses_other_flags(tiny_run, capsys):
    before = snapshot(tiny_run)
    assert run_main(["--stage", "evaluate", "--out", str(tiny_run), "--seed", "5"]) == 2
    one_error_line(capsys.readouterr().err, "--seed")
    assert snapshot(tiny_run) == before


def test_resume_with_more_finetune_epochs_extends_the_run(tiny, tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "longer"
    shutil.copytree(tiny_run, run)
    assert run_main(["--resume", str(run), "--ft-epochs", "4", "--quiet"]) == 0
    assert "finetune.epochs 3 -> 4" in capsys.readouterr().err
    records = read_log(run / "log.jsonl")
    assert [(r["stage"], r["epoch"]) for r in records][-2:] == [("finetune", 3), ("finetune", 4)]
    assert records[-1]["extended"] == "finetune.epochs 3 -> 4"
    assert losses(run)[:5] == losses(tiny_run)
    assert json.loads((run / "config.json").read_text())["finetune"]["epochs"] == 4
    assert ckpt.load(run / "checkpoints" / "last.pt")["epoch"] == 4


# --- 5 and 6. every check before the first byte; one line, not a traceback ---------------------------------------

def test_training_split_smaller_than_a_batch_writes_nothing(tiny, tmp_path, capsys):
    data, cfg = tiny
    out = tmp_path / "never"
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--batch-size", "64"]) == 2
    one_error_line(capsys.readouterr().err, "fewer than one batch of 64")
    assert not out.exists()


def test_out_under_a_file_or_a_file_is_one_line(tiny, tmp_path, capsys):
    data, cfg = tiny
    afile = tmp_path / "a_file"
    afile.write_text("x")
    for out, part in ((afile, "exists and is not a directory"), (afile / "run", "is a file")):
        assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out)]) == 2
        one_error_line(capsys.readouterr().err, part)


@pytest.mark.parametrize("stage, name", [("evaluate", "best.pt"), ("finetune", "pretrain.pt")])
def test_truncated_checkpoint_of_a_later_stage_is_one_line(tiny_run, tmp_path, stage, name, capsys):
    import shutil

    run = tmp_path / "cut"
    shutil.copytree(tiny_run, run)
    if stage == "finetune":
        (run / "checkpoints" / "best.pt").unlink()
    path = run / "checkpoints" / name
    path.write_bytes(path.read_bytes()[:1000])
    before = snapshot(run)
    assert run_main(["--stage", stage, "--out", str(run)]) == 2
    one_error_line(capsys.readouterr().err, name, "cannot read checkpoint")
    assert snapshot(run) == before


def test_export_out_under_a_file_is_one_line(tiny_run, tmp_path, capsys):
    from stvit import export
    from stvit.errors import run_cli

    afile = tmp_path / "f"
    afile.write_text("x")
    assert run_cli(export.main, ["--checkpoint", str(tiny_run / "checkpoints" / "best.pt"),
                                 "--out", str(afile / "m.pt2")]) == 2
    one_error_line(capsys.readouterr().err, "is a file")


# --- 7. a non-finite loss never reaches the weights ----------------------------------------------------------------

@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_non_finite_step_is_not_taken(fused, dtype):
    """Two steps, the second with a NaN loss: the weights, moments and step count are those of one step. `fused`
    is the path a CUDA run takes (the fused AdamW's found_inf flag, no host sync); bf16 has no GradScaler."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 0])
    cfg = OptimConfig(epochs=1, lr=0.1)

    def run(n_good: int, poison: bool):
        m = torch.nn.Linear(4, 2)
        m.load_state_dict(model.state_dict())
        opt = torch.optim.AdamW(m.parameters(), lr=0.1, fused=fused)
        calls = {"n": 0}

        def step(xb, yb):
            calls["n"] += 1
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                loss = torch.nn.functional.cross_entropy(m(xb).float(), yb)
            return (loss * float("nan") if poison and calls["n"] > n_good else loss), None

        batches = [(x, y, None)] * (n_good + poison)
        stats = engine.train_one_epoch(step, m, opt, torch.amp.GradScaler("cpu", enabled=False), batches,
                                       len(batches), cfg, 0, quiet=True, max_nonfinite=5)
        return m, opt, stats

    clean, opt_c, s_c = run(1, poison=False)
    poisoned, opt_p, s_p = run(1, poison=True)
    for a, b in zip(clean.parameters(), poisoned.parameters()):
        assert torch.equal(a, b) and torch.isfinite(b).all()
        assert torch.equal(opt_c.state[a]["exp_avg"], opt_p.state[b]["exp_avg"])
        assert float(opt_c.state[a]["step"]) == float(opt_p.state[b]["step"]) == 1
    assert s_p.skipped == 1 and s_c.skipped == 0 and s_p.loss == s_c.loss  # the mean is over the finite steps


def test_skipped_steps_are_in_the_log(tiny_run):
    assert all(r["skipped_steps"] == 0 for r in read_log(tiny_run / "log.jsonl"))


# --- 8. the smaller ones --------------------------------------------------------------------------------------------

def test_split_json_says_how_it_split(tmp_path):
    path = write_tiny_data(tmp_path / "noids.npz")
    arrays = {k: v for k, v in np.load(path).items() if not k.startswith("ids_")}
    np.savez(path, **arrays)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**TINY_RUN, "pretrain": {**TINY_RUN["pretrain"], "epochs": 0},
                               "finetune": {**TINY_RUN["finetune"], "epochs": 1}}))
    out = tmp_path / "run"
    p = cli("--data", path, "--config", cfg, "--out", out, "--quiet")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    record = json.loads((out / "split.json").read_text())
    assert record["grouped_by_subject"] is False and record["val_subjects"] is None
    assert len(load_split(out)[1]) > 0
    warning = [ln for ln in err.splitlines() if "no subject ids" in ln]
    assert len(warning) == 1 and warning[0].startswith("warning: ") and "UserWarning" not in err  # one plain line


def test_files_get_the_usual_mode(tiny_run):
    umask = os.umask(0)
    os.umask(umask)
    for rel in ("config.json", "metrics.json", "split.json", "checkpoints/last.pt", "checkpoints/best.pt",
                "checkpoints/pretrain.pt"):
        assert stat.S_IMODE((tiny_run / rel).stat().st_mode) == 0o666 & ~umask, rel


@pytest.mark.parametrize("change, hint", [
    ("minus_one", "labels -1/1?"),
    ("matlab_layout", "permute(X, [4 1 2 3])"),
])
def test_hints_for_common_layouts(tmp_path, change, hint, capsys):
    from stvit.data import load_dataset
    from stvit.data.dataset import DataError

    path = write_tiny_data(tmp_path / "d.npz")
    arrays = dict(np.load(path))
    if change == "minus_one":
        arrays["y_train"] = arrays["y_train"] * 2 - 1
    else:
        arrays["X_train"] = np.moveaxis(arrays["X_train"], 0, -1).copy()  # (5, 14, 6, N)
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=hint.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]").replace("?", r"\?")):
        load_dataset(path, volume_shape=(5, 14, 6))


# --- issue 20: a full disk --------------------------------------------------------------------------------------

def test_disk_full_is_one_line_keeps_the_last_checkpoint_and_resumes_exactly(tiny, tiny_run, tmp_path, monkeypatch,
                                                                              capsys):
    """The 4th checkpoint write fails with ENOSPC half-way (as torch's zip writer meets a full disk): one line that
    names the file, says the last good checkpoint is intact and how to continue; exit 4; no temporary file left;
    then --resume continues bit-exactly."""
    import errno

    data, cfg = tiny
    out = tmp_path / "full"
    real_save, calls = torch.save, {"n": 0}

    def filling_disk(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # last.pt after pretrain epoch 2, then pretrain.pt, then the 1st fine-tune best.pt
            f.write(b"x" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", filling_disk)
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet"]) == 4
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "No space left on device" in err[0], err
    assert "is intact" in err[0] and f"--resume {out}" in err[0] and str(out / "checkpoints") in err[0]
    assert not [p for p in out.rglob("*.tmp")]
    assert ckpt.load(out / "checkpoints" / "last.pt")["stage"] in ("pretrain", "finetune")
    assert run_main(["--resume", str(out), "--quiet"]) == 0
    assert losses(out) == losses(tiny_run)
    assert json.loads((out / "metrics.json").read_text())["test"] == json.loads((tiny_run / "metrics.json").read_text())["test"]


def test_a_torn_last_log_line_is_left_out(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"stage": "pretrain", "epoch": 1}\n{"stage": "pre')
    assert read_log(log) == [{"stage": "pretrain", "epoch": 1}]

"""Run directories that cannot be corrupted, data checked for finite garbage, resumes that refuse to change a run,
and the small things users meet, on whole runs. The checks that need no run: tests/unit/test_reliability.py."""
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
from stvit.data import load_split
from stvit.training.rundir import read_log

from helpers import ROOT, TINY_RUN, losses, run_main, write_tiny_data
from unit.test_reliability import one_error_line

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def cli(*args, module="stvit.train") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


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

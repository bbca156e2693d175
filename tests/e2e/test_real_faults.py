"""Faults for real, not imitated: a full disk (a small tmpfs), a read-only file system (a tmpfs mounted ro), a second
process holding a directory's lock, a search killed with SIGKILL and run again at once. Mounting needs root (CI
runs as root); where it is impossible the tests that mount say so and skip. A mocked full disk stays beside the real
one in tests/e2e/test_reliability.py."""
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

from stvit.errors import UserError, WriteError, run_cli
from stvit.training import api
from stvit.training.rundir import RunDir

from fault_helpers import ENV, fake_run, fill, held_by_another_process, one_line, snapshot, tiny_config, tmpfs
from helpers import TINY_RUN, run_main, write_tiny_data

SIZE_KB = 2600  # the tmpfs of the reproduction
# pre-training two epochs, fine-tuning one: a checkpoint is ~120 KB, so with 200 KB free the first last.pt fits and
# the second does not (its temporary file needs room beside the one it replaces)
RECIPE = {**TINY_RUN, "finetune": {**TINY_RUN["finetune"], "epochs": 1}}


def strict_json(path: Path):
    def refuse(token):
        raise ValueError(f"{path}: not strict JSON ({token})")

    return json.loads(path.read_text(), parse_constant=refuse)


# --- a full disk ------------------------------------------------------------------------------------------------

def train(data: Path, cfg: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stvit.train", "--data", str(data), "--config", str(cfg), "--out",
                           str(out)], env=ENV, capture_output=True, text=True, timeout=600)


def error_lines(stderr: str) -> str:
    """stderr without the run's log lines (kernels, SDPA), which go to stderr too."""
    return "\n".join(x for x in stderr.splitlines() if x.startswith(("error", "Traceback", "  ", "RuntimeError",
                                                                      "OSError")))


def test_a_real_full_disk_is_one_line_exit_4_and_resume_finishes_the_run(tmp_path):
    """train on a 2.6 MB tmpfs. First with 30 KB left: the first checkpoint does not fit, and torch's zip writer,
    writing into the full file system, used to raise the OSError and then `RuntimeError: [enforce fail at
    inline_container.cc] unexpected pos` from its own cleanup (two tracebacks, exit 1). Now one line naming
    last.pt and saying there is nothing to resume yet; exit 4. Then, doing what it says, with 200 KB left: the
    second last.pt does not fit beside the first; one line saying the first is intact and how to continue; no
    temporary file; no progress bar in the redirected log; and after making room, --resume finishes the run."""
    data = write_tiny_data(tmp_path / "tiny.npz")
    cfg = tmp_path / "recipe.json"
    cfg.write_text(json.dumps(RECIPE))
    with tmpfs(tmp_path / "disk", SIZE_KB) as disk:
        out = disk / "run"
        last = out / "checkpoints" / "last.pt"
        filler = fill(disk, leave_kb=30)
        r = train(data, cfg, out)
        assert r.returncode == 4, r.stderr[-3000:]
        one_line(error_lines(r.stderr), f"{last}: cannot write (No space left on device)",
                 f"nothing to resume: make room, remove {out} and run the same command again")
        assert not last.exists() and not list(out.rglob(".*"))

        subprocess.run(["rm", "-r", str(out), str(filler)], check=True)
        filler = fill(disk, leave_kb=200)
        r = train(data, cfg, out)
        assert r.returncode == 4, r.stderr[-3000:]
        one_line(error_lines(r.stderr), f"{last}: cannot write (No space left on device)", f"{last} is intact",
                 f"--resume {out}")
        assert "it/s" not in r.stderr and "%|" not in r.stderr  # stderr is a file: no progress bars
        assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*"))
        assert torch.load(last, weights_only=True)["epoch"] == 1  # the good one, whole
        filler.unlink()  # make room, continue
        assert run_main(["--resume", str(out), "--quiet"]) == 0
        metrics = strict_json(out / "metrics.json")
        assert metrics["test"]["n"] == 10 and [r["epoch"] for r in RunDir(out).records()] == [1, 2, 1]


def full(disk: Path) -> Path:
    """`disk` with 8 KB left."""
    fill(disk, leave_kb=8)
    return disk


def test_every_writer_of_a_run_meets_a_real_full_disk_with_a_write_error(tmp_path):
    """Checkpoint, log line, figure, JSON: each a WriteError naming its file, the earlier version intact, no
    temporary file left."""
    from stvit.training.figures import plot_curves

    with tmpfs(tmp_path / "disk", 1024) as disk:
        run = RunDir(disk / "run", main=True, echo=False)
        run.save("last.pt", {"w": torch.zeros(100)})
        run.write_json("metrics.json", {"a": 1})
        run.log({"stage": "pretrain", "epoch": 1, "loss": 1.0})
        records = [{"stage": "pretrain", "epoch": e, "loss": 1.0 / e} for e in (1, 2)]
        run.write_figure(lambda folder: plot_curves(records, folder))
        before = snapshot(run.path)
        full(disk)
        writes = {"checkpoints/last.pt": lambda: run.save("last.pt", {"w": torch.randn(40_000)}),
                  "metrics.json": lambda: run.write_json("metrics.json", {"a": "x" * 20_000}),
                  "log.jsonl": lambda: run.log({"stage": "pretrain", "epoch": 2, "loss": 0.5, "pad": "x" * 20_000}),
                  "figures": lambda: run.write_figure(lambda folder: plot_curves(records * 30, folder))}
        for name, write in writes.items():
            with pytest.raises(WriteError) as e:
                write()
            assert str(e.value).startswith(str(run.path / name)) and "No space left on device" in str(e.value)
        after = snapshot(run.path)
        assert {k: v for k, v in after.items() if not k.endswith("log.jsonl")} == \
               {k: v for k, v in before.items() if not k.endswith("log.jsonl")}
        assert [r["epoch"] for r in run.records()] == [1]  # a torn last line is left out
        assert not [p for p in run.path.rglob("*") if p.name.startswith(".")]


def test_explain_cv_and_tune_outputs_on_a_real_full_disk(tiny, tmp_path):
    """The maps (a temporary folder, removed), cv.json and the study database: WriteError, exit 4 at the edge."""
    pytest.importorskip("optuna")
    from stvit.maps.job import write_maps
    from stvit.training.crossval import write_summary
    from stvit.training.search import Options, open_study, plan_search

    data, cfg = tiny
    with tmpfs(tmp_path / "disk", 1024) as disk:
        full(disk)
        with pytest.raises(WriteError) as e:
            write_maps(disk / "maps", {"big.nii.gz": b"x" * 100_000}, {"maps": []})
        assert e.value.line().startswith(f"{disk / 'maps' / 'big.nii.gz'}: cannot write (No space left on device)")
        assert f"nothing was written to {disk / 'maps'}" in e.value.line()
        assert sorted(os.listdir(disk)) == ["filler"]  # no maps/, no temporary folder

        class Plan:  # what write_summary reads of a cv plan
            out = disk / "cv"

        cv = {"folds_k": 2, "folds": [{"model": {"accuracy": 0.5}}] * 2, "summary": {"model": {}}, "pad": "x" * 20_000}
        with pytest.raises(WriteError, match="cv.json: cannot write"):
            write_summary(Plan, RunDir(disk / "cv", main=True), cv)

        search = plan_search(api.Request(config_file=cfg, values={"data.path": str(data)}, out=disk / "tune"),
                             Options(trials=1, folds=2))
        (disk / "tune").mkdir()
        with pytest.raises(WriteError, match="study.db: cannot write"):
            open_study(search)


def test_the_data_cache_and_synth_on_a_real_full_disk(tmp_path, capsys, monkeypatch):
    from stvit.data import __main__ as data_cli

    with tmpfs(tmp_path / "disk", 1024) as disk:
        monkeypatch.setenv("STVIT_CACHE", str(disk / "cache"))
        (disk / "cache").mkdir()
        cfg = tiny_config(Path("unused.npz"))
        cfg = cfg.override({"data": {"path": None, "synth_train": 16, "synth_test": 16},
                            "model": {"volume": [53, 63, 46], "patch": [21, 23]}})
        with pytest.raises(WriteError) as e:
            api.load_data(cfg)  # 32 volumes of 53x63x46: 20 MB into 1 MB
        assert "synth-v1-train16-test16-seed0-packed32.h5: cannot write (No space left on device)" in e.value.line()
        assert "nothing was written to the cache" in e.value.line()
        assert os.listdir(disk / "cache") == []
        assert run_cli(data_cli.main, ["synth", "--out", str(disk / "s.mat"), "--n-train", "16", "--n-test",
                                       "16"]) == 4
        one_line(capsys.readouterr().err, f"{disk / 's.mat'}: cannot write (No space left on device)",
                 "nothing was written")
        assert sorted(os.listdir(disk)) == ["cache"]
        src = write_tiny_data(tmp_path / "tiny.npz")
        filler = fill(disk, leave_kb=0)
        assert run_cli(data_cli.main, ["pack", str(src), "--out", str(disk / "p.h5"), "--volume-shape", "5", "14",
                                       "6"]) == 4
        one_line(capsys.readouterr().err, f"{disk / 'p.h5'}: cannot write (No space left on device)",
                 "nothing was written")
        assert sorted(os.listdir(disk)) == sorted(["cache", filler.name])


def test_a_packed_file_on_a_real_full_disk_fails_cleanly_and_the_interpreter_survives(tmp_path):
    """A packed file written onto a full tmpfs used to leave HDF5 with dirty chunks it could not flush: the error
    carried HDF5's whole report, and collecting the half-closed file later crashed the interpreter (a segmentation
    fault in the next test that ran the garbage collector). Now: OSError errno 28 with the system's words, no
    temporary file left, and a garbage collection afterwards is harmless (in a child process, so that a crash
    fails this test instead of ending the session)."""
    with tmpfs(tmp_path / "disk", 1024) as disk:
        code = f"""
import errno, gc, os
from stvit.data.synth import write_synthetic_packed
for _ in range(2):
    try:
        write_synthetic_packed({str(disk / "x.h5")!r}, 16, 16, 0, dtype="float32")
    except OSError as e:
        assert e.errno == errno.ENOSPC and e.strerror == os.strerror(errno.ENOSPC), e
    else:
        raise AssertionError("a 20 MB set fitted into 1 MB")
    gc.collect()
print(sorted(os.listdir({str(disk)!r})))
"""
        r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.strip() == "[]" and "Exception ignored" not in r.stderr, r.stderr[-3000:]


def test_explain_on_a_real_full_disk_is_one_line_exit_4_and_leaves_no_maps(tiny, tmp_path):
    """explain of a run on a full tmpfs used to print an OSError traceback and leave an empty maps/. Now one line
    naming the map file, exit 4, and neither maps/ nor its temporary folder."""
    pytest.importorskip("captum")
    data, _ = tiny
    with tmpfs(tmp_path / "disk", 1024) as disk:
        run = fake_run(disk / "run", tiny_config(data))
        before = snapshot(run)
        fill(disk, leave_kb=0)
        r = subprocess.run([sys.executable, "-m", "stvit.explain", str(run), "--method", "attention", "--n", "2",
                            "--quiet"], env=ENV, capture_output=True, text=True, timeout=600)
        assert r.returncode == 4, r.stderr[-3000:]
        one_line(error_lines(r.stderr), str(run / "maps"), "cannot write (No space left on device)",
                 "nothing was written")
        assert snapshot(run) == before and sorted(os.listdir(run)) == ["checkpoints", "config.json", "figures",
                                                                      "log.jsonl"]


def test_cv_on_a_real_full_disk_is_one_line_exit_4_and_resume_finishes(tmp_path):
    """cv into a tmpfs that fills during the first fold: it used to end in two tracebacks (torch's zip writer) and
    exit 1. Now one line naming the file and how to continue, exit 4; after making room, --resume finishes."""
    data = write_tiny_data(tmp_path / "tiny.npz")
    recipe = {**TINY_RUN, "pretrain": {**TINY_RUN["pretrain"], "epochs": 1},
              "finetune": {**TINY_RUN["finetune"], "epochs": 1}, "train": {**TINY_RUN["train"], "baseline": False}}
    cfg = tmp_path / "recipe.json"
    cfg.write_text(json.dumps(recipe))
    with tmpfs(tmp_path / "disk", SIZE_KB) as disk:
        out = disk / "cv"
        filler = fill(disk, leave_kb=30)  # room for the folds' small files, not for fold 1's first checkpoint
        r = subprocess.run([sys.executable, "-m", "stvit.cv", "--data", str(data), "--config", str(cfg), "--folds",
                            "2", "--out", str(out)], env=ENV, capture_output=True, text=True, timeout=600)
        assert r.returncode == 4, r.stderr[-3000:]
        line = one_line(error_lines(r.stderr), str(out / "fold-1" / "checkpoints"),
                        ".pt: cannot write (No space left on device)", f"--resume {out}")
        assert "Traceback" not in r.stderr and "it/s" not in r.stderr, line
        assert not list(out.rglob("*.tmp"))
        filler.unlink()
        from stvit import cv

        assert run_cli(cv.main, ["--resume", str(out), "--quiet"]) == 0
        summary = strict_json(out / "cv.json")
        assert len(summary["folds"]) == 2


# --- a read-only file system ------------------------------------------------------------------------------------

def test_a_read_only_cache_and_a_read_only_out_are_one_line(tiny, tmp_path, capsys, monkeypatch):
    data, cfg = tiny
    with tmpfs(tmp_path / "ro", 1024, read_only=True) as ro:
        monkeypatch.setenv("STVIT_CACHE", str(ro))
        assert run_main(["--config", str(cfg), "--out", str(tmp_path / "never")]) == 2
        one_line(capsys.readouterr().err, f"{ro}: cannot write the built-in data set into this cache folder "
                                          "(read-only file system); set STVIT_CACHE to a folder you can write")
        assert not (tmp_path / "never").exists()
        assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(ro / "run")]) == 2
        one_line(capsys.readouterr().err, str(ro / "run"), "cannot create it")


# --- a second process -------------------------------------------------------------------------------------------

def test_explain_is_refused_while_another_process_holds_the_run(tiny, tmp_path, capsys):
    """Two explains of one run used to both exit 0, leaving maps/ with both methods and a maps.json naming one.
    Now the run directory's lock: with another process holding it, explain is one line, exit 2, nothing written."""
    pytest.importorskip("captum")
    from stvit import explain

    data, _ = tiny
    run = fake_run(tmp_path / "run", tiny_config(data))
    before = snapshot(run)
    with held_by_another_process(run):
        assert run_cli(explain.main, [str(run), "--method", "attention", "--n", "2", "--quiet"]) == 2
    one_line(capsys.readouterr().err, f"{run}: another stvit process is using this run directory")
    assert snapshot(run) == before and not (run / "maps").exists()


def test_tune_is_refused_while_another_process_holds_its_directory(tiny, tmp_path, capsys):
    """Two tunes on one directory used to run trials side by side (3 trials for --trials 2, two final runs)."""
    pytest.importorskip("optuna")
    from stvit import tune

    data, cfg = tiny
    out = tmp_path / "tune"
    with held_by_another_process(out):
        assert run_cli(tune.main, ["--data", str(data), "--config", str(cfg), "--trials", "2", "--folds", "2",
                                   "--out", str(out)]) == 2
    one_line(capsys.readouterr().err, f"{out}: another stvit process is using this search directory")
    assert os.listdir(out) == []


KILLER = """
import os, signal, sys
import stvit.tune as TU
import stvit.training.search as S
real = S.Objective.fold
def fold(self, trial, cfg, k):
    if trial.number == 0 and k == 1:  # trial 0 finished its first fold: die before the second
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, trial, cfg, k)
S.Objective.fold = fold
sys.exit(TU.run_cli(TU.main, sys.argv[1:]))
"""


def test_a_trial_killed_by_sigkill_is_retried_when_the_search_runs_again_at_once(tmp_path):
    """The heartbeat's grace period (30 s) has not passed when the command runs again: the killed trial used to
    stay RUNNING for ever (in the study and in summary.md) while a new trial filled --trials. The search holds its
    directory's lock, so a running trial of that directory is a dead one: failed, and retried with its finished
    fold kept."""
    optuna = pytest.importorskip("optuna")
    from stvit import tune

    data = write_tiny_data(tmp_path / "tiny.npz")
    recipe = {**TINY_RUN, "pretrain": {**TINY_RUN["pretrain"], "epochs": 0},
              "finetune": {**TINY_RUN["finetune"], "epochs": 1}}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    (tmp_path / "space.json").write_text(json.dumps({"params": {"finetune.lr": {"low": 0.5, "high": 2.0,
                                                                                "times": "finetune.lr"}}}))
    out = tmp_path / "tune"
    args = ["--data", str(data), "--config", str(tmp_path / "recipe.json"), "--space", str(tmp_path / "space.json"),
            "--trials", "1", "--folds", "2", "--out", str(out), "--quiet"]
    (tmp_path / "killer.py").write_text(KILLER)
    r = subprocess.run([sys.executable, str(tmp_path / "killer.py"), *args], env=ENV, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert run_cli(tune.main, args) == 0  # at once: the killed trial's heartbeat is seconds old
    trials = optuna.load_study(study_name="stvit", storage=f"sqlite:///{out / 'study.db'}").get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"], [(t.number, t.state.name) for t in trials]
    killed, retry = trials
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == killed.params
    assert retry.user_attrs["fold_accuracy"][0] == killed.user_attrs["fold_accuracy"][0]  # its finished fold kept
    summary = (out / "summary.md").read_text()
    assert "| 0 | fail |" in summary and "running" not in summary

"""Everything checkable is checked before the first write, in one line: configs past their upper bounds, classes
missing from a split, damaged run and cv files, unsafe checkpoints, the NIfTI table, tune's options and storage,
paths the system refuses, an export over an existing file; metrics are strict JSON; files get the usual mode; no
progress bars in a log. (The real faults, a full disk, a read-only mount, a second process, kill -9: tests/e2e.)"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stvit.errors import UserError, run_cli
from stvit.training import api
from stvit.training import checkpoint as ckpt

from fault_helpers import fake_run, one_line, snapshot, tiny_config
from helpers import TINY_RUN, run_main, write_tiny_data

# --- config values beyond any sense, refused before anything is written ------------------------------------------


@pytest.mark.parametrize("section, values, says", [
    ("model", {"mlp_ratio": 2147483648}, "model.mlp_ratio must be in (0, 64], got 2147483648"),
    ("model", {"temporal_mlp_ratio": 2e205}, "model.temporal_mlp_ratio must be in (0, 64]"),
    ("model", {"decoder_depth": 2**63}, "model.decoder_depth must be <= 256"),  # was a hang
    ("finetune", {"min_lr": 1.0}, "finetune.min_lr must be <= lr 0.003"),
    ("model", {"dim": 2**22, "decoder_dim": 2**30}, "model of this config cannot be built"),  # the meta build
    ("model", {"dim": 2**18}, "GB (fp32 weights, gradients and AdamW state)"),  # 0.8 TB in one weight
    ("train", {"seed": 2**40}, "train.seed must be in [0, 4294967295]"),
])
def test_absurd_config_values_are_one_line_and_write_nothing(tiny, tmp_path, capsys, section, values, says):
    data, _ = tiny
    cfg = json.loads(json.dumps(TINY_RUN))
    cfg[section].update(values)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "never"
    t0 = time.perf_counter()
    assert run_main(["--data", str(data), "--config", str(path), "--out", str(out)]) == 2
    assert time.perf_counter() - t0 < 20  # promptly: nothing is allocated or built for real
    one_line(capsys.readouterr().err, str(path), says)
    assert not out.exists()


def test_the_memory_bound_reads_the_device(monkeypatch):
    from stvit.training import stages

    cfg = tiny_config(Path("unused.npz")).model
    counts = stages.check_model_size(cfg)
    monkeypatch.setattr(stages, "memory_bytes", lambda device: max(counts.values()) * 16 - 1)
    with pytest.raises(UserError, match="more than the"):
        stages.check_model_size(cfg)


def test_num_classes_beyond_the_labels_is_refused(tiny, tmp_path, capsys):
    data, _ = tiny
    cfg = json.loads(json.dumps(TINY_RUN))
    cfg["model"]["num_classes"] = 3
    cfg["data"]["class_names"] = ["a", "b", "c"]
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    assert run_main(["--data", str(data), "--config", str(path), "--out", str(tmp_path / "never")]) == 2
    one_line(capsys.readouterr().err, str(data), "model.num_classes is 3", "class 2 (c)")
    assert not (tmp_path / "never").exists()


@pytest.mark.filterwarnings("ignore:Only one class is present")  # sklearn, on the absent class: expected here
def test_metrics_files_are_strict_json(tmp_path):
    from stvit.training.metrics import classification_metrics
    from stvit.training.rundir import RunDir

    y = np.array([0, 1, 0, 1])
    probs = np.full((4, 3), 1 / 3)
    m = classification_metrics(y, probs, ["a", "b", "c"])  # class 2 absent: its one-vs-rest AUC is undefined
    assert m["roc_auc"] is None
    RunDir(tmp_path, main=True).write_json("metrics.json", {"test": m, "x": float("nan"), "y": [float("inf")]})

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    back = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert back["x"] is None and back["y"] == [None] and back["test"]["roc_auc"] is None


# --- classes in every split and fold -------------------------------------------------------------------------------

def one_class_data(path: Path) -> Path:
    """The tiny set with subjects S000-S006 all class 0 and S007 all class 1 (4 volumes) in its training split."""
    write_tiny_data(path)
    arrays = dict(np.load(path))
    y = np.zeros(32)
    y[28:] = 1  # subject S007
    arrays["y_train"] = y.reshape(-1, 1)
    np.savez(path, **arrays)
    return path


def test_a_training_split_of_one_class_is_refused_before_training(tmp_path, capsys):
    path = write_tiny_data(tmp_path / "one.npz")
    arrays = dict(np.load(path))
    arrays["y_train"] = np.zeros_like(arrays["y_train"])
    np.savez(path, **arrays)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY_RUN))
    out = tmp_path / "never"
    assert run_main(["--data", str(path), "--config", str(cfg), "--out", str(out)]) == 2
    one_line(capsys.readouterr().err, str(path), "the training split", "holds only class 0 (class0)")
    assert not out.exists()
    # --stage pretrain needs no labels: the MAE of a one-class set is planned
    assert api.plan(api.Request(config=TINY_RUN, values={"data.path": str(path)}, out=out, stage="pretrain"))


def test_a_fold_whose_training_part_holds_one_class_is_refused(tmp_path):
    from stvit.training.crossval import plan_cv

    data = one_class_data(tmp_path / "d.npz")
    request = api.Request(config=TINY_RUN, values={"data.path": str(data)}, out=tmp_path / "cv")
    with pytest.raises(UserError, match=r"\(fold \d of 2\): the (training|validation) split .* holds only class"):
        plan_cv(request, folds=2, within_train=True)
    assert not (tmp_path / "cv").exists()


def test_a_search_fold_of_one_class_is_refused(tmp_path):
    pytest.importorskip("optuna")
    from stvit.training.search import Options, plan_search

    data = one_class_data(tmp_path / "d.npz")
    request = api.Request(config=TINY_RUN, values={"data.path": str(data)}, out=tmp_path / "tune")
    with pytest.raises(UserError, match=r"search fold \d of 2\): the (training|validation) split .* holds only"):
        plan_search(request, Options(trials=1, folds=2))
    assert not (tmp_path / "tune").exists()


# --- checkpoints and run files that are not what they should be ----------------------------------------------------

class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("damage, says", [
    ("unsafe", "loading those would run code from the file"),
    ("list", "holds a list, not a dict"),
    ("misfit", "the weights do not fit a model of its config"),
    ("truncated", "cannot read checkpoint"),
])
def test_stage_evaluate_refuses_a_bad_best_checkpoint_before_redrawing_anything(tiny, tmp_path, capsys, damage,
                                                                               says):
    data, _ = tiny
    run = fake_run(tmp_path / "run", tiny_config(data))
    best = run / "checkpoints" / "best.pt"
    assert api.plan(api.Request(out=run, stage="evaluate", values={"data.path": str(data)}))  # whole: accepted
    state = torch.load(best, weights_only=True)
    if damage == "unsafe":
        torch.save({**state, "model": Evil()}, best)
    elif damage == "list":
        torch.save([state["model"]], best)
    elif damage == "misfit":
        torch.save({**state, "model": {k: v[..., :1] for k, v in state["model"].items()}}, best)
    else:
        best.write_bytes(best.read_bytes()[:5000])
    before = snapshot(run)
    assert run_main(["--stage", "evaluate", "--out", str(run), "--quiet"]) == 2
    line = one_line(capsys.readouterr().err, str(best), says)
    assert "weights_only" not in line  # torch's advice to load it unsafely is not repeated
    assert snapshot(run) == before and not Path("PWNED").exists()  # nothing redrawn, nothing run


def cv_dir(tmp_path: Path) -> Path:
    """A cross-validation directory as `stvit.cv` starts it (config.json, folds.json), without training."""
    from stvit.training.crossval import plan_cv, start
    from stvit.training.rundir import RunDir

    data = write_tiny_data(tmp_path / "d.npz")
    plan = plan_cv(api.Request(config=TINY_RUN, values={"data.path": str(data)}, out=tmp_path / "cv"), folds=2)
    start(plan, RunDir(plan.out, main=True))
    return plan.out


@pytest.mark.parametrize("damage, name, says", [
    ("empty folds", "folds.json", "damaged: not the folds a cross-validation wrote"),
    ("one fold", "folds.json", "damaged: not the folds a cross-validation wrote"),
    ("truncated metrics", "fold-1/metrics.json", "damaged (not the metrics a fold's run wrote)"),
])
def test_damaged_cv_files_are_one_line(tmp_path, capsys, damage, name, says):
    from stvit import cv

    out = cv_dir(tmp_path)
    if damage == "empty folds":
        (out / "folds.json").write_text("{}")
    elif damage == "one fold":
        record = json.loads((out / "folds.json").read_text())
        (out / "folds.json").write_text(json.dumps({**record, "fold": [0] * len(record["fold"])}))
    else:
        (out / "fold-1").mkdir()
        (out / "fold-1" / "metrics.json").write_text('{"test": {"n": 10, "accuracy": 0.5, "roc_a')
    before = snapshot(out)
    assert run_cli(cv.main, ["--resume", str(out)]) == 2
    one_line(capsys.readouterr().err, str(out / name), says)
    assert snapshot(out) == before


# --- the NIfTI table ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nifti_folder(tmp_path_factory):
    pytest.importorskip("nibabel")
    from stvit.data import load_dataset, nifti

    d = tmp_path_factory.mktemp("nifti")
    nifti.write(d / "base", load_dataset(write_tiny_data(d / "tiny.npz"), volume_shape=(5, 14, 6)))
    return d / "base"


def edited_table(base: Path, to: Path, edit) -> Path:
    shutil.copytree(base, to)
    lines = (to / "labels.csv").read_text().splitlines()
    (to / "labels.csv").write_text("\n".join(edit(lines)) + "\n")
    return to


def _cells(line: str, i: int, value: str) -> str:
    cells = line.split(",")
    cells[i] = value
    return ",".join(cells)


@pytest.mark.parametrize("case, edit, says", [
    ("duplicate", lambda L: L + [L[1]], "line 44: file 'train_00000.nii.gz' is listed twice (lines 2 and 44)"),
    ("leak", lambda L: L + [L[1].replace(",train", ",test")], "is in the train split (line 2) and the test split"),
    ("parent", lambda L: [L[0], "../" + L[1]] + L[2:], "line 2: file '../train_00000.nii.gz' is outside"),
    ("absolute", lambda L: [L[0], "/etc/" + L[1]] + L[2:], "is outside the CSV's folder"),
    ("some subjects empty", lambda L: [L[0], _cells(L[1], 2, "")] + L[2:], "line 2: empty subject"),
    ("extra value", lambda L: [L[0], L[1] + ",x"] + L[2:], "line 2: 5 values for the 4 columns"),
    ("missing value", lambda L: [L[0], L[1].rsplit(",", 1)[0]] + L[2:], "line 2: 3 values for the 4 columns"),
])
def test_the_nifti_table_is_checked_like_a_data_file(nifti_folder, tmp_path, case, edit, says):
    from stvit.data import load_dataset
    from stvit.data.dataset import DataError

    folder = edited_table(nifti_folder, tmp_path / "t", edit)
    with pytest.raises(DataError, match=re.escape(says)) as e:
        load_dataset(folder, volume_shape=(5, 14, 6))
    assert str(e.value).startswith(f"{folder / 'labels.csv'}: line ")


def test_an_empty_subject_column_is_no_subject_column_and_other_columns_warn(nifti_folder, tmp_path):
    from stvit.data import load_dataset

    folder = edited_table(nifti_folder, tmp_path / "t", lambda L: [L[0]] + [_cells(x, 2, "") for x in L[1:]])
    assert load_dataset(folder, volume_shape=(5, 14, 6)).ids_train is None
    folder = edited_table(nifti_folder, tmp_path / "u", lambda L: [L[0] + ",session"] + [x + ",1" for x in L[1:]])
    with pytest.warns(UserWarning, match="column\\(s\\) session ignored"):
        assert load_dataset(folder, volume_shape=(5, 14, 6)).ids_train is not None


def test_label_names_map_through_the_class_names(nifti_folder, tmp_path):
    folder = edited_table(nifti_folder, tmp_path / "t", lambda L: [L[0]] + [
        _cells(x, 1, {"0": "face", "1": "shape"}[x.split(",")[1]]) for x in L[1:]])
    cfg = tiny_config(folder, data={"class_names": ["face", "shape"]})
    data = api.load_data(cfg)
    assert data.y_train.tolist() == [i % 2 for i in range(32)]
    with pytest.raises(UserError, match="label 'face' is not a class index or a class name"):
        api.load_data(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, class_names=("a", "b"))))


# --- files get the usual mode ---------------------------------------------------------------------------------------

def test_synth_and_the_builtin_cache_write_files_with_the_usual_mode(tmp_path, capsys):
    from stvit.data import __main__ as data_cli
    from stvit.data.synth import builtin_dataset_path

    old = os.umask(0o022)
    try:
        assert run_cli(data_cli.main, ["synth", "--out", str(tmp_path / "s.npz"), "--n-train", "16", "--n-test",
                                       "16", "--dtype", "float32"]) == 0
        cached = builtin_dataset_path(16, 16, 0, cache_dir=tmp_path / "cache")
    finally:
        os.umask(old)
    for path in (tmp_path / "s.npz", cached):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    # and synth never replaces a file without --force
    assert run_cli(data_cli.main, ["synth", "--out", str(tmp_path / "s.npz"), "--n-train", "16"]) == 2
    one_line(capsys.readouterr().err, "file exists; pass --force")


# --- tune: every option and the storage, before any directory ------------------------------------------------------

def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case, says", [
    ("pruner", "pruner.n_startup_trials must be a whole number >= 0, got -3"),
    ("sampler", 'sampler.n_startup_trials must be a whole number >= 0, got "five"'),
    ("sampler bool", "sampler.multivariate must be true or false, got 1"),
    ("memory", "an in-memory database; the study would be lost"),
    ("bad url", "--storage: cannot open foo://bar"),
    ("not a url", "is not a database URL"),
    ("foreign", "holds tables that are not an Optuna study's (people)"),
    ("not sqlite", "not an SQLite database"),
])
def test_tune_checks_options_and_storage_before_any_directory(tiny, tmp_path, capsys, case, says):
    pytest.importorskip("optuna")
    from stvit import tune

    data, cfg = tiny
    space = {"params": {"finetune.lr": {"low": 0.3, "high": 3.0, "log": True, "times": "finetune.lr"}}}
    extra = []
    if case == "pruner":
        space["pruner"] = {"n_startup_trials": -3}
    elif case == "sampler":
        space["sampler"] = {"n_startup_trials": "five"}
    elif case == "sampler bool":
        space["sampler"] = {"multivariate": 1}
    elif case == "memory":
        extra = ["--storage", "sqlite://"]
    elif case == "bad url":
        extra = ["--storage", "foo://bar"]
    elif case == "not a url":
        extra = ["--storage", "not a url at all"]
    else:
        db = tmp_path / "foreign.db"
        if case == "foreign":
            conn = sqlite3.connect(db)
            conn.execute("CREATE TABLE people (id INTEGER, name TEXT)")
            conn.commit()
            conn.close()
        else:
            db.write_text("name,age\nada,36\n" * 50)
        extra = ["--storage", f"sqlite:///{db}"]
        before = md5(db)
    (tmp_path / "space.json").write_text(json.dumps(space))
    out = tmp_path / "tune"
    assert run_cli(tune.main, ["--data", str(data), "--config", str(cfg), "--space", str(tmp_path / "space.json"),
                               "--trials", "2", "--folds", "2", "--out", str(out), *extra]) == 2
    one_line(capsys.readouterr().err, says)
    assert not out.exists()
    if case in ("foreign", "not sqlite"):
        assert md5(tmp_path / "foreign.db") == before  # looked at, never modified


# --- a path component over 255 bytes ---------------------------------------------------------------------------

def commands():
    from stvit import cv, embed, explain, export, predict, train, tune
    from stvit.data import __main__ as data_cli

    return {"train": train.main, "cv": cv.main, "tune": tune.main, "explain": explain.main, "export": export.main,
            "data": data_cli.main, "predict": predict.main, "embed": embed.main}


LONG = "x" * 300


@pytest.mark.parametrize("command, argv", [
    ("train", ["--data", "{long}.npz", "--config", "{cfg}", "--out", "{tmp}/r"]),
    ("train", ["--data", "{data}", "--config", "{long}.json", "--out", "{tmp}/r"]),
    ("train", ["--data", "{data}", "--config", "{cfg}", "--out", "{long}/run"]),
    ("train", ["--resume", "{long}"]),
    ("cv", ["--data", "{data}", "--config", "{cfg}", "--folds", "2", "--out", "{long}"]),
    ("cv", ["--resume", "{long}"]),
    ("tune", ["--data", "{data}", "--config", "{cfg}", "--trials", "1", "--out", "{long}"]),
    ("explain", ["{long}"]),
    ("export", ["--checkpoint", "{long}.pt", "--out", "{tmp}/m.pt2"]),
    ("export", ["--checkpoint", "{tmp}/c.pt", "--out", "{long}.pt2"]),
    ("data", ["synth", "--out", "{long}.mat"]),
    ("data", ["inspect", "{long}.mat"]),
    ("predict", ["{long}", "{data}", "--out", "{tmp}/p.csv"]),
    ("embed", ["{tmp}", "{data}", "--out", "{long}.npz"]),
])
def test_a_path_component_over_255_bytes_is_one_line(tiny, tmp_path, capsys, command, argv):
    if command == "tune":
        pytest.importorskip("optuna")
    data, cfg = tiny
    (tmp_path / "c.pt").write_bytes(b"")
    argv = [a.format(long=f"{tmp_path}/{LONG}", cfg=cfg, data=data, tmp=tmp_path) for a in argv]
    assert run_cli(commands()[command], argv) == 2
    one_line(capsys.readouterr().err, LONG, "File name too long")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


# --- export never overwrites what it did not write --------------------------------------------------------------

def test_export_refuses_to_overwrite(tiny, tmp_path, capsys):
    from stvit import export

    data, _ = tiny
    run = fake_run(tmp_path / "run", tiny_config(data))
    best = run / "checkpoints" / "best.pt"
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    before = snapshot(tmp_path)
    for argv, says in ((["--out", str(best)], "is the checkpoint this export reads"),
                       (["--out", str(best), "--force"], "is the checkpoint this export reads"),
                       (["--out", str(other)], "exists; choose another --out, or pass --force"),
                       (["--out", str(other), "--force"], "exists and is not an earlier export's package")):
        assert run_cli(export.main, ["--checkpoint", str(best), *argv]) == 2
        one_line(capsys.readouterr().err, says)
    (tmp_path / "m.pt2.json").write_text("{}")  # a sidecar in the way
    assert run_cli(export.main, ["--checkpoint", str(best), "--out", str(tmp_path / "m.pt2")]) == 2
    one_line(capsys.readouterr().err, "m.pt2.json: exists")
    (tmp_path / "m.pt2.json").unlink()
    assert snapshot(tmp_path) == before


def test_an_earlier_package_is_what_force_may_replace(tmp_path):
    import zipfile

    from stvit.export import is_earlier_output

    with zipfile.ZipFile(tmp_path / "m.pt2", "w") as z:
        z.writestr("m/data/aotinductor/model/x.wrapper.cpp", "")
    torch.save({"model": {}}, tmp_path / "c.pt")  # a checkpoint is a zip too, but not a package
    np.save(tmp_path / "g.npy", np.zeros(3))
    (tmp_path / "s.json").write_text(json.dumps({"package": "m.pt2"}))
    assert is_earlier_output("package", tmp_path / "m.pt2") and not is_earlier_output("package", tmp_path / "c.pt")
    assert is_earlier_output("golden", tmp_path / "g.npy") and not is_earlier_output("golden", tmp_path / "s.json")
    assert is_earlier_output("sidecar", tmp_path / "s.json") and not is_earlier_output("sidecar", tmp_path / "g.npy")


# --- progress bars ----------------------------------------------------------------------------------------------

def test_no_progress_bars_when_stderr_is_not_a_terminal(tiny, tmp_path, capsys):
    """Every command trains through `api.run` (train, each fold of cv, each trial of tune): with stderr captured,
    as in a log file, there is no bar even without --quiet."""
    data, _ = tiny
    cfg = {**TINY_RUN, "pretrain": {**TINY_RUN["pretrain"], "epochs": 0}, "finetune": {**TINY_RUN["finetune"],
                                                                                       "epochs": 1},
           "train": {**TINY_RUN["train"], "baseline": False}}
    plan = api.plan(api.Request(config=cfg, values={"data.path": str(data)}, out=tmp_path / "r", quiet=False,
                                evaluate=False))
    api.run(plan)
    assert (tmp_path / "r" / "checkpoints" / "last.pt").is_file()
    err = capsys.readouterr().err
    assert "it/s" not in err and "s/it" not in err and "%|" not in err, err

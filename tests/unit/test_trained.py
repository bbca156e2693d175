"""`stvit.load` and the commands `python -m stvit.predict` / `python -m stvit.embed` on the tiny run of
tests/conftest.py: the run's own test predictions again, bit for bit; embeddings that are what the head reads; runs
that did not finish fine-tuning refused; bad input as one line, exit code 2, nothing written."""
from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch

import stvit
from stvit import embed, predict
from stvit.errors import run_cli
from stvit.training.rundir import read_checkpoint


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_load_predicts_the_runs_test_split_exactly(tiny, tiny_run):
    run = stvit.load(tiny_run, device="cpu")
    z = np.load(tiny[0])
    saved = np.load(tiny_run / "predictions.npz")
    assert np.array_equal(run.predict_proba(z["X_test"]), saved["test_probs"])
    assert np.array_equal(run.predict(z["X_test"]), saved["test_probs"].argmax(1))
    assert run.classes == ("class0", "class1") and run.best_epoch >= 1
    assert run.precision.name == "fp32" and "TrainedRun(" in repr(run)


def test_the_volume_embedding_is_what_the_head_reads(tiny, tiny_run):
    run = stvit.load(tiny_run, device="cpu")
    X = np.load(tiny[0])["X_test"]
    volume = run.embed(X)
    slices, both = run.embed(X, "slice"), run.embed(X, "both")
    dim, T = run.cfg.model.dim, run.cfg.model.volume[0]
    assert volume.shape == (len(X), dim) and slices.shape == (len(X), T, dim)
    assert np.array_equal(both[0], slices) and np.array_equal(both[1], volume)
    with torch.no_grad():
        probs = torch.softmax(run.model.head(torch.from_numpy(volume)), 1).numpy()
    assert np.allclose(probs, run.predict_proba(X), atol=1e-6)
    with torch.no_grad():  # the slice embedding is the spatial encoder's CLS of each slice
        cls = run.model.spatial(torch.from_numpy(X[:2]).reshape(-1, *X.shape[2:])).view(2, T, dim).numpy()
    assert np.allclose(cls, slices[:2], atol=1e-6)


def test_predict_command_writes_the_runs_probabilities_for_every_volume(tiny, tiny_run, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert run_cli(predict.main, [str(tiny_run), str(tiny[0]), "--out", str(out), "--device", "cpu"]) == 0
    table = rows(out)
    z = np.load(tiny[0])
    assert [r["split"] for r in table] == ["train"] * len(z["y_train"]) + ["test"] * len(z["y_test"])
    test = [r for r in table if r["split"] == "test"]
    probs = np.array([[float(r["prob_class0"]), float(r["prob_class1"])] for r in test], dtype=np.float32)
    assert np.array_equal(probs, np.load(tiny_run / "predictions.npz")["test_probs"])  # 9 digits read back exactly
    assert [int(r["volume"]) for r in test] == list(range(len(test)))
    assert [r["subject"] for r in test] == list(z["ids_test"])
    assert [r["label"] for r in test] == [f"class{int(v)}" for v in z["y_test"].ravel()]
    assert all(r["predicted"] == ("class0" if float(r["prob_class0"]) >= 0.5 else "class1") for r in table)
    assert f"predicted {len(table)} volumes" in capsys.readouterr().out


def test_embed_command_stores_embeddings_with_ids_and_labels(tiny, tiny_run, tmp_path):
    out = tmp_path / "e.npz"
    assert run_cli(embed.main, [str(tiny_run), str(tiny[0]), "--out", str(out), "--slices", "--device", "cpu"]) == 0
    e = np.load(out)
    z = np.load(tiny[0])
    run = stvit.load(tiny_run, device="cpu")
    test = e["split"] == "test"
    assert np.allclose(e["volume"][test], run.embed(z["X_test"]), atol=1e-6)
    assert e["slice"].shape == (len(e["split"]), run.cfg.model.volume[0], run.cfg.model.dim)
    assert list(e["subject"][test]) == list(z["ids_test"]) and list(e["label"][test]) == list(z["y_test"].ravel())
    assert list(e["class_names"]) == ["class0", "class1"] and str(e["run"]) == str(tiny_run)


@pytest.mark.parametrize("state, match", [
    ("pretrain only", "holds a pre-trained encoder but no fine-tuned classifier"),
    ("stopped", "fine-tuning stopped after epoch 1 of 3"),
    ("not started", "fine-tuning stopped before it started"),
    ("no last", "no checkpoints/last.pt to show that fine-tuning finished"),
    ("empty", "not a trained run"),
])
def test_a_run_that_did_not_finish_fine_tuning_is_refused(state, match, tiny, tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    ck = run / "checkpoints"
    if state == "pretrain only":
        (ck / "best.pt").unlink()
    elif state in ("stopped", "not started"):
        last = read_checkpoint(ck / "last.pt")
        last["epoch"], last["stage"] = (1, "finetune") if state == "stopped" else (2, "pretrain")
        torch.save(last, ck / "last.pt")
    elif state == "no last":
        (ck / "last.pt").unlink()
    elif state == "empty":
        shutil.rmtree(ck)
    out = tmp_path / "p.csv"
    assert run_cli(predict.main, [str(run), str(tiny[0]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {run}: ") and match in err
    assert not out.exists()
    with pytest.raises(stvit.errors.UserError, match=match):
        stvit.load(run)


@pytest.mark.parametrize("case, match", [
    ("existing out", "exists; choose a new file name"),
    ("nifti for a small model", "a NIfTI series goes on the MNI grid (53 x 63 x 46), but the model of"),
    ("tr with a data file", "--tr and --no-clean are for a NIfTI series"),
    ("not data", "not a MAT (v5/v7/v7.3), HDF5 or .npz file"),
    ("missing", "no such file or folder"),
    ("batch", "batch_size must be >= 1"),
    ("tr", "--tr must be a repetition time in seconds > 0, got -1"),
])
def test_bad_input_is_one_line_and_writes_nothing(case, match, tiny, tiny_run, tmp_path, capsys):
    out, data, extra = tmp_path / "p.csv", str(tiny[0]), []
    if case == "existing out":
        out.write_text("keep me")
    elif case == "nifti for a small model":
        data = str(tmp_path / "bold.nii.gz")
        open(data, "wb").close()
    elif case == "tr with a data file":
        extra = ["--tr", "2"]
    elif case == "not data":
        data = str(tmp_path / "x.mat")
        open(data, "w").write("hello")
    elif case == "missing":
        data = str(tmp_path / "absent.npz")
    elif case == "batch":
        extra = ["--batch-size", "0"]
    elif case == "tr":
        extra = ["--tr", "-1"]
    for main in (predict.main, embed.main):
        assert run_cli(main, [str(tiny_run), data, "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and match in err, err
        assert out.read_text() == "keep me" if case == "existing out" else not out.exists()


@pytest.mark.parametrize("command", [predict, embed])
def test_every_flag_says_what_it_does(command):
    import argparse

    ap = command.build_parser()
    for action in ap._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help and len(action.help) > 15, action.dest
    assert "default: None" not in ap.format_help()

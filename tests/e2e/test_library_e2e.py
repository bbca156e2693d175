"""The Python API against the commands, end to end: `STViTClassifier.fit` is `python -m stvit.train` (weights bit for
bit, the validation metrics, the test predictions); `python -m stvit.predict` on a 4D NIfTI of a run's test volumes
gives the run's test predictions; the Brainmarks wrapper on random inputs, offline; the notebook example on tiny
settings (cross-validation with GroupKFold through the estimator on a small built-in set, predict on a NIfTI file,
embed and a probe)."""
from __future__ import annotations

import csv
import json
import os
import runpy
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import stvit
from helpers import ROOT, TINY_RUN, losses, run_main

pytestmark = pytest.mark.e2e

# the demo preset, narrow, one epoch per stage: a model on the real 53 x 63 x 46 grid that trains in seconds
GRID_RUN = {"model": {"dim": 16, "heads": 2, "temporal_heads": 2, "head_hidden": 8, "decoder_dim": 8,
                      "decoder_heads": 2},
            "pretrain": {"epochs": 1}, "finetune": {"epochs": 1},
            "train": {"device": "cpu", "precision": "fp32", "eval_batch_size": 4, "baseline": False},
            "data": {"val_fraction": 0.5}}


def env():
    """The environment of a command run from a test: this checkout's stvit first."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_fit_is_the_train_command(tiny, tiny_run, tmp_path):
    """The same data file's training split as arrays, its subject ids as groups, the same config and seed."""
    from stvit.training.metrics import classification_metrics

    z = np.load(tiny[0])
    y = z["y_train"].ravel().astype(int)
    clf = stvit.STViTClassifier(preset="demo", config=TINY_RUN, run_dir=tmp_path / "runs")
    clf.fit(z["X_train"], y, groups=z["ids_train"])
    ours, cmd = clf.run_dir_, tiny_run
    for name in ("pretrain.pt", "best.pt", "last.pt"):
        a = torch.load(cmd / "checkpoints" / name, weights_only=True)["model"]
        b = torch.load(ours / "checkpoints" / name, weights_only=True)["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert losses(ours) == losses(cmd)  # every epoch's losses and validation accuracy
    split = [json.loads((d / "split.json").read_text()) for d in (cmd, ours)]
    assert split[0]["train"] == split[1]["train"] and split[0]["val"] == split[1]["val"]
    assert split[1]["grouped_by_subject"]
    metrics = json.loads((cmd / "metrics.json").read_text())
    assert clf.best_epoch_ == metrics["best_epoch"] and clf.val_accuracy_ == metrics["val"]["accuracy"]
    val = np.array(split[1]["val"])
    mine = classification_metrics(y[val], clf.predict_proba(z["X_train"][val]), ["class0", "class1"])
    assert mine == metrics["val"]  # accuracy, ROC-AUC, confusion matrix, per class: the same numbers
    saved = np.load(cmd / "predictions.npz")
    assert np.array_equal(clf.predict_proba(z["X_test"]), saved["test_probs"])
    assert np.array_equal(clf.predict(z["X_test"]), saved["test_probs"].argmax(1))
    assert np.array_equal(clf.decision_function(z["X_test"]) > 0, saved["test_probs"][:, 1] > saved["test_probs"][:, 0])


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """A finished run of the narrow demo model on a small synthetic set in the real layout: (run dir, data)."""
    from stvit.data import make_synthetic, write_dataset

    d = tmp_path_factory.mktemp("grid")
    data = make_synthetic(32, 16, 0)
    write_dataset(d / "grid.npz", data)
    (d / "grid.json").write_text(json.dumps(GRID_RUN))
    out = d / "run"
    assert run_main(["--data", str(d / "grid.npz"), "--config", str(d / "grid.json"), "--preset", "demo", "--out",
                     str(out), "--quiet"]) == 0
    return out, data


def test_predict_on_a_4d_nifti_gives_the_runs_test_predictions(grid_run, tmp_path):
    nib = pytest.importorskip("nibabel")
    from stvit.data import grid_affine

    run, data = grid_run
    img = nib.Nifti1Image(np.moveaxis(data.X_test, 0, -1), grid_affine())
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((3.0, 3.0, 3.0, 0.72))
    nib.save(img, tmp_path / "bold.nii.gz")
    out = tmp_path / "bold.csv"
    done = subprocess.run([sys.executable, "-m", "stvit.predict", str(run), str(tmp_path / "bold.nii.gz"), "--out",
                           str(out), "--no-clean", "--device", "cpu"], capture_output=True, text=True, env=env())
    assert done.returncode == 0, done.stderr
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    probs = np.array([[float(r["prob_class0"]), float(r["prob_class1"])] for r in table])
    saved = np.load(run / "predictions.npz")["test_probs"]
    # the series is z-scored per volume again (as a data file with data.zscore would be): rounding, no more
    assert np.abs(probs - saved).max() < 1e-6
    assert np.array_equal(probs.argmax(1), saved.argmax(1))
    assert [int(r["volume"]) for r in table] == list(range(16))
    assert np.allclose([float(r["time"]) for r in table], np.arange(16) * 0.72)
    # the same series as a list of one NIfTI image, in memory
    assert np.abs(stvit.load(run, device="cpu").predict_proba([img]) - saved).max() < 1e-6


def test_predict_on_a_raw_series_on_another_grid_is_resampled_and_cleaned(grid_run, tmp_path):
    """A 2 mm series stored right to left in int16, cleaned by default: one row per frame, its time from the header
    (ms). The numbers differ from the run's (another grid, another preparation): the rows and the probabilities are
    what is checked."""
    nib = pytest.importorskip("nibabel")
    from nilearn.image import resample_img

    from stvit.data import grid_affine

    run, data = grid_run
    two = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
    raw = 100 + 10 * np.moveaxis(data.X_test[:6], 0, -1)  # scanner-like intensities
    img = resample_img(nib.Nifti1Image(raw.astype(np.float32), grid_affine()), target_affine=two,
                       target_shape=(91, 109, 91), interpolation="linear", force_resample=True, copy_header=True)
    img = nib.Nifti1Image(np.asarray(img.dataobj, np.float32), two)
    img.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm", "msec")
    img.header.set_zooms((2.0, 2.0, 2.0, 720.0))
    nib.save(img, tmp_path / "bold_2mm.nii.gz")
    out = tmp_path / "bold_2mm.csv"
    assert run_main_predict([str(run), str(tmp_path / "bold_2mm.nii.gz"), "--out", str(out), "--device", "cpu"]) == 0
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and np.allclose([float(r["time"]) for r in table], np.arange(6) * 0.72)
    probs = np.array([[float(r["prob_class0"]), float(r["prob_class1"])] for r in table])
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-6)


def run_main_predict(argv) -> int:
    from stvit import predict
    from stvit.errors import run_cli

    return run_cli(predict.main, argv)


def ball_mask(count: int, shape=(91, 109, 91)) -> np.ndarray:
    """`count` voxels nearest the centre of the MNI 2 mm grid: a stand-in for templateflow's brain mask (which
    needs a download) with Brainmarks' voxel count."""
    ijk = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).reshape(-1, 3)
    d = ((ijk - (np.array(shape) - 1) / 2) ** 2).sum(1)
    mask = np.zeros(len(d), bool)
    mask[np.argsort(d, kind="stable")[:count]] = True
    return mask.reshape(shape)


def test_brainmarks_wrapper_on_random_inputs(grid_run, monkeypatch):
    """Brainmarks' own smoke test of a model (brainmarks.models.test_models), offline: the plugin registers
    `stvit`, dummy samples of space "mni" go through the transform, are collated and embedded."""
    monkeypatch.syspath_prepend(str(ROOT / "integrations"))
    registry = pytest.importorskip("brainmarks.models.registry")
    from torch.utils.data import default_collate

    assert "stvit" in registry.list_models()
    run, _ = grid_run
    mask = ball_mask(228483)  # brainmarks.readers.DATA_DIMS["mni"]
    transform, model = registry.create_model("stvit", run_dir=str(run), mask=mask, device="cpu")
    assert model.__space__ == "mni"
    g = torch.Generator().manual_seed(0)
    samples = [{"tr": 1.0, "bold": torch.randn(16, 228483, generator=g), "mean": torch.randn(1, 228483, generator=g),
                "std": torch.randn(1, 228483, generator=g)} for _ in range(2)]
    batch = default_collate([transform(s) for s in samples])
    cls, reg, patch = model(batch)
    dim = model.run.cfg.model.dim
    assert cls.shape == (2, 1, dim) and reg is None and patch.shape == (2, 16, dim)
    assert torch.allclose(cls[:, 0], patch.mean(1))
    frames = batch["volumes"][1].numpy()
    assert np.allclose(patch[1].numpy(), model.run.embed(frames, prepared=True), atol=1e-5)
    inside = transform.support()
    v = frames[:, inside]
    assert np.allclose(v.mean(1), 0, atol=1e-4) and (frames[:, ~inside] == 0).all()


def test_the_notebook_example_runs_on_tiny_settings(tmp_path, monkeypatch):
    pytest.importorskip("nibabel")
    pytest.importorskip("pandas")
    monkeypatch.setenv("STVIT_EXAMPLE_TINY", "1")
    monkeypatch.setenv("STVIT_EXAMPLE_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("STVIT_CACHE", str(tmp_path / "cache"))
    with warnings.catch_warnings():  # every fold's validation split by subject: stvit's warning would be an error
        warnings.filterwarnings("error", message="no subject ids")
        out = runpy.run_path(str(ROOT / "docs" / "examples" / "notebook.py"))["RESULTS"]
    scores = out["scores"]
    assert len(scores) == 3 and ((0 <= scores) & (scores <= 1)).all()  # cross_val_score with GroupKFold(3)
    assert (out["run_dir"] / "checkpoints" / "best.pt").is_file()
    table = out["table"]
    assert len(table) == 16 and np.abs(table[["prob_face", "prob_shape"]].to_numpy() - out["probs"]).max() < 1e-6
    assert out["embedding_shape"] == (48, 16) and len(out["probe_cv"]) == 3 and 0 <= out["probe_test"] <= 1

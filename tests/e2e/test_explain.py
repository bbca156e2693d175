"""Brain maps (`python -m stvit.explain`, `python -m stvit.train --explain`).

The outputs: NIfTI on the MNI grid, figures drawn without a network, peaks, maps.json; the refusals. And the
validation: a model trained on the synthetic set finds the planted class patterns, while a re-initialized model and
a model trained on shuffled labels do not (Adebayo et al. 2018). The pieces: tests/unit/test_explain.py.
"""
from __future__ import annotations

import builtins
import csv
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stvit import explain as E
from stvit.maps import attribution as A
from stvit.maps import render as R
from stvit.maps import validation as V
from stvit.config import Config
from stvit.data import grid_affine, load_dataset, write_dataset
from stvit.data.batches import DeviceSplit
from stvit.data.synth import make_synthetic, planted_patterns
from stvit.errors import run_cli
from stvit.model.vit import SpatioTemporalClassifier

from helpers import TINY_RUN, run_main, write_tiny_data
from unit.test_explain import CPU, FP32

nib = pytest.importorskip("nibabel", reason="the maps extra is part of dev: pip install -e '.[dev]'")

# --- the validation model: its own recipe (tests/e2e/explain_validation.json), so that a change of the demo preset
# cannot move these checks; bench/studies/2026-11-29-cpu-maps/explain_validation.py runs the same recipe over several
# seeds

VALIDATION = json.loads((Path(__file__).parent / "explain_validation.json").read_text())
EXPLAIN = ["--n", "32", "--steps", "32"]  # test volumes, IG steps (16 left some volumes 35% off completeness)

# Thresholds with margin, from this recipe over seeds 0-3 and its controls (explain_validation.py; the numbers in
# bench/studies/2026-11-29-cpu-maps/README.md): trained / controls measured
MIN_PEARSON = 0.1  # class-difference map vs the planted difference, over the brain: 0.15-0.31 / -0.03-0.00
MIN_SPEARMAN_REGIONS = 0.12  # the same, ranks over the planted regions: 0.21-0.26 / -0.11-0.02
MIN_ENRICHMENT = 4.0  # top 1% of the class-difference map in the discriminative regions, over chance: 7.6-8.5 / 0.7-2.2
MAX_CONTROL_RANK = 0.2  # |Spearman| of a control's class-difference map with the trained model's: 0.02-0.03
MAX_CONTROL_RANK_ABS = 0.3  # the same for the abs-mean maps: 0.04-0.11


def timed(what: str, t0: float) -> None:
    print(f"{what}: {time.perf_counter() - t0:.1f} s")


@pytest.fixture(scope="module")
def validation(tmp_path_factory):
    """The validation model and a shuffled-label model of the same recipe, trained through the command line on
    the synthetic set; the trained model explained through `python -m stvit.explain` with the network off."""
    d = tmp_path_factory.mktemp("validation")
    t0 = time.perf_counter()
    d_cfg = VALIDATION["data"]
    data = make_synthetic(d_cfg["synth_train"], d_cfg["synth_test"], d_cfg["synth_seed"])  # the built-in set's volumes
    write_dataset(d / "synth.npz", data, fmt="npz", dtype=np.float32)
    data.y_train = np.random.default_rng(1).permutation(data.y_train)
    write_dataset(d / "shuffled.npz", data, fmt="npz", dtype=np.float32)
    (d / "config.json").write_text(json.dumps(VALIDATION))
    timed("data", t0)
    for name in ("trained", "shuffled"):
        t0 = time.perf_counter()
        src = d / ("synth.npz" if name == "trained" else "shuffled.npz")
        assert run_main(["--preset", "paper", "--config", str(d / "config.json"), "--data", str(src), "--out",
                         str(d / name), "--quiet"]) == 0
        timed(f"training ({name})", t0)
    t0 = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NILEARN_DATA", str(d / "nilearn_data"))  # where nilearn would put anything it fetched

        def no_network(*args, **kwargs):
            raise OSError("the network is off in this test")

        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(socket, "create_connection", no_network)
        assert run_cli(E.main, [str(d / "trained"), *EXPLAIN, "--quiet"]) == 0
    timed("python -m stvit.explain (trained)", t0)
    assert not (d / "nilearn_data").exists()  # nothing was fetched
    return d


@pytest.fixture(scope="module")
def controls(validation):
    """IG maps of the shuffled-label model and of a re-initialized model, on the trained model's volumes."""
    t0 = time.perf_counter()
    record = json.loads((validation / "trained" / "maps" / "maps.json").read_text())
    data = load_dataset(validation / "synth.npz")
    split = DeviceSplit(data.X_test, data.y_test, CPU, index=np.asarray(record["volumes"]))
    state = torch.load(validation / "shuffled" / "checkpoints" / "best.pt", weights_only=True)
    shuffled = SpatioTemporalClassifier(Config.from_dict(state["config"]).model)
    shuffled.load_state_dict(state["model"])
    torch.manual_seed(123)
    reinitialized = SpatioTemporalClassifier(shuffled.cfg)
    steps = record["integrated_gradients"]["steps"]
    out = {name: A.explain(m, FP32, split, methods=("ig",), steps=steps, batch_size=16).maps
           for name, m in (("shuffled labels", shuffled), ("re-initialized", reinitialized))}
    timed("IG of the two controls", t0)
    return out


# --- the command on the validation model ---------------------------------------------------------------------------


def test_explain_writes_maps_in_brain_space(validation):
    out = validation / "trained" / "maps"
    record = json.loads((out / "maps.json").read_text())
    names = ["ig_abs_mean", "ig_class0", "ig_class1", "attention_abs_mean", "attention_class0", "attention_class1"]
    assert sorted(record["maps"]) == sorted(names)
    assert sorted(p.name for p in out.iterdir()) == sorted(record["files"])
    support = load_dataset(validation / "synth.npz").X_test[record["volumes"]].any(0)
    for name in names:
        img = nib.load(out / f"{name}.nii.gz")
        assert img.shape == (53, 63, 46) and img.get_data_dtype() == np.float32
        np.testing.assert_array_equal(img.affine, grid_affine())
        assert img.header["sform_code"] == 4 and img.header["qform_code"] == 4  # MNI152
        values = np.asarray(img.dataobj)
        assert np.isfinite(values).all() and values[support].any() and not values[~support].any()
        for kind in ("stat", "glass"):
            assert (out / f"{name}_{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (np.asarray(nib.load(out / "ig_abs_mean.nii.gz").dataobj) >= 0).all()
    assert record["split"] == "test" and record["checkpoint"] == "checkpoints/best.pt"
    assert len(record["volumes"]) == 32 and len(set(record["volumes"])) == 32
    assert max(record["volumes"]) > VALIDATION["data"]["synth_test"] - 4  # spread over the split
    assert sorted(set(record["labels"])) == [0, 1]
    assert record["precision"] == "fp32" and {"torch", "captum", "nibabel", "nilearn"} <= record["versions"].keys()
    ig = record["integrated_gradients"]
    assert ig["steps"] == 32 and np.array(ig["convergence_delta"]).shape == (32, 2)
    with open(out / "peaks.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["map"] for r in rows} == set(names)
    for r in rows:
        ijk = np.array([int(r["i"]), int(r["j"]), int(r["k"]), 1])
        np.testing.assert_allclose((grid_affine() @ ijk)[:3], [float(r[c]) for c in ("x_mm", "y_mm", "z_mm")])
        assert support[tuple(ijk[:3])] and int(r["cluster_voxels"]) >= 1
        assert (float(r["peak"]) > 0) == (r["sign"] == "+") and abs(float(r["peak"])) >= float(r["threshold"])


def test_ig_completeness_on_the_validation_model(validation):
    ig = json.loads((validation / "trained" / "maps" / "maps.json").read_text())["integrated_gradients"]
    delta, gap = np.abs(ig["convergence_delta"]), np.abs(ig["logit_gap"])
    print(f"IG convergence delta ({ig['steps']} steps): max |delta| {delta.max():.2e}, mean {delta.mean():.2e}; "
          f"|logit gap| median {np.median(gap):.2f}, max {gap.max():.2f}")
    assert ig["max_abs_delta"] == pytest.approx(delta.max())
    assert not A.incomplete(delta, gap).any() and ig["incomplete"] == 0


def test_maps_find_the_planted_patterns(validation):
    metrics = json.loads((validation / "trained" / "metrics.json").read_text())
    agreement = V.planted_agreement(R.read_maps(validation / "trained" / "maps"), planted_patterns())
    print(f"validation model: test accuracy {metrics['test']['accuracy']:.3f}; agreement with the planted "
          f"patterns: {json.dumps({k: round(v, 3) for k, v in agreement.items()})}")
    assert agreement["pearson"] >= MIN_PEARSON
    assert agreement["spearman_regions"] >= MIN_SPEARMAN_REGIONS
    assert agreement["enrichment_difference"] >= MIN_ENRICHMENT


def test_sanity_checks_controls_do_not_look_like_the_trained_map(validation, controls):
    """Adebayo et al. (2018): a map that survives re-initializing the weights or shuffling the training labels
    shows the input, not the model."""
    trained = R.read_maps(validation / "trained" / "maps")
    brain = planted_patterns().brain
    diff = V.class_difference(trained)
    for name, maps in controls.items():
        rho = V.correlation(V.class_difference(maps), diff, brain, rank=True)
        rho_abs = V.correlation(maps["ig_abs_mean"], trained["ig_abs_mean"], brain, rank=True)
        agreement = V.planted_agreement(maps, planted_patterns())
        print(f"{name}: Spearman with the trained class-difference map {rho:.3f} (abs-mean maps {rho_abs:.3f}); "
              f"planted: {json.dumps({k: round(v, 3) for k, v in agreement.items()})}")
        assert abs(rho) <= MAX_CONTROL_RANK and abs(rho_abs) <= MAX_CONTROL_RANK_ABS
        assert agreement["pearson"] < MIN_PEARSON  # and it does not find the planted patterns either


# --- the command line on a tiny run ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny bf16 run trained with `--explain`: the maps come out at the end of training."""
    d = tmp_path_factory.mktemp("tiny_explain")
    data = write_tiny_data(d / "tiny.npz")
    (d / "tiny.json").write_text(json.dumps(TINY_RUN))
    out = d / "run"
    t0 = time.perf_counter()
    assert run_main(["--data", str(data), "--config", str(d / "tiny.json"), "--out", str(out), "--precision",
                     "bf16", "--explain", "--quiet"]) == 0
    timed("tiny training + explain", t0)
    return out


@pytest.mark.filterwarnings("ignore:empty mask:UserWarning")  # nilearn: a 5x14x6 grid misses the MNI brain
def test_train_explain_writes_maps_at_the_end(tiny_run):
    record = json.loads((tiny_run / "maps" / "maps.json").read_text())
    assert record["split"] == "test" and record["volumes"] == list(range(10))  # default n = 64 > 10: all of them
    assert record["precision"] == "bf16" and record["device"] == "cpu"
    assert np.isfinite(record["integrated_gradients"]["max_abs_delta"])
    img = nib.load(tiny_run / "maps" / "ig_class1.nii.gz")
    assert img.shape == (5, 14, 6)


def _refused(capsys, argv, main=E.main) -> str:
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_refuses_bad_input_with_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    run = str(tiny_run)
    assert "not a run directory" in _refused(capsys, [str(tmp_path)])
    assert "exists and is not an empty folder" in _refused(capsys, [run])  # RUN/maps is there: kept
    out = ["--out", str(tmp_path / "m")]
    assert "--n must be >= 1" in _refused(capsys, [run, "--n", "0", *out])
    assert "--steps must be >= 1" in _refused(capsys, [run, "--steps", "0", *out])
    assert "--batch-size must be >= 1" in _refused(capsys, [run, "--batch-size", "0", *out])
    (tmp_path / "not.nii").write_text("hello")
    assert "not.nii: not a NIfTI image" in _refused(capsys, [run, "--affine-from", str(tmp_path / "not.nii"), *out])
    nib.save(nib.Nifti1Image(np.zeros((53, 63, 46), np.float32), np.eye(4)), tmp_path / "grid.nii")
    assert "the image grid is 53x63x46, the model's volumes are 5x14x6" in _refused(
        capsys, [run, "--affine-from", str(tmp_path / "grid.nii"), *out])
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "config.json").write_text((tiny_run / "config.json").read_text())
    assert "best.pt: no such checkpoint" in _refused(capsys, [str(copy), *out])
    (copy / "checkpoints").mkdir()
    pre = torch.load(tiny_run / "checkpoints" / "pretrain.pt", weights_only=True)
    torch.save({**pre, "stage": "pretrain"}, copy / "checkpoints" / "last.pt")
    assert "not the classifier" in _refused(capsys, [str(copy), "--checkpoint", "last", *out])
    tiny = tiny_run.parent
    assert "not with --stage pretrain" in _refused(capsys, ["--data", str(tiny / "tiny.npz"), "--config", str(
        tiny / "tiny.json"), "--out", str(tmp_path / "pre"), "--stage", "pretrain", "--explain"], main=_train_main)
    assert not (tmp_path / "m").exists() and not (tmp_path / "pre").exists()  # nothing written by any refusal
    real_import = builtins.__import__

    def without_captum(name, *args, **kwargs):
        if name.split(".")[0] == "captum":
            raise ImportError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_captum)
    monkeypatch.delitem(__import__("sys").modules, "captum", raising=False)
    err = _refused(capsys, [run, *out])
    assert "captum" in err and "pip install 'stvit[maps]'" in err
    new_run = tmp_path / "new_run"  # train --explain checks before training
    err = _refused(capsys, ["--data", str(tiny / "tiny.npz"), "--config", str(tiny / "tiny.json"), "--out",
                            str(new_run), "--explain"], main=_train_main)
    assert "pip install 'stvit[maps]'" in err and not new_run.exists()


def _train_main(argv):
    from stvit import train

    return train.main(argv)


@pytest.mark.filterwarnings("ignore:empty mask:UserWarning")  # nilearn: a 5x14x6 grid misses the MNI brain
def test_val_split_and_last_checkpoint(tiny_run, tmp_path):
    out = tmp_path / "val_maps"
    assert run_cli(E.main, [str(tiny_run), "--split", "val", "--checkpoint", "last", "--method", "attention",
                            "--n", "3", "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "maps.json").read_text())
    assert record["split"] == "val" and record["checkpoint"] == "checkpoints/last.pt"
    assert record["maps"][0].startswith("attention") and "integrated_gradients" not in record
    assert len(record["volumes"]) == 3

"""Per-voxel standardization of the training split (`stvit.data.standardize`, `--standardize`): statistics from
the training volumes alone, background kept 0, and the hook in a real run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from stvit.data import HCPData
from stvit.data.standardize import apply_voxel_stats, fit_voxel_stats, standardize_split


def volumes(n: int, seed: int, offset: float = 1000.0) -> np.ndarray:
    """(n, 4, 5, 3) float32 volumes: a large per-voxel mean (a 'brain image') plus noise, 0 outside a support."""
    rng = np.random.default_rng(seed)
    support = np.zeros((4, 5, 3), bool)
    support[1:3, 1:4, :] = True
    brain = offset * (1 + rng.random((4, 5, 3)))
    return ((brain + rng.standard_normal((n, 4, 5, 3))) * support).astype(np.float32)


def test_statistics_come_from_the_training_rows_only():
    X = volumes(12, 0)
    train, val = np.arange(0, 12, 2), np.arange(1, 12, 2)
    before = fit_voxel_stats(X, train)
    X[val] = 1e6  # validation volumes that would dominate any statistic they entered
    X[val, 0, 0, 0] = 5.0  # and a voxel that is background in every training volume
    after = fit_voxel_stats(X, train)
    np.testing.assert_array_equal(after.mask, before.mask)
    np.testing.assert_array_equal(after.mean, before.mean)
    np.testing.assert_array_equal(after.std, before.std)
    ref = X[train].reshape(len(train), -1)[:, before.mask].astype(np.float64)
    np.testing.assert_allclose(before.mean, ref.mean(0), rtol=1e-12)
    np.testing.assert_allclose(before.std, ref.std(0), rtol=1e-9)


def test_standardize_split_in_place_keeps_background_and_never_reads_test():
    Xtr, Xte = volumes(10, 1), volumes(4, 2) * np.float32(3.0)
    data = HCPData(Xtr, np.arange(10) % 2, None, Xte, np.arange(4) % 2, None, source="t")
    train = np.array([0, 1, 2, 3, 4, 5, 6])  # 7, 8, 9: validation
    expected = fit_voxel_stats(Xtr.copy(), train)
    test_before = Xte.copy()
    stats = standardize_split(data, train)
    np.testing.assert_array_equal(stats.mean, expected.mean)
    flat = data.X_train.reshape(10, -1)
    assert (flat[:, ~stats.mask] == 0).all() and (data.X_test.reshape(4, -1)[:, ~stats.mask] == 0).all()
    np.testing.assert_allclose(flat[train][:, stats.mask].mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(flat[train][:, stats.mask].std(0), 1, atol=1e-3)
    # the test split is transformed with the training statistics, nothing of its own
    want = (test_before.reshape(4, -1)[:, stats.mask] - stats.mean) / stats.std
    np.testing.assert_allclose(data.X_test.reshape(4, -1)[:, stats.mask], want, rtol=1e-4, atol=1e-3)


def test_constant_voxel_is_only_centred_and_blocks_do_not_matter():
    X = volumes(9, 3)
    X[:, 1, 1, 1] = 7.0
    a = fit_voxel_stats(X, np.arange(9), block=2)
    b = fit_voxel_stats(X, np.arange(9), block=64)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12)
    np.testing.assert_allclose(a.std, b.std, rtol=1e-12)
    out = apply_voxel_stats(X.copy(), a, block=4)
    assert np.isfinite(out).all() and (out[:, 1, 1, 1] == 0).all()


def test_a_run_with_standardize_fits_on_its_training_split(tiny, tmp_path, monkeypatch):
    from helpers import run_main

    import stvit.data.standardize as S

    seen = []
    real = S.standardize_split

    def spy(data, rows):
        seen.append(np.array(rows))
        return real(data, rows)

    monkeypatch.setattr(S, "standardize_split", spy)
    data, cfg = tiny
    out = tmp_path / "std"
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet", "--standardize",
                     "--pretrain-epochs", "0", "--ft-epochs", "1", "--no-baseline"]) == 0
    split = json.loads((out / "split.json").read_text())
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], split["train"])
    assert not set(split["val"]) & set(seen[0].tolist())
    assert json.loads((out / "config.json").read_text())["data"]["standardize"] is True


def test_resume_refuses_to_turn_standardize_on(tiny, tmp_path, capsys):
    from helpers import run_main

    data, cfg = tiny
    out = tmp_path / "plain"
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet", "--pretrain-epochs",
                     "0", "--ft-epochs", "1", "--no-baseline"]) == 0
    capsys.readouterr()
    assert run_main(["--resume", str(out), "--standardize"]) == 2  # refused before anything is written
    err = capsys.readouterr().err
    assert "--standardize" in err and "another run" in err
    assert not (out / "standardize.npz").exists()


def test_a_trained_run_applies_its_training_statistics_to_new_input(tiny, tmp_path, capsys):
    """A run with --standardize saves the statistics of its training volumes; `stvit.load` and `python -m
    stvit.predict` apply them, so the run's raw test volumes give exactly the probabilities its evaluation saved."""
    import shutil

    from helpers import run_main

    import stvit
    from stvit import predict
    from stvit.data.standardize import STATS_FILE, VoxelStats
    from stvit.errors import UserError, run_cli

    data, cfg = tiny
    out = tmp_path / "std"
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet", "--standardize",
                     "--pretrain-epochs", "0", "--ft-epochs", "1", "--no-baseline"]) == 0
    z = np.load(data)
    split = json.loads((out / "split.json").read_text())
    saved = VoxelStats.read(out / STATS_FILE)
    want = fit_voxel_stats(z["X_train"].astype(np.float32), np.array(split["train"]))
    np.testing.assert_array_equal(saved.mask, want.mask)
    np.testing.assert_array_equal(saved.mean, want.mean)
    np.testing.assert_array_equal(saved.std, want.std)
    assert saved.n == len(split["train"])

    probs = np.load(out / "predictions.npz")["test_probs"]
    run = stvit.load(out, device="cpu")
    assert run.voxel_stats is not None
    assert np.array_equal(run.predict_proba(z["X_test"]), probs)  # raw volumes in, the evaluation's numbers out
    table = tmp_path / "p.csv"
    assert run_cli(predict.main, [str(out), str(data), "--out", str(table), "--device", "cpu"]) == 0
    lines = [line.split(",") for line in table.read_text().splitlines()[1:]]
    test = np.array([[float(v) for v in r[-2:]] for r in lines if r[0] == "test"], dtype=np.float32)
    assert np.array_equal(test, probs)
    capsys.readouterr()

    gone = tmp_path / "gone"
    shutil.copytree(out, gone)
    (gone / STATS_FILE).unlink()
    with pytest.raises(UserError, match="training statistics are missing"):
        stvit.load(gone, device="cpu")


def test_a_packed_file_is_standardized_as_its_dense_volumes_and_streaming_is_refused(tiny, tmp_path, capsys):
    """A packed file's rows are read as stored, so the run standardizes dense copies of them: the statistics it
    saves equal those of the same volumes from the .npz; with placement stream the run is refused before writing."""
    from helpers import run_main

    from stvit.data import load_dataset
    from stvit.data.packed import write_packed

    data, cfg = tiny
    d = load_dataset(data, volume_shape=(5, 14, 6))
    packed = write_packed(tmp_path / "tiny.h5", d, dtype="float32")
    flags = ["--config", str(cfg), "--quiet", "--standardize", "--pretrain-epochs", "0", "--ft-epochs", "1",
             "--no-baseline"]
    for name, src in (("dense", data), ("packed", packed)):
        assert run_main(["--data", str(src), "--out", str(tmp_path / name), *flags]) == 0
    a, b = (np.load(tmp_path / name / "standardize.npz") for name in ("dense", "packed"))
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6)
    capsys.readouterr()
    assert run_main(["--data", str(packed), "--out", str(tmp_path / "stream"), "--data-placement", "stream",
                     *flags]) == 2
    assert "data.standardize" in capsys.readouterr().err
    assert not (tmp_path / "stream").exists()

"""Packed data files (`stvit.data.packed`): round trip, float16 rounding, metadata, byte-identical rewrites,
atomic writes, and `load_dataset` reading them like any other data file."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from stvit.data import HCPData, load_dataset
from stvit.data.packed import PackedFile, PackedWriter, is_packed, read_packed, write_packed


def small_data(n_train=6, n_test=4, seed=0) -> HCPData:
    """Volumes of (5, 6, 4) with a fixed support (background exactly 0) and subject ids."""
    rng = np.random.default_rng(seed)
    support = rng.random((5, 6, 4)) < 0.5

    def make(n):
        X = rng.standard_normal((n, 5, 6, 4)).astype(np.float32) * support
        return X, np.arange(n) % 2, np.array([f"s{i // 2}" for i in range(n)])

    return HCPData(*make(n_train), *make(n_test), source="small")


def test_round_trip_float32_is_exact_and_float16_within_its_rounding(tmp_path):
    data = small_data()
    for dtype, tol in (("float32", 0.0), ("float16", 2.0 ** -11)):
        path = write_packed(tmp_path / f"d-{dtype}.h5", data, dtype=dtype, class_names=("face", "shape"))
        assert is_packed(path)
        back = read_packed(path, volume_shape=(5, 6, 4), num_classes=2)
        for split in ("train", "test"):
            X, y, ids = data.split(split)
            Xb, yb, idsb = back.split(split)
            assert Xb.dtype == np.float32 and Xb.shape == X.shape
            np.testing.assert_allclose(Xb, X, rtol=tol, atol=0)  # float16: relative rounding 2^-11
            assert (Xb[X == 0] == 0).all()
            np.testing.assert_array_equal(yb, y)
            np.testing.assert_array_equal(idsb, ids)
        with PackedFile(path) as p:
            assert p.class_names == ["face", "shape"] and str(p.dtype) == dtype


def test_metadata_and_rows_in_any_order(tmp_path):
    data = small_data()
    mask = (data.X_train != 0).any(0) | (data.X_test != 0).any(0)
    with PackedWriter(tmp_path / "m.h5", mask, dtype="float32", provenance={"from": "a test"}) as w:
        w.add(data.X_train, data.y_train, "train", subject=data.ids_train, run=["1"] * 6,
              volume=np.arange(6), onset=np.arange(6) * 0.72, condition=["fear", "neut"] * 3)
        w.add(data.X_test, data.y_test, ["test"] * 4, subject=data.ids_test, run=["2"] * 4,
              volume=np.arange(4), onset=np.arange(4) * 0.72, condition=["fear", "neut"] * 2)
    with PackedFile(tmp_path / "m.h5") as p:
        assert p.n == 10 and p.provenance == {"from": "a test"}
        np.testing.assert_array_equal(p.meta["condition"][:3], ["fear", "neut", "fear"])
        np.testing.assert_allclose(p.meta["onset"][6:], np.arange(4) * 0.72)
        assert p.meta["volume"].dtype == np.int64 and p.meta["run"][7] == "2"
        idx = np.array([7, 2, 2, 0])
        np.testing.assert_array_equal(p.dense(idx), np.concatenate([data.X_train, data.X_test])[idx])
    d = load_dataset(tmp_path / "m.h5", volume_shape=(5, 6, 4))
    assert d.meta["test"]["run"].tolist() == ["2"] * 4 and d.ids_test.tolist() == data.ids_test.tolist()


def test_same_volumes_give_the_same_bytes(tmp_path):
    data = small_data()
    digests = set()
    for name in ("a.h5", "b.h5"):
        write_packed(tmp_path / name, data, provenance={"k": 1})
        digests.add(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert len(digests) == 1


def test_refusals_leave_no_file(tmp_path):
    data = small_data()
    mask = np.zeros((5, 6, 4), bool)
    mask[0] = True
    with pytest.raises(ValueError, match="outside the mask"):
        with PackedWriter(tmp_path / "x.h5", mask) as w:
            w.add(data.X_train, data.y_train, "train")
    big = data.X_train.copy()
    big[big != 0] = 1e5
    with pytest.raises(ValueError, match="float16"):
        with PackedWriter(tmp_path / "x.h5", np.ones((5, 6, 4), bool)) as w:
            w.add(big, data.y_train, "train")
    assert list(tmp_path.iterdir()) == []


# --- reading rows straight from the file ------------------------------------------------------------------------


def test_rows_are_read_at_their_offsets_in_any_order(tmp_path):
    from stvit.data.packed import row_offsets

    data = small_data(n_train=40, n_test=9)
    for dtype in ("float16", "float32"):
        path = write_packed(tmp_path / f"r-{dtype}.h5", data, dtype=dtype, block=7)  # blocks of 7: many appends
        with PackedFile(path) as p:
            offsets = row_offsets(p.voxels)
            assert offsets is not None and len(np.unique(offsets)) == p.n
            reader = p.reader()
            for idx in (np.arange(p.n), np.array([48, 3, 3, 0, 17]), np.array([], np.int64), np.arange(5, 30)):
                want = p.voxels[()][idx]
                got = reader.read(idx)
                assert got.dtype == p.dtype and got.shape == want.shape
                np.testing.assert_array_equal(got, want)
            assert len(reader._runs(offsets[np.arange(10, 20)])) < 10  # adjacent rows: fewer reads than rows
            reader.close()


def test_rows_of_a_compressed_file_are_read_through_h5py(tmp_path):
    import h5py

    from stvit.data.packed import row_offsets

    data = small_data()
    path = write_packed(tmp_path / "c.h5", data, dtype="float32")
    with h5py.File(path, "r+") as f:  # what h5repack -f GZIP would leave: the same rows, compressed
        rows = f["voxels"][()]
        del f["voxels"]
        f.create_dataset("voxels", data=rows, chunks=(2, rows.shape[1]), compression="gzip")
    with PackedFile(path) as p:
        assert row_offsets(p.voxels) is None
        np.testing.assert_array_equal(p.reader().read(np.array([5, 1, 1])), rows[[5, 1, 1]])


def test_value_statistics_are_written_and_checked_on_open(tmp_path):
    import h5py

    from stvit.data import DataError
    from stvit.data.packed import open_packed

    data = small_data()
    data.X_train[0][data.X_train[0] != 0] *= 40.0
    path = write_packed(tmp_path / "s.h5", data, dtype="float32")
    with PackedFile(path) as p:
        top = float(np.abs(np.concatenate([data.X_train, data.X_test])).max())
        assert p.stats == (pytest.approx(top), 0)
        assert p.value_stats() == p.stats
    with pytest.raises(DataError, match=r"beyond \+-10"):
        open_packed(path, max_abs=10.0)
    with h5py.File(path, "r+") as f:  # a file written before the statistics: they are computed by one pass
        del f.attrs["max_abs"], f.attrs["nonfinite"]
        f["voxels"][3, 0] = np.nan
    with PackedFile(path) as p:
        assert p.stats is None and p.value_stats() == (pytest.approx(top), 1)
    with pytest.raises(DataError, match="1 NaN/Inf voxels"):
        open_packed(path)
    with pytest.raises(DataError, match="z-score the volumes when packing"):
        open_packed(path, nan_to_zero=True, zscore=True)
    opened = open_packed(path, nan_to_zero=True)
    assert np.isfinite(np.asarray(opened.X_train)).all()


def test_packed_views_read_only_when_indexed(tmp_path):
    data = small_data(n_train=12)
    path = write_packed(tmp_path / "v.h5", data, dtype="float32")
    opened = load_dataset(path, volume_shape=(5, 6, 4))  # dense, as every reader
    from stvit.data import open_dataset
    from stvit.data.packed import PackedVolumes

    lazy = open_dataset(path, volume_shape=(5, 6, 4))
    X = lazy.X_train
    assert isinstance(X, PackedVolumes) and X.shape == (12, 5, 6, 4) and len(X) == 12 and X.ndim == 4
    view = X[2:9]
    assert isinstance(view, PackedVolumes) and view.shape == (7, 5, 6, 4)  # a slice reads nothing
    np.testing.assert_array_equal(np.asarray(view), opened.X_train[2:9])
    np.testing.assert_array_equal(X[np.array([4, 0, 4])], opened.X_train[[4, 0, 4]])
    np.testing.assert_array_equal(X[3], opened.X_train[3])
    np.testing.assert_array_equal(X[np.arange(12) % 3 == 0], opened.X_train[::3])
    flat = X.reshape(len(X), -1)
    np.testing.assert_array_equal(flat[np.array([1, 2])], opened.X_train[[1, 2]].reshape(2, -1))
    np.testing.assert_array_equal(lazy.y_test, opened.y_test)
    np.testing.assert_array_equal(lazy.ids_train, opened.ids_train)
    support = (opened.X_train != 0).any(0) | (opened.X_test != 0).any(0)
    assert X.source.width == support.sum() and X.packed_nbytes == 12 * X.source.width * 4
    with pytest.raises(ValueError, match="reshapes only"):
        X.reshape(3, 4, -1)

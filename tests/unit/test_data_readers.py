"""Every reader returns the same checked dataset: MAT v5 (plain and compressed), MAT v7.3 in MATLAB's own layout,
plain HDF5, npz, NIfTI folders. Loading a big float64 file peaks near its float32 size:
tests/e2e/test_data_readers.py."""
import struct

import h5py
import numpy as np
import pytest
import scipy.io

from stvit.data import describe, load_dataset, write_dataset
from stvit.data.matv5 import Mat5File, write_mat5

SHAPE = (5, 7, 4)  # distinct sizes, so a swapped axis cannot go unnoticed


def tiny(n_train=6, n_test=4, seed=0, shape=SHAPE):
    """The real layout at a small size: X float64, y (N, 1) double, ids of unequal lengths (a char matrix)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        out[f"X_{split}"] = rng.standard_normal((n,) + shape)
        out[f"y_{split}"] = (np.arange(n) % 2).astype(np.float64).reshape(-1, 1)
        out[f"ids_{split}"] = np.array([f"{split[:2]}{i // 2}" + "7" * (i % 3) for i in range(n)])
    return out


def assert_same(data, arrays, dtype=np.float32):
    for split in ("train", "test"):
        X, y, ids = data.split(split)
        assert X.dtype == dtype and X.flags.c_contiguous
        np.testing.assert_array_equal(X, arrays[f"X_{split}"].astype(dtype))
        assert y.dtype == np.int64 and y.shape == (len(X),)
        np.testing.assert_array_equal(y, np.asarray(arrays[f"y_{split}"]).reshape(-1).astype(np.int64))
        assert ids.tolist() == [str(s) for s in arrays[f"ids_{split}"]]


def write_matlab73(path, arrays, chunked=False, cell_ids=False):
    """What MATLAB's `save -v7.3` writes: a 512-byte user block with MATLAB's header, every array with its axes
    reversed (column-major), char matrices as uint16 (L, N), a MATLAB_class attribute on every dataset."""
    classes = {"float64": "double", "float32": "single", "uint8": "uint8"}
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, a in arrays.items():
            a = np.asarray(a)
            if a.dtype.kind == "U" and cell_ids:
                refs = f.require_group("#refs#")
                cells = []
                for i, s in enumerate(a):
                    ds = refs.create_dataset(f"{name}_{i}", data=np.array([[ord(c)] for c in s], np.uint16))
                    ds.attrs["MATLAB_class"] = np.bytes_("char")
                    cells.append(ds.ref)
                ds = f.create_dataset(name, data=np.array([cells], dtype=h5py.ref_dtype))  # MATLAB (N, 1) cell
                ds.attrs["MATLAB_class"] = np.bytes_("cell")
            elif a.dtype.kind == "U":
                width = max(len(s) for s in a)
                codes = np.array([[ord(c) for c in s.ljust(width)] for s in a], np.uint16)  # (N, L)
                ds = f.create_dataset(name, data=codes.T)  # (L, N)
                ds.attrs["MATLAB_class"] = np.bytes_("char")
                ds.attrs["MATLAB_int_decode"] = np.int32(2)
            else:
                kw = dict(chunks=(2, 3, 4, 1), compression="gzip") if chunked and a.ndim == 4 else {}
                ds = f.create_dataset(name, data=np.ascontiguousarray(a.T), **kw)
                ds.attrs["MATLAB_class"] = np.bytes_(classes[a.dtype.name])
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as fh:
        fh.write(header.ljust(116, b" ") + bytes(8) + b"\x00\x02IM")


@pytest.mark.parametrize("compressed", [False, True], ids=["v5", "v7-compressed"])
def test_mat5_written_by_scipy(tmp_path, compressed):
    arrays = tiny()
    arrays["y_test"] = arrays["y_test"].astype(np.uint8)  # labels come as double or uint8
    path = tmp_path / "d.mat"
    scipy.io.savemat(path, arrays, do_compression=compressed)
    assert Mat5File(path).compressed == compressed
    assert_same(load_dataset(path, volume_shape=SHAPE), arrays)


def test_mat5_real_volume_shape_matches_loadmat(tmp_path):
    arrays = tiny(3, 2, shape=(53, 63, 46))
    path = tmp_path / "d.mat"
    scipy.io.savemat(path, arrays)
    data = load_dataset(path)
    truth = scipy.io.loadmat(path)
    np.testing.assert_array_equal(data.X_train, truth["X_train"].astype(np.float32))
    assert data.X_train.shape == (3, 53, 63, 46)


def test_write_mat5_is_read_by_scipy_and_by_us(tmp_path):
    arrays = tiny(7, 3)
    path = tmp_path / "d.mat"
    write_mat5(path, arrays, dtypes={"X_test": np.float32})
    truth = scipy.io.loadmat(path)
    np.testing.assert_array_equal(truth["X_train"], arrays["X_train"])
    assert truth["X_test"].dtype == np.float32
    assert [s.rstrip() for s in truth["ids_train"]] == arrays["ids_train"].tolist()
    assert_same(load_dataset(path, volume_shape=SHAPE), arrays)


def test_mat5_double_stored_as_uint8(tmp_path):
    """MATLAB may store a double array's data in a smaller integer type; the class says what it is."""
    arrays = tiny()
    arrays["X_train"] = np.random.default_rng(1).integers(0, 255, (6,) + SHAPE).astype(np.uint8)
    path = tmp_path / "d.mat"
    write_mat5(path, arrays)
    raw = bytearray(path.read_bytes())
    assert raw[128 + 16] == 9  # X_train comes first: its array flags word, class uint8
    raw[128 + 16] = 6  # class double, data still miUINT8
    path.write_bytes(bytes(raw))
    assert scipy.io.loadmat(path, mat_dtype=True)["X_train"].dtype == np.float64
    assert Mat5File(path).vars["X_train"].class_name == "double"
    assert_same(load_dataset(path, volume_shape=SHAPE), arrays)


def test_mat5_streaming_blocks_smaller_than_a_slab(tmp_path):
    """Tiny block budgets exercise every partial-block path of the seekable and the zlib readers."""
    arrays = tiny(9, 2)
    for compressed in (False, True):
        path = tmp_path / f"d{compressed}.mat"
        scipy.io.savemat(path, arrays, do_compression=compressed)
        out = np.empty((9,) + SHAPE, np.float32)
        Mat5File(path).read_numeric("X_train", out, block_bytes=100)
        np.testing.assert_array_equal(out, arrays["X_train"].astype(np.float32))


@pytest.mark.parametrize("chunked", [False, True], ids=["contiguous", "chunked-gzip"])
def test_mat73_in_matlab_layout(tmp_path, chunked):
    arrays = tiny()
    path = tmp_path / "d.mat"
    write_matlab73(path, arrays, chunked=chunked)
    with h5py.File(path, "r") as f:  # the layout MATLAB writes, as h5py shows it
        assert f["X_train"].shape == SHAPE[::-1] + (6,)
        assert f["y_train"].shape == (1, 6) and f["y_train"].dtype == np.float64
        assert f["ids_train"].dtype == np.uint16 and f["ids_train"].attrs["MATLAB_class"] == b"char"
        assert f.userblock_size == 512
    assert path.read_bytes()[:10] == b"MATLAB 7.3"
    kind, variables = describe(path)
    assert kind == "MAT v7.3 (HDF5)" and variables["X_train"].shape == (6,) + SHAPE
    assert variables["ids_train"].dtype == "char"
    assert_same(load_dataset(path, volume_shape=SHAPE), arrays)


def test_mat73_cell_array_ids(tmp_path):
    arrays = tiny()
    path = tmp_path / "d.mat"
    write_matlab73(path, arrays, cell_ids=True)
    assert_same(load_dataset(path, volume_shape=SHAPE), arrays)


def test_plain_hdf5_is_read_as_stored(tmp_path):
    arrays = tiny()
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        for name, a in arrays.items():
            f[name] = a.astype("S") if a.dtype.kind == "U" else a
    assert describe(path)[0] == "HDF5"
    assert_same(load_dataset(path, volume_shape=SHAPE), arrays)


@pytest.mark.parametrize("save", ["savez", "savez_compressed", "fortran"])
def test_npz(tmp_path, save):
    arrays = tiny()
    arrays["y_train"] = arrays["y_train"].reshape(-1).astype(np.int64)
    if save == "fortran":
        arrays["X_train"] = np.asfortranarray(arrays["X_train"])
    path = tmp_path / "d.npz"
    (np.savez_compressed if save == "savez_compressed" else np.savez)(path, **arrays)
    assert_same(load_dataset(path, volume_shape=SHAPE), arrays)


@pytest.mark.parametrize("fmt", ["mat", "mat73", "npz"])
def test_write_dataset_roundtrip(tmp_path, fmt):
    arrays = tiny()
    data = load_dataset(_npz(tmp_path, arrays), volume_shape=SHAPE)
    path = tmp_path / f"out.{fmt}"
    write_dataset(path, data, fmt=fmt, dtype=np.float64)
    assert_same(load_dataset(path, volume_shape=SHAPE), arrays)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("out")] == [path.name]  # no temp left


def _npz(tmp_path, arrays, name="src.npz"):
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


@pytest.mark.parametrize("labels", [
    np.array([0, 1, 1, 0, 1, 0], np.uint8), np.array([[0, 1, 1, 0, 1, 0]], np.float64),
    np.array([[0], [1], [1], [0], [1], [0]], np.float64), np.array([0, 1, 1, 0, 1, 0], bool)],
    ids=["(N,) uint8", "(1,N) double", "(N,1) double", "bool"])
def test_label_layouts(tmp_path, labels):
    arrays = tiny()
    arrays["y_train"] = labels
    path = tmp_path / "d.mat"
    scipy.io.savemat(path, arrays)
    np.testing.assert_array_equal(load_dataset(path, volume_shape=SHAPE).y_train, [0, 1, 1, 0, 1, 0])


def test_ids_are_optional_and_numeric_ids_become_strings(tmp_path):
    arrays = tiny()
    del arrays["ids_test"]
    arrays["ids_train"] = np.array([100307, 100307, 100408, 100408, 101915, 101915], np.float64)
    data = load_dataset(_npz(tmp_path, arrays), volume_shape=SHAPE)
    assert data.ids_test is None
    assert data.ids_train.tolist() == ["100307", "100307", "100408", "100408", "101915", "101915"]


def test_dtype_and_zscore_options(tmp_path):
    arrays = tiny()
    arrays["X_train"][:, 0] = 0.0  # background
    arrays["X_train"] = arrays["X_train"] * 3.0 + 10.0 * (arrays["X_train"] != 0)
    path = _npz(tmp_path, arrays)
    half = load_dataset(path, volume_shape=SHAPE, dtype=np.float16)
    assert half.X_train.dtype == np.float16
    z = load_dataset(path, volume_shape=SHAPE, zscore=True).X_train
    inside = z[:, 1:].reshape(6, -1)
    np.testing.assert_allclose(inside.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(inside.std(1), 1, atol=1e-5)
    assert (z[:, 0] == 0).all()


def _nifti_folder(tmp_path, shape=SHAPE, rows=None):
    import nibabel as nib

    rng = np.random.default_rng(0)
    folder = tmp_path / "nii"
    (folder / "vols").mkdir(parents=True)
    rows = rows or [("train", 0, "s1"), ("train", 1, "s1"), ("train", 1, "s2"), ("test", 0, "s3"), ("test", 1, "s3")]
    lines, vols = ["file,label,subject,split"], []
    for i, (split, label, subject) in enumerate(rows):
        vol = rng.standard_normal(shape).astype(np.float32)
        name = f"vols/v{i}.nii" + (".gz" if i % 2 else "")
        data = vol[..., None] if i == 2 else vol  # 4D with a trailing singleton is fine
        nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0])), folder / name)
        lines.append(f"{name},{label},{subject},{split}")
        vols.append(vol)
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder, vols


def test_nifti_folder(tmp_path):
    pytest.importorskip("nibabel")
    folder, vols = _nifti_folder(tmp_path)
    for path in (folder, folder / "labels.csv"):
        data = load_dataset(path, volume_shape=SHAPE)
        np.testing.assert_array_equal(data.X_train, np.stack(vols[:3]))
        np.testing.assert_array_equal(data.X_test, np.stack(vols[3:]))
        assert data.y_train.tolist() == [0, 1, 1] and data.ids_train.tolist() == ["s1", "s1", "s2"]


def test_nifti_labels_by_class_name(tmp_path):
    pytest.importorskip("nibabel")
    folder, _ = _nifti_folder(tmp_path)
    csv = folder / "labels.csv"
    csv.write_text(csv.read_text().replace(",0,", ",face,").replace(",1,", ",shape,"))
    data = load_dataset(folder, volume_shape=SHAPE, class_names=("face", "shape"))
    assert data.y_train.tolist() == [0, 1, 1] and data.y_test.tolist() == [0, 1]


def test_mat5_header_parse_of_small_elements():
    """A name of <= 4 characters is a 'small data element' (count and type packed into one word)."""
    from stvit.data.matv5 import _element, _parse_matrix, MI_INT8

    body = (_element(6, struct.pack("<II", 6, 0)) + _element(5, struct.pack("<2i", 3, 1))
            + _element(MI_INT8, b"y") + _element(9, np.zeros(3).tobytes()))
    info = _parse_matrix(body, "<")
    assert info["name"] == "y" and info["dims"] == (3, 1) and info["data_nbytes"] == 24

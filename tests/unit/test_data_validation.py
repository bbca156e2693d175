"""Every bad input is refused at the edge with one line `error: <file>: <problem>` and exit code 2."""
import sys

import h5py
import numpy as np
import pytest
import scipy.io

from stvit.data import DataError, HCPData, load_dataset, write_dataset
from stvit.data.__main__ import main
from stvit.errors import run_cli

SHAPE = (5, 7, 4)


def arrays(n_train=6, n_test=4, shape=SHAPE):
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        out[f"X_{split}"] = rng.standard_normal((n,) + shape)
        out[f"y_{split}"] = (np.arange(n) % 2).astype(np.float64).reshape(-1, 1)
        out[f"ids_{split}"] = np.array([f"{split}{i // 2}" for i in range(n)])
    return out


def refused(path, *words, **kw) -> str:
    """load_dataset raises DataError naming the file and saying the words; returns the message."""
    with pytest.raises(DataError) as err:
        load_dataset(path, **({"volume_shape": SHAPE} | kw))
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for w in words:
        assert w in message, message
    return message


def cli(argv, capsys) -> tuple[int, str, str]:
    code = run_cli(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_missing_file(tmp_path):
    refused(tmp_path / "nope.mat", "no such file")


def test_empty_file(tmp_path):
    (tmp_path / "e.mat").write_bytes(b"")
    refused(tmp_path / "e.mat", "empty")


@pytest.mark.parametrize("content", [b"hello, world\n" * 20, bytes(range(256)) * 4, b"\x93NUMPY\x01\x00" + bytes(200)],
                         ids=["text", "binary", "npy"])
def test_not_a_data_file(tmp_path, content):
    path = tmp_path / "x.mat"
    path.write_bytes(content)
    refused(path, "npz" if content.startswith(b"\x93NUMPY") else "not a MAT")


@pytest.mark.parametrize("fmt", ["mat", "mat-compressed", "mat73", "npz", "header-only"])
def test_truncated_file(tmp_path, fmt):
    path = tmp_path / "t.mat"
    if fmt == "mat-compressed":
        scipy.io.savemat(path, arrays(), do_compression=True)
    elif fmt == "header-only":
        scipy.io.savemat(path, arrays())
    else:
        write_dataset(path, load_dataset(_npz(tmp_path), volume_shape=SHAPE), fmt=fmt.replace("-", ""))
    data = path.read_bytes()
    cut = 100 if fmt == "header-only" else len(data) * 2 // 3
    path.write_bytes(data[:cut])
    message = refused(path)
    assert any(w in message for w in ("truncated", "damaged", "ends early")), message


def _npz(tmp_path, name="src.npz", **changes):
    a = arrays()
    for k, v in changes.items():
        if v is None:
            del a[k]
        else:
            a[k] = v
    np.savez(tmp_path / name, **a)
    return tmp_path / name


def test_missing_key(tmp_path):
    refused(_npz(tmp_path, y_test=None), "missing key 'y_test'", "X_train")


def test_wrong_rank(tmp_path):
    refused(_npz(tmp_path, X_train=np.zeros((6, 35, 4))), "rank 3", "expected rank 4")


def test_wrong_volume_shape(tmp_path):
    refused(_npz(tmp_path, X_test=np.zeros((4, 5, 7, 3))), "X_test volumes are 5x7x3, expected 5x7x4")
    path = tmp_path / "r.mat"
    scipy.io.savemat(path, arrays())
    refused(path, "expected 53x63x46", volume_shape=(53, 63, 46))


@pytest.mark.parametrize("key,value,words", [
    ("y_train", np.zeros(5), ("X_train has 6 volumes but y_train has 5 labels",)),
    ("ids_test", np.array(["a", "b", "c"]), ("X_test has 4 volumes but ids_test has 3 ids",)),
])
def test_count_mismatch(tmp_path, key, value, words):
    refused(_npz(tmp_path, **{key: value}), *words)


@pytest.mark.parametrize("labels,words", [
    (np.array([0, 1, 2, 0, 1, 0]), ("outside the class set {0, 1}", "2 (1 volumes)")),
    (np.array([-1, 1, 0, 0, 1, 0]), ("outside the class set", "-1")),
    (np.array([1, 2, 1, 2, 1, 2]), ("1-based labels",)),
    (np.array([0, 0.5, 1, 0, 1, 0]), ("non-integer labels", "0.5")),
    (np.array([0, np.nan, 1, 0, 1, 0]), ("NaN/Inf labels",)),
    (np.zeros((2, 3)), ("expected a vector",)),
])
def test_labels_outside_the_class_set(tmp_path, labels, words):
    refused(_npz(tmp_path, y_train=labels), *words)


def test_three_classes_when_configured(tmp_path):
    path = _npz(tmp_path, y_train=np.array([0, 1, 2, 0, 1, 2]))
    refused(path, "outside the class set {0, 1}")
    assert load_dataset(path, volume_shape=SHAPE, num_classes=3).y_train.tolist() == [0, 1, 2, 0, 1, 2]


def test_nan_inf_refused_unless_repaired(tmp_path, capsys):
    X = arrays()["X_train"]
    X[2, 1, 1, 1], X[4, 0, 0, 0], X[4, 1, 0, 0] = np.nan, np.inf, -np.inf
    path = _npz(tmp_path, X_train=X)
    refused(path, "3 NaN/Inf voxels in 2 volumes", "first: volume 2", "--nan-to-zero")
    with pytest.warns(UserWarning, match="set 3 NaN/Inf voxels"):
        data = load_dataset(path, volume_shape=SHAPE, nan_to_zero=True)
    assert np.isfinite(data.X_train).all() and data.X_train[2, 1, 1, 1] == 0 and data.X_train[4, 0, 0, 0] == 0
    code, _, err = cli(["inspect", str(path), "--volume-shape", "5", "7", "4"], capsys)
    assert code == 2 and "NaN/Inf" in err
    with pytest.warns(UserWarning):
        code, out, _ = cli(["inspect", str(path), "--volume-shape", "5", "7", "4", "--nan-to-zero"], capsys)
    assert code == 0 and out.rstrip().endswith("valid")


def test_empty_split(tmp_path):
    refused(_npz(tmp_path, X_test=np.zeros((0,) + SHAPE), y_test=np.zeros(0), ids_test=np.array([], str)),
            "X_test", "empty split")


def test_mat73_empty_split_as_matlab_writes_it(tmp_path):
    path = tmp_path / "e.mat"
    data = load_dataset(_npz(tmp_path), volume_shape=SHAPE)
    write_dataset(path, data, fmt="mat73")
    with h5py.File(path, "r+") as f:  # MATLAB stores an empty array as its dims, flagged MATLAB_empty
        del f["X_test"]
        ds = f.create_dataset("X_test", data=np.array([0, 5, 7, 4], np.uint64))
        ds.attrs["MATLAB_class"] = np.bytes_("double")
        ds.attrs["MATLAB_empty"] = np.uint8(1)
    refused(path, "X_test is empty (empty split)")


def test_volumes_not_numeric(tmp_path):
    path = tmp_path / "c.mat"
    a = arrays()
    a["X_train"] = np.array(["not", "volumes", "at", "all", "x", "y"])
    scipy.io.savemat(path, a)
    refused(path, "X_train is char", "numeric")


def test_object_ids_in_npz(tmp_path):
    refused(_npz(tmp_path, ids_train=np.array(["a", 1, None, "b", "c", "d"], dtype=object)), "Python objects")


# --- NIfTI ---------------------------------------------------------------------------------------------


def _nifti(tmp_path, bad=None, rows=None):
    nib = pytest.importorskip("nibabel")
    folder = tmp_path / "nii"
    folder.mkdir()
    rows = rows or [("a.nii.gz", 0, "s1", "train"), ("b.nii.gz", 1, "s1", "train"), ("c.nii.gz", 1, "s2", "test")]
    for name, *_ in rows:
        nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32), np.eye(4)), folder / name)
    if bad:
        (folder / rows[0][0]).write_bytes(bad)
    lines = ["file,label,subject,split"] + [",".join(map(str, r)) for r in rows]
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_unreadable_nifti(tmp_path):
    folder = _nifti(tmp_path, bad=b"this is not a NIfTI volume")
    refused_path = folder / "a.nii.gz"
    with pytest.raises(DataError) as err:
        load_dataset(folder, volume_shape=SHAPE)
    assert str(err.value).startswith(f"{refused_path}: cannot read this NIfTI volume")


def test_nifti_wrong_shape_and_missing_file(tmp_path):
    folder = _nifti(tmp_path)
    with pytest.raises(DataError, match=r"a.nii.gz: volume is 5x7x4, expected 5x7x5"):
        load_dataset(folder, volume_shape=(5, 7, 5))
    (folder / "b.nii.gz").unlink()
    with pytest.raises(DataError, match=r"b.nii.gz: no such file \(line 3 of labels.csv\)"):
        load_dataset(folder, volume_shape=SHAPE)


def test_nifti_csv_problems(tmp_path):
    folder = _nifti(tmp_path, rows=[("a.nii.gz", 0, "s1", "train"), ("b.nii.gz", 1, "s1", "train")])
    refused(folder / "labels.csv", "no volumes for split 'test'", "empty split")
    csv = folder / "labels.csv"
    csv.write_text("file,label,subject,split\na.nii.gz,0,s1,validation\n")
    refused(csv, "line 2: split 'validation' is not train or test")
    csv.write_text("file,label,subject,split\na.nii.gz,face,s1,train\n")
    refused(csv, "line 2: label 'face' is not a class index")
    csv.write_text("path,label\na.nii.gz,0\n")
    refused(csv, "lacks the column(s) file, split")
    csv.unlink()
    refused(folder, "no CSV")


def test_nibabel_missing(tmp_path, monkeypatch):
    folder = _nifti(tmp_path)
    monkeypatch.setitem(sys.modules, "nibabel", None)
    refused(folder / "labels.csv", "needs nibabel")


# --- the command line ----------------------------------------------------------------------------------


def test_cli_inspect_lists_variables_before_the_error(tmp_path, capsys):
    path = tmp_path / "d.mat"
    scipy.io.savemat(path, arrays())
    code, out, err = cli(["inspect", str(path)], capsys)
    assert code == 2
    assert "X_train" in out and "6 x 5 x 7 x 4" in out and "double" in out
    assert err == f"error: {path}: X_train volumes are 5x7x4, expected 53x63x46\n"


def test_cli_inspect_valid(tmp_path, capsys):
    path = tmp_path / "d.mat"
    scipy.io.savemat(path, arrays())
    code, out, err = cli(["inspect", str(path), "--volume-shape", "5", "7", "4"], capsys)
    assert code == 0 and err == ""
    assert "MAT v5/v7 (uncompressed)" in out
    assert "train: 6 volumes; labels 0: 3, 1: 3; 3 subjects (2 volumes each)" in out
    assert "subjects in both splits: none" in out and "in-brain voxels" in out
    assert out.rstrip().endswith("valid")


def test_cli_synth_refuses_to_overwrite(tmp_path, capsys):
    path = tmp_path / "s.mat"
    path.write_bytes(b"precious")
    code, _, err = cli(["synth", "--out", str(path), "--n-train", "2", "--n-test", "2"], capsys)
    assert code == 2 and err == f"error: {path}: file exists; pass --force to overwrite it\n"
    assert path.read_bytes() == b"precious"
    code, _, err = cli(["synth", "--out", str(tmp_path / "s.xyz"), "--n-train", "2", "--n-test", "2"], capsys)
    assert code == 2 and "pass --format" in err
    code, _, err = cli(["synth", "--out", str(tmp_path / "no" / "s.mat")], capsys)
    assert code == 2 and "folder does not exist" in err


def test_cli_argument_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["synth", "--out", "x.mat", "--n-train", "0"])
    assert stop.value.code == 2


def test_hcpdata_repr_is_short():
    d = HCPData(np.zeros((2,) + SHAPE, np.float32), np.zeros(2, np.int64), None,
                np.zeros((1,) + SHAPE, np.float32), np.zeros(1, np.int64), None, "x.mat")
    assert repr(d) == "HCPData('x.mat', train: (2, 5, 7, 4) float32, test: (1, 5, 7, 4) float32)"

"""MAT v5/v7 files as users and damage make them: small variables (labels, ids) read whole as scipy reads them,
and damaged headers refused with one sentence about the file, never an internal exception.

The fuzz tests mutate the headers of a small file written by `scipy.io.savemat` in the real key layout (bytes of
the file header, of each variable's tag, flags, dimensions, name and data tag; for `save -v7` files the
decompressed header, compressed again, and a few raw compressed bytes). Each mutated file must be either read
exactly as scipy reads it, or refused with a DataError that names the file and no Python exception class.
The two headers damaged by hand, refused by `python -m stvit.data inspect` too: tests/e2e/test_data_matv5.py.
"""
import builtins
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from stvit.data import DataError, describe, load_dataset
from stvit.data import matv5
from unit.test_data_validation import SHAPE, arrays

EXCEPTION_NAMES = sorted(n for n in dir(builtins) if isinstance(getattr(builtins, n), type)
                         and issubclass(getattr(builtins, n), BaseException))
LEAK = re.compile(r"\b(" + "|".join(EXCEPTION_NAMES) + r")\b|Traceback|\berror\b|referenced before assignment|"
                  r"cannot reshape", re.IGNORECASE)


def assert_clean_refusal(path: Path, message: str) -> None:
    """One line that starts with the file and says nothing of Python's exceptions."""
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    assert not LEAK.search(message[len(str(path)):]), message


def load_or_refuse(path: Path):
    """(data, None) or (None, message), as `python -m stvit.data inspect` sees the file."""
    try:
        describe(path)
        return load_dataset(path, volume_shape=SHAPE), None
    except DataError as err:
        return None, str(err)


def assert_reads_like_scipy(path: Path, data) -> None:
    ref = scipy.io.loadmat(path)
    for split in ("train", "test"):
        X, y, ids = data.split(split)
        np.testing.assert_array_equal(X, ref[f"X_{split}"].astype(np.float32))
        np.testing.assert_array_equal(y, ref[f"y_{split}"].ravel())
        if f"ids_{split}" in ref:
            assert list(ids) == [s.rstrip() for s in ref[f"ids_{split}"]]
        else:  # the mutation renamed the ids: the set is read without them
            assert ids is None


# --- small variables read whole, as scipy reads them ----------------------------------------------------------

@pytest.mark.parametrize("compressed", [False, True], ids=["v5", "v7"])
def test_small_variables_read_like_scipy(tmp_path, compressed):
    values = {"double": np.arange(6.0).reshape(2, 3), "int16": np.int16([[1, -2], [3, 4]]),
              "logical": np.array([[True, False, True]]), "chars": np.array(["abc", "xyz"]),
              "unicode": np.array(["héllo", "wörld"]), "cellstr": np.array(["100307", "2", "abc"], dtype=object),
              "complex": np.array([1 + 2j, 3 - 1j]), "empty": np.zeros((0, 3)), "nd": np.arange(24.0).reshape(2, 3, 4)}
    path = tmp_path / "small.mat"
    scipy.io.savemat(path, values, do_compression=compressed)
    ref, mat = scipy.io.loadmat(path, chars_as_strings=True), matv5.Mat5File(path)
    for name in values:
        got, want = mat.read_value(name), ref[name]
        assert got.shape == want.shape, name
        if want.dtype == object:
            for g, w in zip(got.ravel(), want.ravel()):
                np.testing.assert_array_equal(g, w)
        else:  # logical arrays come back as bool, where scipy gives their uint8 storage
            np.testing.assert_array_equal(got, want.astype(got.dtype), err_msg=name)


def test_matlab_char_and_cell_ids(tmp_path):
    """MATLAB stores char as UTF-16 code units (miUINT16), and `cellstr` ids as a cell of char rows."""
    a = arrays()
    a["ids_train"] = np.array([f"sü{i // 2}" for i in range(6)])  # the stvit writer: uint16 chars, like MATLAB
    path = tmp_path / "m.mat"
    matv5.write_mat5(path, a)
    assert list(load_dataset(path, volume_shape=SHAPE).ids_train) == list(a["ids_train"])
    a = arrays()
    a["ids_test"] = np.array(list(a["ids_test"]), dtype=object)
    scipy.io.savemat(path, a)
    assert list(load_dataset(path, volume_shape=SHAPE).ids_test) == list(a["ids_test"])


def test_dims_as_uint32_and_names_as_utf8(tmp_path):
    """Some writers other than MATLAB store the dimensions as uint32 and the name as UTF-8; scipy reads them."""
    path = tmp_path / "other.mat"
    scipy.io.savemat(path, arrays())
    var = matv5.Mat5File(path).vars["y_test"]
    b = bytearray(path.read_bytes())
    b[var.offset + 16:var.offset + 20] = struct.pack("<I", matv5.MI_UINT32)  # the dimensions' tag
    b[var.offset + 32:var.offset + 36] = struct.pack("<I", matv5.MI_UTF8)  # the name's tag ("y_test": 6 bytes)
    path.write_bytes(bytes(b))
    assert load_dataset(path, volume_shape=SHAPE).y_test.tolist() == scipy.io.loadmat(path)["y_test"].ravel().tolist()


# --- header-mutation fuzz ------------------------------------------------------------------------------------

def _mutate_byte(b: bytes, pos: int, rng) -> bytes:
    out = bytearray(b)
    kind = rng.integers(4)
    out[pos] = (int(rng.integers(256)), out[pos] ^ (1 << int(rng.integers(8))), 0xFF, 0)[kind]
    return bytes(out)


def _header_windows(mat: matv5.Mat5File) -> list[tuple[int, int]]:
    """Byte ranges of the file header's version and endian fields, and of each variable's top-level tag and
    first 64 bytes (flags, dimensions, name, data tag; for short variables a little of their data)."""
    return [(124, 128)] + [(v.offset - 8, v.offset + min(v.nbytes, 64)) for v in mat.vars.values()]


def _mutated_v5(good: bytes, mat: matv5.Mat5File, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    windows = _header_windows(mat)
    lo, hi = windows[rng.integers(len(windows))]
    return _mutate_byte(good, int(rng.integers(lo, hi)), rng)


def _mutated_v7(good: bytes, mat: matv5.Mat5File, seed: int) -> bytes:
    """One variable's decompressed header mutated and compressed again (a well-formed zlib stream), or, one time
    in five, a raw byte of its compressed stream."""
    rng = np.random.default_rng(seed)
    var = list(mat.vars.values())[rng.integers(len(mat.vars))]
    comp = good[var.offset:var.offset + var.nbytes]
    if rng.random() < 0.2:
        comp = _mutate_byte(comp, int(rng.integers(min(len(comp), 64))), rng)
    else:
        raw = zlib.decompress(comp)
        comp = zlib.compress(_mutate_byte(raw, int(rng.integers(min(len(raw), 72))), rng))
    return good[:var.offset - 8] + struct.pack("<II", matv5.MI_COMPRESSED, len(comp)) + comp + \
        good[var.offset + var.nbytes:]


@pytest.mark.parametrize("compressed,seeds", [(False, range(50)), (True, range(25))], ids=["v5", "v7"])
def test_header_mutations_are_read_or_refused_cleanly(tmp_path, compressed, seeds):
    good_path = tmp_path / "good.mat"
    scipy.io.savemat(good_path, arrays(4, 2), do_compression=compressed)
    good, mat = good_path.read_bytes(), matv5.Mat5File(good_path)
    mutate = _mutated_v7 if compressed else _mutated_v5
    outcomes = {"read": 0, "refused": 0}
    for seed in seeds:
        path = tmp_path / f"mutated-{seed}.mat"
        path.write_bytes(mutate(good, mat, seed))
        data, message = load_or_refuse(path)
        if data is None:
            assert_clean_refusal(path, message)
            outcomes["refused"] += 1
        else:
            assert_reads_like_scipy(path, data)
            outcomes["read"] += 1
    print(f"{'v7' if compressed else 'v5'}: {outcomes}")
    assert outcomes["refused"] >= len(seeds) // 3 and outcomes["read"] >= 1, outcomes

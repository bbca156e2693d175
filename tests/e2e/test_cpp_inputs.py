"""The C++ runner's inputs as users make them: float64 and Fortran-order .npy (what `np.save` writes for an array
from `scipy.io.loadmat`), big-endian float32, all giving the probabilities of the float32 C-order golden input;
and malformed headers, crafted and mutated, each refused with one line and exit code 2.

Uses the session's export and build (the `deployed` fixture in tests/e2e/conftest.py). The runner loads libtorch on
every start (~0.4 s), so the many small runs go two at a time.
"""
import json
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from e2e.test_export import ATOL, TINY, infer, read_csv
from e2e.test_export import pytestmark  # noqa: F401  (torch's own deprecation notice during the export)


def golden(deployed) -> tuple[np.ndarray, np.ndarray]:
    """(golden volumes float32 C order, their probabilities from the eager model)."""
    model = deployed["model"]
    want = np.array(json.loads(model.with_name("model.pt2.json").read_text())["golden"]["probabilities"])
    return np.load(model.with_name("model.pt2.golden.npy")), want


def run_all(deployed, paths: list[Path], *extra) -> list:
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda p: infer(deployed, deployed["model"], p, *extra), paths))


def npy_header(path: Path) -> tuple[str, bool]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        _, fortran, dtype = read(f)
    return dtype.str, fortran


# --- what users save ----------------------------------------------------------------------------------------------

def _from_loadmat(x: np.ndarray, d: Path) -> np.ndarray:
    """The volumes through a MAT file and back, as a MATLAB user's arrays reach Python: float64, Fortran order."""
    scipy.io.savemat(d / "volumes.mat", {"X": x.astype(np.float64)})
    return scipy.io.loadmat(d / "volumes.mat")["X"]


VARIANTS = {  # name -> (array from the golden float32 C-order volumes, the .npy header np.save writes for it)
    "f8": (lambda x, d: x.astype(np.float64), ("<f8", False)),
    "f4-fortran": (lambda x, d: np.asfortranarray(x), ("<f4", True)),
    "f8-fortran": (lambda x, d: np.asfortranarray(x, dtype=np.float64), ("<f8", True)),
    "loadmat": (_from_loadmat, ("<f8", True)),
    "f4-big-endian": (lambda x, d: x.astype(">f4"), (">f4", False)),
    "f8-big-endian-fortran": (lambda x, d: np.asfortranarray(x, dtype=">f8"), (">f8", True)),
}


def test_float64_and_fortran_order_give_the_golden_probabilities(deployed, tmp_path):
    x, want = golden(deployed)
    paths = []
    for name, (make, header) in VARIANTS.items():
        (tmp_path / name).mkdir()
        path = tmp_path / name / "volumes.npy"
        np.save(path, make(x, tmp_path / name))
        assert npy_header(path) == header, name  # the layout under test is the one on disk
        paths.append(path)
    for name, r in zip(VARIANTS, run_all(deployed, paths)):
        assert r.returncode == 0, f"{name}: {r.stderr}"
        np.testing.assert_allclose(read_csv(r.stdout)[1], want, atol=ATOL, rtol=0, err_msg=name)


@pytest.mark.parametrize("read_mb", ["0", "1"])
def test_fortran_order_in_several_passes(deployed, tmp_path, read_mb):
    """--read-mb 0: one batch (2 volumes) per pass over the file, so the second pass starts at volume 2; 1 MiB:
    all 3 volumes in one pass, run as a batch of 2 and a batch of 1."""
    x, want = golden(deployed)
    path = tmp_path / "volumes.npy"
    np.save(path, np.asfortranarray(x, dtype=np.float64))
    r = infer(deployed, deployed["model"], path, "--batch-size", "2", "--read-mb", read_mb)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(read_csv(r.stdout)[1], want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("fortran", [False, True], ids=["C", "fortran"])
def test_values_float32_cannot_hold_are_refused(deployed, tmp_path, fortran):
    x = np.zeros((3, *TINY.volume))
    x[1, 2, 3, 4] = 1e300
    path = tmp_path / "big.npy"
    np.save(path, np.asfortranarray(x) if fortran else x)
    r = infer(deployed, deployed["model"], path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"error: {path}: volume 1 has values beyond float32's range (1e+300)\n", r.stderr


# --- malformed headers --------------------------------------------------------------------------------------------

def _npy(header: str, data: bytes, version: tuple[int, int] = (1, 0), hlen: int | None = None,
         newline: bool = True) -> bytes:
    """A .npy file with this header text, padded with blanks and ended by a newline as numpy writes it (a text
    that ends with a newline already is taken as it is)."""
    if newline and not header.endswith("\n"):
        header += " " * (-(len(header) + 11) % 64) + "\n"
    text = header.encode("latin-1")
    size = struct.pack("<H" if version[0] == 1 else "<I", len(text) if hlen is None else hlen)
    return b"\x93NUMPY" + bytes(version) + size + text + data


SHAPE = "(3, 5, 14, 6)"
DATA8 = bytes(3 * 5 * 14 * 6 * 8)
CRAFTED = {  # name -> (file bytes, words of the message)
    "half": (_npy(f"{{'descr': '<f2', 'fortran_order': False, 'shape': {SHAPE}, }}", DATA8[:len(DATA8) // 4]),
             "dtype <f2"),
    "no-byte-order": (_npy(f"{{'descr': 'f8', 'fortran_order': False, 'shape': {SHAPE}, }}", DATA8), "dtype f8"),
    "structured": (_npy(f"{{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': {SHAPE}, }}", DATA8),
                   "structured dtype"),
    "order-string": (_npy(f"{{'descr': '<f8', 'fortran_order': 'True', 'shape': {SHAPE}, }}", DATA8),
                     "bad 'fortran_order'"),
    "no-order": (_npy(f"{{'descr': '<f8', 'shape': {SHAPE}, }}", DATA8), "no 'fortran_order'"),
    "negative": (_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (3, -5, 14, 6), }", DATA8),
                 "non-negative integer"),
    "huge-digits": (_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999, 5), }", DATA8),
                    "non-negative integer"),
    "overflow": (_npy("{'descr': '<f8', 'fortran_order': True, 'shape': (4000000000, 4000000000, 14, 6), }",
                      DATA8), "too large"),
    "empty": (_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (0, 5, 14, 6), }", b""), "no volumes"),
    "duplicate-key": (_npy(f"{{'descr': '<f8', 'fortran_order': False, 'shape': {SHAPE}, 'descr': '<f8'}}", DATA8),
                      "appears twice"),
    "no-newline": (_npy(f"{{'descr': '<f8', 'fortran_order': False, 'shape': {SHAPE}, }}", DATA8, newline=False),
                   "does not end with a newline"),
    "unterminated": (_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 5, 14, 6\n", DATA8), "expected"),
    "version": (_npy(f"{{'descr': '<f8', 'fortran_order': False, 'shape': {SHAPE}, }}", DATA8, (4, 0)),
                "version 4.0"),
    "header-length": (_npy(f"{{'descr': '<f8', 'fortran_order': False, 'shape': {SHAPE}, }}", DATA8, (2, 0),
                           hlen=0xFFFFFFF0), "implausible .npy header length"),
    "trailing-bytes": (_npy(f"{{'descr': '<f4', 'fortran_order': True, 'shape': {SHAPE}, }}", DATA8),
                       "trailing bytes"),
}


def assert_refused(r, path: Path, words: str = "") -> None:
    assert r.returncode == 2 and r.stdout == "", (path.name, r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"error: {path}: ") and words in r.stderr, r.stderr


def test_crafted_headers_are_refused(deployed, tmp_path):
    paths = []
    for name, (content, _) in CRAFTED.items():
        paths.append(tmp_path / f"{name}.npy")
        paths[-1].write_bytes(content)
    for path, (_, words), r in zip(paths, CRAFTED.values(), run_all(deployed, paths)):
        assert_refused(r, path, words)


def test_mutated_headers_are_read_like_numpy_or_refused(deployed, tmp_path):
    """One byte of the header of a float64 Fortran-order file changed (deterministic seeds). Where numpy reads the
    same volumes from the result, the runner must give the golden probabilities; otherwise it must refuse it."""
    x, want = golden(deployed)
    good = tmp_path / "good.npy"
    np.save(good, np.asfortranarray(x, dtype=np.float64))
    content = good.read_bytes()
    data_offset = len(content) - x.size * 8
    paths = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        b = bytearray(content)
        b[int(rng.integers(data_offset))] = int(rng.integers(256))
        paths.append(tmp_path / f"mutated-{seed}.npy")
        paths[-1].write_bytes(bytes(b))
    refused = 0
    for path, r in zip(paths, run_all(deployed, paths)):
        try:
            same = np.array_equal(np.load(path).astype(np.float32), x)
        except Exception:  # numpy refuses it too
            same = False
        if r.returncode == 0:
            assert same, f"{path.name}: the runner read volumes numpy does not"
            np.testing.assert_allclose(read_csv(r.stdout)[1], want, atol=ATOL, rtol=0, err_msg=path.name)
        else:
            assert_refused(r, path)
            refused += 1
    assert refused >= 6, refused

"""Packed files made by the commands: `synth --format packed` (the same volumes as the in-memory generator, written
subject by subject in memory that does not grow with the set, a quarter of the dense float32 file or less) and
`pack IN --out OUT` from every readable format (one-line errors, exit code 2, nothing overwritten)."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from stvit.data import load_dataset, make_synthetic, write_dataset, write_synthetic
from stvit.data.__main__ import main
from stvit.data.packed import PackedFile, is_packed, read_packed
from stvit.data.synth import write_synthetic_packed
from stvit.errors import run_cli

from helpers import VOLUME, write_tiny_data


def test_synth_packed_is_the_generator_s_volumes(tmp_path):
    data = make_synthetic(20, 18, 4)  # a partial subject at the end of each split
    for dtype in ("float32", "float16"):
        path = write_synthetic_packed(tmp_path / f"s-{dtype}.h5", 20, 18, 4, dtype=dtype)
        back = read_packed(path)
        for split in ("train", "test"):
            X, y, ids = data.split(split)
            Xb, yb, idsb = back.split(split)
            want = X if dtype == "float32" else X.astype(np.float16).astype(np.float32)
            np.testing.assert_array_equal(Xb, want)
            np.testing.assert_array_equal(yb, y)
            np.testing.assert_array_equal(idsb, ids)
        with PackedFile(path) as p:
            assert p.provenance["seed"] == 4 and p.class_names == ["face", "shape"]


def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_synth_packed_memory_does_not_grow_with_the_set(tmp_path):
    write_synthetic_packed(tmp_path / "warm.h5", 16, 16, 0)  # the cached support and template
    small = peak_bytes(lambda: write_synthetic_packed(tmp_path / "a.h5", 64, 16, 0))  # one block of 4 subjects
    large = peak_bytes(lambda: write_synthetic_packed(tmp_path / "b.h5", 512, 16, 0))
    dense_large = 528 * int(np.prod((53, 63, 46))) * 4
    assert large < small + 8e6, (small, large)  # 16x the volumes, not 16x the memory
    assert large < dense_large / 2, (large, dense_large)


def test_builtin_set_packed_float16_is_at_most_a_quarter_of_dense_float32(tmp_path):
    write_synthetic(tmp_path / "dense.mat", 48, 16, 0, fmt="mat", dtype=np.float32)  # the cache's format
    write_synthetic(tmp_path / "packed.h5", 48, 16, 0, fmt="packed", dtype=np.float16)
    ratio = (tmp_path / "packed.h5").stat().st_size / (tmp_path / "dense.mat").stat().st_size
    assert ratio <= 0.25, ratio


def test_synth_command_writes_packed(tmp_path, capsys):
    out = tmp_path / "s.h5"
    assert run_cli(main, ["synth", "--format", "packed", "--out", str(out), "--n-train", "16", "--n-test", "16"]) == 0
    assert is_packed(out) and "packed, float16" in capsys.readouterr().out
    with PackedFile(out) as p:
        assert str(p.dtype) == "float16" and p.n == 32
    for args, message in ((["--dtype", "float64"], "stores float16 or float32"),
                          (["--format", "npz", "--dtype", "float16"], "float16 is for --format packed")):
        assert run_cli(main, ["synth", "--format", "packed", "--out", str(tmp_path / "x.h5"), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("fmt", ["mat", "mat73", "npz", "nifti", "packed"])
def test_pack_converts_every_readable_format(tmp_path, fmt, capsys):
    if fmt == "nifti":
        pytest.importorskip("nibabel")
    data = load_dataset(write_tiny_data(tmp_path / "tiny.npz"), volume_shape=VOLUME)
    src = tmp_path / ("tiny-in" if fmt == "nifti" else f"tiny-in.{'h5' if fmt in ('mat73', 'packed') else fmt}")
    write_dataset(src, data, fmt=fmt, dtype=np.float32)
    for dtype in ("float32", "float16"):
        out = tmp_path / f"out-{dtype}.h5"
        assert run_cli(main, ["pack", str(src), "--out", str(out), "--dtype", dtype, "--volume-shape",
                              *map(str, VOLUME)]) == 0
        assert f"{dtype}" in capsys.readouterr().out
        back = read_packed(out, volume_shape=VOLUME)
        for split in ("train", "test"):
            X, y, ids = data.split(split)
            Xb, yb, idsb = back.split(split)
            want = X if dtype == "float32" else X.astype(np.float16).astype(np.float32)
            np.testing.assert_array_equal(Xb, want)
            np.testing.assert_array_equal(yb, y)
            np.testing.assert_array_equal(idsb, ids)


def test_pack_zscores_and_refuses_what_it_must(tmp_path, capsys):
    src = write_tiny_data(tmp_path / "tiny.npz")
    raw = tmp_path / "raw.h5"
    data = load_dataset(src, volume_shape=VOLUME)
    data.X_train *= 1000.0  # scanner-like units
    write_dataset(raw, data, fmt="packed", dtype=np.float32)
    shape = ["--volume-shape", *map(str, VOLUME)]
    assert run_cli(main, ["pack", str(raw), "--out", str(tmp_path / "z.h5"), "--zscore", *shape]) == 0
    z = read_packed(tmp_path / "z.h5", volume_shape=VOLUME).X_train.reshape(32, -1)
    np.testing.assert_allclose(z.mean(1), 0, atol=2e-3)
    np.testing.assert_allclose(z.std(1), 1, atol=2e-3)
    capsys.readouterr()
    before = (tmp_path / "z.h5").read_bytes()
    cases = [(["pack", str(src), "--out", str(tmp_path / "z.h5")], "file exists"),
             (["pack", str(tmp_path / "none.mat"), "--out", str(tmp_path / "n.h5")], "no such file"),
             (["pack", str(src), "--out", str(tmp_path / "no" / "n.h5")], "folder does not exist"),
             (["pack", str(src), "--out", str(tmp_path / "n.h5")], "volumes are 5x14x6, expected 53x63x46"),
             (["pack", str(src), "--out", str(tmp_path / "n.h5"), "--num-classes", "1", *shape], "outside the class"),
             (["pack", str(raw), "--out", str(tmp_path / "n.h5"), "--num-classes", "1", *shape], "outside the class")]
    data.X_train[0][data.X_train[0] != 0] = 1e5  # beyond float16
    write_dataset(tmp_path / "big.npz", data, fmt="npz", dtype=np.float32)
    cases.append((["pack", str(tmp_path / "big.npz"), "--out", str(tmp_path / "n.h5"), *shape], "float16"))
    for argv, message in cases:
        assert run_cli(main, argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (argv, err)
    assert (tmp_path / "z.h5").read_bytes() == before
    assert not (tmp_path / "n.h5").exists() and not list(tmp_path.glob(".n.h5*"))

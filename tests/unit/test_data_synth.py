"""The synthetic HCP-like set: real layout, brain-shaped support, z-scored volumes, subject structure,
determinism, the planted patterns, the built-in cache. The calibrated difficulty and the `synth` command:
tests/e2e/test_data_synth.py."""
import hashlib

import numpy as np
import pytest
import scipy.io

from stvit.data import builtin_dataset_path, load_dataset, make_synthetic, write_synthetic
from stvit.data.synth import FACE, SHAPE, SHARED, brain_support, mm_to_voxel, planted_patterns

from helpers import ROOT as REPO

REAL_MASK = REPO.parent / "shared" / "data" / "inbrain_mask.mat"


@pytest.fixture(scope="module")
def small():
    return make_synthetic(48, 32, seed=0)


def real_mask():
    if not REAL_MASK.exists():
        pytest.skip("the real SPM brain mask (../shared/data/inbrain_mask.mat) is not here")
    m = np.zeros(53 * 63 * 46, bool)
    m[scipy.io.loadmat(REAL_MASK)["vmsk"].ravel() - 1] = True
    return m.reshape((53, 63, 46), order="F")


def test_layout_and_subjects(small):
    assert small.X_train.shape == (48, 53, 63, 46) and small.X_test.shape == (32, 53, 63, 46)
    assert small.X_train.dtype == np.float32 and small.y_train.dtype == np.int64
    for X, y, ids in (small.split("train"), small.split("test")):
        subjects, counts = np.unique(ids, return_counts=True)
        assert (counts == 16).all() and all(len(s) == 6 and s.isdigit() for s in subjects)
        for s in subjects:
            assert np.bincount(y[ids == s]).tolist() == [8, 8]  # 8 volumes per class per subject
    assert not set(small.ids_train) & set(small.ids_test)  # subject-disjoint splits


def test_background_is_exactly_zero_and_volumes_are_zscored_inside(small):
    brain = brain_support()
    assert 50_000 < brain.sum() < 70_000
    for X in (small.X_train, small.X_test):
        assert (X[:, ~brain] == 0).all()
        inside = X[:, brain].astype(np.float64)
        assert (inside != 0).all()
        np.testing.assert_allclose(inside.mean(1), 0, atol=1e-5)
        np.testing.assert_allclose(inside.std(1), 1, atol=1e-4)


def test_support_is_brain_shaped_and_patterns_sit_in_the_brain():
    real = real_mask()
    ours = brain_support()
    dice = 2 * (ours & real).sum() / (ours.sum() + real.sum())
    assert dice > 0.8, dice
    for xyz, _, _ in FACE + SHAPE:
        for sx in (1, -1):
            i, j, k = np.round(mm_to_voxel((sx * xyz[0], xyz[1], xyz[2]))).astype(int)
            assert real[i, j, k] and ours[i, j, k], xyz


def test_deterministic_by_seed(small):
    again = make_synthetic(48, 32, seed=0)
    assert np.array_equal(small.X_train, again.X_train) and np.array_equal(small.X_test, again.X_test)
    assert np.array_equal(small.ids_train, again.ids_train)
    other = make_synthetic(48, 32, seed=1)
    assert not np.array_equal(small.X_train, other.X_train)
    assert not set(other.ids_train) <= set(small.ids_train)


# Projections of the 48 volumes of make_synthetic(32, 16, seed=3) onto seeded standard-normal weights (float64).
PROJECTIONS = [113.315, 290.545, -210.455, -257.896, 197.531, 313.946, 11.243, -159.879, -61.08, 131.037, 329.613,
               -80.614, -54.595, -72.335, -160.721, 7.815, 73.233, -179.204, 51.971, 49.202, -220.127, 174.757,
               113.531, 306.624, 4.991, -232.075, 310.216, 33.964, 96.234, 35.491, 103.305, 20.186, 134.752,
               -162.357, -218.895, 18.521, -173.998, 74.121, -112.889, -182.789, -47.376, -247.64, -36.123, 246.957,
               -298.23, 308.915, -186.042, -29.787]


def test_generated_volumes_are_unchanged():
    """GENERATOR_VERSION 1 makes these volumes: a change of any volume, label or id must come with a new version,
    which renames the cached built-in set. Labels, ids and the brain support (exact zeros) are pinned bit for bit;
    the voxel values through a random projection of every volume, to 1e-3 of values of about 200: the float32 sums
    of scipy's filters and numpy's reductions round differently on CPUs with other vector units (a byte digest
    taken on one machine failed on another), while any real change of a volume moves its projection by whole
    units."""
    data = make_synthetic(32, 16, seed=3)
    h = hashlib.sha256()
    for a in (data.y_train, data.y_test):
        h.update(a.tobytes())
    h.update(",".join(data.ids_train).encode())
    h.update(",".join(data.ids_test).encode())
    assert h.hexdigest() == "775d2a1029f09ace583ad8bc8e83d6f6b3b5fbab0aae253805e0fb906ad25ddb"
    flat = np.concatenate([data.X_train, data.X_test]).reshape(48, -1).astype(np.float64)
    support = hashlib.sha256(np.packbits(flat != 0).tobytes()).hexdigest()
    assert support == "3a84cb474d47771fa2e12a677c5a994ead7670b2b5bc3149ae17f36eeb752f5a"
    w = np.random.default_rng(0).standard_normal(flat.shape[1])
    np.testing.assert_allclose(flat @ w, PROJECTIONS, rtol=0, atol=1e-3)
    assert abs(np.abs(flat).sum() - 2305202.88) < 0.5


def test_planted_patterns_are_the_ground_truth_of_the_data():
    """The expected class patterns: FACE + SHARED for class 0, SHAPE + SHARED for class 1, peaking at the planted
    centres; their regions sit in the brain, the discriminative ones apart from SHARED; and the class-mean
    difference of generated volumes follows the planted difference."""
    p = planted_patterns()
    assert p.classes.shape == (2, 53, 63, 46) and p.classes.dtype == np.float32
    assert not p.classes[:, ~p.brain].any()
    for group, cls in ((FACE, 0), (SHAPE, 1), (SHARED, None)):
        for xyz, weight, _ in group:
            ijk = tuple(np.round(mm_to_voxel(xyz)).astype(int))
            if cls is not None:  # the peak of a blob, lowered by the subjects' displacements and the jitter
                assert p.difference[ijk] * (1 if cls == 0 else -1) > 0.3 * weight, xyz
            else:
                assert p.classes[0][ijk] > 0.5 and abs(p.difference[ijk]) < 0.05
    for name, region in p.regions.items():
        assert region.any() and not (region & ~p.brain).any(), name
    assert not (p.regions["face"] & p.regions["shape"]).any()
    assert 0.03 < p.discriminative.sum() / p.brain.sum() < 0.12
    data = make_synthetic(320, 16, seed=5)
    diff = data.X_train[data.y_train == 0].mean(0) - data.X_train[data.y_train == 1].mean(0)
    r = np.corrcoef(diff[p.brain], p.difference[p.brain])[0, 1]
    print(f"class-mean difference of 320 volumes vs the planted difference: Pearson {r:.3f}")
    assert r > 0.4  # 0.54 (seed 5) and 0.62 (seed 0) measured


def test_signal_is_spatially_smooth_and_where_it_should_be(small):
    diff = small.X_train[small.y_train == 0].mean(0) - small.X_train[small.y_train == 1].mean(0)
    brain = brain_support()
    a, b = diff[:-1][brain[:-1] & brain[1:]], diff[1:][brain[:-1] & brain[1:]]
    assert np.corrcoef(a, b)[0, 1] > 0.5  # neighbours agree: blobs, not single voxels
    ffa = tuple(np.round(mm_to_voxel((40, -54, -20))).astype(int))
    dorsal = tuple(np.round(mm_to_voxel((26, -86, 22))).astype(int))
    assert diff[ffa] > 0.3 and diff[dorsal] < -0.3  # class 0 "face" up in the fusiform, class 1 "shape" dorsal


@pytest.mark.parametrize("fmt,suffix", [("mat", ".mat"), ("mat73", ".mat"), ("npz", ".npz")])
def test_written_in_the_real_layout(tmp_path, small, fmt, suffix):
    path = tmp_path / f"s{suffix}"
    write_synthetic(path, 48, 32, seed=0, fmt=fmt)
    if fmt == "mat":  # what the course file looks like to scipy
        raw = scipy.io.loadmat(path)
        assert raw["X_train"].dtype == np.float64 and raw["X_train"].shape == (48, 53, 63, 46)
        assert raw["y_train"].shape == (48, 1) and raw["ids_train"].shape == (48,)
    data = load_dataset(path)
    for split in ("train", "test"):
        for got, want in zip(data.split(split), small.split(split)):
            assert np.array_equal(got, want)


def test_builtin_dataset_is_cached_atomically(tmp_path, monkeypatch):
    path = builtin_dataset_path(32, 16, seed=3, cache_dir=tmp_path)
    assert path.parent == tmp_path and path.is_file() and "32" in path.name and "seed3" in path.name
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    stamp = path.stat().st_mtime_ns
    assert builtin_dataset_path(32, 16, seed=3, cache_dir=tmp_path) == path and path.stat().st_mtime_ns == stamp
    data = load_dataset(path)
    assert np.array_equal(data.X_train, make_synthetic(32, 16, seed=3).X_train)
    monkeypatch.setenv("STVIT_CACHE", str(tmp_path / "env"))
    assert builtin_dataset_path(32, 16, seed=3).parent == tmp_path / "env"

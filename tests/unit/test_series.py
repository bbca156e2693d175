"""NIfTI images in MNI space onto the model's grid (`stvit.data.series`): as stored when already on the grid,
through the affines otherwise (another voxel size, stored right to left, int16 with scl_slope), the importer's
cleaning of a series, and the one-line refusals."""
from __future__ import annotations

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pytest.importorskip("nilearn")

from stvit.data import VOLUME_SHAPE, grid_affine, zscore_volumes  # noqa: E402
from stvit.data.dataset import DataError  # noqa: E402
from stvit.data import series  # noqa: E402

# MNI 2 mm, stored right to left along its first axis (radiological, FSL's MNI152 layout)
RADIOLOGICAL = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
SHAPE_2MM = (91, 109, 91)


def field(mm: np.ndarray, t: float = 0.0) -> np.ndarray:
    """A smooth field of MNI coordinates (..., 3), larger on the right (x > 0) than on the left: a left-right swap
    would show. Kept away from 0 (0 is 'no data')."""
    x, y, z = mm[..., 0], mm[..., 1], mm[..., 2]
    return 5 + x / 30 + np.sin(y / 25) + np.cos(z / 20) + t * (1 + x / 100)


def world(affine: np.ndarray, shape) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def save(tmp_path, name, data, affine, *, int16=False, tr=None, unit="sec"):
    img = nib.Nifti1Image(data.astype(np.float32), affine)
    if int16:
        img.set_data_dtype(np.int16)  # nibabel scales into int16 and writes scl_slope / scl_inter
    if tr is not None:
        img.header.set_xyzt_units("mm", unit)
        zooms = img.header.get_zooms()
        img.header.set_zooms(zooms[:3] + (tr,))
    path = tmp_path / name
    nib.save(img, path)
    return path


def test_a_series_on_the_grid_is_read_as_stored(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3, *VOLUME_SHAPE)).astype(np.float32)
    X[:, :5] = 0  # a background, as a data file has
    path = save(tmp_path, "grid.nii.gz", np.moveaxis(X, 0, -1), grid_affine(), tr=0.72)
    img = nib.load(path)
    assert series.on_grid(img)
    assert np.array_equal(series.frames_on_grid(img, path), X)
    s = series.read_series(path, clean=False)
    assert np.array_equal(s.volumes, zscore_volumes(X.copy())) and not s.resampled
    assert s.tr == pytest.approx(0.72) and np.allclose(s.times, [0, 0.72, 1.44])


def test_another_grid_stored_right_to_left_in_int16_lands_the_right_way_round(tmp_path):
    frames = np.stack([field(world(RADIOLOGICAL, SHAPE_2MM), t) for t in (0.0, 1.0)], -1)
    path = save(tmp_path, "bold_2mm.nii.gz", frames, RADIOLOGICAL, int16=True, tr=720, unit="msec")
    img = nib.load(path)
    assert img.get_data_dtype() == np.int16 and img.dataobj.slope != 1  # scaled integers, as scanners write them
    got = series.frames_on_grid(img, path)
    want = np.stack([field(world(grid_affine(), VOLUME_SHAPE), t) for t in (0.0, 1.0)])
    inside = series.brain_mask()
    assert got.shape == (2, *VOLUME_SHAPE)
    assert np.abs(got[:, inside] - want[:, inside]).max() < 0.02
    mirrored = want[:, ::-1]  # what a reader that ignored the affine's sign would give along axis 0
    assert np.abs(got[:, inside] - mirrored[:, inside]).max() > 1.0
    assert series.header_tr(img) == pytest.approx(0.72)


def test_cleaning_removes_each_voxels_drift_and_z_scores_each_volume(tmp_path):
    rng = np.random.default_rng(1)
    T = 12
    base = field(world(grid_affine(), VOLUME_SHAPE))
    drift = rng.normal(size=VOLUME_SHAPE)
    t = np.arange(T)
    X = base[None] + drift[None] * t[:, None, None, None] + rng.normal(scale=0.1, size=(T, *VOLUME_SHAPE))
    path = save(tmp_path, "drift.nii.gz", np.moveaxis(X, 0, -1), grid_affine())
    s = series.read_series(path)
    inside = series.brain_mask()
    v = s.volumes[:, inside]
    assert np.allclose(v.mean(1), 0, atol=1e-5) and np.allclose(v.std(1), 1, atol=1e-4)
    assert (s.volumes[:, ~inside] == 0).all()

    def trend(volumes):  # each voxel's correlation with time
        a = volumes[:, inside][:, ::97]
        a, tc = a - a.mean(0), t - t.mean()
        return (tc @ a) / np.sqrt((tc @ tc) * (a * a).sum(0))

    assert np.abs(trend(s.volumes)).max() < 0.2
    assert np.median(np.abs(trend(series.read_series(path, clean=False).volumes))) > 0.5  # the drift, uncleaned
    assert s.cleaned and not s.resampled


def test_a_list_of_images_and_paths_becomes_volumes(tmp_path):
    one = field(world(RADIOLOGICAL, SHAPE_2MM))
    path = save(tmp_path, "one.nii", one, RADIOLOGICAL)
    img = nib.Nifti1Image(np.stack([one, one + 1], -1).astype(np.float32), RADIOLOGICAL)
    X = series.images_on_grid([path, img])
    assert X.shape == (3, *VOLUME_SHAPE)
    assert np.allclose(X[2][series.brain_mask()] - X[1][series.brain_mask()], 1, atol=1e-3)


@pytest.mark.parametrize("case, match", [
    ("scanner", "scanner coordinates"),
    ("elsewhere", "field of view holds 0% of the MNI brain"),
    ("two frames", "holds 2 frame.*3 or more.*--no-clean"),
    ("nan", r"frame\(s\) 1 hold NaN/Inf"),
    ("5d", "has 5 dimensions"),
    ("not nifti", "cannot read as NIfTI"),
    ("missing", "no such file"),
])
def test_refusals_are_one_line_naming_the_file(case, match, tmp_path):
    data = np.ones((*VOLUME_SHAPE, 4), np.float32)
    affine = grid_affine()
    path = tmp_path / "bold.nii.gz"
    if case == "scanner":
        img = nib.Nifti1Image(data, affine)
        img.set_sform(affine, code=1)
        img.set_qform(affine, code=1)
        nib.save(img, path)
    elif case == "elsewhere":
        far = affine.copy()
        far[:3, 3] += 500
        save(tmp_path, path.name, data, far)
    elif case == "two frames":
        save(tmp_path, path.name, data[..., :2], affine)
    elif case == "nan":
        data[1, 1, 1, 1] = np.nan
        save(tmp_path, path.name, data, affine)
    elif case == "5d":
        save(tmp_path, path.name, data[..., None], affine)
    elif case == "not nifti":
        path.write_bytes(b"not an image at all")
    elif case == "missing":
        path = tmp_path / "absent.nii.gz"
    with pytest.raises(DataError, match=match) as err:
        series.read_series(path, clean=case != "nan")
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)

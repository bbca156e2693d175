"""Geometry of the importer (`stvit.data.importer.geometry`): frames land on the 53 x 63 x 46 grid through the
affines (a linear function of MNI position survives resampling exactly, whichever way x is stored), the grid's
brain mask, the refusal of series that are not in MNI space, the repetition time from the header."""
from __future__ import annotations

import nibabel
import numpy as np
import pytest

from stvit.data.dataset import DataError, grid_affine
from stvit.data.importer.geometry import check_mni, grid_index, grid_mask, header_tr, open_series, series_on_grid
from stvit.data.importer.study import GRIDS, _grid


def grid_mm() -> np.ndarray:
    """(V, 3) MNI mm of the grid mask's voxels, in `grid_index` order."""
    ijk = np.argwhere(grid_mask())
    return ijk @ grid_affine()[:3, :3].T + grid_affine()[:3, 3]


def linear_series(space: str, x_step: int | None, frames: int = 3):
    """A 4D image on a space's res-2 grid whose frame k holds (k + 1) * (x + 0.1 y - 0.05 z + 200) at every
    voxel's MNI position, Fortran-ordered as nibabel hands arrays to users."""
    shape, affine = _grid(space, x_step)
    ijk = np.indices(shape).reshape(3, -1).T
    mm = ijk @ affine[:3, :3].T + affine[:3, 3]
    f = (mm[:, 0] + 0.1 * mm[:, 1] - 0.05 * mm[:, 2] + 200).reshape(shape)
    data = np.asfortranarray(np.stack([(k + 1) * f for k in range(frames)], -1).astype(np.float32))
    img = nibabel.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((2.0, 2.0, 2.0, 0.72))
    return img


@pytest.mark.parametrize("space", sorted(GRIDS))
@pytest.mark.parametrize("x_step", [1, -1])
def test_frames_land_on_the_grid_through_the_affine(tmp_path, space, x_step):
    img = linear_series(space, x_step)
    path = tmp_path / "bold.nii.gz"
    nibabel.save(img, path)
    series = series_on_grid(open_series(path), path, chunk=2)  # chunks of 2 frames: 3 frames = 2 chunks
    mm = grid_mm()
    want = mm[:, 0] + 0.1 * mm[:, 1] - 0.05 * mm[:, 2] + 200
    assert series.shape == (3, len(grid_index()))
    for k in range(3):
        np.testing.assert_allclose(series[k], (k + 1) * want, rtol=2e-5, atol=2e-3)
    left = np.argwhere(grid_mask())[:, 0] < 26  # axis 0 runs from x = -78 (left) to +78
    assert (mm[left, 0] < 0).all() and series[0][left].mean() < series[0][~left].mean()


def test_grid_mask_is_the_mni_brain_and_roughly_symmetric():
    m = grid_mask()
    assert m.shape == (53, 63, 46) and 60_000 < m.sum() < 75_000
    assert abs(int(m[:26].sum()) - int(m[27:].sum())) < 0.05 * m.sum()
    assert not m.flags.writeable


def save(tmp_path, img, name="bold.nii.gz"):
    path = tmp_path / name
    nibabel.save(img, path)
    return path


def test_scanner_or_unoriented_or_talairach_series_are_refused(tmp_path):
    img = linear_series("MNI152NLin2009cAsym", None, frames=2)
    for code, said in ((1, "scanner coordinates"), (0, "no orientation"), (3, "Talairach")):
        img.set_sform(img.affine, code=code)
        img.set_qform(img.affine, code=code)
        path = save(tmp_path, img)
        with pytest.raises(DataError, match=said) as err:
            check_mni(open_series(path), path)
        assert "space-MNI152NLin2009cAsym_res-2_desc-preproc_bold" in str(err.value)
    img.set_sform(img.affine, code="aligned")  # fMRIPrep's MNI output
    check_mni(open_series(save(tmp_path, img)), tmp_path / "bold.nii.gz")


def test_a_field_of_view_away_from_the_mni_brain_is_refused(tmp_path):
    img = linear_series("MNI152NLin2009cAsym", None, frames=2)
    moved = img.affine.copy()
    moved[:3, 3] += (0.0, 0.0, 120.0)  # a scanner origin far from MNI's
    path = save(tmp_path, nibabel.Nifti1Image(np.asarray(img.dataobj), moved))
    with pytest.raises(DataError, match="field of view holds"):
        check_mni(open_series(path), path)


def test_a_3d_volume_is_not_a_series(tmp_path):
    img = linear_series("MNI152NLin6Asym", None, frames=1)
    path = save(tmp_path, nibabel.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine))
    with pytest.raises(DataError, match="single 3D volume .* a 4D series"):
        open_series(path)


def test_header_tr_in_its_time_unit(tmp_path):
    img = linear_series("MNI152NLin6Asym", None, frames=2)
    assert header_tr(img) == pytest.approx(0.72)
    img.header.set_xyzt_units("mm", "msec")
    img.header.set_zooms((2.0, 2.0, 2.0, 720.0))
    assert header_tr(img) == pytest.approx(0.72)
    img.header.set_zooms((2.0, 2.0, 2.0, 0.0))
    assert header_tr(img) is None

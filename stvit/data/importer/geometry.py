"""From a study's 4D series to the model's grid: the brain mask of the grid, the checks that a series is in MNI
space, its repetition time from the header, and its frames resampled a few at a time.

The grid is SPM's 3 mm box [-78 -112 -50; 78 76 85] mm, 53 x 63 x 46, axis 0 from left (x = -78) to right
(`stvit.data.dataset.grid_affine`). A series already on that grid is read as stored; any other is resampled
through its own affine (nibabel's: the sform, else the qform) onto that grid with nilearn's `resample_img`
(continuous interpolation, i.e. cubic splines), so an image stored with x decreasing along its first axis
(radiological order, FSL's MNI152) lands the right way round: orientation comes from the affine, never from the
array's order; the resampled frames are 0 wherever the source frame's nearest voxel is 0, so interpolation never
fills the background. `stvit.data.series` (a series for
a trained run: `stvit.load`, `python -m stvit.predict`) reads through these same functions.

The brain mask: nilearn's MNI152 brain mask (`load_mni152_brain_mask()`, the 1 mm ICBM152 2009 template's grey +
white matter above 0.2, shipped inside nilearn: nothing is downloaded) resampled to the grid (nearest neighbour):
68,359 voxels.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from stvit.data.dataset import VOLUME_SHAPE, DataError, grid_affine

CHUNK_FRAMES = 8  # frames resampled at once: ~70 MB of float64 temporaries for a 97 x 115 x 97 source
MASK_SOURCE = ("nilearn's MNI152 brain mask (load_mni152_brain_mask(), 1 mm, threshold 0.2) resampled to the grid "
               "(nearest neighbour)")
MIN_COVERAGE = 0.9  # share of the grid's brain voxels a series' field of view must hold
XFORM_REFUSED = {0: "unknown", 1: "scanner", 3: "Talairach"}  # NIfTI xform codes that are not MNI (or aligned)
TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6, "unknown": 1.0}


@functools.lru_cache(maxsize=1)
def grid_mask() -> np.ndarray:
    """(53, 63, 46) bool: the MNI152 brain on the grid (read-only)."""
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    mask = resample_img(load_mni152_brain_mask(), target_affine=grid_affine(),
                        target_shape=VOLUME_SHAPE, interpolation="nearest", force_resample=True, copy_header=True)
    out = np.asarray(mask.get_fdata() > 0.5)
    out.flags.writeable = False
    return out


def grid_index() -> np.ndarray:
    """(V,) int64 C-order flat positions of the grid mask's voxels: the columns of a run's series."""
    return np.flatnonzero(grid_mask().reshape(-1))


def open_series(path: Path):
    """The 4D NIfTI at `path` (header read, voxels not yet); DataError for anything else."""
    import nibabel

    try:
        img = nibabel.load(path)
    except Exception as err:  # noqa: BLE001 - nibabel, gzip and OS errors alike: not a readable NIfTI
        raise DataError(f"cannot read as NIfTI ({type(err).__name__}: {err})", path) from None
    shape = img.shape
    if len(shape) == 3 or (len(shape) == 4 and shape[3] == 1):
        raise DataError(f"is a single 3D volume ({' x '.join(map(str, shape[:3]))}): a 4D series (one frame per "
                        "repetition time) belongs here", path)
    if len(shape) != 4:
        raise DataError(f"has {len(shape)} dimensions ({' x '.join(map(str, shape))}), expected a 4D series", path)
    return img


def check_mni(img, path: Path | None) -> float:
    """Refuse a series whose header places it in scanner or Talairach coordinates, or gives no orientation, or
    whose field of view misses the MNI brain; returns the share of the grid's brain inside its field of view."""
    sform, qform = int(img.header["sform_code"]), int(img.header["qform_code"])
    if sform in XFORM_REFUSED and qform in XFORM_REFUSED:
        said = {0: "gives no orientation (sform and qform codes 0)", 1: "places it in scanner coordinates "
                "(a native series)", 3: "places it in Talairach space"}[max(sform, qform)]
        from stvit.data.importer.sources import MNI_OUTPUT

        raise DataError(f"the header {said}: {MNI_OUTPUT}", path)
    ijk = np.argwhere(grid_mask())
    mm = ijk @ grid_affine()[:3, :3].T + grid_affine()[:3, 3]
    inv = np.linalg.inv(img.affine)
    src = mm @ inv[:3, :3].T + inv[:3, 3]
    inside = ((src >= -0.5) & (src <= np.array(img.shape[:3]) - 0.5)).all(1).mean()
    if inside < MIN_COVERAGE:
        from stvit.data.importer.sources import MNI_OUTPUT

        raise DataError(f"its field of view holds {100 * inside:.0f}% of the MNI brain (affine origin "
                        f"{np.round(img.affine[:3, 3], 1).tolist()} mm): not in MNI space? {MNI_OUTPUT}", path)
    return float(inside)


def header_tr(img) -> float | None:
    """The repetition time (s) in the header (pixdim[4] in its time unit), None when it is 0 or absent."""
    zooms = img.header.get_zooms()
    if len(zooms) < 4 or not np.isfinite(zooms[3]) or zooms[3] <= 0:
        return None
    unit = img.header.get_xyzt_units()[1]
    return float(zooms[3]) * TIME_UNITS.get(unit, 1.0)


def read_frames(img, path: Path | None, start: int, stop: int) -> np.ndarray:
    """Frames [start, stop) as float32 (X, Y, Z, k) (a 3D image: its one frame), scaled (int16 with scl_slope:
    nibabel applies it); DataError for a truncated or damaged file and for frames holding NaN/Inf."""
    try:
        data = np.asarray(img.dataobj[..., start:stop] if len(img.shape) == 4 else img.dataobj, dtype=np.float32)
    except Exception as err:  # noqa: BLE001 - gzip/zlib/EOF errors of a truncated file
        raise DataError(f"cannot read frames {start}-{stop - 1} (truncated or damaged file?): "
                        f"{type(err).__name__}: {err}", path) from None
    data = data.reshape(*data.shape[:3], -1)
    bad = ~np.isfinite(data).reshape(-1, data.shape[-1]).all(0)
    if bad.any():
        frames = (np.flatnonzero(bad) + start).tolist()
        raise DataError(f"frame(s) {', '.join(map(str, frames[:5]))}{' ...' if len(frames) > 5 else ''} hold NaN/Inf "
                        "values", path)
    return data


def on_grid(img) -> bool:
    """The image's voxels are the grid's: same shape and (to 1e-4 mm) the same affine."""
    return tuple(img.shape[:3]) == VOLUME_SHAPE and np.allclose(img.affine, grid_affine(), atol=1e-4)


def chunk_on_grid(img, path: Path | None, start: int, stop: int) -> np.ndarray:
    """Frames [start, stop) on the grid, (53, 63, 46, k) float32. An image on the grid already (`on_grid`): the
    stored values, no interpolation. Any other: resampled through its affine (continuous interpolation), each
    frame 0 outside its own non-zero voxels resampled by nearest neighbour, so that interpolation never fills the
    background (a spline's ringing would make it non-zero everywhere)."""
    import nibabel
    from nilearn.image import resample_img

    data = read_frames(img, path, start, stop)
    if on_grid(img):
        return data
    grid = {}
    for name, values, how in (("values", data, "continuous"),
                              ("support", (data != 0).astype(np.float32), "nearest")):
        moved = resample_img(nibabel.Nifti1Image(values, img.affine), target_affine=grid_affine(),
                             target_shape=VOLUME_SHAPE, interpolation=how, force_resample=True, copy_header=True)
        grid[name] = np.asarray(moved.dataobj, dtype=np.float32).reshape(*VOLUME_SHAPE, -1)
    return np.where(grid["support"] > 0.5, grid["values"], np.float32(0))


def frame_count(img) -> int:
    """Frames of a 4D series (1 for a 3D volume)."""
    return int(img.shape[3]) if len(img.shape) == 4 else 1


def series_on_grid(img, path: Path, chunk: int = CHUNK_FRAMES) -> np.ndarray:
    """(T, V) float32: every frame on the grid (`chunk_on_grid`), at the grid mask's voxels (`grid_index`
    order), `chunk` frames at a time (peak memory: a chunk of the source in float64, not the whole series)."""
    n = frame_count(img)
    index = grid_index()
    out = np.empty((n, len(index)), np.float32)
    for a in range(0, n, chunk):
        grid = chunk_on_grid(img, path, a, min(a + chunk, n))
        out[a:a + grid.shape[-1]] = grid.reshape(-1, grid.shape[-1])[index].T
    return out


def support(series: np.ndarray) -> np.ndarray:
    """(V,) bool: the voxels of a run's series (T, V) that are data in every frame: non-zero (zero is outside the
    field of view, or outside a brain the data was masked to) and varying over time."""
    return (series != 0).all(0) & (series.max(0) > series.min(0))

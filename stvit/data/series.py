"""NIfTI images in MNI space -> volumes on the model's grid, prepared the way the training data was.

    a 4D series (or a 3D volume) -> frames resampled onto the grid through the affines, a few at a time
      clean=True   the importer's cleaning of a run: in the brain (nilearn's MNI152 mask on the grid) and where the
                   series holds data in every frame, each voxel detrended and z-scored over time (nilearn's
                   `signal.clean`), then each volume z-scored over those voxels, 0 elsewhere
      clean=False  a series that is already cleaned and masked (the volumes a data file holds): each volume
                   z-scored over its non-zero voxels (`zscore_volumes`, what `data.zscore` does to a data file)

The grid is SPM's 3 mm box, 53 x 63 x 46, axis 0 from left (x = -78 mm) to right (`grid_affine`). A series whose
affine and shape are the grid's is read as stored (no interpolation: the same numbers as a data file holding
those volumes); any other is resampled with nilearn's `resample_img` (continuous interpolation) through its own
affine, so orientation comes from the header, never from the array's order, and the non-zero voxels of each
frame (resampled by nearest neighbour) bound what interpolation may fill. Needs nibabel and nilearn.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stvit.data.dataset import VOLUME_SHAPE, DataError, grid_affine, zscore_volumes

CHUNK_FRAMES = 8  # frames resampled at once: ~70 MB of float64 temporaries for a 97 x 115 x 97 source
MIN_COVERAGE = 0.9  # share of the grid's brain voxels a series' field of view must hold
NOT_MNI = {0: "gives no orientation (sform and qform codes 0)", 1: "places it in scanner coordinates (a native "
           "series)", 3: "places it in Talairach space"}
TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6, "unknown": 1.0}


@dataclass
class Series:
    """Volumes (T, 53, 63, 46) float32 on the grid, prepared; the repetition time (s) when known."""

    volumes: np.ndarray
    tr: float | None
    source: str
    resampled: bool
    cleaned: bool

    @property
    def times(self) -> np.ndarray:
        """(T,) acquisition time of each frame in seconds (index * TR; NaN without a TR)."""
        return np.arange(len(self.volumes)) * (self.tr if self.tr else np.nan)


def needs(what: str, path) -> None:
    """nibabel and nilearn, or a DataError saying how to get them."""
    import importlib.util

    missing = [m for m in ("nibabel", "nilearn") if importlib.util.find_spec(m) is None]
    if missing:
        raise DataError(f"{what} needs {' and '.join(missing)}: pip install {' '.join(missing)}", path)


@functools.lru_cache(maxsize=1)
def brain_mask() -> np.ndarray:
    """(53, 63, 46) bool, read-only: nilearn's MNI152 brain mask (shipped with nilearn) on the grid."""
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    mask = resample_img(load_mni152_brain_mask(), target_affine=grid_affine(), target_shape=VOLUME_SHAPE,
                        interpolation="nearest", force_resample=True, copy_header=True)
    out = np.asarray(mask.get_fdata() > 0.5)
    out.flags.writeable = False
    return out


def open_image(image, what: str = "a NIfTI image"):
    """A nibabel image from an image or a path (header read, voxels not yet); DataError for anything else."""
    import nibabel

    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.exists():
            raise DataError("no such file", path)
        try:
            return nibabel.load(path)
        except Exception as err:  # noqa: BLE001 - nibabel, gzip and OS errors alike: not a readable NIfTI
            raise DataError(f"cannot read as NIfTI ({type(err).__name__}: {err})", path) from None
    if not isinstance(image, nibabel.spatialimages.SpatialImage):
        raise DataError(f"{what} must be a nibabel image or a file path, got {type(image).__name__}")
    return image


def frame_count(img, path) -> int:
    """Frames of a 3D volume (1) or a 4D series; DataError for any other shape."""
    shape = img.shape
    if len(shape) == 3:
        return 1
    if len(shape) == 4:
        return int(shape[3])
    raise DataError(f"has {len(shape)} dimensions ({' x '.join(map(str, shape))}), expected a 3D volume or a 4D "
                    "series", path)


def check_mni(img, path) -> None:
    """Refuse an image whose header places it in scanner or Talairach coordinates or gives no orientation, or
    whose field of view misses the MNI brain."""
    sform, qform = int(img.header["sform_code"]), int(img.header["qform_code"])
    if sform in NOT_MNI and qform in NOT_MNI:
        raise DataError(f"the header {NOT_MNI[max(sform, qform)]}: a series in MNI space is needed (fMRIPrep's "
                        "space-MNI152NLin2009cAsym outputs, or SPM's normalized w* files)", path)
    ijk = np.argwhere(brain_mask())
    mm = ijk @ grid_affine()[:3, :3].T + grid_affine()[:3, 3]
    inv = np.linalg.inv(img.affine)
    src = mm @ inv[:3, :3].T + inv[:3, 3]
    inside = ((src >= -0.5) & (src <= np.array(img.shape[:3]) - 0.5)).all(1).mean()
    if inside < MIN_COVERAGE:
        raise DataError(f"its field of view holds {100 * inside:.0f}% of the MNI brain (affine origin "
                        f"{np.round(img.affine[:3, 3], 1).tolist()} mm): not in MNI space?", path)


def header_tr(img) -> float | None:
    """The repetition time (s) in the header (pixdim[4] in its time unit), None when it is 0 or absent."""
    zooms = img.header.get_zooms()
    if len(zooms) < 4 or not np.isfinite(zooms[3]) or zooms[3] <= 0:
        return None
    return float(zooms[3]) * TIME_UNITS.get(img.header.get_xyzt_units()[1], 1.0)


def on_grid(img) -> bool:
    """The image's voxels are the grid's: same shape and (to 1e-4 mm) the same affine."""
    return tuple(img.shape[:3]) == VOLUME_SHAPE and np.allclose(img.affine, grid_affine(), atol=1e-4)


def read_frames(img, path, start: int, stop: int) -> np.ndarray:
    """Frames [start, stop) as float32 (X, Y, Z, k), scaled (int16 with scl_slope: nibabel applies it); DataError
    for a truncated or damaged file and for frames holding NaN/Inf."""
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


def frames_on_grid(img, path=None, chunk: int = CHUNK_FRAMES) -> np.ndarray:
    """(T, 53, 63, 46) float32: every frame on the grid, `chunk` frames at a time (peak memory: a chunk of the
    source in float64, not the whole series). On the grid already: the stored values; otherwise resampled through
    the affine, each frame 0 outside its own non-zero voxels (resampled by nearest neighbour)."""
    import nibabel
    from nilearn.image import resample_img

    n = frame_count(img, path)
    out = np.empty((n,) + VOLUME_SHAPE, np.float32)
    same = on_grid(img)
    for a in range(0, n, chunk):
        data = read_frames(img, path, a, min(a + chunk, n))
        if same:
            out[a:a + data.shape[-1]] = np.moveaxis(data, -1, 0)
            continue
        grid = {}
        for name, values, how in (("values", data, "continuous"), ("support", (data != 0).astype(np.float32),
                                                                   "nearest")):
            moved = resample_img(nibabel.Nifti1Image(values, img.affine), target_affine=grid_affine(),
                                 target_shape=VOLUME_SHAPE, interpolation=how, force_resample=True, copy_header=True)
            grid[name] = np.asarray(moved.dataobj, dtype=np.float32).reshape(*VOLUME_SHAPE, -1)
        out[a:a + data.shape[-1]] = np.moveaxis(np.where(grid["support"] > 0.5, grid["values"], 0), -1, 0)
    return out


def clean_volumes(volumes: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """In place: the `inside` voxels of a run's volumes (T, ...) detrended and z-scored over time (nilearn's
    `signal.clean`, the importer's defaults), then each volume z-scored over them; 0 elsewhere."""
    import warnings

    from nilearn.signal import clean

    flat = volumes.reshape(len(volumes), -1)
    cols = inside.reshape(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nilearn's note on standardizing few frames
        values = clean(flat[:, cols].astype(np.float64), detrend=True, standardize="zscore_sample")
    mean, std = values.mean(1, keepdims=True), values.std(1, keepdims=True)
    std[std == 0] = 1.0
    flat[:, cols] = (values - mean) / std
    flat[:, ~cols] = 0
    return volumes


def read_series(image, *, clean: bool = True, tr: float | None = None) -> Series:
    """A 3D volume or 4D series in MNI space (a path or a nibabel image) on the grid, prepared (see the module's
    docstring). `tr`: the repetition time when the header has none (or to replace it). DataError for a file that is
    not a NIfTI image in MNI space, for NaN/Inf frames, and for cleaning fewer than 3 frames."""
    path = image if isinstance(image, (str, Path)) else getattr(image, "get_filename", lambda: None)()
    needs("reading a NIfTI series", path)
    img = open_image(image, "a NIfTI series")
    n = frame_count(img, path)
    if clean and n < 3:
        raise DataError(f"holds {n} frame(s): cleaning over time needs a series of 3 or more (--no-clean for "
                        "volumes that are already cleaned)", path)
    check_mni(img, path)
    volumes = frames_on_grid(img, path)
    if clean:
        inside = brain_mask() & (volumes != 0).all(0) & (volumes.max(0) > volumes.min(0))
        if not inside.any():
            raise DataError("no voxel of the MNI brain holds data that varies over time", path)
        clean_volumes(volumes, inside)
    else:
        zscore_volumes(volumes)
    return Series(volumes, tr if tr is not None else header_tr(img), str(path or "<image>"), not on_grid(img), clean)


def images_on_grid(images) -> np.ndarray:
    """(N, 53, 63, 46) float32 from a list of NIfTI images or paths in MNI space (3D volumes, or 4D series whose
    frames count as volumes), resampled where they are not on the grid and otherwise as stored: the volumes a data
    file would hold (no cleaning, no z-scoring)."""
    if not len(images):
        raise DataError("an empty list of images")
    needs("reading NIfTI images", None)
    parts = []
    for i, image in enumerate(images):
        img = open_image(image, f"images[{i}]")
        path = image if isinstance(image, (str, Path)) else (img.get_filename() or f"images[{i}]")
        check_mni(img, path)
        parts.append(frames_on_grid(img, path))
    return np.concatenate(parts)

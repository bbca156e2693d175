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

One implementation: the grid, the MNI checks, the resampling (`stvit.data.importer.geometry`) and the cleaning
(`stvit.data.importer.clean`, default `Cleaning()`) are the importer's own, so a series given to a trained run is
prepared exactly as `python -m stvit.data import` prepares a run of a study (without its labels and confounds).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stvit.data.dataset import VOLUME_SHAPE, DataError, zscore_volumes
from stvit.data.importer.clean import Cleaning, clean_run, zscore_rows
from stvit.data.importer.geometry import (
    CHUNK_FRAMES,
    check_mni,
    chunk_on_grid,
    header_tr,
    on_grid,
    read_frames,
    support,
)
from stvit.data.importer.geometry import grid_mask as brain_mask

__all__ = ["Series", "brain_mask", "check_mni", "clean_volumes", "frames_on_grid", "header_tr", "images_on_grid",
           "on_grid", "read_frames", "read_series"]


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


def frames_on_grid(img, path=None, chunk: int = CHUNK_FRAMES) -> np.ndarray:
    """(T, 53, 63, 46) float32: every frame on the grid, `chunk` frames at a time (the importer's
    `chunk_on_grid`: on the grid already, the stored values; otherwise resampled through the affine, each frame 0
    outside its own non-zero voxels)."""
    n = frame_count(img, path)
    out = np.empty((n,) + VOLUME_SHAPE, np.float32)
    for a in range(0, n, chunk):
        grid = chunk_on_grid(img, path, a, min(a + chunk, n))
        out[a:a + grid.shape[-1]] = np.moveaxis(grid, -1, 0)
    return out


def clean_volumes(volumes: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """In place: the `inside` voxels of a run's volumes (T, ...) cleaned as the importer cleans a run by default
    (`clean_run` with `Cleaning()`: detrended and z-scored over time), then each volume z-scored over them
    (`zscore_rows`); 0 elsewhere."""
    flat = volumes.reshape(len(volumes), -1)
    cols = inside.reshape(-1)
    flat[:] = zscore_rows(clean_run(flat, cols, None, Cleaning()), cols)
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
        inside = brain_mask() & support(volumes.reshape(n, -1)).reshape(VOLUME_SHAPE)
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

"""Data: read and check a data file, a synthetic HCP-like set, the validation split, device-resident batches.

    file (MAT v5/v7/v7.3, .npz, NIfTI folder) -> load_dataset -> HCPData (float32 volumes, int64 labels, ids)
    (one module per format, reader and writer: matv5, mat73, npz, nifti; files picks the format)
    -> split_train_val (grouped by subject) -> DeviceSplit (on the device) -> batches (gathered, flipped)

    packed file (`packed`: in-brain voxels, float16/float32) -> open_dataset -> HCPData of `PackedVolumes`
    -> placement.place: PackedSplit (rows resident on the device) or StreamSplit (rows streamed from the file
    by DataLoader workers, `stream`), chosen by `placement.choose_placement` -> the same batches

A volume is (53, 63, 46) on SPM's 3 mm grid: axis 0 left-right, axis 1 posterior-anterior, axis 2
inferior-superior. Command line: `python -m stvit.data inspect FILE`, `python -m stvit.data synth --out FILE`.
"""
from stvit.data.dataset import VOLUME_SHAPE, DataError, HCPData, grid_affine, zscore_volumes
from stvit.data.files import FORMATS, describe, format_for, load_dataset, open_dataset, write_dataset
from stvit.data.split import fingerprint, load_split, save_split, split_train_val, subject_folds
from stvit.data.synth import GENERATOR_VERSION, builtin_dataset_path, make_synthetic, write_synthetic

__all__ = [
    "VOLUME_SHAPE", "GENERATOR_VERSION", "HCPData", "DataError", "load_dataset", "open_dataset", "describe",
    "zscore_volumes",
    "grid_affine", "FORMATS", "format_for",
    "builtin_dataset_path", "write_synthetic", "write_dataset", "make_synthetic",
    "split_train_val", "subject_folds", "save_split", "load_split", "fingerprint", "DeviceSplit",
]


def __getattr__(name: str):
    # DeviceSplit and the placement need torch; importing them lazily keeps `python -m stvit.data` quick
    if name == "DeviceSplit":
        from stvit.data.batches import DeviceSplit
        return DeviceSplit
    if name == "placement_line":
        from stvit.data.placement import placement_line
        return placement_line
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

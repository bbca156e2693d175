"""A trained run's encoder as a Brainmarks model (`pip install brainmarks`, its plugin interface:
`brainmarks.models.base`), so that the suite's probes (`python -m brainmarks.main_logistic stvit patch DATASET`)
score stvit's embeddings beside other fMRI foundation models.

Brainmarks hands a model one sample per run: `bold` (T, V), the voxels of its MNI152NLin6Asym 2 mm brain mask
(space "mni", 91 x 109 x 91, RAS) already z-scored over time, with `mean`, `std` and `tr`. `STViTTransform` puts each
frame back on the 2 mm grid, resamples it onto stvit's 3 mm grid through the affines (linear interpolation, 0
outside the mask) and z-scores each volume over the voxels it covers: the preparation of an imported run, whose
cleaning (each voxel z-scored over time) Brainmarks has done already. `STViTModel` embeds every frame (the volume
embedding of `TrainedRun.embed`) and returns them as the patch embeddings, one token per frame (B, T, D), with their
mean as the CLS embedding (B, 1, D); no registers.

The plugin file that registers it is integrations/brainmarks/models/stvit.py (put `integrations` on PYTHONPATH).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stvit.data.dataset import VOLUME_SHAPE, grid_affine
from stvit.training.trained import TrainedRun, embeddings, load

SPACE = "mni"
MNI_2MM_SHAPE = (91, 109, 91)  # brainmarks.readers.MNI152_2MM_SHAPE / _AFFINE (RAS since 2026-01-14)
MNI_2MM_AFFINE = np.array([[2.0, 0, 0, -90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
RUN_ENV = "STVIT_RUN"  # the run directory when the constructor is given none (Brainmarks' smoke test passes none)


def mni_mask(mask=None) -> np.ndarray:
    """(91, 109, 91) bool: `mask` (an array, or a NIfTI path on the 2 mm grid), else Brainmarks' own mask for space
    "mni" (templateflow's MNI152NLin6Asym 2 mm brain mask; downloaded by templateflow on first use)."""
    if mask is None:
        from templateflow import api as tflow  # a dependency of brainmarks

        mask = tflow.get("MNI152NLin6Asym", desc="brain", resolution=2, suffix="mask", extension="nii.gz")
    if isinstance(mask, (str, Path)):
        import nibabel

        mask = np.asarray(nibabel.load(mask).dataobj)
    mask = np.asarray(mask) > 0
    if mask.shape != MNI_2MM_SHAPE:
        raise ValueError(f"the mask is {mask.shape}, expected the MNI 2 mm grid {MNI_2MM_SHAPE}")
    return mask


class STViTTransform:
    """A Brainmarks sample {"bold": (T, V), ...} of space "mni" -> {"volumes": (T, 53, 63, 46) float32, "tr"}."""

    def __init__(self, mask: np.ndarray):
        self.mask = mask
        self._support = None

    def support(self) -> np.ndarray:
        """(53, 63, 46) bool: the stvit grid voxels the mask covers (nearest neighbour)."""
        if self._support is None:
            self._support = self._resample(self.mask[None].astype(np.float32), "nearest")[0] > 0.5
        return self._support

    @staticmethod
    def _resample(frames: np.ndarray, how: str) -> np.ndarray:
        import nibabel
        from nilearn.image import resample_img

        img = nibabel.Nifti1Image(np.moveaxis(frames, 0, -1), MNI_2MM_AFFINE)
        out = resample_img(img, target_affine=grid_affine(), target_shape=VOLUME_SHAPE, interpolation=how,
                           force_resample=True, copy_header=True)
        return np.moveaxis(np.asarray(out.dataobj, np.float32).reshape(*VOLUME_SHAPE, -1), -1, 0)

    def __call__(self, sample: dict) -> dict:
        bold = torch.as_tensor(sample["bold"]).float().numpy()  # (T, V)
        if bold.shape[1] != int(self.mask.sum()):
            raise ValueError(f"bold has {bold.shape[1]} voxels, the mask {int(self.mask.sum())}")
        frames = np.zeros((len(bold), *MNI_2MM_SHAPE), np.float32)
        frames[:, self.mask] = bold
        volumes = self._resample(frames, "linear")
        inside = self.support()
        v = volumes[:, inside].astype(np.float64)
        std = v.std(1, keepdims=True)
        std[std == 0] = 1.0
        volumes[:, inside] = (v - v.mean(1, keepdims=True)) / std
        volumes[:, ~inside] = 0
        return {"volumes": torch.from_numpy(volumes), "tr": sample.get("tr")}


class STViTModel(nn.Module):
    """The frozen encoder of a trained run: {"volumes": (B, T, 53, 63, 46)} -> Embeddings(cls (B, 1, D), None,
    patch (B, T, D)), one token per frame."""

    __space__ = SPACE

    def __init__(self, run: TrainedRun):
        super().__init__()
        self.run = run
        self.encoder = run.model
        self.encoder.requires_grad_(False)

    def forward(self, batch: dict):
        from brainmarks.models.base import Embeddings

        x = batch["volumes"]
        B, T = x.shape[:2]
        device = next(self.encoder.parameters()).device
        frames = x.reshape(B * T, *x.shape[2:]).to(device, self.run.precision.storage_dtype)
        self.encoder.eval()
        with torch.no_grad():
            _, volume = embeddings(self.encoder, self.run.precision, frames)
        patch = volume.view(B, T, -1)
        return Embeddings(patch.mean(1, keepdim=True), None, patch)


def create(run_dir=None, mask=None, device: str = "auto", precision: str = "auto", **kwargs):
    """The Brainmarks model constructor: (transform, model) for the run in `run_dir` (default: $STVIT_RUN).
    `mask`: the space's mask (array or NIfTI path; default: templateflow's, as Brainmarks' own reader uses)."""
    run_dir = run_dir or os.environ.get(RUN_ENV)
    if not run_dir:
        raise ValueError(f"stvit: give run_dir (model_kwargs) or set ${RUN_ENV} to a trained run directory")
    return STViTTransform(mni_mask(mask)), STViTModel(load(run_dir, device=device, precision=precision))

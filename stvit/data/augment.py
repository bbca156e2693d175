"""The random augmentations of each training batch, on the device: elastic deformation, intensity scaling and
Gaussian noise (the flips stay where they always were, in `DeviceSplit.batches`).

    x (B, 53, 63, 46) -> elastic -> scale -> noise -> x'     background (voxels exactly 0) stays exactly 0

Why the lines are written here and not taken from a library: MONAI's random transforms (`Rand3DElastic`,
`RandGaussianNoise`) work one volume at a time and draw their fields and noise from a numpy RandomState on the
host, and kornia's elastic and noise augmentations are 2D only (its 3D set is flips, affine, crops, motion blur).
Neither draws a batch's randomness on the device from a generator we seed by (stage seed, epoch), which exact
resume and data parallelism need. What is left is one `F.grid_sample` and three small matmuls.

Randomness: each step draws the fields, factors and noise of the whole global batch from a device generator of
(stage seed, epoch, `Stream.AUGMENT`) and keeps this rank's rows, as the MAE masking noise does
(`stages.MaskNoise`): N processes augment every volume as one process does, and a resumed epoch draws what the
interrupted one drew. The augmentation runs outside the compiled step and keeps the batch's shape and dtype, so
the compiled graph never sees a new input.

The brain mask of a volume is its non-zero voxels: the data's background is exactly 0 (DESIGN.md), the SPM
analysis mask being the same for every volume. An elastic deformation moves the content inside that mask and
leaves the mask as it is, as residual misregistration would: real volumes never have another outline.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from stvit.config import AugmentConfig, Config
from stvit.rng import Stream, device_generator
from stvit.data.batches import shard_bounds

MIN_WEIGHT = 1e-3  # a deformed position with less brain than this around it keeps its own value


def flip_fraction(cfg: Config) -> float:
    """The share of training volumes flipped each epoch: `data.flip_fraction` when "flip" is among the
    augmentations, else 0."""
    return cfg.data.flip_fraction if "flip" in cfg.augment.ops else 0.0


def control_grid(volume: tuple[int, int, int], spacing: float) -> tuple[int, int, int]:
    """Control points of the displacement per axis: one every `spacing` voxels, both ends included (>= 2)."""
    return tuple(max(2, math.ceil((n - 1) / spacing) + 1) for n in volume)


def linear_weights(n: int, g: int, device: torch.device) -> Tensor:
    """(n, g): linear interpolation from g control points to n voxels, both ends on both grids (align_corners).
    One per axis: trilinear interpolation is their product, a few small matmuls."""
    pos = torch.linspace(0, g - 1, n, dtype=torch.float64)
    lo = pos.floor().clamp(max=g - 2).long()
    frac = pos - lo
    w = torch.zeros(n, g, dtype=torch.float64)
    w[torch.arange(n), lo] = 1 - frac
    w[torch.arange(n), lo + 1] = frac
    return w.float().to(device)


class Warp:
    """Sample positions of a piecewise-trilinear deformation of (D, H, W) volumes with a control point every
    `spacing` voxels, and the resampling of a batch at them.

    The identity is linear too, so the control points' own coordinates plus their displacements, interpolated
    once, give every voxel's sample position: `grid_sample` coordinates, in its (W, H, D) order."""

    def __init__(self, volume: tuple[int, int, int], spacing: float, device: torch.device):
        self.volume, self.grid = tuple(volume), control_grid(volume, spacing)
        self.wd, self.wh, self.ww = (linear_weights(n, g, device) for n, g in zip(self.volume, self.grid))
        gd, gh, gw = self.grid
        coords = [torch.linspace(-1, 1, g, device=device) for g in (gd, gh, gw)]
        d, h, w = torch.meshgrid(*coords, indexing="ij")
        self.identity = torch.stack([w, h, d])  # (3, gd, gh, gw): the control points, grid units, (W, H, D) order
        # voxels -> grid units along (W, H, D)
        self.unit = torch.tensor([2 / max(n - 1, 1) for n in self.volume[::-1]], device=device).view(1, 3, 1, 1, 1)

    def positions(self, shift: Tensor) -> Tensor:
        """shift (B, 3, gd, gh, gw): displacement of the control points in voxels along (W, H, D) ->
        (B, D, H, W, 3) sample positions."""
        B, (D, H, W) = shift.shape[0], self.volume
        c = self.identity + shift * self.unit  # (B, 3, gd, gh, gw)
        c = self.wh @ (c @ self.ww.T)  # (B, 3, gd, H, W)
        c = c.permute(0, 2, 3, 4, 1).reshape(B, self.grid[0], -1)  # (B, gd, H * W * 3)
        return (self.wd @ c).view(B, D, H, W, 3)

    def __call__(self, x: Tensor, mask: Tensor, shift: Tensor) -> Tensor:
        """x (B, D, H, W) float32, 0 outside `mask` (bool, same shape), deformed by `shift` (see `positions`).

        Inside the mask each voxel takes the brain-only average at its displaced position (the trilinear weights
        of the neighbours in the mask, renormalized: a voxel at the edge of the brain is not darkened by the
        background around it; where no brain is near, its own value); outside the mask it stays exactly 0."""
        moved = F.grid_sample(torch.stack([x, mask.to(x.dtype)], 1), self.positions(shift), mode="bilinear",
                              padding_mode="zeros", align_corners=True)  # (B, 2, D, H, W): brain values, weight
        value, weight = moved[:, 0], moved[:, 1]
        inside = (weight > MIN_WEIGHT).logical_and_(mask)
        return torch.where(inside, value / weight, x)  # x is 0 outside the mask


class Augment:
    """The random augmentations of every training step (those of `cfg.augment.ops` other than flips).

    `begin_epoch(epoch)` before each epoch's first step; `augment(x)` -> x' for this rank's shard x (b, D, H, W)
    of a global batch of `cfg.train.batch_size` volumes, same shape and dtype."""

    def __init__(self, cfg: Config, seed: int, device: torch.device, rank: int = 0, world: int = 1):
        self.cfg: AugmentConfig = cfg.augment
        self.ops = [op for op in self.cfg.ops if op != "flip"]
        self.volume, self.batch = tuple(cfg.model.volume), cfg.train.batch_size
        self.seed, self.device = seed, device
        self.rows = shard_bounds(self.batch, rank, world)
        self.warp = Warp(self.volume, self.cfg.elastic_spacing, device) if "elastic" in self.ops else None
        self.generator: torch.Generator | None = None

    def begin_epoch(self, epoch: int) -> None:
        self.generator = device_generator(self.seed, epoch, Stream.AUGMENT, self.device)

    def draw(self) -> dict[str, Tensor]:
        """This step's random numbers for the whole global batch, always drawn in the same order, this rank's
        rows kept."""
        a, b, g, B = *self.rows, self.generator, self.batch
        out = {}
        if "elastic" in self.ops:
            out["elastic"] = torch.randn(B, 3, *self.warp.grid, generator=g, device=self.device)[a:b]
        if "scale" in self.ops:
            out["scale"] = torch.rand(B, generator=g, device=self.device)[a:b]
        if "noise" in self.ops:
            out["noise"] = torch.randn(B, *self.volume, generator=g, device=self.device)[a:b]
        return out

    def __call__(self, x: Tensor) -> Tensor:
        c, r = self.cfg, self.draw()
        mask = x != 0  # (b, D, H, W): the brain
        out = x.float()
        if "elastic" in r:
            out = self.warp(out, mask, r["elastic"] * c.elastic_magnitude)
        if "scale" in r:
            out = out * (1 + c.scale_spread * (2 * r["scale"] - 1)).view(-1, 1, 1, 1)
        if "noise" in r:
            out = torch.addcmul(out, r["noise"], mask, value=c.noise_std)  # out + std * noise, in the brain only
        return out.to(x.dtype)

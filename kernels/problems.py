"""The launches the engine's presets make: every op's forward and backward plan at each preset's shapes, under
each precision the engine uses, with and without the position embedding, with and without dx (patch_embed's
dx kernel runs only when x requires grad).

This is data the GPU-target checks read (`kernels.targets`, tests/e2e/test_kernel_targets.py, bench/kernel_report.py);
it is written out here because `kernels` never imports `stvit`, and tests/unit/test_kernel_targets.py holds it
equal to `stvit.config.preset(name).model` and the training batch. The dtypes are what the model hands each op under
autocast at that precision: data and activations in the precision's dtype, parameters in fp32 except the patch
weight and bias (`F.linear`'s autocast policy casts them), the MAE loss on `pred.float()` with an fp32 mask.
Tensors are `device="meta"`: a plan reads only shapes, strides and dtypes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .mae_gather import plan_backward as gather_bwd, plan_forward as gather_fwd
from .mae_scatter import plan_backward as scatter_bwd, plan_forward as scatter_fwd
from .norm_pix_mse import plan_backward as loss_bwd, plan_forward as loss_fwd
from .patch_embed import plan_backward as embed_bwd, plan_backward_dx as embed_dx, plan_forward as embed_fwd
from .plan import LaunchPlan

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Problem:
    """One preset's op shapes: S slices (a training batch of volumes x the slices of a volume) of H x W."""
    slices: int
    height: int
    width: int
    patch: tuple[int, int]
    dim: int  # encoder width: patch_embed, mae_gather
    decoder_dim: int  # mae_scatter
    keep: int  # visible patches per slice in MAE pre-training

    @property
    def num_patches(self) -> int:
        return (self.height // self.patch[0]) * (self.width // self.patch[1])


# batch 8 volumes of 53 slices of 63 x 46 in every preset; paper and notebook differ in heads only
PROBLEMS = {
    "paper": Problem(424, 63, 46, (7, 2), 192, 128, 72),
    "notebook": Problem(424, 63, 46, (7, 2), 192, 128, 72),
    "demo": Problem(424, 63, 46, (21, 23), 64, 32, 2),
}


@dataclass(frozen=True)
class Launch:
    preset: str
    precision: str
    op: str
    variant: str  # "fwd" / "bwd" ("+pos" / "-pos" where the op has that choice; patch_embed's "bwd.dx" for dx)
    plan: LaunchPlan

    @property
    def id(self) -> str:
        return f"{self.preset}-{self.precision}-{self.op}.{self.variant}"


def _t(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def launches(preset: str, precision: str) -> list[Launch]:
    """Every launch one preset makes under one precision ('fp32', 'bf16', 'fp16')."""
    pb, dt, f32, i64 = PROBLEMS[preset], PRECISIONS[precision], torch.float32, torch.int64
    S, H, W, (ph, pw), D, Dd, K = (pb.slices, pb.height, pb.width, pb.patch, pb.dim, pb.decoder_dim, pb.keep)
    P, KP = pb.num_patches, ph * pw
    x, ids_keep, ids_restore = _t(S, H, W, dtype=dt), _t(S, K, dtype=i64), _t(S, P, dtype=i64)
    w, b = _t(D, KP, dtype=dt), _t(D, dtype=dt)
    pred, mask, token = _t(S, P, KP, dtype=f32), _t(S, P, dtype=f32), _t(Dd, dtype=f32)
    out = []

    def add(op, variant, plan):
        out.append(Launch(preset, precision, op, variant, plan))

    for has_pos in (True, False):
        sign = "+" if has_pos else "-"
        add("patch_embed", f"fwd{sign}pos", embed_fwd(x, w, b, _t(P, D, dtype=f32) if has_pos else None, ph, pw))
        add("mae_scatter", f"fwd{sign}pos",
            scatter_fwd(_t(S, K, Dd, dtype=dt), ids_restore, token, _t(P, Dd, dtype=f32) if has_pos else None))
    add("patch_embed", "bwd", embed_bwd(_t(S, P, D, dtype=dt), x, w, ph, pw))
    add("patch_embed", "bwd.dx", embed_dx(_t(S, P, D, dtype=dt), x, w, ph, pw))  # when x requires grad
    add("mae_gather", "fwd", gather_fwd(_t(S, P, D, dtype=dt), ids_keep))
    add("mae_gather", "bwd", gather_bwd(_t(S, K, D, dtype=dt), ids_keep, P))
    add("mae_scatter", "bwd", scatter_bwd(_t(S, P, Dd, dtype=dt), ids_restore, K))
    add("norm_pix_mse", "fwd", loss_fwd(pred, x, mask, ph, pw, 1e-6))
    add("norm_pix_mse", "bwd", loss_bwd(pred, x, mask, ph, pw, 1e-6))
    return out


def all_launches(presets=tuple(PROBLEMS)) -> list[Launch]:
    """Every launch of every preset under every precision."""
    return [la for p in presets for prec in PRECISIONS for la in launches(p, prec)]

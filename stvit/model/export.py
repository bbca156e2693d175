"""The exported form of a trained classifier: the module an AOTInductor package runs (the run's input
preprocessing, then the classifier), its metadata, a golden input, and `torch.export` + AOTInductor packaging
(`python -m stvit.export` is its command line; `stvit_infer` in cpp/ runs the package).

The package applies the input preprocessing the run was trained with (per-volume z-scoring over the non-zero
voxels when the run's data config has `zscore`), then the classifier, in eval mode, through the eager ops
(`kernels="eager"`: plain torch ops, which always export); the fused Triton ops are a training-time optimization.
The batch dimension is dynamic (any N >= 1). A package is specific to the device it was compiled for (cpu or
cuda), the CPU's instruction set and the torch version that wrote it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from stvit.config import Config
from stvit.model.vit import SpatioTemporalClassifier


FORMAT = "1"  # version of the `stvit.*` metadata keys the runner reads
GOLDEN_N = 3  # volumes in the golden input: more than one, so batching is exercised


def zscore(x: Tensor) -> Tensor:
    """(B, T, H, W) -> the same, each volume z-scored over its non-zero voxels; the background stays 0 and a
    constant volume is only centered. The torch twin of `stvit.data.zscore_volumes` (statistics in float64)."""
    v = x.flatten(1)  # (B, T*H*W)
    inside = v != 0
    n = inside.sum(1, keepdim=True).clamp_min(1)
    mean = v.double().sum(1, keepdim=True) / n
    centered = v - mean.to(v.dtype)
    var = (centered.square() * inside).double().sum(1, keepdim=True) / n
    std = var.sqrt()
    std = torch.where(std == 0, torch.ones_like(std), std)
    return torch.where(inside, centered / std.to(v.dtype), torch.zeros_like(v)).view_as(x)


class Deployed(nn.Module):
    """What the package runs: the input preprocessing the run's data config asked for, then the classifier.
    Volumes (B, T, H, W) -> logits (B, num_classes)."""

    def __init__(self, clf: SpatioTemporalClassifier, zscore: bool):
        super().__init__()
        self.clf = clf
        self.zscore = zscore

    def forward(self, x: Tensor) -> Tensor:
        return self.clf(zscore(x) if self.zscore else x)


def golden_input(volume: tuple[int, int, int], n: int = GOLDEN_N, seed: int = 0) -> torch.Tensor:
    """(n, T, H, W) float32: seeded standard-normal voxels (the scale of z-scored data) inside a one-voxel
    border of exact zeros (the background of real volumes)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, *volume)
    x[:, 1:-1, 1:-1, 1:-1] = torch.randn(n, *(max(v - 2, 0) for v in volume), generator=g)
    return x


def metadata(cfg: Config, epoch: Any) -> dict[str, str]:
    """String key/values stored in the package; `stvit_infer` reads them with `get_metadata()`."""
    names = list(cfg.data.class_names)
    if len(names) != cfg.model.num_classes:
        names = [f"class{i}" for i in range(cfg.model.num_classes)]
    meta = {
        "stvit.format": FORMAT,
        "stvit.volume": ",".join(str(v) for v in cfg.model.volume),  # T,H,W
        "stvit.num_classes": str(cfg.model.num_classes),
        "stvit.ops": "eager",
        "stvit.preprocess": "zscore" if cfg.data.zscore else "none",  # done inside the package
        "stvit.epoch": str(epoch),
    }
    meta.update({f"stvit.class.{i}": name for i, name in enumerate(names)})
    return meta


def export(model: Deployed, meta: dict[str, str], out: Path, device: torch.device) -> float:
    """torch.export with a dynamic batch, AOTInductor compile and package to `out` (a new file the caller moves
    into place); returns the seconds taken."""
    import torch._inductor  # noqa: F401 - the AOTInductor entry points (imported here: it is slow to import)

    t0 = time.perf_counter()
    model = model.to(device)
    example = golden_input(model.clf.cfg.volume, n=2).to(device)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=False)
    torch._inductor.aoti_compile_and_package(ep, package_path=str(out),
                                             inductor_configs={"aot_inductor.metadata": meta})
    return time.perf_counter() - t0

"""The forward + loss functions of each stage, with autocast inside, optionally under torch.compile.

`torch.compile(fullgraph=True)` of these functions compiles forward, loss and (through AOTAutograd) backward of the
train step; `fullgraph=True` doubles as the check that nothing breaks the graph. Shapes stay fixed across a run
(training drops the last partial batch; evaluation pads it), so nothing recompiles between epochs.
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import MAE, SpatioTemporalClassifier
from .precision import Precision

log = logging.getLogger(__name__)


def mae_loss(model: MAE, precision: Precision, x: Tensor, noise: Tensor | None = None) -> Tensor:
    """Volumes (B, T, H, W) -> the MAE loss (fp32 scalar)."""
    with precision.autocast():
        return model(x, noise)[0]


def classifier_loss(model: SpatioTemporalClassifier, precision: Precision, x: Tensor,
                    y: Tensor) -> tuple[Tensor, Tensor]:
    """Volumes (B, T, H, W), labels (B,) -> (cross-entropy (fp32 scalar), logits (B, C) fp32)."""
    with precision.autocast():
        logits = model(x).float()
    return F.cross_entropy(logits, y), logits


def classifier_logits(model: SpatioTemporalClassifier, precision: Precision, x: Tensor) -> Tensor:
    """Volumes (B, T, H, W) -> logits (B, C) fp32, for evaluation (call under torch.no_grad)."""
    with precision.autocast():
        return model(x).float()


class Timed:
    """Wraps a (possibly compiled) function; the first call's time is the compile time, logged apart."""

    def __init__(self, fn: Callable, name: str, compiled: bool):
        self.fn, self.name, self.compiled = fn, name, compiled
        self.compile_seconds: float | None = None

    def __call__(self, *args):
        if self.compile_seconds is not None or not self.compiled:
            return self.fn(*args)
        t0 = time.perf_counter()
        out = self.fn(*args)
        self.compile_seconds = time.perf_counter() - t0
        log.info("compiled %s in %.1f s (first call, forward + backward graph on first backward)", self.name,
                 self.compile_seconds)
        return out


def build(fn: Callable, model, precision: Precision, *, compile: bool, name: str) -> Timed:
    """`fn` bound to `model` and `precision`, compiled with fullgraph=True when `compile`."""
    bound = functools.partial(fn, model, precision)
    if compile:
        bound = torch.compile(bound, fullgraph=True, dynamic=False)
    return Timed(bound, name, compile)

"""Attributions of a trained classifier over a set of volumes: Integrated Gradients and attention rollout.

- Integrated Gradients (Captum; Sundararajan et al. 2017) from the all-zero volume, which is the background of a
  z-scored volume, toward every class. Completeness: the attributions of a volume sum to logit(x) - logit(0) up to
  the integration error, which Captum returns as the convergence delta.
- Attention rollout (Abnar & Zuidema 2020) of the spatial encoder: per slice, the CLS token's share of each patch
  through every block, with the identity added to each block's head-averaged attention (the residual stream) and
  the rows renormalized; weighted by the share of each slice in the output, which is the rollout of the second
  ("temporal") encoder read from its mean-pooled output (the head averages the slice positions, so each position
  counts 1/T: the slice weights are the mean of the rollout's rows); spread evenly over each patch's pixels. A map
  of a volume sums to 1. `F.scaled_dot_product_attention` does not return its weights: forward hooks on the
  attention modules recompute softmax(q k^T / sqrt(d)) from their own qkv projection (`Attention.weights`); the
  forward is unchanged.

Per method: `<method>_abs_mean` (the mean of the absolute map; IG toward the predicted class) and
`<method>_class<k>` (the signed mean over the explained volumes of class k; IG toward class k: where the model
finds evidence for class k in volumes of class k).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from stvit.data.batches import DeviceSplit
from stvit.model.precision import Precision
from stvit.model.vit import SpatioTemporalClassifier
from stvit.training import steps

METHODS = ("ig", "attention")
COMPLETENESS = 0.05  # IG: |convergence delta| above this share of the logit gap (at least of the mean gap) is noted


# --- attention rollout -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def recorded_attention(blocks):
    """Forward hooks on the attention of `blocks`: yields a list that receives each block's head-averaged weights
    (B, N, N) as the forward runs; the hooks are removed on exit."""
    weights: list[Tensor] = []
    hooks = [blk.attn.register_forward_hook(lambda m, args, out: weights.append(m.weights(args[0]).mean(1)))
             for blk in blocks]
    try:
        yield weights
    finally:
        for h in hooks:
            h.remove()


def rollout(weights: list[Tensor]) -> Tensor:
    """Attention rollout: (B, N, N) per block, first block first -> (B, N, N), row i = how much output token i draws
    on each input token. Each block's A + I (the residual path) is renormalized row-wise before the product."""
    eye = torch.eye(weights[0].shape[-1], device=weights[0].device)
    out = eye.expand_as(weights[0])
    for a in weights:
        a = a + eye
        out = (a / a.sum(-1, keepdim=True)) @ out
    return out


def spread(patch_values: Tensor, patch: tuple[int, int], shape: tuple[int, int]) -> Tensor:
    """(..., gh, gw) per-patch values -> (..., H, W), each patch's value shared evenly by its pixels (pixels past
    the last whole patch, which the model never sees, get 0)."""
    ph, pw = patch
    pixels = patch_values.repeat_interleave(ph, -2).repeat_interleave(pw, -1) / (ph * pw)
    out = pixels.new_zeros(*pixels.shape[:-2], *shape)
    out[..., :pixels.shape[-2], :pixels.shape[-1]] = pixels
    return out


def attention_maps(model: SpatioTemporalClassifier, fn: Callable[[Tensor], Tensor],
                   x: Tensor) -> tuple[Tensor, Tensor]:
    """Volumes (B, T, H, W) -> (logits (B, C), attention rollout maps (B, T, H, W) fp32, each summing to 1)."""
    B, T, H, W = x.shape
    cfg = model.cfg
    with recorded_attention(model.spatial.blocks) as spatial, recorded_attention(model.temporal.blocks) as temporal, \
            torch.no_grad():
        logits = fn(x)
    cls = rollout(spatial)[:, 0, 1:]  # (B*T, P): CLS -> patches
    cls = cls / cls.sum(-1, keepdim=True)
    slices = rollout(temporal).mean(1)  # (B, T): the head reads the mean over slice positions
    weights = slices[:, :, None] * cls.view(B, T, -1)  # (B, T, P)
    return logits, spread(weights.view(B, T, *cfg.grid), cfg.patch, (H, W))


# --- Integrated Gradients ----------------------------------------------------------------------------------------


def integrated_gradients(fn: Callable[[Tensor], Tensor], x: Tensor, target: int, steps: int,
                         internal_batch_size: int) -> tuple[Tensor, Tensor]:
    """Volumes (B, T, H, W) fp32 -> (attributions (B, T, H, W) toward class `target` from the zero volume,
    convergence delta (B,) = sum of attributions - (logit(x) - logit(0)))."""
    from captum.attr import IntegratedGradients

    attr, delta = IntegratedGradients(fn).attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=steps,
                                                    internal_batch_size=internal_batch_size,
                                                    return_convergence_delta=True)
    return attr.float(), delta.float()


# --- the maps of a set of volumes --------------------------------------------------------------------------------


@dataclass
class Explained:
    """Maps averaged over explained volumes, and what they came from."""

    maps: dict[str, np.ndarray]  # name -> (T, H, W) float32
    labels: np.ndarray  # (n,) int
    predictions: np.ndarray  # (n,) int
    deltas: np.ndarray | None  # (n, C) IG convergence delta toward each class
    gaps: np.ndarray | None  # (n, C) logit(x) - logit(0): what the attributions sum to


class _Means:
    """Running sums of maps on the CPU in float64: the mean of the absolute map, and per class the signed mean."""

    def __init__(self, name: str, num_classes: int):
        self.name, self.C = name, num_classes
        self.abs, self.n = 0.0, 0
        self.cls, self.count = [0.0] * num_classes, [0] * num_classes

    def add_abs(self, maps: Tensor) -> None:
        self.abs = self.abs + maps.abs().double().sum(0).cpu()
        self.n += maps.shape[0]

    def add_class(self, k: int, maps: Tensor, y: Tensor) -> None:
        """The maps of the volumes of class k (labels `y`) into the signed mean of class k."""
        self.cls[k] = self.cls[k] + maps[y == k].double().sum(0).cpu()
        self.count[k] += int((y == k).sum())

    def result(self) -> dict[str, np.ndarray]:
        out = {f"{self.name}_abs_mean": (self.abs / self.n).float().numpy()} if self.n else {}
        out.update({f"{self.name}_class{k}": (self.cls[k] / self.count[k]).float().numpy()
                    for k in range(self.C) if self.count[k]})
        return out


def explain(model: SpatioTemporalClassifier, precision: Precision, split: DeviceSplit, *, methods=METHODS,
            steps: int = 32, batch_size: int = 16, quiet: bool = True) -> Explained:
    """The maps of every volume of `split` (on the model's device), `batch_size` volumes per forward pass."""
    model.eval()
    fn = steps_build(model, precision)
    C = model.cfg.num_classes
    ig, att = _Means("ig", C), _Means("attention", C)
    labels, preds, deltas, gaps = [], [], [], []
    per_batch = C * ("ig" in methods) + ("attention" in methods)
    bar = tqdm(total=split.num_batches(batch_size) * per_batch, desc="explain", disable=quiet, dynamic_ncols=True)
    for x, y, _ in split.eval_batches(batch_size):
        x = x.float()  # IG interpolates in fp32; autocast runs the model in the run's precision
        if "attention" in methods:
            logits, maps = attention_maps(model, fn, x)
            att.add_abs(maps)
            for k in range(C):
                att.add_class(k, maps, y)
            bar.update(1)
        else:
            with torch.no_grad():
                logits = fn(x)
        pred = logits.argmax(1)
        labels.append(y.cpu())
        preds.append(pred.cpu())
        if "ig" in methods:
            with torch.no_grad():
                gaps.append((logits - fn(torch.zeros_like(x))).cpu())
            deltas.append(_ig_batch(fn, x, y, pred, ig, steps, batch_size, bar))
    bar.close()
    cat = lambda parts: torch.cat(parts).numpy() if parts else None  # noqa: E731
    return Explained({**ig.result(), **att.result()}, cat(labels), cat(preds), cat(deltas), cat(gaps))


def _ig_batch(fn, x: Tensor, y: Tensor, pred: Tensor, means: _Means, steps: int, batch_size: int, bar) -> Tensor:
    """IG of a batch toward each class into `means` (toward the predicted class for the absolute mean);
    the convergence deltas (B, C)."""
    attr_pred, deltas = torch.zeros_like(x), []
    for k in range(means.C):
        attr, delta = integrated_gradients(fn, x, k, steps, batch_size)
        attr_pred[pred == k] = attr[pred == k]
        means.add_class(k, attr, y)
        deltas.append(delta.cpu())
        bar.update(1)
    means.add_abs(attr_pred)
    return torch.stack(deltas, 1)


def incomplete(deltas: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """(n, C) bool: attributions whose sum misses logit(x) - logit(0) by more than COMPLETENESS of that gap, or of
    the mean gap where a gap is small (the integration error does not shrink with the gap): too few --steps."""
    gaps = np.abs(gaps)
    return np.abs(deltas) > COMPLETENESS * np.maximum(gaps, gaps.mean())


def steps_build(model: SpatioTemporalClassifier, precision: Precision) -> Callable[[Tensor], Tensor]:
    """The evaluation forward (autocast and the SDPA policy inside), eager: logits (B, C) fp32."""
    return steps.build(steps.classifier_logits, model, precision, compile=False, name="explain")


def pick_volumes(n_total: int, n: int) -> np.ndarray:
    """`n` positions spread evenly over a split of `n_total` (all of them when n >= n_total): in a split ordered by
    subject or by class, the classes and subjects come in their proportions."""
    if n >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(np.int64))

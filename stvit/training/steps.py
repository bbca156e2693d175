"""The forward + loss functions of each stage, with autocast and the SDPA policy inside, optionally compiled.

`build` binds a stage function to its model and precision and, with `compile=True`, compiles it with
`torch.compile(fullgraph=True, dynamic=False)`: forward and loss in one graph, and through AOTAutograd the backward
as a second compiled graph that runs on `loss.backward()` (or `scaler.scale(loss).backward()`). `fullgraph=True`
doubles as the check that nothing breaks the graph.

No recompiles across epochs, if the loop keeps to this:
- fixed shapes: training drops the last partial batch; evaluation (`engine.predict`) pads it to the batch size
  and keeps the rows that are real;
- one mode per compiled function: `mae_loss` and `classifier_loss` in train mode with grad enabled,
  `classifier_logits` in eval mode under `torch.no_grad()` (Dynamo guards on both; calling `classifier_loss` for a
  validation loss in eval mode would compile a second graph);
- one `build` per stage and model (a new build of the same function for another model or precision re-traces).

The compile time is logged apart from step time (`Timed`); Inductor's FX graph cache (on disk, default
`/tmp/torchinductor_$USER`, `TORCHINDUCTOR_CACHE_DIR` to move it) lets a second run skip code generation.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from stvit.model.attention import check_backends
from stvit.model.vit import MAE, Attention, SpatioTemporalClassifier
from stvit.model.precision import Precision

log = logging.getLogger(__name__)


def mae_loss(model: MAE, precision: Precision, x: Tensor, noise: Tensor | None = None) -> Tensor:
    """Volumes (B, T, H, W) -> the MAE loss (fp32 scalar)."""
    with precision.autocast(), precision.sdpa():
        return model(x, noise)[0]


def classifier_loss(model: SpatioTemporalClassifier, precision: Precision, x: Tensor,
                    y: Tensor) -> tuple[Tensor, Tensor]:
    """Volumes (B, T, H, W), labels (B,) -> (cross-entropy (fp32 scalar), logits (B, C) fp32)."""
    with precision.autocast(), precision.sdpa():
        logits = model(x).float()
    return F.cross_entropy(logits, y), logits


def classifier_logits(model: SpatioTemporalClassifier, precision: Precision, x: Tensor) -> Tensor:
    """Volumes (B, T, H, W) -> logits (B, C) fp32, for evaluation (call under torch.no_grad, model in eval mode)."""
    with precision.autocast(), precision.sdpa():
        return model(x).float()


class Timed:
    """Wraps a (possibly compiled) function; the first call's time is the compile time, logged apart.

    `compile_seconds`: the first call (Dynamo, AOTAutograd, Inductor for the forward graph, one forward run).
    `backward_compile_seconds`: the first backward through its result (the backward graph is compiled lazily).
    """

    def __init__(self, fn: Callable, name: str, compiled: bool):
        self.fn, self.name, self.compiled = fn, name, compiled
        self.compile_seconds: float | None = None
        self.backward_compile_seconds: float | None = None

    def __call__(self, *args):
        if self.compile_seconds is not None or not self.compiled:
            return self.fn(*args)
        t0 = time.perf_counter()
        out = self.fn(*args)
        self.compile_seconds = time.perf_counter() - t0
        log.info("compiled %s in %.1f s (first call: forward graph)", self.name, self.compile_seconds)
        self._time_first_backward(out[0] if isinstance(out, tuple) else out)
        return out

    def _time_first_backward(self, out: Tensor) -> None:
        if not (isinstance(out, Tensor) and out.requires_grad):
            return

        def start(grad: Tensor) -> Tensor:  # runs when the backward reaches `out`
            t0 = time.perf_counter()

            def done() -> None:  # runs when that backward pass ends
                self.backward_compile_seconds = time.perf_counter() - t0
                log.info("compiled %s backward in %.1f s (first backward)", self.name, self.backward_compile_seconds)

            torch.autograd.Variable._execution_engine.queue_callback(done)
            return grad

        out.register_hook(start)


def attention_shapes(model: nn.Module) -> set[tuple[int, int, float]]:
    """(heads, head_dim, dropout) of every attention layer of `model`."""
    return {(m.heads, m.qkv.in_features // m.heads, m.attn_drop) for m in model.modules() if isinstance(m, Attention)}


def build(fn: Callable, model: nn.Module, precision: Precision, *, compile: bool, name: str) -> Timed:
    """`fn` bound to `model` and `precision`, compiled with fullgraph=True when `compile`.

    The precision's SDPA backends are first checked against the model's attention shapes on the model's device
    (`stvit.model.attention.check_backends`: math is added, with a log line, only where no fused kernel runs them).
    Compiling turns Inductor's FX graph cache on (`torch._inductor.config.fx_graph_cache`; the default in torch
    2.11 and 2.13 already, set here so a config change elsewhere cannot silently cost every start a full
    compile; `TORCHINDUCTOR_FX_GRAPH_CACHE=0` still wins).
    """
    device = next(model.parameters()).device
    attention = check_backends(precision.attention, device, precision.dtype, attention_shapes(model))
    precision = dataclasses.replace(precision, attention=attention)
    log.info("%s: %s on %s, attention %s%s", name, precision.name, device, "/".join(attention) or "torch default",
             ", compiled (fullgraph)" if compile else ", eager")
    if compile:
        import torch._inductor.config

        torch._inductor.config.fx_graph_cache = True
        # compile `fn` itself, not a partial: Dynamo keeps its cache per code object, and every partial runs through
        # one shared wrapper, so two stages would count as recompiles of each other
        fn = torch.compile(fn, fullgraph=True, dynamic=False, options=inductor_options(device))
    return Timed(functools.partial(fn, model, precision), name, compile)


def inductor_options(device: torch.device) -> dict:
    """Inductor settings per device. CPU: `fallback_random`, i.e. random numbers (dropout masks, MAE masking noise)
    from ATen's generator rather than Inductor's per-element Philox, which is scalar C++ on CPU and made the
    compiled demo-preset step slower than eager (its dropout kernels took twice ATen's `bernoulli_`); as a bonus,
    compiled and eager runs draw the same numbers from the same seed. CUDA keeps Inductor's fused Philox."""
    return {"fallback_random": True} if device.type == "cpu" else {}

"""SDPA policy (DESIGN.md section 5): which attention kernels a run allows, with the math fallback logged.

Backends by name (`torch.nn.attention.SDPBackend`): "flash", "efficient" (memory-efficient), "math".

| device | preferred | why |
|---|---|---|
| CUDA, compute capability >= 8.0 | flash, efficient | flash has no fp32 kernel: fp32 runs memory-efficient |
| CUDA below 8.0 (T4, sm75) | efficient | flash needs sm80 |
| CPU | flash | PyTorch's CPU flash kernel; it has no attention dropout, so training with dropout needs math |

Math is allowed only when a probe of the model's attention shapes (dtype, head dim, dropout) finds that none of the
preferred kernels runs them: `check_backends` then adds "math" and logs why (a warning on CUDA, where it costs
time and memory; an info line on CPU). Without the fallback, `sdpa_kernel` makes PyTorch raise instead of quietly
running math, so a restricted run is also the proof of which kernel ran.

The context is entered INSIDE the compiled step (`steps.py`): Dynamo traces `sdpa_kernel` (torch >= 2.5) and the
kernel choice becomes part of the graph. Entered outside, the choice is baked in at trace time from global state
that neither Dynamo's guards nor the AOTAutograd cache key see, so a cached graph traced under another backend could
be reused. The price: AOTAutograd's cache bypasses graphs that enter `sdpa_kernel` (Inductor's FX graph cache still
hits), a few seconds more on a warm start.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

log = logging.getLogger(__name__)

BACKENDS: dict[str, SDPBackend] = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


def preferred_backends(device: torch.device | str, capability: tuple[int, int] | None = None) -> tuple[str, ...]:
    """The fused SDPA backends for `device`, best first (the table above). `capability` overrides the GPU's."""
    device = torch.device(device)
    if device.type == "cuda":
        cap = capability if capability is not None else torch.cuda.get_device_capability(device)
        return ("flash", "efficient") if tuple(cap) >= (8, 0) else ("efficient",)
    if device.type == "cpu":
        return ("flash",)
    return ()  # another device: PyTorch's own choice


def sdpa_context(names: Iterable[str]):
    """`sdpa_kernel` restricted to `names` (in priority order); a no-op for an empty list."""
    names = tuple(names)
    if not names:
        return contextlib.nullcontext()
    return sdpa_kernel([BACKENDS[n] for n in names])


def probe(names: Iterable[str], device: torch.device | str, dtype: torch.dtype, heads: int, head_dim: int,
          dropout: float = 0.0) -> str | None:
    """Run one small attention forward + backward of this shape under `names`; None if it runs, else the reason."""
    q = torch.randn(2, heads, 16, head_dim, device=device, dtype=dtype, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_context(names):
                F.scaled_dot_product_attention(q, q, q, dropout_p=dropout).sum().backward()
            return None
        except RuntimeError as e:
            reasons = [str(w.message).split("(Triggered internally")[0].strip() for w in caught]
            return " ".join(r for r in reasons if r) or str(e).splitlines()[0]


def check_backends(names: Iterable[str], device: torch.device | str, dtype: torch.dtype,
                   shapes: Iterable[tuple[int, int, float]]) -> tuple[str, ...]:
    """`names`, or `names` + ("math",) when one of the attention `shapes` (heads, head_dim, dropout) runs on none
    of them; the fallback is logged with PyTorch's reason. An empty `names` (no restriction) is returned as is."""
    names = tuple(names)
    if not names or "math" in names:
        return names
    device = torch.device(device)
    for heads, head_dim, dropout in sorted(set(shapes)):
        why = probe(names, device, dtype, heads, head_dim, dropout)
        if why is not None:
            key = (names, str(device), dtype, heads, head_dim, dropout)
            if key not in _reported:  # once per process, not once per built step
                _reported.add(key)
                level = logging.WARNING if device.type == "cuda" else logging.INFO
                log.log(level, "SDPA: %s cannot run attention with %d heads of %d, dropout %g, %s on %s (%s); "
                        "math fallback allowed", "/".join(names), heads, head_dim, dropout,
                        str(dtype).removeprefix("torch."), device, why)
            return (*names, "math")
    return names


_reported: set[tuple] = set()

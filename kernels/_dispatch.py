"""Shared plumbing of the fused ops: which implementation a call runs, and how a kernel is launched.

Dispatch (DESIGN.md section 4), decided per call, never at import:
- CUDA tensors -> the registered Triton op (eager, or inside a `torch.compile` graph, where `triton_op` +
  `wrap_triton` let Inductor see the kernels);
- CPU tensors with `TRITON_INTERPRET=1` -> the same Triton op, its kernels run by Triton's interpreter;
- anything else, and any CPU call while `torch.compile` traces (the interpreter cannot be traced) -> the
  plain-torch reference.

Triton decides compiled or interpreted once, when it is imported (`@triton.jit` returns an interpreted
function when TRITON_INTERPRET is set then, and Triton's own `tl.sum`, `tl.max`, ... are decorated at that
moment): so TRITON_INTERPRET=1 must be set before the first `import triton` (tests/conftest.py does it when
no GPU is present). The variable is read again at each call: unsetting it later sends CPU calls back to the
reference; setting it only after import is not enough, and the CPU call takes the reference with a warning.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from torch._subclasses.fake_tensor import is_fake

try:
    import triton

    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - every triton >= 3.0 has the interpreter
        InterpretedFunction = None  # type: ignore[assignment,misc]
    HAS_TRITON = True
except ImportError:  # pragma: no cover - e.g. platforms without triton wheels
    triton = None  # type: ignore[assignment]
    HAS_TRITON = False

LIB = "stvit"  # torch.library namespace of every op: torch.ops.stvit.<op>


def interpreting() -> bool:
    """True when Triton's interpreter is asked for now (Triton's own truthy spellings)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def _decorated_interpreted() -> bool:
    """Did `@triton.jit` produce interpreted functions in this process (TRITON_INTERPRET set at import)?"""
    if not HAS_TRITON or InterpretedFunction is None:
        return False

    @triton.jit
    def probe():
        pass

    return isinstance(probe, InterpretedFunction)


INTERPRETED = _decorated_interpreted()


def use_triton(t: torch.Tensor) -> bool:
    """Run the Triton op for a call whose main input is `t`? (See the module docstring.)"""
    if not HAS_TRITON:
        return False
    if torch.compiler.is_compiling():
        # CUDA: the op and its kernels go into the graph; CPU (or interpreted kernels): trace the reference
        return t.is_cuda and not INTERPRETED
    if t.is_cuda:
        return True
    if t.device.type != "cpu" or not interpreting():
        return False
    if not INTERPRETED:
        _warn_late_interpret()
    return INTERPRETED


def _warn_late_interpret() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn("TRITON_INTERPRET was set after triton was imported: the interpreter needs it before the "
                      "first import; CPU calls use the plain-torch reference", RuntimeWarning, stacklevel=3)


_warned = False


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast compute dtype for `device_type`, or None when autocast is off there."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def wrap_triton(kernel: Any) -> Any:
    """`torch.library.wrap_triton`, except for interpreted kernels: those are launched directly (they cannot
    be traced, and `torch.library.wrap_triton` of torch < 2.12 rejects them)."""
    if INTERPRETED:
        return _Interpreted(kernel)
    return torch.library.wrap_triton(kernel)


class _Interpreted:
    """kernel[grid](*args) through Triton's interpreter; skipped for fake tensors (shape propagation only:
    the op's function doubles as its fake implementation, and fake tensors have no data to interpret)."""

    def __init__(self, kernel: Any):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if not any(is_fake(a) for a in args if isinstance(a, torch.Tensor)):
                self.kernel[grid](*args, **kwargs)

        return launch


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()

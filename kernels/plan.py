"""Launch plans: one launch of a Triton kernel, as data.

Each op has a plan function per kernel (`plan_forward`, `plan_backward` in `kernels/<op>.py`): a pure function of
the shapes, strides and dtypes of its tensors (real, fake or `device="meta"`), the patch size and the op's flags,
returning the kernel, the grid, every runtime argument (a pointer as its Triton type, `*bf16`; a scalar as its
value), the constexprs, `num_warps` and `num_stages`. The launcher launches exactly its plan (`launch` checks that
each tensor has the dtype the plan names), and the GPU-target checks (`kernels.targets`) compile exactly the
plans the presets produce (`kernels.problems`), so the two cannot drift apart. Pointers are assumed 16-byte
aligned, as torch allocations and the views the engine passes are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ._dispatch import wrap_triton

POINTER = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.int64: "*i64",
           torch.int32: "*i32"}


def ptr(t_or_dtype: Any) -> str:
    """The Triton pointer type of a tensor (or a dtype): `*fp32`, `*bf16`, `*fp16`, `*i64`, `*i32`."""
    dtype = t_or_dtype if isinstance(t_or_dtype, torch.dtype) else t_or_dtype.dtype
    return POINTER[dtype]


@dataclass(frozen=True)
class LaunchPlan:
    kernel: Any  # the @triton.jit function (interpreted under TRITON_INTERPRET=1)
    grid: tuple[int, ...]
    args: tuple[tuple[str, Any], ...]  # (name, "*fp32" for a pointer, or the scalar's value), in kernel order
    constexprs: tuple[tuple[str, Any], ...]
    num_warps: int
    num_stages: int
    bytes_moved: int  # the ideal traffic of this launch: every byte it must read or write, once

    @property
    def name(self) -> str:
        return self.kernel.__name__

    def describe(self) -> dict:
        """JSON-ready: kernel, grid, signature, constexprs, warps, stages, bytes."""
        return {"kernel": self.name, "grid": list(self.grid), "args": dict(self.args),
                "constexprs": dict(self.constexprs), "num_warps": self.num_warps, "num_stages": self.num_stages,
                "bytes_moved": self.bytes_moved}


def launch(plan: LaunchPlan, *tensors: torch.Tensor) -> None:
    """plan.kernel[plan.grid](...): `tensors` fill the plan's pointer arguments in order, the plan its scalars,
    constexprs, warps and stages. A tensor whose dtype is not the plan's raises (the plan would describe
    another kernel than the one launched)."""
    it = iter(tensors)
    args = []
    for name, spec in plan.args:
        if isinstance(spec, str) and spec.startswith("*"):
            t = next(it)
            if POINTER.get(t.dtype) != spec:
                raise TypeError(f"{plan.name}: {name} is {t.dtype}, the launch plan says {spec}")
            args.append(t)
        else:
            args.append(spec)
    wrap_triton(plan.kernel)[plan.grid](*args, **dict(plan.constexprs), num_warps=plan.num_warps,
                                        num_stages=plan.num_stages)

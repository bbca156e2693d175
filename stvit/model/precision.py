"""Precision policy (DESIGN.md section 5): which autocast dtype a run uses, whether it needs a GradScaler, and which
attention kernels it allows.

`auto`: CUDA with compute capability >= 8.0 -> bf16 autocast; below 8.0 (T4, sm75) -> fp16 autocast + GradScaler;
CPU -> fp32 (bf16 on request). `torch.cuda.is_bf16_supported()` answers True on a T4 (bf16 is emulated there, slowly),
so the policy reads the compute capability instead. The attention kernels follow the same capability
(`stvit.attention`): flash + memory-efficient on sm80+, memory-efficient on sm75, the CPU flash kernel on CPU.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from stvit.config import PRECISIONS
from stvit.model.attention import preferred_backends, sdpa_context

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CHOICES = PRECISIONS  # "auto" and the keys of DTYPES


def _capability(device: torch.device, capability: tuple[int, int] | None) -> tuple[int, int]:
    return tuple(capability) if capability is not None else torch.cuda.get_device_capability(device)


def resolve_precision(requested: str, device: torch.device, capability: tuple[int, int] | None = None) -> str:
    """The concrete precision ('fp32', 'bf16' or 'fp16') for `requested` on `device`."""
    if requested not in CHOICES:
        raise ValueError(f"unknown precision '{requested}' (choose from {', '.join(CHOICES)})")
    if device.type != "cuda":
        return "fp32" if requested == "auto" else requested
    if requested in ("fp32", "fp16"):
        return requested
    cap = _capability(device, capability)
    if requested == "bf16":
        if cap < (8, 0):
            log.warning("bf16 requested on a GPU of compute capability %d.%d: it is emulated there (slow); fp16 is "
                        "the native choice", *cap)
        return "bf16"
    return "bf16" if cap >= (8, 0) else "fp16"


@dataclass(frozen=True)
class Precision:
    name: str  # 'fp32', 'bf16' or 'fp16'
    device_type: str  # 'cpu' or 'cuda'
    attention: tuple[str, ...] = ()  # SDPA backends allowed, best first (stvit.attention); () = PyTorch's choice

    @classmethod
    def resolve(cls, requested: str, device: torch.device,
                capability: tuple[int, int] | None = None) -> "Precision":
        """The policy for `requested` on `device`; `capability` stands in for the GPU's (tests, forcing T4)."""
        device = torch.device(device)
        cap = _capability(device, capability) if device.type == "cuda" else None
        return cls(resolve_precision(requested, device, cap), device.type, preferred_backends(device, cap))

    @property
    def dtype(self) -> torch.dtype:
        """The autocast compute dtype (fp32 means autocast is off)."""
        return DTYPES[self.name]

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype of device-resident data: the compute dtype on CUDA, fp32 on CPU."""
        return self.dtype if self.device_type == "cuda" else torch.float32

    def autocast(self):
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def sdpa(self):
        """`sdpa_kernel` restricted to this policy's attention backends (a no-op when none are set)."""
        return sdpa_context(self.attention)

    @property
    def uses_grad_scaler(self) -> bool:
        """fp16 only: bf16 has fp32's range and needs no loss scaling."""
        return self.name == "fp16"

    def grad_scaler(self, **kwargs) -> torch.amp.GradScaler:
        """A GradScaler that is active for fp16 only; `kwargs` (e.g. `init_scale`) go to it."""
        return torch.amp.GradScaler(self.device_type, enabled=self.uses_grad_scaler, **kwargs)

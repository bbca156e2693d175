"""Precision policy (DESIGN.md section 5): which autocast dtype a run uses, and whether it needs a GradScaler.

`auto`: CUDA with compute capability >= 8.0 -> bf16 autocast; below 8.0 (T4, sm75) -> fp16 autocast + GradScaler;
CPU -> fp32. `torch.cuda.is_bf16_supported()` answers True on a T4 (bf16 is emulated there, slowly), so the policy
reads the compute capability instead.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CHOICES = ("auto", *DTYPES)


def resolve_precision(requested: str, device: torch.device, capability: tuple[int, int] | None = None) -> str:
    """The concrete precision ('fp32', 'bf16' or 'fp16') for `requested` on `device`."""
    if requested not in CHOICES:
        raise ValueError(f"unknown precision '{requested}' (choose from {', '.join(CHOICES)})")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        cap = capability if capability is not None else torch.cuda.get_device_capability(device)
        return "bf16" if tuple(cap) >= (8, 0) else "fp16"
    return "fp32"


@dataclass(frozen=True)
class Precision:
    name: str  # 'fp32', 'bf16' or 'fp16'
    device_type: str  # 'cpu' or 'cuda'

    @classmethod
    def resolve(cls, requested: str, device: torch.device,
                capability: tuple[int, int] | None = None) -> "Precision":
        return cls(resolve_precision(requested, device, capability), device.type)

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

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is active for fp16 only (bf16 has fp32's range and needs none)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")

"""Which implementation of each op a run uses: `select(mode, device, dtype)` -> `Selection`.

Modes:
- "eager": the plain-torch reference of every op.
- "fused": the fused ops (each call dispatches as `kernels/_dispatch.py` says). Where the compiled Triton kernels
  run (CUDA), each op first passes a self-check, and an op that fails it raises `KernelCheckError(op, reason)`.
- "auto": where the compiled Triton kernels run (CUDA), the self-check of each op; an op that passes is fused,
  one that fails to compile, to run or to match falls back to its reference with ONE warning line naming the op
  and the reason. Elsewhere (CPU, and Triton's interpreter) the reference, without a check.

The self-check runs each op forward and backward on tiny random inputs at the run's dtype and patch size (drawn
from a private generator: the caller's random stream is untouched), against the reference at the same dtype and
in fp32, with the three-way rule (`three_way`); apart from compiling the kernels on first use (which the run
needs anyway, and Triton caches on disk), it takes milliseconds. `check=True` runs it wherever Triton kernels run
at all, so tests can exercise it on CPU under the interpreter; `check=False` skips it.

`Selection.ops` has the four ops by name (what a model calls through its `ops` seam), `Selection.record` says
per op whether it is fused and why, and `Selection.to_json()` is the record to log.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import torch
from torch import Tensor

from . import _dispatch, reference

log = logging.getLogger(__name__)

OPS = ("patch_embed", "mae_gather", "mae_scatter", "norm_pix_mse")
MODES = ("auto", "fused", "eager")

# The three-way rule, per dtype: (atol, rtol). atol is relative to the scale of the tensor compared (max |ref|,
# at least 1): it absorbs fp32 summation-order noise. rtol is one unit of the dtype's precision: the fused ops
# accumulate in fp32 and round once, so they may land on the other neighbour of a value the reference rounds.
TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (2e-5, 2.0 ** -10), torch.bfloat16: (2e-5, 2.0 ** -7)}


def three_way(out: Tensor, out_pt: Tensor, ref: Tensor, *, atol: float | None = None, rtol: float | None = None,
              scale: float | None = None) -> tuple[Tensor, Tensor, Tensor, float]:
    """-> (bad mask, error, bound, scale) of `|out - ref| <= 2 |out_pt - ref| + atol * scale + rtol * |ref|`:
    out the fused op at some dtype, out_pt the reference at that dtype, ref the reference in fp32 from the same
    rounded inputs; atol and rtol from TOL at out's dtype, scale = max(1, max |ref|), unless given. NaN counts
    as bad."""
    d_atol, d_rtol = TOL[out.dtype]
    atol, rtol = d_atol if atol is None else atol, d_rtol if rtol is None else rtol
    out, out_pt, ref = (t.detach().float().cpu() for t in (out, out_pt, ref))
    if scale is None:
        scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    bound = 2 * (out_pt - ref).abs() + atol * scale + rtol * ref.abs()
    err = (out - ref).abs()
    return ~(err <= bound), err, bound, scale


class KernelCheckError(RuntimeError):
    """A fused op failed its self-check where the fused ops were required."""

    def __init__(self, op: str, reason: str):
        super().__init__(f"kernels: {op} failed its self-check: {reason}")
        self.op, self.reason = op, reason


@dataclass(frozen=True)
class OpChoice:
    fused: bool
    reason: str


@dataclass
class Selection:
    mode: str
    device: str
    dtype: str
    ops: SimpleNamespace  # patch_embed, mae_gather, mae_scatter, norm_pix_mse
    record: dict[str, OpChoice] = field(default_factory=dict)
    checked: bool = False
    check_seconds: float = 0.0

    @property
    def fused(self) -> list[str]:
        return [op for op in OPS if self.record[op].fused]

    def to_json(self) -> dict:
        """{"mode", "device", "dtype", "checked", "check_seconds", "ops": {op: {"fused", "reason"}}}."""
        return {"mode": self.mode, "device": self.device, "dtype": self.dtype, "checked": self.checked,
                "check_seconds": round(self.check_seconds, 3),
                "ops": {op: {"fused": c.fused, "reason": c.reason} for op, c in self.record.items()}}


def _fused_op(op: str) -> Callable:
    import kernels

    return getattr(kernels, op)


def _compiled_here(device: torch.device) -> bool:
    """Do the compiled Triton kernels run for tensors on `device`?"""
    return _dispatch.HAS_TRITON and device.type == "cuda" and not _dispatch.INTERPRETED


def _triton_here(device: torch.device) -> bool:
    """Do Triton kernels run at all for `device` (compiled on CUDA, interpreted on CPU)?"""
    return _compiled_here(device) or (device.type == "cpu" and _dispatch.HAS_TRITON and _dispatch.INTERPRETED
                                      and _dispatch.interpreting())


def select(mode: str = "auto", device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *,
           patch: tuple[int, int] = (7, 2), check: bool | None = None) -> Selection:
    """The ops a run on `device` at compute dtype `dtype` (the autocast dtype; fp32 without) uses; `patch` is
    the run's patch size (the self-check compiles the kernels the run will use). `check`: None runs the
    self-check where the compiled kernels run (CUDA), True wherever Triton kernels run (also CPU under the
    interpreter), False never. See the module docstring."""
    if mode not in MODES:
        raise ValueError(f"unknown kernels mode '{mode}' (choose from {', '.join(MODES)})")
    device = torch.device(device)
    dt = str(dtype).replace("torch.", "")
    do_check = _compiled_here(device) if check is None else (check and _triton_here(device))
    if mode == "eager" or (mode == "auto" and not (do_check or _compiled_here(device))):
        why = "eager mode" if mode == "eager" else f"no compiled Triton kernels on {device.type}"
        return Selection(mode, device.type, dt, SimpleNamespace(**{op: getattr(reference, op) for op in OPS}),
                         {op: OpChoice(False, f"{why}: the plain-torch reference") for op in OPS})
    ops, record, t = {}, {}, time.perf_counter()
    for op in OPS:
        failure = self_check(op, device, dtype, patch) if do_check else None
        if failure is None:
            ops[op] = _fused_op(op)
            record[op] = OpChoice(True, "self-check passed" if do_check else "fused, not checked")
        elif mode == "fused":
            raise KernelCheckError(op, failure)
        else:
            log.warning("kernels: %s falls back to the plain-torch reference: %s", op, failure)
            ops[op], record[op] = getattr(reference, op), OpChoice(False, f"self-check failed: {failure}")
    return Selection(mode, device.type, dt, SimpleNamespace(**ops), record, do_check, time.perf_counter() - t)


# --- the self-check -----------------------------------------------------------------------------------------

ARG_NAMES = {"patch_embed": ("x", "weight", "bias", "pos"), "mae_gather": ("tokens",),
             "mae_scatter": ("visible", "ids_restore", "mask_token", "pos"), "norm_pix_mse": ("pred",)}


def _cases(op: str, dtype: torch.dtype, patch: tuple[int, int], gen: torch.Generator):
    """(args, per-arg dtype or None, indices that get a gradient) of `op` on tiny inputs, in the dtypes the model
    hands the op: data and activations at `dtype`, position embeddings and the mask token in fp32, the loss on
    fp32 predictions (what `MAE.forward_loss` passes)."""
    ph, pw = patch
    S, gh, gw, D, K = 2, 2, 3, 64, ph * pw  # 6 patches per slice, 3 kept; D = 64 is the kernels' channel block
    P, keep = gh * gw, 3
    f32 = torch.float32

    def r(*shape):
        return torch.randn(*shape, generator=gen)

    ids_keep, ids_restore, mask = reference.random_masking(torch.rand(S, P, generator=gen), 1 - keep / P)
    if op == "patch_embed":
        return ([r(S, gh * ph, gw * pw), r(D, K) / K ** 0.5, r(D), r(P, D), patch], [dtype, dtype, dtype, f32, None],
                (0, 1, 2, 3))
    if op == "mae_gather":
        return [r(S, P, D), ids_keep], [dtype, None], (0,)
    if op == "mae_scatter":
        return [r(S, keep, D), ids_restore, r(D), r(P, D)], [dtype, None, f32, f32], (0, 2, 3)
    return [r(S, P, K), r(S, gh * ph, gw * pw), mask, patch], [f32, dtype, f32, None], (0,)


def _run(fn: Callable, args, dtypes, grad_idx, device, dtype) -> list[Tensor]:
    """[output, gradient of each input in grad_idx] of fn, under a seeded random upstream gradient that `dtype`
    represents exactly (so that the fp32 reference and the runs at `dtype` see the same one)."""
    ins = [a.to(device=device, dtype=dt).requires_grad_(i in grad_idx) if dt is not None else
           (a.to(device) if torch.is_tensor(a) else a) for i, (a, dt) in enumerate(zip(args, dtypes))]
    out = fn(*ins)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = torch.autograd.grad(out, [ins[i] for i in grad_idx], upstream.to(device=device, dtype=out.dtype))
    return [out, *grads]


def self_check(op: str, device: torch.device, dtype: torch.dtype, patch: tuple[int, int] = (7, 2)) -> str | None:
    """None when the fused `op` matches its reference forward and backward at `dtype` on `device` (three-way
    rule), else the reason, in one line."""
    gen = torch.Generator().manual_seed(0)
    args, dtypes, grad_idx = _cases(op, dtype, patch, gen)
    rounded = [a.to(dt).float() if dt is not None else a for a, dt in zip(args, dtypes)]  # what every run reads
    fp32 = [None if dt is None else torch.float32 for dt in dtypes]
    names = ["output"] + [f"gradient of {ARG_NAMES[op][i]}" for i in grad_idx]
    try:
        ref = _run(getattr(reference, op), rounded, fp32, grad_idx, device, dtype)
        pt = _run(getattr(reference, op), rounded, dtypes, grad_idx, device, dtype)
        out = _run(_fused_op(op), rounded, dtypes, grad_idx, device, dtype)
    except Exception as e:  # noqa: BLE001 - a kernel that does not compile or run is what the check is for
        return _one_line(f"{type(e).__name__}: {e}")
    for name, o, p, f in zip(names, out, pt, ref):
        if o.shape != f.shape or o.dtype != p.dtype:
            return f"{name}: shape {tuple(o.shape)} {o.dtype}, the reference gives {tuple(f.shape)} {p.dtype}"
        bad, err, _, scale = three_way(o, p, f)
        if bad.any():
            return (f"{name}: {int(bad.sum())} of {bad.numel()} values off the reference (max error "
                    f"{err.max().item():.3g} at scale {scale:.3g})")
    return None


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

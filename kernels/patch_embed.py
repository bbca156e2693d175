"""patch_embed: patch extraction + linear embedding + bias (+ position embedding), fused.

Forward: each program takes a block of patches of one slice and a block of channels (the grid tiles D, so a
program holds a (BLOCK_P, BLOCK_D) fp32 accumulator, not all D channels), forms the patches in registers from
the raw slice, BLOCK_K pixels at a time, and contracts them with the weight as an fp32 `tl.dot` with
input_precision="ieee" (plain FMAs: K = 14 is far too small for tensor cores and the op is memory-bound; fp32
also keeps the interpreter exact, where a bf16 dot is not), adds the bias and the position embedding and writes
its (BLOCK_P, BLOCK_D) tile of (S, P, D) once. Backward re-extracts the patches from x instead of saving them:
one kernel produces dW and dpos (and from them dbias) as per-program fp32 partial sums over a run of slices,
added by torch.sum, so the result does not depend on scheduling (no atomics); when x requires grad, a second
kernel writes dx = grad @ W, each pixel once.

Dtypes: statistics and accumulation in fp32. The output has the weight's dtype; under autocast the weight
and bias are cast to the autocast dtype first, so the op follows `F.linear`'s autocast policy (x is read in
its own dtype and converted in registers, never copied).
"""
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import reference
from ._dispatch import LIB, autocast_dtype, contiguous, next_pow2, use_triton
from ._patches import load_patches, patch_offsets
from .plan import LaunchPlan, launch, ptr

BLOCK_P = 16  # patches per program (forward, dx); backward: BLOCK_P_BWD
BLOCK_P_BWD = 16
MAX_BLOCK_D = 64  # channels per program: D = 192 is three programs, no padding
MAX_BLOCK_K = 32  # patch pixels per step: K = 14 is one step (padded to 16); demo's 483 are 16
MAX_SPLITS = 32  # backward: programs along the slice axis (each sums its slices; torch.sum adds the partials)


def _block_d(d: int) -> int:
    return max(16, min(MAX_BLOCK_D, next_pow2(d)))  # tl.dot wants every block dimension >= 16


def _block_k(k: int) -> int:
    return max(16, min(MAX_BLOCK_K, next_pow2(k)))


@triton.jit
def _patch_embed_fwd(
    x_ptr,  # (S, H, W) raw slices, any strides
    w_ptr,  # (D, K) contiguous, K = PH * PW, pixel order (row, col) inside a patch
    b_ptr,  # (D,)
    pos_ptr,  # (P, D) contiguous; read only when HAS_POS
    out_ptr,  # (S, P, D) contiguous, the weight's dtype
    P, D, GW,  # patches per slice, channels, patches per row
    sx_s, sx_h, sx_w,
    PH: tl.constexpr, PW: tl.constexpr, HAS_POS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)  # (BLOCK_P,) patch ids
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,) channels
    mp, md = offs_p < P, offs_d < D
    acc = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    for k0 in range(0, PH * PW, BLOCK_K):  # one step for 7x2 patches
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mk = offs_k < PH * PW
        xt = load_patches(x_ptr, s, offs_p, offs_k, mp[:, None] & mk[None, :], GW, sx_s, sx_h, sx_w, PH, PW)
        wt = tl.load(w_ptr + offs_d[None, :] * (PH * PW) + offs_k[:, None], mask=mk[:, None] & md[None, :],
                     other=0.0).to(tl.float32)  # (BLOCK_K, BLOCK_D) = weight.T
        acc += tl.dot(xt, wt, input_precision="ieee")  # fp32 FMAs: K is 14, the op is memory-bound
    acc += tl.load(b_ptr + offs_d, mask=md, other=0.0).to(tl.float32)[None, :]
    m2 = mp[:, None] & md[None, :]
    pd = offs_p[:, None] * D + offs_d[None, :]  # (BLOCK_P, BLOCK_D) offsets in a (P, D) matrix
    if HAS_POS:
        acc += tl.load(pos_ptr + pd, mask=m2, other=0.0).to(tl.float32)
    tl.store(out_ptr + s * P * D + pd, acc.to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _patch_embed_bwd(
    g_ptr,  # (S, P, D) upstream gradient, any strides (all 0 when it comes from an expanded sum)
    x_ptr,  # (S, H, W) raw slices, any strides
    dpos_ptr,  # (n_split, P, D) fp32: sum over this program's slices of g
    dw_ptr,  # (n_split, n_pblk, K, D) fp32: sum over this program's slices and patches of pixel k * g
    S, P, D, GW, SLICES,  # SLICES: slices per program along grid axis 1
    sg_s, sg_p, sg_d, sx_s, sx_h, sx_w,
    PH: tl.constexpr, PW: tl.constexpr, N_KBLK: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_p, split = tl.program_id(0), tl.program_id(1)
    pid_d, pid_k = tl.program_id(2) // N_KBLK, tl.program_id(2) % N_KBLK  # channel block, pixel block
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mp, md, mk = offs_p < P, offs_d < D, offs_k < PH * PW
    m2, mpk = mp[:, None] & md[None, :], mp[:, None] & mk[None, :]
    acc_pos = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    acc_w = tl.zeros((BLOCK_K, BLOCK_D), dtype=tl.float32)
    s0 = split.to(tl.int64) * SLICES
    for i in range(0, tl.minimum(SLICES, S - s0)):  # the last program may have fewer slices
        s = s0 + i
        g = tl.load(g_ptr + s * sg_s + offs_p[:, None] * sg_p + offs_d[None, :] * sg_d, mask=m2,
                    other=0.0).to(tl.float32)  # (BLOCK_P, BLOCK_D)
        acc_pos += g
        xt = load_patches(x_ptr, s, offs_p, offs_k, mpk, GW, sx_s, sx_h, sx_w, PH, PW)  # (BLOCK_P, BLOCK_K)
        acc_w += tl.dot(tl.trans(xt), g, input_precision="ieee")  # (BLOCK_K, BLOCK_D)
    if pid_k == 0:  # every pixel block sums the same g: the first one writes dpos
        pd = offs_p[:, None] * D + offs_d[None, :]
        tl.store(dpos_ptr + split * P * D + pd, acc_pos, mask=m2)
    dw_off = ((split * tl.num_programs(0) + pid_p) * (PH * PW) + offs_k[:, None]) * D + offs_d[None, :]
    tl.store(dw_ptr + dw_off, acc_w, mask=mk[:, None] & md[None, :])


@triton.jit
def _patch_embed_bwd_dx(
    g_ptr,  # (S, P, D) upstream gradient, any strides
    w_ptr,  # (D, K) contiguous
    dx_ptr,  # (S, H, W) contiguous, x's dtype (pixels outside patches are the caller's)
    P, D, GW, H, W,
    sg_s, sg_p, sg_d,
    PH: tl.constexpr, PW: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_k = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    mp, mk = offs_p < P, offs_k < PH * PW
    acc = tl.zeros((BLOCK_P, BLOCK_K), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):  # dx = sum over channels of g * W, a block of channels at a time
        offs_d = d0 + tl.arange(0, BLOCK_D)
        md = offs_d < D
        g = tl.load(g_ptr + s * sg_s + offs_p[:, None] * sg_p + offs_d[None, :] * sg_d,
                    mask=mp[:, None] & md[None, :], other=0.0).to(tl.float32)  # (BLOCK_P, BLOCK_D)
        w = tl.load(w_ptr + offs_d[:, None] * (PH * PW) + offs_k[None, :], mask=md[:, None] & mk[None, :],
                    other=0.0).to(tl.float32)  # (BLOCK_D, BLOCK_K)
        acc += tl.dot(g, w, input_precision="ieee")
    off = s * H * W + patch_offsets(offs_p, offs_k, GW, W, 1, PH, PW)
    tl.store(dx_ptr + off, acc.to(dx_ptr.dtype.element_ty), mask=mp[:, None] & mk[None, :])


def _grid(x: Tensor, ph: int, pw: int):
    S, H, W = x.shape
    gw = W // pw
    return S, H, W, (H // ph) * gw, gw


def plan_forward(x: Tensor, weight: Tensor, bias: Tensor, pos: Optional[Tensor], ph: int, pw: int) -> LaunchPlan:
    """The forward launch for x (S, H, W), weight (D, K) and pos (P, D) or None (the bias stands in for its
    pointer); the output (S, P, D) has the weight's dtype."""
    S, H, W, P, gw = _grid(x, ph, pw)
    D, K = weight.shape
    bd = _block_d(D)
    pos_or_b = bias if pos is None else pos
    args = (("x_ptr", ptr(x)), ("w_ptr", ptr(weight)), ("b_ptr", ptr(bias)), ("pos_ptr", ptr(pos_or_b)),
            ("out_ptr", ptr(weight)), ("P", P), ("D", D), ("GW", gw),
            ("sx_s", x.stride(0)), ("sx_h", x.stride(1)), ("sx_w", x.stride(2)))
    nbytes = (S * P * K * x.element_size() + D * (K + 1) * weight.element_size() + S * P * D * weight.element_size()
              + (0 if pos is None else P * D * pos.element_size()))
    return LaunchPlan(_patch_embed_fwd, (S, triton.cdiv(P, BLOCK_P), triton.cdiv(D, bd)), args,
                      (("PH", ph), ("PW", pw), ("HAS_POS", pos is not None), ("BLOCK_P", BLOCK_P),
                       ("BLOCK_D", bd), ("BLOCK_K", _block_k(K))), num_warps=4, num_stages=1, bytes_moved=nbytes)


def _splits(S: int) -> tuple[int, int]:
    """(slices per program, programs) along the slice axis of the backward grid."""
    slices = triton.cdiv(S, min(S, MAX_SPLITS))
    return slices, triton.cdiv(S, slices)


def plan_backward(grad: Tensor, x: Tensor, weight: Tensor, ph: int, pw: int) -> LaunchPlan:
    """The parameter-gradient launch: grad (S, P, D), x (S, H, W), weight (D, K) -> fp32 partial sums dpos
    (n_split, P, D) and dW.T (n_split, n_pblk, K, D), reduced by the caller."""
    S, H, W, P, gw = _grid(x, ph, pw)
    D, K = weight.shape
    bd, bk = _block_d(D), _block_k(K)
    n_pblk, n_kblk = triton.cdiv(P, BLOCK_P_BWD), triton.cdiv(K, bk)
    slices, n_split = _splits(S)
    args = (("g_ptr", ptr(grad)), ("x_ptr", ptr(x)), ("dpos_ptr", "*fp32"), ("dw_ptr", "*fp32"), ("S", S),
            ("P", P), ("D", D), ("GW", gw), ("SLICES", slices), ("sg_s", grad.stride(0)), ("sg_p", grad.stride(1)),
            ("sg_d", grad.stride(2)), ("sx_s", x.stride(0)), ("sx_h", x.stride(1)), ("sx_w", x.stride(2)))
    nbytes = S * P * (D * grad.element_size() + K * x.element_size()) + 4 * n_split * (P * D + n_pblk * K * D)
    return LaunchPlan(_patch_embed_bwd, (n_pblk, n_split, triton.cdiv(D, bd) * n_kblk), args,
                      (("PH", ph), ("PW", pw), ("N_KBLK", n_kblk), ("BLOCK_P", BLOCK_P_BWD), ("BLOCK_D", bd),
                       ("BLOCK_K", bk)), num_warps=8, num_stages=1, bytes_moved=nbytes)


def plan_backward_dx(grad: Tensor, x: Tensor, weight: Tensor, ph: int, pw: int) -> LaunchPlan:
    """The dx launch: grad (S, P, D), weight (D, K) -> dx (S, H, W) contiguous in x's dtype, each pixel of a
    patch written once."""
    S, H, W, P, gw = _grid(x, ph, pw)
    D, K = weight.shape
    bk = _block_k(K)
    args = (("g_ptr", ptr(grad)), ("w_ptr", ptr(weight)), ("dx_ptr", ptr(x)), ("P", P), ("D", D), ("GW", gw),
            ("H", H), ("W", W), ("sg_s", grad.stride(0)), ("sg_p", grad.stride(1)), ("sg_d", grad.stride(2)))
    nbytes = S * P * (D * grad.element_size() + K * x.element_size()) + D * K * weight.element_size()
    return LaunchPlan(_patch_embed_bwd_dx, (S, triton.cdiv(P, BLOCK_P), triton.cdiv(K, bk)), args,
                      (("PH", ph), ("PW", pw), ("BLOCK_P", BLOCK_P), ("BLOCK_D", _block_d(D)), ("BLOCK_K", bk)),
                      num_warps=4, num_stages=1, bytes_moved=nbytes)


@torch.library.triton_op(f"{LIB}::patch_embed", mutates_args=())
def _patch_embed_op(x: Tensor, weight: Tensor, bias: Tensor, pos: Optional[Tensor], ph: int, pw: int) -> Tensor:
    weight, bias, pos = weight.contiguous(), bias.contiguous(), contiguous(pos)
    S, H, W, P, gw = _grid(x, ph, pw)
    out = torch.empty((S, P, weight.shape[0]), device=x.device, dtype=weight.dtype)
    launch(plan_forward(x, weight, bias, pos, ph, pw), x, weight, bias, bias if pos is None else pos, out)
    return out


@torch.library.triton_op(f"{LIB}::patch_embed_backward", mutates_args=())
def _patch_embed_backward_op(grad: Tensor, x: Tensor, weight: Tensor, ph: int, pw: int,
                             need_dx: bool) -> tuple[Tensor, Tensor, Tensor]:
    """-> dx (S, H, W) in x's dtype (empty when not need_dx), dW.T (K, D) fp32, dpos (P, D) fp32."""
    S, H, W, P, gw = _grid(x, ph, pw)
    D, K = weight.shape
    weight = weight.contiguous()
    plan = plan_backward(grad, x, weight, ph, pw)
    n_pblk, n_split, _ = plan.grid
    dpos = torch.empty((n_split, P, D), device=x.device, dtype=torch.float32)
    dw = torch.empty((n_split, n_pblk, K, D), device=x.device, dtype=torch.float32)
    launch(plan, grad, x, dpos, dw)
    if not need_dx:
        dx = torch.empty((0,), device=x.device, dtype=x.dtype)
    else:
        covered = (H // ph) * ph == H and gw * pw == W
        # every covered pixel is written once; pixels past the last patch get 0
        dx = (torch.empty if covered else torch.zeros)((S, H, W), device=x.device, dtype=x.dtype)
        launch(plan_backward_dx(grad, x, weight, ph, pw), grad, weight, dx)
    return dx, dw.sum(dim=(0, 1)), dpos.sum(dim=0)


def _setup_context(ctx, inputs, output):
    x, weight, bias, pos, ph, pw = inputs
    ctx.save_for_backward(x, weight)
    ctx.patch = (ph, pw)
    ctx.bias_dtype = bias.dtype
    ctx.pos_dtype = None if pos is None else pos.dtype


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    need_dx = ctx.needs_input_grad[0]
    dx, dwt, dpos = torch.ops.stvit.patch_embed_backward(grad, x, weight, *ctx.patch, need_dx)
    dpos_out = None if ctx.pos_dtype is None else dpos.to(ctx.pos_dtype)
    return dx if need_dx else None, dwt.t().to(weight.dtype), dpos.sum(0).to(ctx.bias_dtype), dpos_out, None, None


_patch_embed_op.register_autograd(_backward, setup_context=_setup_context)


def patch_embed(x: Tensor, weight: Tensor, bias: Tensor, pos: Optional[Tensor] = None,
                patch: tuple[int, int] = (7, 2)) -> Tensor:
    """x (S, H, W); weight (D, ph*pw); bias (D,); pos (P, D) or None -> (S, P, D). See `reference.patch_embed`."""
    if not use_triton(x):
        return reference.patch_embed(x, weight, bias, pos, patch)
    dt = autocast_dtype(x.device.type)
    if dt is not None:  # F.linear's autocast policy: compute (and return) in the autocast dtype
        weight, bias = weight.to(dt), bias.to(dt)
    return torch.ops.stvit.patch_embed(x, weight, bias, pos, patch[0], patch[1])

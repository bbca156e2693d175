"""patch_embed: patch extraction + linear embedding + bias (+ position embedding), fused.

Forward reads each raw slice once, forms the ph x pw patches in registers (a (BLOCK_P, KP) tile, K = ph*pw
padded to a power of two), contracts them with the weight as an fp32 `tl.dot` with input_precision="ieee"
(plain FMAs: K = 14 is far too small for tensor cores and the op is memory-bound; fp32 also keeps the
interpreter exact, where a bf16 dot is not), adds the bias and the position embedding and writes (S, P, D)
once. Backward re-extracts the patches from x instead of saving them and produces dW, dbias, dpos (sums over
slices) and, when x requires grad, dx; the sums over slices are per-program fp32 partials added by torch.sum,
so the result does not depend on scheduling (no atomics).

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
from .plan import LaunchPlan, launch, ptr

BLOCK_P_FWD = 32
BLOCK_P_BWD = 16
MAX_SPLITS = 32  # backward: programs along the slice axis (each sums its slices; torch.sum adds the partials)


def _kp(k: int) -> int:  # the patch length padded for tl.dot (power of two, at least 16)
    return max(16, next_pow2(k))


def _bd(d: int) -> int:  # all channels in one block (D is at most a few hundred here)
    return max(16, next_pow2(d))


@triton.jit
def _patch_embed_fwd(
    x_ptr,  # (S, H, W) raw slices, any strides
    w_ptr,  # (D, K) contiguous, K = PH * PW, pixel order (row, col) inside a patch
    b_ptr,  # (D,)
    pos_ptr,  # (P, D) contiguous; read only when HAS_POS
    out_ptr,  # (S, P, D) contiguous, the weight's dtype
    P, D, GW,  # patches per slice, channels, patches per row
    sx_s, sx_h, sx_w,
    PH: tl.constexpr, PW: tl.constexpr, KP: tl.constexpr, HAS_POS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)  # (BLOCK_P,) patch ids
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,) BLOCK_D >= D
    offs_k = tl.arange(0, KP)  # (KP,) pixel of a patch, K padded to a power of two
    mp, md, mk = offs_p < P, offs_d < D, offs_k < PH * PW
    # the patches, formed in registers: (BLOCK_P, KP), zero in the padding
    x_tl = x_ptr + s * sx_s + (offs_p // GW) * PH * sx_h + (offs_p % GW) * PW * sx_w  # top-left pixels
    pix = (offs_k // PW) * sx_h + (offs_k % PW) * sx_w
    xt = tl.load(x_tl[:, None] + pix[None, :], mask=mp[:, None] & mk[None, :], other=0.0).to(tl.float32)
    wt = tl.load(w_ptr + offs_d[None, :] * (PH * PW) + offs_k[:, None], mask=mk[:, None] & md[None, :],
                 other=0.0).to(tl.float32)  # (KP, BLOCK_D) = weight.T
    acc = tl.dot(xt, wt, input_precision="ieee")  # fp32 FMAs: K is 14, the op is memory-bound
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
    w_ptr,  # (D, K) contiguous
    dx_ptr,  # (S, H, W) contiguous, x's dtype; written when NEED_DX (pixels outside patches stay 0)
    dpos_ptr,  # (n_split, P, D) fp32: sum over this program's slices of g
    dw_ptr,  # (n_split, n_pblk, K, D) fp32: sum over this program's slices and patches of pixel k * g
    S, P, D, GW, H, W, SLICES,  # SLICES: slices per program along grid axis 1
    sg_s, sg_p, sg_d, sx_s, sx_h, sx_w,
    PH: tl.constexpr, PW: tl.constexpr, KP: tl.constexpr, NEED_DX: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_p, split = tl.program_id(0), tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, KP)
    mp, md, mk = offs_p < P, offs_d < D, offs_k < PH * PW
    m2, mpk = mp[:, None] & md[None, :], mp[:, None] & mk[None, :]
    row0, col0 = (offs_p // GW) * PH, (offs_p % GW) * PW  # (BLOCK_P,) top-left pixel of each patch
    dr, dc = offs_k // PW, offs_k % PW  # (KP,) pixel offsets inside a patch
    w = tl.load(w_ptr + offs_d[:, None] * (PH * PW) + offs_k[None, :], mask=md[:, None] & mk[None, :],
                other=0.0).to(tl.float32)  # (BLOCK_D, KP)
    acc_pos = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    acc_w = tl.zeros((KP, BLOCK_D), dtype=tl.float32)
    s0 = split.to(tl.int64) * SLICES
    for i in range(0, tl.minimum(SLICES, S - s0)):  # the last program may have fewer slices
        s = s0 + i
        g = tl.load(g_ptr + s * sg_s + offs_p[:, None] * sg_p + offs_d[None, :] * sg_d, mask=m2,
                    other=0.0).to(tl.float32)  # (BLOCK_P, BLOCK_D)
        acc_pos += g
        x_tl = x_ptr + s * sx_s + row0 * sx_h + col0 * sx_w
        xt = tl.load(x_tl[:, None] + dr[None, :] * sx_h + dc[None, :] * sx_w, mask=mpk,
                     other=0.0).to(tl.float32)  # (BLOCK_P, KP) the patches, re-extracted
        acc_w += tl.dot(tl.trans(xt), g, input_precision="ieee")  # (KP, BLOCK_D)
        if NEED_DX:
            dxt = tl.dot(g, w, input_precision="ieee")  # (BLOCK_P, KP)
            dx_off = s * H * W + (row0[:, None] + dr[None, :]) * W + col0[:, None] + dc[None, :]
            tl.store(dx_ptr + dx_off, dxt.to(dx_ptr.dtype.element_ty), mask=mpk)
    pd = offs_p[:, None] * D + offs_d[None, :]
    tl.store(dpos_ptr + split * P * D + pd, acc_pos, mask=m2)
    n_pblk = tl.num_programs(0)
    dw_off = ((split * n_pblk + pid_p) * (PH * PW) + offs_k[:, None]) * D + offs_d[None, :]
    tl.store(dw_ptr + dw_off, acc_w, mask=mk[:, None] & md[None, :])


def plan_forward(x: Tensor, weight: Tensor, bias: Tensor, pos: Optional[Tensor], ph: int, pw: int) -> LaunchPlan:
    """The forward launch for x (S, H, W), weight (D, K) and pos (P, D) or None (the bias stands in for its
    pointer); the output (S, P, D) has the weight's dtype."""
    S, H, W = x.shape
    D, K = weight.shape
    gw = W // pw
    P = (H // ph) * gw
    pos_or_b = bias if pos is None else pos
    args = (("x_ptr", ptr(x)), ("w_ptr", ptr(weight)), ("b_ptr", ptr(bias)), ("pos_ptr", ptr(pos_or_b)),
            ("out_ptr", ptr(weight)), ("P", P), ("D", D), ("GW", gw),
            ("sx_s", x.stride(0)), ("sx_h", x.stride(1)), ("sx_w", x.stride(2)))
    nbytes = (S * P * K * x.element_size() + D * (K + 1) * weight.element_size() + S * P * D * weight.element_size()
              + (0 if pos is None else P * D * pos.element_size()))
    return LaunchPlan(_patch_embed_fwd, (S, triton.cdiv(P, BLOCK_P_FWD)), args,
                      (("PH", ph), ("PW", pw), ("KP", _kp(K)), ("HAS_POS", pos is not None),
                       ("BLOCK_P", BLOCK_P_FWD), ("BLOCK_D", _bd(D))), num_warps=8, num_stages=3, bytes_moved=nbytes)


def plan_backward(grad: Tensor, x: Tensor, weight: Tensor, ph: int, pw: int, need_dx: bool) -> LaunchPlan:
    """The backward launch: grad (S, P, D), x (S, H, W), weight (D, K); writes dx (x's dtype) when need_dx,
    and fp32 partial sums dpos (n_split, P, D) and dW.T (n_split, n_pblk, K, D), reduced by the caller."""
    S, H, W = x.shape
    D, K = weight.shape
    gw = W // pw
    P = (H // ph) * gw
    n_pblk = triton.cdiv(P, BLOCK_P_BWD)
    slices = triton.cdiv(S, min(S, MAX_SPLITS))
    n_split = triton.cdiv(S, slices)
    args = (("g_ptr", ptr(grad)), ("x_ptr", ptr(x)), ("w_ptr", ptr(weight)), ("dx_ptr", ptr(x)),
            ("dpos_ptr", "*fp32"), ("dw_ptr", "*fp32"), ("S", S), ("P", P), ("D", D), ("GW", gw), ("H", H),
            ("W", W), ("SLICES", slices), ("sg_s", grad.stride(0)), ("sg_p", grad.stride(1)),
            ("sg_d", grad.stride(2)), ("sx_s", x.stride(0)), ("sx_h", x.stride(1)), ("sx_w", x.stride(2)))
    nbytes = (S * P * D * grad.element_size() + S * P * K * x.element_size() * (2 if need_dx else 1)
              + D * K * weight.element_size() + 4 * n_split * (P * D + n_pblk * K * D))
    return LaunchPlan(_patch_embed_bwd, (n_pblk, n_split), args,
                      (("PH", ph), ("PW", pw), ("KP", _kp(K)), ("NEED_DX", need_dx), ("BLOCK_P", BLOCK_P_BWD),
                       ("BLOCK_D", _bd(D))), num_warps=8, num_stages=3, bytes_moved=nbytes)


@torch.library.triton_op(f"{LIB}::patch_embed", mutates_args=())
def _patch_embed_op(x: Tensor, weight: Tensor, bias: Tensor, pos: Optional[Tensor], ph: int, pw: int) -> Tensor:
    weight, bias, pos = weight.contiguous(), bias.contiguous(), contiguous(pos)
    plan = plan_forward(x, weight, bias, pos, ph, pw)
    S, H, W = x.shape
    out = torch.empty((S, (H // ph) * (W // pw), weight.shape[0]), device=x.device, dtype=weight.dtype)
    launch(plan, x, weight, bias, bias if pos is None else pos, out)
    return out


@torch.library.triton_op(f"{LIB}::patch_embed_backward", mutates_args=())
def _patch_embed_backward_op(grad: Tensor, x: Tensor, weight: Tensor, ph: int, pw: int,
                             need_dx: bool) -> tuple[Tensor, Tensor, Tensor]:
    """-> dx (S, H, W) in x's dtype (empty when not need_dx), dW.T (K, D) fp32, dpos (P, D) fp32."""
    S, H, W = x.shape
    D, K = weight.shape
    weight = weight.contiguous()
    plan = plan_backward(grad, x, weight, ph, pw, need_dx)
    (n_pblk, n_split), (gh, gw) = plan.grid, (H // ph, W // pw)
    P = gh * gw
    covered = gh * ph == H and gw * pw == W
    if not need_dx:
        dx = torch.empty((0,), device=x.device, dtype=x.dtype)
    elif covered:
        dx = torch.empty((S, H, W), device=x.device, dtype=x.dtype)  # every pixel is written once
    else:
        dx = torch.zeros((S, H, W), device=x.device, dtype=x.dtype)  # pixels past the last patch get 0
    dpos = torch.empty((n_split, P, D), device=x.device, dtype=torch.float32)
    dw = torch.empty((n_split, n_pblk, K, D), device=x.device, dtype=torch.float32)
    launch(plan, grad, x, weight, dx, dpos, dw)
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

"""mae_scatter: put the visible tokens back in patch order, fill the removed places with the mask token and
add the decoder position embedding, in one pass: (S, K, D) -> (S, P, D).

Position p of slice s takes visible row r = ids_restore[s, p] when r < K, else the mask token. Backward is
the gather pattern read the other way: dvisible[s, r] = grad[s, p] for the kept positions (each written
once, `ids_restore` being a permutation), dmask_token = sum of grad over the removed positions, dpos = sum of
grad over slices; the sums are per-program fp32 partials added by torch.sum (no atomics, bit-stable). The
output has visible's dtype (autocast does not change it); ids_restore gets no gradient.
"""
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import reference
from ._dispatch import LIB, contiguous, next_pow2, use_triton
from .plan import LaunchPlan, launch, ptr

BLOCK_P = 16  # patch positions per program
BLOCK_P_BWD = 8  # backward: smaller, for programs enough to fill an H100 (13 x 31 x 2 would be 806)
MAX_BLOCK_D = 64  # channels per program (the grid tiles D: the decoder's 128 is two programs)
MAX_SPLITS = 32  # backward: programs along the slice axis


def _block_d(d: int) -> int:
    return min(MAX_BLOCK_D, next_pow2(d))


@triton.jit
def _mae_scatter_fwd(
    v_ptr,  # (S, K, D) visible tokens, any strides
    ids_ptr,  # (S, P) int64 contiguous, ids_restore
    m_ptr,  # (D,) mask token
    pos_ptr,  # (P, D) contiguous; read only when HAS_POS
    out_ptr,  # (S, P, D) contiguous, visible's dtype
    P, K, D,
    sv_s, sv_k, sv_d,
    HAS_POS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)  # (BLOCK_P,) patch positions
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,) channels
    mp, md = offs_p < P, offs_d < D
    m2 = mp[:, None] & md[None, :]
    r = tl.load(ids_ptr + s * P + offs_p, mask=mp, other=K)  # (BLOCK_P,) slot in [kept..., removed...]
    keep = r < K
    v = tl.load(v_ptr + s * sv_s + r[:, None] * sv_k + offs_d[None, :] * sv_d, mask=m2 & keep[:, None],
                other=0.0).to(tl.float32)
    tok = tl.load(m_ptr + offs_d, mask=md, other=0.0).to(tl.float32)  # (BLOCK_D,)
    val = tl.where(keep[:, None], v, tok[None, :])
    pd = offs_p[:, None] * D + offs_d[None, :]
    if HAS_POS:
        val += tl.load(pos_ptr + pd, mask=m2, other=0.0).to(tl.float32)
    tl.store(out_ptr + s * P * D + pd, val.to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _mae_scatter_bwd(
    g_ptr,  # (S, P, D) upstream gradient, any strides
    ids_ptr,  # (S, P) int64 contiguous, ids_restore
    dv_ptr,  # (S, K, D) contiguous: the kept rows of g, each written once
    dm_ptr,  # (n_split, n_pblk, D) fp32: sum of g over this program's removed positions
    dpos_ptr,  # (n_split, P, D) fp32: sum of g over this program's slices
    S, P, K, D, SLICES,  # SLICES: slices per program along grid axis 1
    sg_s, sg_p, sg_d,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_p, split = tl.program_id(0), tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mp, md = offs_p < P, offs_d < D
    m2 = mp[:, None] & md[None, :]
    acc_pos = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    acc_m = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    s0 = split.to(tl.int64) * SLICES
    for i in range(0, tl.minimum(SLICES, S - s0)):  # the last program may have fewer slices
        s = s0 + i
        g = tl.load(g_ptr + s * sg_s + offs_p[:, None] * sg_p + offs_d[None, :] * sg_d, mask=m2, other=0.0)
        r = tl.load(ids_ptr + s * P + offs_p, mask=mp, other=K)  # (BLOCK_P,)
        keep = r < K
        tl.store(dv_ptr + (s * K + r[:, None]) * D + offs_d[None, :], g.to(dv_ptr.dtype.element_ty),
                 mask=m2 & keep[:, None])
        g = g.to(tl.float32)
        acc_pos += g
        acc_m += tl.where(keep[:, None], 0.0, g)
    pd = offs_p[:, None] * D + offs_d[None, :]
    tl.store(dpos_ptr + split * P * D + pd, acc_pos, mask=m2)
    tl.store(dm_ptr + (split * tl.num_programs(0) + pid_p) * D + offs_d, tl.sum(acc_m, axis=0), mask=md)


def plan_forward(visible: Tensor, ids_restore: Tensor, mask_token: Tensor, pos: Optional[Tensor]) -> LaunchPlan:
    """visible (S, K, D) any strides, ids_restore (S, P) int64 contiguous, mask_token (D,), pos (P, D) or None
    (the mask token stands in for its pointer) -> out (S, P, D) in visible's dtype."""
    S, K, D = visible.shape
    P = ids_restore.shape[1]
    pos_or_m = mask_token if pos is None else pos
    args = (("v_ptr", ptr(visible)), ("ids_ptr", ptr(ids_restore)), ("m_ptr", ptr(mask_token)),
            ("pos_ptr", ptr(pos_or_m)), ("out_ptr", ptr(visible)), ("P", P), ("K", K), ("D", D),
            ("sv_s", visible.stride(0)), ("sv_k", visible.stride(1)), ("sv_d", visible.stride(2)))
    nbytes = ((S * K + S * P) * D * visible.element_size() + S * P * ids_restore.element_size()
              + D * mask_token.element_size() + (0 if pos is None else P * D * pos.element_size()))
    bd = _block_d(D)
    return LaunchPlan(_mae_scatter_fwd, (S, triton.cdiv(P, BLOCK_P), triton.cdiv(D, bd)), args,
                      (("HAS_POS", pos is not None), ("BLOCK_P", BLOCK_P), ("BLOCK_D", bd)),
                      num_warps=4, num_stages=1, bytes_moved=nbytes)


def plan_backward(grad: Tensor, ids_restore: Tensor, K: int) -> LaunchPlan:
    """grad (S, P, D) any strides, ids_restore (S, P) int64 contiguous -> dvisible (S, K, D) in grad's dtype,
    and fp32 partial sums dmask (n_split, n_pblk, D) and dpos (n_split, P, D), reduced by the caller."""
    S, P, D = grad.shape
    n_pblk = triton.cdiv(P, BLOCK_P_BWD)
    slices = triton.cdiv(S, min(S, MAX_SPLITS))
    n_split = triton.cdiv(S, slices)
    args = (("g_ptr", ptr(grad)), ("ids_ptr", ptr(ids_restore)), ("dv_ptr", ptr(grad)), ("dm_ptr", "*fp32"),
            ("dpos_ptr", "*fp32"), ("S", S), ("P", P), ("K", K), ("D", D), ("SLICES", slices),
            ("sg_s", grad.stride(0)), ("sg_p", grad.stride(1)), ("sg_d", grad.stride(2)))
    nbytes = ((S * P + S * K) * D * grad.element_size() + S * P * ids_restore.element_size()
              + 4 * n_split * (n_pblk + P) * D)
    bd = _block_d(D)
    return LaunchPlan(_mae_scatter_bwd, (n_pblk, n_split, triton.cdiv(D, bd)), args,
                      (("BLOCK_P", BLOCK_P_BWD), ("BLOCK_D", bd)), num_warps=4, num_stages=1, bytes_moved=nbytes)


@torch.library.triton_op(f"{LIB}::mae_scatter", mutates_args=())
def _mae_scatter_op(visible: Tensor, ids_restore: Tensor, mask_token: Tensor, pos: Optional[Tensor]) -> Tensor:
    S, K, D = visible.shape
    ids_restore = ids_restore.to(torch.int64).contiguous()
    mask_token, pos = mask_token.contiguous(), contiguous(pos)
    out = torch.empty((S, ids_restore.shape[1], D), device=visible.device, dtype=visible.dtype)
    launch(plan_forward(visible, ids_restore, mask_token, pos), visible, ids_restore, mask_token,
           mask_token if pos is None else pos, out)
    return out


@torch.library.triton_op(f"{LIB}::mae_scatter_backward", mutates_args=())
def _mae_scatter_backward_op(grad: Tensor, ids_restore: Tensor, K: int) -> tuple[Tensor, Tensor, Tensor]:
    """-> dvisible (S, K, D) in grad's dtype, dmask_token (D,) fp32, dpos (P, D) fp32."""
    S, P, D = grad.shape
    ids_restore = ids_restore.to(torch.int64).contiguous()
    plan = plan_backward(grad, ids_restore, K)
    n_pblk, n_split, _ = plan.grid
    dvisible = torch.empty((S, K, D), device=grad.device, dtype=grad.dtype)
    dmask = torch.empty((n_split, n_pblk, D), device=grad.device, dtype=torch.float32)
    dpos = torch.empty((n_split, P, D), device=grad.device, dtype=torch.float32)
    launch(plan, grad, ids_restore, dvisible, dmask, dpos)
    return dvisible, dmask.sum(dim=(0, 1)), dpos.sum(dim=0)


def _setup_context(ctx, inputs, output):
    visible, ids_restore, mask_token, pos = inputs
    ctx.save_for_backward(ids_restore)
    ctx.K, ctx.v_dtype = visible.shape[1], visible.dtype
    ctx.m_dtype, ctx.pos_dtype = mask_token.dtype, None if pos is None else pos.dtype


def _backward(ctx, grad):
    (ids_restore,) = ctx.saved_tensors
    dv, dm, dpos = torch.ops.stvit.mae_scatter_backward(grad, ids_restore, ctx.K)
    dpos = None if ctx.pos_dtype is None else dpos.to(ctx.pos_dtype)
    return dv.to(ctx.v_dtype), None, dm.to(ctx.m_dtype), dpos


_mae_scatter_op.register_autograd(_backward, setup_context=_setup_context)


def mae_scatter(visible: Tensor, ids_restore: Tensor, mask_token: Tensor, pos: Optional[Tensor] = None) -> Tensor:
    """visible (S, K, D); ids_restore (S, P); mask_token (D elements); pos (P, D) or None -> (S, P, D)."""
    if not use_triton(visible):
        return reference.mae_scatter(visible, ids_restore, mask_token, pos)
    D = visible.shape[-1]
    return torch.ops.stvit.mae_scatter(visible, ids_restore, mask_token.reshape(D), pos)

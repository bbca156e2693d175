"""mae_gather: keep the visible tokens, in `ids_keep` order: (S, P, D) -> (S, K, D).

Forward copies K rows per slice, a (BLOCK_K, BLOCK_D) tile per program. Backward is the scatter pattern: each gradient row goes back to the place
it was taken from, the other rows of dtokens are zero. `ids_keep` must hold distinct indices per slice (a
prefix of a permutation, as `random_masking` makes), so every row is written at most once and no sum is
needed. The output keeps the input dtype (autocast does not change it); ids_keep gets no gradient.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from . import reference
from ._dispatch import LIB, next_pow2, use_triton
from .plan import LaunchPlan, launch, ptr

BLOCK_K = 16  # rows per program
MAX_BLOCK_D = 64  # channels per program (the grid tiles D: 192 is three programs)


def _block_d(d: int) -> int:
    return min(MAX_BLOCK_D, next_pow2(d))


@triton.jit
def _mae_gather_fwd(
    t_ptr,  # (S, P, D) tokens, any strides
    ids_ptr,  # (S, K) int64 contiguous, ids_keep
    out_ptr,  # (S, K, D) contiguous
    P, K, D,
    st_s, st_p, st_d,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)  # (BLOCK_K,) visible slots
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,) channels
    mk, md = offs_k < K, offs_d < D
    m2 = mk[:, None] & md[None, :]
    src = tl.load(ids_ptr + s * K + offs_k, mask=mk, other=0)  # (BLOCK_K,) patch index of each slot
    row = tl.load(t_ptr + s * st_s + src[:, None] * st_p + offs_d[None, :] * st_d, mask=m2, other=0.0)
    tl.store(out_ptr + (s * K + offs_k[:, None]) * D + offs_d[None, :], row, mask=m2)


@triton.jit
def _mae_gather_bwd(
    g_ptr,  # (S, K, D) upstream gradient, any strides
    ids_ptr,  # (S, K) int64 contiguous, ids_keep
    dt_ptr,  # (S, P, D) contiguous, zero-filled; the visible rows are written here
    P, K, D,
    sg_s, sg_k, sg_d,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mk, md = offs_k < K, offs_d < D
    m2 = mk[:, None] & md[None, :]
    dst = tl.load(ids_ptr + s * K + offs_k, mask=mk, other=0)  # (BLOCK_K,)
    g = tl.load(g_ptr + s * sg_s + offs_k[:, None] * sg_k + offs_d[None, :] * sg_d, mask=m2, other=0.0)
    tl.store(dt_ptr + (s * P + dst[:, None]) * D + offs_d[None, :], g.to(dt_ptr.dtype.element_ty), mask=m2)


def plan_forward(tokens: Tensor, ids_keep: Tensor) -> LaunchPlan:
    """tokens (S, P, D) any strides, ids_keep (S, K) int64 contiguous -> out (S, K, D) in tokens' dtype."""
    S, P, D = tokens.shape
    K = ids_keep.shape[1]
    args = (("t_ptr", ptr(tokens)), ("ids_ptr", ptr(ids_keep)), ("out_ptr", ptr(tokens)), ("P", P), ("K", K),
            ("D", D), ("st_s", tokens.stride(0)), ("st_p", tokens.stride(1)), ("st_d", tokens.stride(2)))
    nbytes = 2 * S * K * D * tokens.element_size() + S * K * ids_keep.element_size()
    return LaunchPlan(_mae_gather_fwd, (S, triton.cdiv(K, BLOCK_K), triton.cdiv(D, _block_d(D))), args,
                      (("BLOCK_K", BLOCK_K), ("BLOCK_D", _block_d(D))), num_warps=4, num_stages=1,
                      bytes_moved=nbytes)


def plan_backward(grad: Tensor, ids_keep: Tensor, P: int) -> LaunchPlan:
    """grad (S, K, D) any strides, ids_keep (S, K) int64 contiguous -> the visible rows of a zero-filled
    dtokens (S, P, D) in grad's dtype (the zeros are the caller's fill)."""
    S, K, D = grad.shape
    args = (("g_ptr", ptr(grad)), ("ids_ptr", ptr(ids_keep)), ("dt_ptr", ptr(grad)), ("P", P), ("K", K), ("D", D),
            ("sg_s", grad.stride(0)), ("sg_k", grad.stride(1)), ("sg_d", grad.stride(2)))
    nbytes = 2 * S * K * D * grad.element_size() + S * K * ids_keep.element_size()
    return LaunchPlan(_mae_gather_bwd, (S, triton.cdiv(K, BLOCK_K), triton.cdiv(D, _block_d(D))), args,
                      (("BLOCK_K", BLOCK_K), ("BLOCK_D", _block_d(D))), num_warps=4, num_stages=1,
                      bytes_moved=nbytes)


@torch.library.triton_op(f"{LIB}::mae_gather", mutates_args=())
def _mae_gather_op(tokens: Tensor, ids_keep: Tensor) -> Tensor:
    S, P, D = tokens.shape
    ids_keep = ids_keep.to(torch.int64).contiguous()
    out = torch.empty((S, ids_keep.shape[1], D), device=tokens.device, dtype=tokens.dtype)
    launch(plan_forward(tokens, ids_keep), tokens, ids_keep, out)
    return out


@torch.library.triton_op(f"{LIB}::mae_gather_backward", mutates_args=())
def _mae_gather_backward_op(grad: Tensor, ids_keep: Tensor, P: int) -> Tensor:
    """-> dtokens (S, P, D) in grad's dtype: grad's rows at ids_keep, zero elsewhere."""
    S, K, D = grad.shape
    ids_keep = ids_keep.to(torch.int64).contiguous()
    dtokens = torch.zeros((S, P, D), device=grad.device, dtype=grad.dtype)
    launch(plan_backward(grad, ids_keep, P), grad, ids_keep, dtokens)
    return dtokens


def _setup_context(ctx, inputs, output):
    tokens, ids_keep = inputs
    ctx.save_for_backward(ids_keep)
    ctx.P, ctx.dtype = tokens.shape[1], tokens.dtype


def _backward(ctx, grad):
    (ids_keep,) = ctx.saved_tensors
    return torch.ops.stvit.mae_gather_backward(grad, ids_keep, ctx.P).to(ctx.dtype), None


_mae_gather_op.register_autograd(_backward, setup_context=_setup_context)


def mae_gather(tokens: Tensor, ids_keep: Tensor) -> Tensor:
    """tokens (S, P, D), ids_keep (S, K) -> (S, K, D). See `reference.mae_gather`."""
    if not use_triton(tokens):
        return reference.mae_gather(tokens, ids_keep)
    return torch.ops.stvit.mae_gather(tokens, ids_keep)

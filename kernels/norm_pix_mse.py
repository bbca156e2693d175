"""norm_pix_mse: MAE's normalized-pixel MSE over removed patches, from the raw slices and `pred`, in one pass.

Forward: each program forms a block of patches from x in registers, takes each patch's mean and unbiased
variance in fp32, normalizes, and sums mask * mean_k (pred - target)^2 and the mask over its patches; the
per-program partials go to a buffer and torch.sum adds them (fixed order: the loss is bit-stable from run to
run, no float atomics). Backward recomputes the target and writes only dpred = grad * mask * 2 (pred -
target) / (K * sum(mask)). x (the data) and mask get no gradient. The loss has pred's dtype; everything is
computed in fp32 whatever the input dtypes (autocast does not change it).
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from . import reference
from ._dispatch import LIB, next_pow2, use_triton
from ._patches import load_patches
from .plan import LaunchPlan, launch, ptr

MAX_BLOCK_P = 32  # patches per program
TILE = 2048  # at most BLOCK_P x KP values per tile: 7x2 patches take 32 a program, demo's 21x23 take 4


def _block_p(kp: int) -> int:
    return max(1, min(MAX_BLOCK_P, TILE // kp))


@triton.jit
def _normalized_target(x_ptr, s, offs_p, offs_k, m2, GW, sx_s, sx_h, sx_w, eps,
                       PH: tl.constexpr, PW: tl.constexpr):
    """(BLOCK_P, KP) target patches of slice s, normalized by their mean and unbiased variance, in fp32."""
    t = load_patches(x_ptr, s, offs_p, offs_k, m2, GW, sx_s, sx_h, sx_w, PH, PW)
    mean = tl.sum(t, axis=1) / (PH * PW)  # (BLOCK_P,)
    diff = tl.where(m2, t - mean[:, None], 0.0)
    var = tl.sum(diff * diff, axis=1) / (PH * PW - 1)  # unbiased, as MAE's norm_pix_loss
    return diff / tl.sqrt(var + eps)[:, None]


@triton.jit
def _norm_pix_mse_fwd(
    pred_ptr,  # (S, P, K) predicted pixels, any strides
    x_ptr,  # (S, H, W) raw slices, any strides
    mask_ptr,  # (S, P) 1 = removed, any strides
    num_ptr,  # (S * n_pblk,) fp32: sum of mask * per-patch error of each program
    den_ptr,  # (S * n_pblk,) fp32: sum of mask of each program
    P, GW, eps,
    sp_s, sp_p, sp_k, sx_s, sx_h, sx_w, sm_s, sm_p,
    PH: tl.constexpr, PW: tl.constexpr, KP: tl.constexpr, BLOCK_P: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)  # (BLOCK_P,) patch ids
    offs_k = tl.arange(0, KP)  # (KP,) pixel of a patch, padded to a power of two
    mp = offs_p < P
    m2 = mp[:, None] & (offs_k < PH * PW)[None, :]
    t = _normalized_target(x_ptr, s, offs_p, offs_k, m2, GW, sx_s, sx_h, sx_w, eps, PH, PW)
    pr = tl.load(pred_ptr + s * sp_s + offs_p[:, None] * sp_p + offs_k[None, :] * sp_k, mask=m2,
                 other=0.0).to(tl.float32)
    d = tl.where(m2, pr - t, 0.0)
    err = tl.sum(d * d, axis=1) / (PH * PW)  # (BLOCK_P,) mean over the patch's pixels
    m = tl.load(mask_ptr + s * sm_s + offs_p * sm_p, mask=mp, other=0.0).to(tl.float32)
    idx = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    tl.store(num_ptr + idx, tl.sum(m * err, axis=0))
    tl.store(den_ptr + idx, tl.sum(m, axis=0))


@triton.jit
def _norm_pix_mse_bwd(
    pred_ptr,  # (S, P, K) any strides
    x_ptr,  # (S, H, W) any strides
    mask_ptr,  # (S, P) any strides
    scale_ptr,  # (1,) fp32: grad * 2 / (K * sum(mask))
    dpred_ptr,  # (S, P, K) contiguous, pred's dtype
    P, GW, eps,
    sp_s, sp_p, sp_k, sx_s, sx_h, sx_w, sm_s, sm_p,
    PH: tl.constexpr, PW: tl.constexpr, KP: tl.constexpr, BLOCK_P: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_k = tl.arange(0, KP)
    mp = offs_p < P
    m2 = mp[:, None] & (offs_k < PH * PW)[None, :]
    t = _normalized_target(x_ptr, s, offs_p, offs_k, m2, GW, sx_s, sx_h, sx_w, eps, PH, PW)
    pr = tl.load(pred_ptr + s * sp_s + offs_p[:, None] * sp_p + offs_k[None, :] * sp_k, mask=m2,
                 other=0.0).to(tl.float32)
    m = tl.load(mask_ptr + s * sm_s + offs_p * sm_p, mask=mp, other=0.0).to(tl.float32)  # (BLOCK_P,)
    dp = (pr - t) * (m * tl.load(scale_ptr))[:, None]
    out = dpred_ptr + (s * P + offs_p[:, None]) * (PH * PW) + offs_k[None, :]
    tl.store(out, dp.to(dpred_ptr.dtype.element_ty), mask=m2)


def _plan(kernel, pred: Tensor, x: Tensor, mask: Tensor, ph: int, pw: int, eps: float, out: str,
          nbytes_out: int) -> LaunchPlan:
    S, H, W = x.shape
    gw = W // pw
    P = (H // ph) * gw
    K = ph * pw
    args = (("pred_ptr", ptr(pred)), ("x_ptr", ptr(x)), ("mask_ptr", ptr(mask)), *out, ("P", P), ("GW", gw),
            ("eps", eps), ("sp_s", pred.stride(0)), ("sp_p", pred.stride(1)), ("sp_k", pred.stride(2)),
            ("sx_s", x.stride(0)), ("sx_h", x.stride(1)), ("sx_w", x.stride(2)), ("sm_s", mask.stride(0)),
            ("sm_p", mask.stride(1)))
    nbytes = S * P * (K * (pred.element_size() + x.element_size()) + mask.element_size()) + nbytes_out
    kp = max(2, next_pow2(K))
    bp = _block_p(kp)
    return LaunchPlan(kernel, (S, triton.cdiv(P, bp)), args, (("PH", ph), ("PW", pw), ("KP", kp), ("BLOCK_P", bp)),
                      num_warps=4, num_stages=1, bytes_moved=nbytes)


def plan_forward(pred: Tensor, x: Tensor, mask: Tensor, ph: int, pw: int, eps: float) -> LaunchPlan:
    """pred (S, P, K), x (S, H, W), mask (S, P) float, any strides -> per-program fp32 partial sums num, den
    (S * n_pblk,), added by the caller."""
    S, P = mask.shape
    n = S * triton.cdiv(P, _block_p(max(2, next_pow2(ph * pw))))
    return _plan(_norm_pix_mse_fwd, pred, x, mask, ph, pw, eps, (("num_ptr", "*fp32"), ("den_ptr", "*fp32")),
                 8 * n)


def plan_backward(pred: Tensor, x: Tensor, mask: Tensor, ph: int, pw: int, eps: float) -> LaunchPlan:
    """As forward, with the fp32 scale (1,) in, dpred (S, P, K) contiguous in pred's dtype out."""
    return _plan(_norm_pix_mse_bwd, pred, x, mask, ph, pw, eps, (("scale_ptr", "*fp32"), ("dpred_ptr", ptr(pred))),
                 4 + pred.numel() * pred.element_size())


def _f32(mask: Tensor) -> Tensor:
    return mask if mask.is_floating_point() else mask.to(torch.float32)


@torch.library.triton_op(f"{LIB}::norm_pix_mse", mutates_args=())
def _norm_pix_mse_op(pred: Tensor, x: Tensor, mask: Tensor, ph: int, pw: int, eps: float) -> Tensor:
    mask = _f32(mask)
    plan = plan_forward(pred, x, mask, ph, pw, eps)
    num = torch.empty((plan.grid[0] * plan.grid[1],), device=pred.device, dtype=torch.float32)
    den = torch.empty_like(num)
    launch(plan, pred, x, mask, num, den)
    return (num.sum() / den.sum()).to(pred.dtype)  # fixed-order reductions of the partials


@torch.library.triton_op(f"{LIB}::norm_pix_mse_backward", mutates_args=())
def _norm_pix_mse_backward_op(grad: Tensor, pred: Tensor, x: Tensor, mask: Tensor, ph: int, pw: int,
                              eps: float) -> Tensor:
    """-> dpred (S, P, ph*pw) in pred's dtype."""
    mask = _f32(mask)
    scale = (grad.float() * (2.0 / (ph * pw)) / mask.sum(dtype=torch.float32)).reshape(1)
    dpred = torch.empty((*mask.shape, ph * pw), device=pred.device, dtype=pred.dtype)
    launch(plan_backward(pred, x, mask, ph, pw, eps), pred, x, mask, scale, dpred)
    return dpred


def _setup_context(ctx, inputs, output):
    pred, x, mask, ph, pw, eps = inputs
    ctx.save_for_backward(pred, x, mask)
    ctx.args = (ph, pw, eps)


def _backward(ctx, grad):
    pred, x, mask = ctx.saved_tensors
    dpred = torch.ops.stvit.norm_pix_mse_backward(grad, pred, x, mask, *ctx.args)
    return dpred, None, None, None, None, None


_norm_pix_mse_op.register_autograd(_backward, setup_context=_setup_context)


def norm_pix_mse(pred: Tensor, x: Tensor, mask: Tensor, patch: tuple[int, int] = (7, 2),
                 eps: float = 1e-6) -> Tensor:
    """pred (S, P, ph*pw); x (S, H, W) raw slices; mask (S, P), 1 = removed -> scalar. Only pred gets a
    gradient (x is data, mask is a selection). See `reference.norm_pix_mse`."""
    if not use_triton(pred):
        return reference.norm_pix_mse(pred, x, mask, patch, eps)
    return torch.ops.stvit.norm_pix_mse(pred, x, mask.detach(), patch[0], patch[1], eps)

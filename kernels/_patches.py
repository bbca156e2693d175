"""The patch address arithmetic of the kernels that read raw slices (patch_embed forward and backward,
norm_pix_mse), written once.

Slices are (S, H, W) with any strides; patch p of a slice is row-block p // GW, column-block p % GW (row-major,
as `reference.patchify`), and pixel k of a patch is (k // PW, k % PW) inside it.
"""
import triton
import triton.language as tl


@triton.jit
def patch_offsets(offs_p, offs_k, GW, s_h, s_w, PH: tl.constexpr, PW: tl.constexpr):
    """(BLOCK_P, BLOCK_K) element offsets of pixel offs_k[j] of patch offs_p[i], for row and column strides
    (s_h, s_w)."""
    row = (offs_p // GW) * PH  # (BLOCK_P,) top-left pixel of each patch
    col = (offs_p % GW) * PW
    return (row[:, None] + (offs_k // PW)[None, :]) * s_h + (col[:, None] + (offs_k % PW)[None, :]) * s_w


@triton.jit
def load_patches(x_ptr, s, offs_p, offs_k, mask, GW, sx_s, sx_h, sx_w, PH: tl.constexpr, PW: tl.constexpr):
    """(BLOCK_P, BLOCK_K) fp32 tile of slice s: pixel offs_k[j] of patch offs_p[i], 0 where `mask` is False."""
    off = patch_offsets(offs_p, offs_k, GW, sx_h, sx_w, PH, PW)
    return tl.load(x_ptr + s * sx_s + off, mask=mask, other=0.0).to(tl.float32)

"""Plain-torch reference of every op: the source of truth the fused kernels are tested against.

Each function has the same name and signature as the fused op in `kernels/<op>.py`. Shapes:
S slices, H x W pixels per slice, (ph, pw) patch, P = (H // ph) * (W // pw) patches in row-major order,
K visible patches, D channels. Statistics accumulate in fp32; results come back in the input dtype
(autocast, where active, decides the dtype of the matmul in `patch_embed` as it does for `F.linear`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["patchify", "unpatchify", "random_masking", "patch_embed", "mae_gather", "mae_scatter", "norm_pix_mse"]


def patchify(x: Tensor, patch: tuple[int, int] = (7, 2)) -> Tensor:
    """(S, H, W) slices -> (S, P, ph*pw) patches; pixel order (row, col) inside a patch, patches row-major.

    Equals `Conv2d(1, D, patch, stride=patch)` with its weight viewed as (D, ph*pw). Rows or columns
    past the last whole patch are dropped, as the strided convolution drops them.
    """
    S, H, W = x.shape
    ph, pw = patch
    gh, gw = H // ph, W // pw
    x = x[:, : gh * ph, : gw * pw].reshape(S, gh, ph, gw, pw)
    return x.permute(0, 1, 3, 2, 4).reshape(S, gh * gw, ph * pw)  # (S, gh, gw, ph, pw) -> (S, P, ph*pw)


def unpatchify(patches: Tensor, grid: tuple[int, int], patch: tuple[int, int] = (7, 2)) -> Tensor:
    """(S, P, ph*pw) -> (S, gh*ph, gw*pw): the inverse of `patchify` on the covered pixels."""
    S = patches.shape[0]
    (gh, gw), (ph, pw) = grid, patch
    x = patches.reshape(S, gh, gw, ph, pw).permute(0, 1, 3, 2, 4)
    return x.reshape(S, gh * ph, gw * pw)


def random_masking(noise: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    """MAE's per-sample random masking, driven by `noise` (S, L) uniform in [0, 1).

    Returns `ids_keep` (S, K) with K = int(L * (1 - mask_ratio)): the patches kept, in order of ascending
    noise; `ids_restore` (S, L): the permutation that puts [kept, removed] back in patch order; `mask`
    (S, L) in the noise dtype, 1 = removed, 0 = kept.
    """
    S, L = noise.shape
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)  # ascend: small is keep, large is remove
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones(S, L, dtype=noise.dtype, device=noise.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # unshuffle to patch order
    return ids_keep, ids_restore, mask


def patch_embed(x: Tensor, weight: Tensor, bias: Tensor, pos: Tensor | None = None,
                patch: tuple[int, int] = (7, 2)) -> Tensor:
    """Patch extraction + linear embedding (+ position embedding).

    x (S, H, W); weight (D, ph*pw) (a Conv2d(1, D, patch, stride=patch) weight viewed flat); bias (D,);
    pos (P, D) or None. Returns (S, P, D).
    """
    out = F.linear(patchify(x, patch), weight, bias)  # (S, P, D)
    if pos is not None:
        out = out + pos.to(out.dtype)
    return out


def mae_gather(tokens: Tensor, ids_keep: Tensor) -> Tensor:
    """Keep the visible tokens: tokens (S, P, D), ids_keep (S, K) -> (S, K, D), in ids_keep order."""
    D = tokens.shape[-1]
    return torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))


def mae_scatter(visible: Tensor, ids_restore: Tensor, mask_token: Tensor, pos: Tensor | None = None) -> Tensor:
    """Put the visible tokens back in patch order and fill the removed ones with `mask_token`.

    visible (S, K, D); ids_restore (S, P); mask_token (D,) (any shape with D elements); pos (P, D) or None.
    Returns (S, P, D).
    """
    S, K, D = visible.shape
    P = ids_restore.shape[1]
    fill = mask_token.reshape(1, 1, D).to(visible.dtype).expand(S, P - K, D)
    full = torch.cat([visible, fill], dim=1)  # (S, P, D): [kept..., removed...]
    out = torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(-1, -1, D))
    if pos is not None:
        out = out + pos.to(out.dtype)
    return out


def norm_pix_mse(pred: Tensor, x: Tensor, mask: Tensor, patch: tuple[int, int] = (7, 2),
                 eps: float = 1e-6) -> Tensor:
    """MAE's loss with normalized pixel targets, averaged over removed patches only.

    pred (S, P, ph*pw); x (S, H, W) the raw slices; mask (S, P), 1 = removed. Each target patch is
    normalized by its own mean and unbiased variance, `(t - mean) / sqrt(var + eps)`; the squared error is
    averaged over the patch's pixels, then over the removed patches. Returns a scalar in pred's dtype.
    """
    target = patchify(x, patch).float()
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)  # unbiased, as MAE's norm_pix_loss
    target = (target - mean) / (var + eps) ** 0.5
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # (S, P)
    m = mask.float()
    return ((per_patch * m).sum() / m.sum()).to(pred.dtype)

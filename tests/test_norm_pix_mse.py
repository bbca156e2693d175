"""norm_pix_mse: normalized-pixel MSE over removed patches, against an independent NumPy computation."""
import numpy as np
import torch

from kernels import reference


def numpy_norm_pix_mse(pred, x, mask, patch, eps=1e-6):
    S, H, W = x.shape
    ph, pw = patch
    total, count = 0.0, 0.0
    for s in range(S):
        p = 0
        for i in range(H // ph):
            for j in range(W // pw):
                t = x[s, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw].astype(np.float64).reshape(-1)
                t = (t - t.mean()) / np.sqrt(t.var(ddof=1) + eps)
                err = ((pred[s, p].astype(np.float64) - t) ** 2).mean()
                total += mask[s, p] * err
                count += mask[s, p]
                p += 1
    return total / count


def test_equals_independent_computation():
    S = 3
    x = torch.randn(S, 63, 46) * 3 + 1
    pred = torch.randn(S, 207, 14)
    _, _, mask = reference.random_masking(torch.rand(S, 207), 0.65)
    got = reference.norm_pix_mse(pred, x, mask, (7, 2))
    want = numpy_norm_pix_mse(pred.numpy(), x.numpy(), mask.numpy(), (7, 2))
    assert abs(got.item() - want) < 1e-5 * max(1.0, want)


def test_only_removed_patches_count():
    x = torch.randn(2, 63, 46)
    pred = torch.randn(2, 207, 14)
    mask = (torch.rand(2, 207) > 0.5).float()
    base = reference.norm_pix_mse(pred, x, mask)
    pred2 = pred.clone()
    pred2[mask == 0] += 100.0  # visible patches: any prediction, same loss
    torch.testing.assert_close(reference.norm_pix_mse(pred2, x, mask), base)
    pred3 = pred.clone()
    pred3[mask == 1] += 1.0
    assert reference.norm_pix_mse(pred3, x, mask) > base


def test_perfect_prediction_gives_zero():
    x = torch.randn(2, 63, 46)
    t = reference.patchify(x)
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
    mask = torch.ones(2, 207)
    assert reference.norm_pix_mse(t, x, mask).item() < 1e-10

"""norm_pix_mse: normalized-pixel MSE over removed patches, against an independent NumPy computation."""
import numpy as np
import pytest
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


# --- the fused op (Triton; interpreted on CPU) against the reference ----------------------------------------

import kernels  # noqa: E402

SHAPES = [  # S, H, W, patch
    (2, 63, 46, (7, 2)),  # the paper's slices
    (1, 14, 6, (7, 2)),  # one slice
    (3, 15, 7, (7, 2)),  # odd slices; H, W not multiples of the patch
    (5, 12, 9, (3, 3)),  # another patch shape, K = 9
    (2, 10, 12, (5, 4)),  # K = 20, padded to 32
]


def _inputs(S, H, W, patch, ratio=0.65):
    P, K = (H // patch[0]) * (W // patch[1]), patch[0] * patch[1]
    _, _, mask = reference.random_masking(torch.rand(S, P), ratio)
    return torch.randn(S, P, K), torch.randn(S, H, W) * 3 + 1, mask


def _fused(patch):
    return lambda pred, x, mask: kernels.norm_pix_mse(pred, x, mask, patch)


def _reference(patch):
    return lambda pred, x, mask: reference.norm_pix_mse(pred, x, mask, patch)


@pytest.mark.parametrize("S,H,W,patch", SHAPES)
def test_fused_fp32_loss_and_gradient(kernel_device, fused_check, S, H, W, patch):
    fused_check(_fused(patch), _reference(patch), _inputs(S, H, W, patch), grad_idx=(0,), device=kernel_device)


def test_fused_every_patch_removed(kernel_device, fused_check):
    pred, x, mask = _inputs(3, 14, 6, (7, 2))
    fused_check(_fused((7, 2)), _reference((7, 2)), (pred, x, torch.ones_like(mask)), grad_idx=(0,),
                device=kernel_device)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_reduced_precision(kernel_device, fused_check, dtype):
    fused_check(_fused((7, 2)), _reference((7, 2)), _inputs(2, 63, 46, (7, 2)), grad_idx=(0,), dtype=dtype,
                device=kernel_device)


def test_fused_non_contiguous_inputs(kernel_device, fused_check):
    """pred as the model makes it (a slice of (S, 1+P, K): strided), x column-major, mask transposed."""
    pred, x, mask = _inputs(3, 14, 6, (7, 2))
    pred = torch.cat([torch.randn(3, 1, 14), pred], dim=1)[:, 1:]
    x = x.transpose(1, 2).contiguous().transpose(1, 2)
    mask = mask.t().contiguous().t()
    assert not (pred.is_contiguous() or x.is_contiguous() or mask.is_contiguous())
    fused_check(_fused((7, 2)), _reference((7, 2)), (pred, x, mask), grad_idx=(0,), device=kernel_device)


def test_fused_is_bit_stable_run_to_run(kernel_device):
    """No float atomics: the per-program partials are added by torch.sum in a fixed order."""
    pred, x, mask = (a.to(kernel_device) for a in _inputs(3, 63, 46, (7, 2)))
    pred.requires_grad_()
    runs = []
    for _ in range(2):
        loss = kernels.norm_pix_mse(pred, x, mask)
        runs.append((loss, torch.autograd.grad(loss, pred)[0]))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_fused_gives_no_gradient_to_data_and_mask(kernel_device):
    pred, x, mask = (a.to(kernel_device).requires_grad_() for a in _inputs(2, 14, 6, (7, 2)))
    grads = torch.autograd.grad(kernels.norm_pix_mse(pred, x, mask), (pred, x, mask), allow_unused=True)
    assert grads[0] is not None and grads[1] is None and grads[2] is None


def test_fused_keeps_pred_dtype_under_autocast(kernel_device):
    pred, x, mask = _inputs(2, 14, 6, (7, 2))
    for p in (pred, pred.bfloat16()):
        with torch.autocast(kernel_device.type, dtype=torch.bfloat16):
            out = kernels.norm_pix_mse(*(a.to(kernel_device) for a in (p, x, mask)))
            want = reference.norm_pix_mse(p, x, mask)
        assert out.dtype == want.dtype == p.dtype
        torch.testing.assert_close(out.cpu(), want)


def test_opcheck(opcheck):
    pred, x, mask = _inputs(2, 14, 6, (7, 2))
    opcheck(torch.ops.stvit.norm_pix_mse, (pred.requires_grad_(), x, mask, 7, 2, 1e-6))
    opcheck(torch.ops.stvit.norm_pix_mse_backward, (torch.tensor(0.5), pred.detach(), x, mask, 7, 2, 1e-6),
            differentiable=False)


def test_compiles_fullgraph_on_cpu_forward_and_backward():
    pred, x, mask = _inputs(2, 14, 6, (7, 2))
    pred.requires_grad_()
    f = torch.compile(kernels.norm_pix_mse, fullgraph=True, backend="aot_eager")
    loss = f(pred, x, mask)
    want = reference.norm_pix_mse(pred, x, mask)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(torch.autograd.grad(loss, pred)[0], torch.autograd.grad(want, pred)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_compiled_graph_runs_the_triton_kernels(inductor_code):
    pred, x, mask = (a.cuda() for a in _inputs(424, 63, 46, (7, 2)))
    pred.requires_grad_()
    f = torch.compile(kernels.norm_pix_mse, fullgraph=True)

    def step():
        loss = f(pred, x, mask)
        return loss, torch.autograd.grad(loss, pred)[0]

    (loss, g), code = inductor_code(step)
    assert "_norm_pix_mse_fwd" in code and "_norm_pix_mse_bwd" in code
    want = reference.norm_pix_mse(pred, x, mask)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(g, torch.autograd.grad(want, pred)[0])

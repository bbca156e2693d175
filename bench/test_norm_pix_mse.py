"""norm_pix_mse: reference vs fused vs torch.compile(reference), forward / backward / full."""
import pytest
import torch

import kernels
from kernels import reference

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE.type == "cuda"
F32 = 4  # bytes per element

S, H, W = (424, 63, 46) if ON_CUDA else (4, 63, 46)
P, K = (H // 7) * (W // 2), 14


def make_inputs():
    pred = torch.randn(S, P, K, device=DEVICE, requires_grad=True)
    x = torch.randn(S, H, W, device=DEVICE)
    _, _, mask = reference.random_masking(torch.rand(S, P, device=DEVICE), 0.65)
    return pred, x, mask


# bytes an ideal single pass moves: forward reads prediction, slices and mask once (writes a scalar);
# backward reads them again (the target is recomputed, not saved) and writes dpred
fwd = F32 * (S * P * K + S * H * W + S * P)
bwd = fwd + F32 * S * P * K
CASE = dict(name="norm_pix_mse", reference=reference.norm_pix_mse, fused=kernels.norm_pix_mse,
            make_inputs=make_inputs, grad_idx=(0,), nbytes={"fwd": fwd, "bwd": bwd, "full": fwd + bwd},
            shape=f"S={S} {H}x{W} K={K}")


@pytest.mark.parametrize("phase", ["fwd", "bwd", "full"])
@pytest.mark.parametrize("impl", ["reference", "fused", "compiled"])
def test_norm_pix_mse(bench_op, impl, phase):
    bench_op(impl, phase, **CASE)

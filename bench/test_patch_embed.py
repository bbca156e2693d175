"""patch_embed: reference vs fused vs torch.compile(reference), forward / backward / full."""
import pytest
import torch

import kernels
from kernels import reference

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE.type == "cuda"
F32 = 4  # bytes per element

# paper: 424 slices of 63x46, 7x2 patches, D = 192; CPU: a few slices, small D
S, H, W, D = (424, 63, 46, 192) if ON_CUDA else (4, 63, 46, 32)
P, K = (H // 7) * (W // 2), 14


def make_inputs():
    x = torch.randn(S, H, W, device=DEVICE)  # the data: no gradient, as in the model
    w = (torch.randn(D, K, device=DEVICE) / K ** 0.5).requires_grad_()
    b = torch.zeros(D, device=DEVICE, requires_grad=True)
    pos = (torch.randn(P, D, device=DEVICE) * 0.02).requires_grad_()
    return x, w, b, pos


# bytes an ideal single pass moves (fp32): forward reads the slices and parameters once and writes the tokens;
# backward reads the gradient and the slices and writes dW, dbias, dpos
params = D * K + D + P * D
fwd = F32 * (S * H * W + params + S * P * D)
bwd = F32 * (S * P * D + S * H * W + params)
CASE = dict(name="patch_embed", reference=reference.patch_embed, fused=kernels.patch_embed, make_inputs=make_inputs,
            grad_idx=(1, 2, 3), nbytes={"fwd": fwd, "bwd": bwd, "full": fwd + bwd}, shape=f"S={S} {H}x{W} D={D}")


@pytest.mark.parametrize("phase", ["fwd", "bwd", "full"])
@pytest.mark.parametrize("impl", ["reference", "fused", "compiled"])
def test_patch_embed(bench_op, impl, phase):
    bench_op(impl, phase, **CASE)

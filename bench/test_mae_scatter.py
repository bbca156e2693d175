"""mae_scatter: reference vs fused vs torch.compile(reference), forward / backward / full."""
import pytest
import torch

import kernels
from kernels import reference

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE.type == "cuda"
F32 = 4  # bytes per element

S, P, Dd = (424, 207, 128) if ON_CUDA else (4, 207, 16)
K = int(P * (1 - 0.65))  # 72


def make_inputs():
    visible = torch.randn(S, K, Dd, device=DEVICE, requires_grad=True)
    _, ids_restore, _ = reference.random_masking(torch.rand(S, P, device=DEVICE), 0.65)
    mask_token = (torch.randn(Dd, device=DEVICE) * 0.02).requires_grad_()
    pos = (torch.randn(P, Dd, device=DEVICE) * 0.02).requires_grad_()
    return visible, ids_restore, mask_token, pos


# bytes an ideal single pass moves: forward reads the ids, the visible rows, mask token and pos and writes
# the full sequence; backward reads the ids and the gradient and writes dvisible, dmask_token and dpos
params = Dd + P * Dd
fwd = 8 * S * P + F32 * (S * K * Dd + params + S * P * Dd)
bwd = 8 * S * P + F32 * (S * P * Dd + S * K * Dd + params)
CASE = dict(name="mae_scatter", reference=reference.mae_scatter, fused=kernels.mae_scatter, make_inputs=make_inputs,
            grad_idx=(0, 2, 3), nbytes={"fwd": fwd, "bwd": bwd, "full": fwd + bwd},
            shape=f"S={S} P={P} K={K} Dd={Dd}")


@pytest.mark.parametrize("phase", ["fwd", "bwd", "full"])
@pytest.mark.parametrize("impl", ["reference", "fused", "compiled"])
def test_mae_scatter(bench_op, impl, phase):
    bench_op(impl, phase, **CASE)

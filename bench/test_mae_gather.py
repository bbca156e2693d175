"""mae_gather: reference vs fused vs torch.compile(reference), forward / backward / full."""
import pytest
import torch

import kernels
from kernels import reference

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE.type == "cuda"
F32 = 4  # bytes per element

S, P, D = (424, 207, 192) if ON_CUDA else (4, 207, 32)
K = int(P * (1 - 0.65))  # 72


def make_inputs():
    tokens = torch.randn(S, P, D, device=DEVICE, requires_grad=True)
    ids_keep, _, _ = reference.random_masking(torch.rand(S, P, device=DEVICE), 0.65)
    return tokens, ids_keep


# bytes an ideal single pass moves: forward reads the ids and the kept rows and writes them; backward reads
# the ids and the gradient rows and writes the whole (zero-filled) token gradient
fwd = 8 * S * K + F32 * 2 * S * K * D
bwd = 8 * S * K + F32 * (S * K * D + S * P * D)
CASE = dict(name="mae_gather", reference=reference.mae_gather, fused=kernels.mae_gather, make_inputs=make_inputs,
            grad_idx=(0,), nbytes={"fwd": fwd, "bwd": bwd, "full": fwd + bwd}, shape=f"S={S} P={P} K={K} D={D}")


@pytest.mark.parametrize("phase", ["fwd", "bwd", "full"])
@pytest.mark.parametrize("impl", ["reference", "fused", "compiled"])
def test_mae_gather(bench_op, impl, phase):
    bench_op(impl, phase, **CASE)

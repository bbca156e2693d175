"""mae_gather / random_masking: MAE's masking semantics."""
import torch

from kernels import reference


def test_random_masking_semantics():
    S, L, ratio = 4, 207, 0.65
    noise = torch.rand(S, L)
    ids_keep, ids_restore, mask = reference.random_masking(noise, ratio)
    K = int(L * (1 - ratio))
    assert K == 72 and ids_keep.shape == (S, K) and ids_restore.shape == (S, L)
    assert mask.sum(1).tolist() == [L - K] * S  # 1 = removed
    for s in range(S):
        kept = noise[s].argsort()[:K]  # smallest noise is kept, in ascending noise order
        assert torch.equal(ids_keep[s], kept)
        assert mask[s, kept].sum() == 0
        # ids_restore undoes the shuffle
        assert torch.equal(noise[s].argsort()[ids_restore[s]], torch.arange(L))


def test_gather_keeps_tokens_in_ids_keep_order():
    t = torch.randn(3, 11, 5)
    ids_keep = torch.stack([torch.randperm(11)[:4] for _ in range(3)])
    got = reference.mae_gather(t, ids_keep)
    for s in range(3):
        torch.testing.assert_close(got[s], t[s, ids_keep[s]])


# --- the fused op (Triton; interpreted on CPU) against the reference ----------------------------------------

import pytest  # noqa: E402

import kernels  # noqa: E402

SHAPES = [  # S, P, ratio, D
    (2, 207, 0.65, 192),  # the paper's slices: K = 72
    (1, 6, 0.5, 24),  # one slice
    (3, 23, 0.3, 40),  # odd slices; K = 16, D not a multiple of the block
    (5, 9, 0.65, 7),  # K = 3, tiny D
]


def _inputs(S, P, ratio, D):
    ids_keep, _, _ = reference.random_masking(torch.rand(S, P), ratio)
    return torch.randn(S, P, D), ids_keep


@pytest.mark.parametrize("S,P,ratio,D", SHAPES)
def test_fused_fp32_forward_and_gradient(kernel_device, fused_check, S, P, ratio, D):
    fused_check(kernels.mae_gather, reference.mae_gather, _inputs(S, P, ratio, D), grad_idx=(0,),
                device=kernel_device)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_reduced_precision(kernel_device, fused_check, dtype):
    fused_check(kernels.mae_gather, reference.mae_gather, _inputs(3, 207, 0.65, 40), grad_idx=(0,), dtype=dtype,
                device=kernel_device)


def test_fused_non_contiguous_tokens_and_expanded_gradient(kernel_device, fused_check):
    t = torch.randn(3, 24, 13).transpose(1, 2)  # (S, P, D) with D strided
    _, ids_keep = _inputs(3, 13, 0.5, 24)
    fused_check(kernels.mae_gather, reference.mae_gather, (t, ids_keep.flip(1)), grad_idx=(0,),
                device=kernel_device, upstream="expanded")


def test_fused_keeps_dtype_under_autocast(kernel_device):
    t, ids_keep = _inputs(2, 11, 0.5, 16)
    for tokens in (t, t.bfloat16()):
        with torch.autocast(kernel_device.type, dtype=torch.bfloat16):
            out = kernels.mae_gather(tokens.to(kernel_device), ids_keep.to(kernel_device))
            want = reference.mae_gather(tokens, ids_keep)
        assert out.dtype == want.dtype == tokens.dtype
        assert torch.equal(out.cpu(), want)


def test_opcheck(opcheck):
    t, ids_keep = _inputs(2, 11, 0.5, 16)
    opcheck(torch.ops.stvit.mae_gather, (t.requires_grad_(), ids_keep))
    opcheck(torch.ops.stvit.mae_gather_backward, (torch.randn(2, 5, 16), ids_keep, 11), differentiable=False)


def test_compiles_fullgraph_on_cpu_forward_and_backward():
    t, ids_keep = _inputs(2, 11, 0.5, 16)
    t.requires_grad_()
    f = torch.compile(lambda t, i: kernels.mae_gather(t, i).square().sum(), fullgraph=True, backend="aot_eager")
    loss = f(t, ids_keep)
    (g,) = torch.autograd.grad(loss, t)
    want = reference.mae_gather(t, ids_keep).square().sum()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(g, torch.autograd.grad(want, t)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_compiled_graph_runs_the_triton_kernels(inductor_code):
    t, ids_keep = (a.cuda() for a in _inputs(8, 207, 0.65, 192))
    t.requires_grad_()
    f = torch.compile(lambda t, i: kernels.mae_gather(t, i).square().sum(), fullgraph=True)

    def step():
        loss = f(t, ids_keep)
        return loss, torch.autograd.grad(loss, t)[0]

    (loss, g), code = inductor_code(step)
    assert "_mae_gather_fwd" in code and "_mae_gather_bwd" in code
    want = reference.mae_gather(t, ids_keep).square().sum()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(g, torch.autograd.grad(want, t)[0])

"""mae_scatter: the inverse of mae_gather, with mask tokens in the removed places."""
import torch

from kernels import reference


def test_scatter_of_gather_restores_visible_and_fills_removed():
    S, P, D = 5, 207, 8
    t = torch.randn(S, P, D)
    ids_keep, ids_restore, mask = reference.random_masking(torch.rand(S, P), 0.65)
    m = torch.randn(D)
    pos = torch.randn(P, D)
    out = reference.mae_scatter(reference.mae_gather(t, ids_keep), ids_restore, m)
    kept = mask == 0
    torch.testing.assert_close(out[kept], t[kept])
    torch.testing.assert_close(out[~kept], m.expand(int((~kept).sum()), D))
    out_pos = reference.mae_scatter(reference.mae_gather(t, ids_keep), ids_restore, m, pos)
    torch.testing.assert_close(out_pos, out + pos)


# --- the fused op (Triton; interpreted on CPU) against the reference ----------------------------------------

import pytest  # noqa: E402

import kernels  # noqa: E402

SHAPES = [  # S, P, ratio, D
    (2, 207, 0.65, 128),  # the paper's decoder: K = 72, Dd = 128
    (2, 207, 0.65, 192),  # and the encoder width
    (1, 6, 0.5, 24),  # one slice
    (3, 23, 0.3, 40),  # odd slices, D not a multiple of the block
    (35, 9, 0.65, 7),  # more slices than backward programs along the slice axis (32): uneven split
]


def _inputs(S, P, ratio, D, with_pos=True):
    _, ids_restore, _ = reference.random_masking(torch.rand(S, P), ratio)
    K = int(P * (1 - ratio))
    pos = torch.randn(P, D) if with_pos else None
    return torch.randn(S, K, D), ids_restore, torch.randn(1, 1, D), pos


@pytest.mark.parametrize("S,P,ratio,D", SHAPES)
def test_fused_fp32_forward_and_every_gradient(kernel_device, fused_check, S, P, ratio, D):
    fused_check(kernels.mae_scatter, reference.mae_scatter, _inputs(S, P, ratio, D), grad_idx=(0, 2, 3),
                device=kernel_device)


def test_fused_without_pos(kernel_device, fused_check):
    fused_check(kernels.mae_scatter, reference.mae_scatter, _inputs(3, 23, 0.3, 40, with_pos=False),
                grad_idx=(0, 2), device=kernel_device)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_reduced_precision(kernel_device, fused_check, dtype):
    fused_check(kernels.mae_scatter, reference.mae_scatter, _inputs(3, 207, 0.65, 40), grad_idx=(0, 2, 3),
                dtype=dtype, device=kernel_device)


def test_fused_non_contiguous_inputs_and_expanded_gradient(kernel_device, fused_check):
    _, ids_restore, _, _ = _inputs(3, 13, 0.5, 24)
    visible = torch.randn(3, 24, 6).transpose(1, 2)  # (S, K, D) with D strided
    pos = torch.randn(24, 13).t()  # (P, D), transposed
    fused_check(kernels.mae_scatter, reference.mae_scatter, (visible, ids_restore, torch.randn(24), pos),
                grad_idx=(0, 2, 3), device=kernel_device, upstream="expanded")


def test_fused_keeps_visible_dtype_under_autocast(kernel_device, three_way):
    """Autocast leaves the op alone: the output has visible's dtype (fp32 mask token and pos are added in
    fp32 and rounded once, where the reference rounds them first)."""
    visible, ids_restore, m, pos = _inputs(2, 11, 0.5, 16)
    for v in (visible, visible.bfloat16()):
        with torch.autocast(kernel_device.type, dtype=torch.bfloat16):
            out = kernels.mae_scatter(*(a.to(kernel_device) for a in (v, ids_restore, m, pos)))
            out_pt = reference.mae_scatter(v, ids_restore, m, pos)
        assert out.dtype == out_pt.dtype == v.dtype
        three_way(out, out_pt, reference.mae_scatter(v.float(), ids_restore, m, pos))


def test_opcheck(opcheck):
    visible, ids_restore, m, pos = _inputs(2, 11, 0.5, 16)
    m = m.view(-1)
    opcheck(torch.ops.stvit.mae_scatter, (visible.requires_grad_(), ids_restore, m.requires_grad_(),
                                          pos.requires_grad_()))
    opcheck(torch.ops.stvit.mae_scatter, (visible, ids_restore, m, None))
    opcheck(torch.ops.stvit.mae_scatter_backward, (torch.randn(2, 11, 16), ids_restore, 5), differentiable=False)


def test_compiles_fullgraph_on_cpu_forward_and_backward():
    visible, ids_restore, m, pos = _inputs(2, 11, 0.5, 16)
    ins = (visible.requires_grad_(), m.requires_grad_(), pos.requires_grad_())
    f = torch.compile(lambda v, i, m, p: kernels.mae_scatter(v, i, m, p).square().sum(), fullgraph=True,
                      backend="aot_eager")
    loss = f(visible, ids_restore, m, pos)
    grads = torch.autograd.grad(loss, ins)
    want = reference.mae_scatter(visible, ids_restore, m, pos).square().sum()
    torch.testing.assert_close(loss, want)
    for g, h in zip(grads, torch.autograd.grad(want, ins)):
        torch.testing.assert_close(g, h)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_compiled_graph_runs_the_triton_kernels(inductor_code):
    visible, ids_restore, m, pos = (a.cuda() for a in _inputs(424, 207, 0.65, 128))
    ins = (visible.requires_grad_(), m.requires_grad_(), pos.requires_grad_())
    f = torch.compile(lambda v, i, m, p: kernels.mae_scatter(v, i, m, p).square().sum(), fullgraph=True)

    def step():
        loss = f(visible, ids_restore, m, pos)
        return loss, torch.autograd.grad(loss, ins)

    (loss, grads), code = inductor_code(step)
    assert "_mae_scatter_fwd" in code and "_mae_scatter_bwd" in code
    want = reference.mae_scatter(visible, ids_restore, m, pos).square().sum()
    torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-3)
    for g, h in zip(grads, torch.autograd.grad(want, ins)):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-3)

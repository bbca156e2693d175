"""patch_embed: patch extraction + embedding, against Conv2d (the layout the model's weights follow)."""
import pytest
import torch

from kernels import reference


@pytest.mark.parametrize("S,H,W,patch,D", [(3, 63, 46, (7, 2), 192), (1, 14, 6, (7, 2), 5), (5, 12, 9, (3, 3), 7)])
def test_reference_equals_conv2d(S, H, W, patch, D):
    conv = torch.nn.Conv2d(1, D, patch, stride=patch)
    x = torch.randn(S, H, W)
    want = conv(x[:, None]).flatten(2).transpose(1, 2)  # (S, P, D), patches row-major
    got = reference.patch_embed(x, conv.weight.flatten(1), conv.bias, patch=patch)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_reference_adds_position_embedding():
    x, w, b = torch.randn(2, 63, 46), torch.randn(16, 14), torch.randn(16)
    pos = torch.randn(207, 16)
    torch.testing.assert_close(reference.patch_embed(x, w, b, pos), reference.patch_embed(x, w, b) + pos)


def test_patchify_pixel_order_and_inverse():
    x = torch.arange(63 * 46, dtype=torch.float32).view(1, 63, 46)
    p = reference.patchify(x, (7, 2))
    assert p.shape == (1, 207, 14)
    # patch 1 is row-block 0, column-block 1; pixels (row, col) inside: (0,2), (0,3), (1,2), ...
    assert p[0, 1, :4].tolist() == [2.0, 3.0, 46.0 + 2, 46.0 + 3]
    assert p[0, 23, 0].item() == 7 * 46  # second row of patches starts at pixel row 7
    torch.testing.assert_close(reference.unpatchify(p, (9, 23), (7, 2)), x)


# --- the fused op (Triton; interpreted on CPU) against the reference ----------------------------------------

import kernels  # noqa: E402

SHAPES = [  # S, H, W, patch, D
    (2, 63, 46, (7, 2), 192),  # the paper's slices and width
    (1, 14, 6, (7, 2), 24),  # one slice
    (3, 21, 8, (7, 2), 40),  # odd slice count; D not a multiple of the block
    (5, 12, 9, (3, 3), 7),  # another patch shape; D below the smallest block
    (3, 15, 7, (7, 2), 24),  # H, W not multiples of the patch: the last row and column are dropped
    (2, 10, 12, (5, 4), 40),  # K = 20, padded to 32
    (35, 7, 4, (7, 2), 8),  # more slices than backward programs along the slice axis (32): uneven split
]


def _inputs(S, H, W, patch, D, with_pos=True):
    K, P = patch[0] * patch[1], (H // patch[0]) * (W // patch[1])
    pos = torch.randn(P, D) * 0.5 if with_pos else None
    return torch.randn(S, H, W), torch.randn(D, K) / K ** 0.5, torch.randn(D), pos


def _fused(patch):
    return lambda x, w, b, pos: kernels.patch_embed(x, w, b, pos, patch)


def _reference(patch):
    return lambda x, w, b, pos: reference.patch_embed(x, w, b, pos, patch)


@pytest.mark.parametrize("S,H,W,patch,D", SHAPES)
def test_fused_fp32_forward_and_every_gradient(kernel_device, fused_check, S, H, W, patch, D):
    args = _inputs(S, H, W, patch, D)
    fused_check(_fused(patch), _reference(patch), args, grad_idx=(0, 1, 2, 3), device=kernel_device)


@pytest.mark.parametrize("S,H,W,patch,D", [SHAPES[1], SHAPES[3]])
def test_fused_without_pos_and_without_dx(kernel_device, fused_check, S, H, W, patch, D):
    args = _inputs(S, H, W, patch, D, with_pos=False)
    fused_check(_fused(patch), _reference(patch), args, grad_idx=(1, 2), device=kernel_device)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("S,H,W,patch,D", [SHAPES[0], SHAPES[2]])
def test_fused_reduced_precision(kernel_device, fused_check, S, H, W, patch, D, dtype):
    args = _inputs(S, H, W, patch, D)
    fused_check(_fused(patch), _reference(patch), args, grad_idx=(0, 1, 2, 3), dtype=dtype, device=kernel_device)


def test_fused_non_contiguous_inputs_and_expanded_gradient(kernel_device, fused_check):
    S, H, W, D = 3, 14, 6, 24
    x = torch.randn(S, W, H).transpose(1, 2)  # (S, H, W), column-major slices
    pos = torch.randn(D, 6).t()  # (P, D), transposed
    w = torch.randn(14, D).t()  # (D, K), transposed
    assert not (x.is_contiguous() or pos.is_contiguous() or w.is_contiguous())
    fused_check(_fused((7, 2)), _reference((7, 2)), (x, w, torch.randn(D), pos), grad_idx=(0, 1, 2, 3),
                device=kernel_device, upstream="expanded")


def test_fused_follows_linear_autocast_policy(kernel_device, three_way):
    """Under autocast the op computes in the autocast dtype, as F.linear does (weight and bias cast; x read in
    its own dtype; fp32 accumulation): the reference's output dtype; parameter gradients come back in fp32."""
    x, w, b, pos = _inputs(2, 14, 6, (7, 2), 24)
    outs = {}
    for name, fn, dev in (("fused", kernels.patch_embed, kernel_device), ("pt", reference.patch_embed, "cpu")):
        ins = [t.to(dev).requires_grad_() for t in (x, w, b, pos)]
        with torch.autocast(torch.device(dev).type, dtype=torch.bfloat16):
            out = fn(*ins)
        out.float().square().sum().backward()
        outs[name] = (out, [t.grad for t in ins])
    (out, grads), (out_pt, grads_pt) = outs["fused"], outs["pt"]
    assert out.dtype == out_pt.dtype == torch.bfloat16
    assert [g.dtype for g in grads] == [g.dtype for g in grads_pt] == [torch.float32] * 4
    # fp32 from what each path reads: the autocast-cast weight and bias, x and pos as given
    three_way(out, out_pt, reference.patch_embed(x, w.bfloat16().float(), b.bfloat16().float(), pos))


def test_opcheck(opcheck):
    x, w, b, pos = _inputs(2, 14, 6, (7, 2), 24)
    opcheck(torch.ops.stvit.patch_embed, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(),
                                          pos.requires_grad_(), 7, 2))
    opcheck(torch.ops.stvit.patch_embed, (x, w, b, None, 7, 2))
    opcheck(torch.ops.stvit.patch_embed_backward, (torch.randn(2, 6, 24), x.detach(), w.detach(), 7, 2, True),
            differentiable=False)


def test_compiles_fullgraph_on_cpu_forward_and_backward():
    """On CPU, torch.compile traces the reference path (the interpreter cannot be traced): no graph break."""
    x, w, b, pos = (t.requires_grad_() for t in _inputs(2, 14, 6, (7, 2), 24))
    f = torch.compile(lambda *a: kernels.patch_embed(*a).square().sum(), fullgraph=True, backend="aot_eager")
    loss = f(x, w, b, pos)
    grads = torch.autograd.grad(loss, (x, w, b, pos))
    want = reference.patch_embed(x, w, b, pos).square().sum()
    torch.testing.assert_close(loss, want)
    for g, h in zip(grads, torch.autograd.grad(want, (x, w, b, pos))):
        torch.testing.assert_close(g, h)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_compiled_graph_runs_the_triton_kernels(inductor_code):
    x, w, b, pos = (t.cuda().requires_grad_() for t in _inputs(4, 63, 46, (7, 2), 192))
    f = torch.compile(lambda *a: kernels.patch_embed(*a).square().sum(), fullgraph=True)

    def step():
        loss = f(x, w, b, pos)
        return loss, torch.autograd.grad(loss, (x, w, b, pos))

    (loss, grads), code = inductor_code(step)
    assert "_patch_embed_fwd" in code and "_patch_embed_bwd" in code
    want = reference.patch_embed(x, w, b, pos).square().sum()
    torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-3)
    for g, h in zip(grads, torch.autograd.grad(want, (x, w, b, pos))):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-3)

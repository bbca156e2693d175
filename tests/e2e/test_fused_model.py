"""What torch.compile makes of the fused ops: Inductor on CPU (fullgraph, forward and backward) and the trace on fake
CUDA tensors in a fresh process. The fused model against the eager one: tests/unit/test_fused_model.py."""
import os
import subprocess
import sys

import torch

import kernels
from kernels import reference

from helpers import ROOT


def _chain(ops, x, w, b, pos, lin, mask_token, dpos, head, ids_keep, ids_restore, mask):
    """A small MAE-shaped chain through all four ops of `ops` (the `kernels` package or the reference)."""
    tokens = ops.patch_embed(x, w, b, pos)  # (S, P, D)
    visible = ops.mae_gather(tokens, ids_keep) @ lin  # (S, K, Dd)
    full = ops.mae_scatter(visible, ids_restore, mask_token, dpos)  # (S, P, Dd)
    return ops.norm_pix_mse(full @ head, x, mask)


def test_all_ops_compile_fullgraph_with_inductor_on_cpu():
    """torch.compile (Inductor, fullgraph) forward and backward on CPU: the ops trace to the reference."""
    S, P, D, Dd = 2, 6, 24, 16
    ids_keep, ids_restore, mask = reference.random_masking(torch.rand(S, P), 0.5)
    x = torch.randn(S, 14, 6)
    params = [torch.randn(D, 14), torch.randn(D), torch.randn(P, D), torch.randn(D, Dd) / 5, torch.randn(Dd),
              torch.randn(P, Dd), torch.randn(Dd, 14) / 4]
    params = [p.requires_grad_() for p in params]
    compiled = torch.compile(lambda *a: _chain(kernels, *a), fullgraph=True)
    loss = compiled(x, *params, ids_keep, ids_restore, mask)
    want = _chain(reference, x, *params, ids_keep, ids_restore, mask)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    for g, h in zip(torch.autograd.grad(loss, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6)


TRACE_ON_FAKE_CUDA = r"""
import torch
from torch._functorch.aot_autograd import aot_function
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
from torch._subclasses.fake_tensor import FakeTensorMode

import kernels

class Done(Exception):
    pass

def compiler(gm, inputs):
    names = []
    for node in gm.graph.nodes:
        if node.target is torch.ops.higher_order.triton_kernel_wrapper_functional:
            names.append(kernel_side_table.get_kernel(node.kwargs["kernel_idx"]).fn.__name__)
    print("KERNELS", " ".join(names))
    raise Done

o = torch.ops.stvit
def f(x, w, b, pos, ids, idr, vis, mt, dpos, mask, pred, g1, gs, gl):
    return (kernels.patch_embed(x, w, b, pos), kernels.mae_gather(g1, ids), kernels.mae_scatter(vis, idr, mt, dpos),
            kernels.norm_pix_mse(pred, x, mask), o.patch_embed_backward(g1, x, w, 7, 2, True),
            o.mae_gather_backward(vis, ids, 207), o.mae_scatter_backward(gs, idr, 72),
            o.norm_pix_mse_backward(gl, pred, x, mask, 7, 2, 1e-6))

with FakeTensorMode():
    c = dict(device="cuda")
    args = (torch.empty(2, 63, 46, **c), torch.empty(192, 14, **c), torch.empty(192, **c), torch.empty(207, 192, **c),
            torch.empty(2, 72, dtype=torch.long, **c), torch.empty(2, 207, dtype=torch.long, **c),
            torch.empty(2, 72, 16, **c), torch.empty(16, **c), torch.empty(207, 16, **c), torch.empty(2, 207, **c),
            torch.empty(2, 207, 14, **c), torch.empty(2, 207, 192, **c), torch.empty(2, 207, 16, **c),
            torch.empty((), **c))
    try:
        aot_function(f, fw_compiler=compiler)(*args)
    except Done:
        pass
"""


def test_cuda_trace_contains_the_triton_kernels():
    """What Inductor receives on CUDA: AOTAutograd decomposes each triton_op into its Triton kernel calls
    (traced on fake CUDA tensors in a fresh process without the interpreter, so it runs without a GPU)."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", TRACE_ON_FAKE_CUDA], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("KERNELS")]
    assert lines, f"the trace on fake CUDA tensors failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    assert lines[0].split()[1:] == ["_patch_embed_fwd", "_mae_gather_fwd", "_mae_scatter_fwd", "_norm_pix_mse_fwd",
                                    "_patch_embed_bwd", "_patch_embed_bwd_dx", "_mae_gather_bwd", "_mae_scatter_bwd",
                                    "_norm_pix_mse_bwd"]

"""The model with kernels="fused" against kernels="eager": same tree, same weights, same loss and gradients;
and what torch.compile makes of the fused ops."""
import dataclasses
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import reference
from stvit.model.vit import MAE, SpatioTemporalClassifier

from helpers import ROOT, tiny_config


def _pair(cls, device):
    eager = cls(tiny_config(kernels="eager")).to(device)
    fused = cls(tiny_config(kernels="fused")).to(device)
    fused.load_state_dict(eager.state_dict())
    assert fused.cfg.kernels == "fused"
    return eager, fused


def _assert_same_gradients(eager, fused, rtol=1e-4, atol=1e-5):
    """Every parameter's gradient, fused vs eager; atol is relative to the gradient's largest entry."""
    names = []
    for (name, p), (name_f, q) in zip(eager.named_parameters(), fused.named_parameters()):
        assert name == name_f
        if p.grad is None:
            assert q.grad is None, name
            continue
        names.append(name)
        tol = atol * p.grad.abs().max().item()
        torch.testing.assert_close(q.grad, p.grad, rtol=rtol, atol=tol, msg=lambda m, n=name: f"{n}: {m}")
    return names


def test_classifier_fused_equals_eager(kernel_device):
    eager, fused = _pair(SpatioTemporalClassifier, kernel_device)
    x = torch.randn(2, 3, 14, 6, device=kernel_device)
    y = torch.tensor([0, 1], device=kernel_device)
    logits = {}
    for name, model in (("eager", eager), ("fused", fused)):
        logits[name] = model(x)
        F.cross_entropy(logits[name], y).backward()
    torch.testing.assert_close(logits["fused"], logits["eager"], rtol=1e-5, atol=1e-5)
    names = _assert_same_gradients(eager, fused)
    assert {"spatial.patch_embed.weight", "spatial.patch_embed.bias", "spatial.pos_embed"} <= set(names)


def test_mae_fused_equals_eager(kernel_device):
    eager, fused = _pair(MAE, kernel_device)
    x = torch.randn(2, 3, 14, 6, device=kernel_device)
    noise = torch.rand(6, 6, device=kernel_device)  # fixed masking for both
    out = {}
    for name, model in (("eager", eager), ("fused", fused)):
        loss, pred, mask = model(x, noise=noise)
        loss.backward()
        out[name] = (loss, pred, mask)
    torch.testing.assert_close(out["fused"][0], out["eager"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["fused"][1], out["eager"][1], rtol=1e-5, atol=1e-5)
    assert torch.equal(out["fused"][2], out["eager"][2])
    names = _assert_same_gradients(eager, fused)
    assert {"mask_token", "decoder_pos_embed", "encoder.patch_embed.weight", "encoder.pos_embed"} <= set(names)


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_autocast_mae_fused_close_to_eager():
    """The paper's setting on a GPU: bf16 autocast, the fused MAE's loss and gradients near the eager ones."""
    cfg = dataclasses.replace(tiny_config(), volume=(4, 63, 46), dim=192, decoder_dim=128)
    eager = MAE(cfg).cuda()
    fused = MAE(dataclasses.replace(cfg, kernels="fused")).cuda()
    fused.load_state_dict(eager.state_dict())
    x = torch.randn(2, 4, 63, 46, device="cuda")
    noise = torch.rand(8, 207, device="cuda")
    losses = []
    for model in (eager, fused):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, noise=noise)[0]
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=2e-2, atol=2e-2)
    _assert_same_gradients(eager, fused, rtol=5e-2, atol=2e-2)

"""The model with kernels="fused" against kernels="eager": same tree, same weights, same loss and gradients. What
torch.compile makes of the fused ops: tests/e2e/test_fused_model.py."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from stvit.model.vit import MAE, SpatioTemporalClassifier

from helpers import tiny_config


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

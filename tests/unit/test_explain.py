"""Brain maps, the pieces: the attention weights the hooks recompute are the ones SDPA applies; rollout and the
spread over patches; attention maps as distributions over the volume; IG completeness. The commands, their outputs
and the validation of the maps: tests/e2e/test_explain.py.
"""
from __future__ import annotations

import pytest
import torch

from stvit.maps import attribution as A
from stvit.model.vit import Attention, SpatioTemporalClassifier
from stvit.model.precision import Precision

from helpers import small_config

nib = pytest.importorskip("nibabel", reason="the maps extra is part of dev: pip install -e '.[dev]'")

CPU = torch.device("cpu")
FP32 = Precision.resolve("fp32", CPU)


# --- the pieces --------------------------------------------------------------------------------------------------


def test_hooks_recompute_the_attention_sdpa_applies():
    """softmax(q k^T / sqrt(d)) from the module's own qkv, applied to v and projected, gives the module's output;
    the forward itself is not changed by the hooks."""
    model = SpatioTemporalClassifier(small_config()).eval()
    x = torch.randn(3, *model.cfg.volume)
    seen = []
    hooks = [m.register_forward_hook(lambda m, a, out: seen.append((m, a[0], out)))
             for m in model.modules() if isinstance(m, Attention)]
    with torch.no_grad():
        plain = model(x)
    for h in hooks:
        h.remove()
    assert len(seen) == model.cfg.depth + model.cfg.temporal_depth
    for module, inp, out in seen:
        B, N, C = inp.shape
        w = module.weights(inp)  # (B, heads, N, N)
        v = module.qkv(inp).view(B, N, 3, module.heads, C // module.heads).permute(2, 0, 3, 1, 4)[2]
        again = module.proj((w @ v).transpose(1, 2).reshape(B, N, C))
        torch.testing.assert_close(again, out, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(w.sum(-1), torch.ones(B, module.heads, N))
    with A.recorded_attention(model.spatial.blocks) as spatial, torch.no_grad():
        hooked = model(x)
    assert torch.equal(hooked, plain) and len(spatial) == model.cfg.depth
    assert not model.spatial.blocks[0].attn._forward_hooks  # removed on exit


def test_rollout_adds_the_residual_and_renormalizes():
    a = torch.softmax(torch.randn(2, 4, 4), -1)
    b = torch.softmax(torch.randn(2, 4, 4), -1)
    eye = torch.eye(4)
    torch.testing.assert_close(A.rollout([a]), (a + eye) / 2)
    torch.testing.assert_close(A.rollout([a, b]), ((b + eye) / 2) @ ((a + eye) / 2))
    torch.testing.assert_close(A.rollout([a, b]).sum(-1), torch.ones(2, 4))


def test_spread_puts_each_patch_on_its_own_pixels():
    grid = torch.zeros(2, 3)  # a 2x3 grid of 7x2 patches over a 15x6 slice: the last row is never seen
    grid[1, 2] = 1.0
    out = A.spread(grid, (7, 2), (15, 6))
    assert out.shape == (15, 6)
    assert torch.all(out[7:14, 4:6] == 1 / 14) and out.sum() == pytest.approx(1.0)
    assert out[14].abs().sum() == 0


def test_attention_maps_are_distributions_over_the_volume():
    model = SpatioTemporalClassifier(small_config()).eval()
    x = torch.randn(4, *model.cfg.volume)
    fn = A.steps_build(model, FP32)
    logits, maps = A.attention_maps(model, fn, x)
    assert maps.shape == x.shape and (maps >= 0).all()
    torch.testing.assert_close(maps.sum((1, 2, 3)), torch.ones(4))
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x))


def test_integrated_gradients_are_complete():
    """The attributions of each volume sum to logit(x) - logit(0) toward the target (the completeness axiom),
    up to Captum's convergence delta, which is what maps.json reports."""
    model = SpatioTemporalClassifier(small_config()).eval()
    x = torch.randn(5, *model.cfg.volume)
    fn = A.steps_build(model, FP32)
    with torch.no_grad():
        gap = fn(x) - fn(torch.zeros_like(x))
    for target in (0, 1):
        attr, delta = A.integrated_gradients(fn, x, target, steps=16, internal_batch_size=8)
        total = attr.double().sum((1, 2, 3))
        torch.testing.assert_close(total - gap[:, target].double(), delta.double(), rtol=0, atol=1e-4)
        assert not A.incomplete(delta.numpy()[:, None], gap[:, target].numpy()[:, None]).any(), (delta, gap)

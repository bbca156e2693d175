"""The analytic FLOP count (`stvit.flops`): the issue's figures at the paper preset, and agreement with PyTorch's
own count of the matrix products of a real forward pass."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from stvit.config import ModelConfig, preset
from stvit.perf.flops import finetune_flops, pretrain_flops, train_flops_per_sample
from stvit.model.vit import MAE, SpatioTemporalClassifier

TINY = ModelConfig(dim=32, depth=2, heads=2, temporal_depth=1, temporal_heads=2, head_hidden=16, decoder_dim=16,
                   decoder_depth=1, decoder_heads=2, dropout=0.0)


def test_paper_preset_matches_the_issue():
    cfg = preset("paper").model
    assert train_flops_per_sample(cfg, "pretrain") / 1e9 == pytest.approx(77.6, rel=1e-3)  # d_dec 128
    assert train_flops_per_sample(cfg, "finetune") / 1e9 == pytest.approx(138.6, rel=1e-3)
    assert pretrain_flops(cfg).train == 3 * pretrain_flops(cfg).forward


def test_decoder_width_changes_only_the_decoder():
    a, b = preset("paper").model, preset("paper").model
    b.decoder_dim = 256
    fa, fb = pretrain_flops(a).parts, pretrain_flops(b).parts
    assert fa["encoder"] == fb["encoder"] and fa["patch_embed"] == fb["patch_embed"]
    assert fb["decoder"] > 2 * fa["decoder"]


def test_unknown_stage():
    with pytest.raises(ValueError, match="unknown stage"):
        train_flops_per_sample(preset("paper").model, "mae")


def counted(model, x) -> int:
    """PyTorch's count of the forward's matrix products. Attention runs the math backend, whose products the
    counter sees as bmm (it does not count the CPU flash kernel)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops()


@pytest.mark.parametrize("which", ["mae", "classifier"])
def test_agrees_with_torch_flop_counter(which):
    torch.manual_seed(0)
    x = torch.randn(1, *TINY.volume)
    if which == "mae":
        model, ours = MAE(TINY).eval(), pretrain_flops(TINY).forward
    else:
        model, ours = SpatioTemporalClassifier(TINY).eval(), finetune_flops(TINY).forward
    theirs = counted(model, x)
    assert ours == theirs

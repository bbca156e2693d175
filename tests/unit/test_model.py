"""The model tree: shapes at the paper preset, the MAE's stages, encoder transfer, and that it learns. The parameter
count against `python -m stvit.model --summary`: tests/e2e/test_model.py."""
import dataclasses

import torch
import torch.nn.functional as F

from stvit.config import preset
from stvit.model.vit import MAE, SpatioTemporalClassifier, transfer_encoder

from helpers import ROOT, small_config as tiny_config


def test_paper_preset_shapes():
    cfg = preset("paper").model
    assert cfg.num_patches == 207 and cfg.len_keep == 72 and cfg.patch_dim == 14
    x = torch.randn(2, 53, 63, 46)
    clf = SpatioTemporalClassifier(cfg).eval()
    with torch.no_grad():
        assert clf(x).shape == (2, 2)
    mae = MAE(cfg).eval()
    with torch.no_grad():
        loss, pred, mask = mae(x)
    assert loss.shape == () and pred.shape == (106, 207, 14) and mask.shape == (106, 207)
    assert mask.sum(1).eq(207 - 72).all()
    # at init the decoder predicts ~0 and the targets are normalized per patch: loss ~ 13/14
    assert 0.85 < loss.item() < 1.15


def test_mae_stages_compose():
    cfg = tiny_config()
    mae = MAE(cfg)
    x = torch.randn(2, *cfg.volume)
    slices = x.reshape(-1, *cfg.volume[1:])
    noise = torch.rand(slices.shape[0], cfg.num_patches)
    ids_keep, ids_restore, mask = mae.random_masking(slices.shape[0], x.device, noise)
    latent = mae.forward_encoder(slices, ids_keep)
    assert latent.shape == (10, 1 + cfg.len_keep, cfg.dim)
    pred = mae.forward_decoder(latent, ids_restore)
    assert pred.shape == (10, cfg.num_patches, cfg.patch_dim)
    loss = mae.forward_loss(slices, pred, mask)
    torch.testing.assert_close(loss, mae(x, noise=noise)[0])


def test_transfer_copies_every_spatial_encoder_tensor():
    cfg = tiny_config()
    mae, clf = MAE(cfg), SpatioTemporalClassifier(cfg)
    transfer_encoder(mae, clf)
    src, dst = mae.encoder.state_dict(), clf.spatial.state_dict()
    assert src.keys() == dst.keys() and len(src) > 0
    for k in src:
        assert torch.equal(src[k], dst[k]), k
    names = set(src)
    assert {"patch_embed.weight", "patch_embed.bias", "cls_token", "pos_embed", "norm.weight"} <= names
    assert any(k.startswith("blocks.") for k in names)


def test_kernel_seam_switches_without_new_parameters():
    cfg = tiny_config()
    clf = SpatioTemporalClassifier(cfg)
    fused = SpatioTemporalClassifier(dataclasses.replace(cfg, kernels="fused"))
    fused.load_state_dict(clf.state_dict())
    x = torch.randn(2, *cfg.volume)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), clf(x))


def test_few_steps_lower_mae_and_ce_loss():
    cfg = tiny_config()
    x = torch.randn(4, *cfg.volume)
    y = torch.tensor([0, 1, 0, 1])
    mae = MAE(cfg)
    opt = torch.optim.AdamW(mae.parameters(), lr=3e-3)
    noise = torch.rand(4 * cfg.volume[0], cfg.num_patches)  # fixed masking: a fair before/after comparison
    losses = []
    for _ in range(25):
        loss = mae(x, noise=noise)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    clf = SpatioTemporalClassifier(cfg)
    opt = torch.optim.AdamW(clf.parameters(), lr=3e-3)
    ce = []
    for _ in range(15):
        loss = F.cross_entropy(clf(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ce.append(loss.item())
    assert ce[-1] < 0.5 * ce[0], ce


def test_kernels_package_does_not_import_stvit():
    for f in (ROOT / "kernels").rglob("*.py"):
        text = f.read_text()
        assert "import stvit" not in text and "from stvit" not in text, f

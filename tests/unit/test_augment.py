"""The batch augmentations (`stvit.data.augment`): background exactly zero, the deformation against a plain shift,
deterministic by (seed, epoch) and the same on N ranks, and the default (flips only) unchanged. Under torch.compile
and in whole runs (resume-exact after a SIGKILL): tests/e2e/test_augment.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stvit.training import engine
from stvit.training import stages
from stvit.config import AUGMENTS, ConfigError, preset
from stvit.data import DeviceSplit
from stvit.data.augment import Augment, Warp, flip_fraction
from stvit.data.synth import make_synthetic

from helpers import TINY_RUN, run_main, tiny_config, write_tiny_data

CPU = torch.device("cpu")
ALL = list(AUGMENTS)
STRONG = {"ops": ALL, "elastic_magnitude": 3.0, "elastic_spacing": 6.0, "scale_spread": 0.3, "noise_std": 0.5}


def demo(**augment):
    cfg = preset("demo")
    return cfg.override({"augment": augment or STRONG, "train": {"batch_size": 4}})


@pytest.fixture(scope="module")
def brains():
    """Four synthetic volumes: z-scored inside a brain-shaped mask, exactly 0 outside."""
    X = torch.from_numpy(make_synthetic(4, 2, seed=0).X_train.copy())
    assert (X == 0).any() and (X != 0).any()
    return X


def augmented(cfg, X, epoch=0, seed=7, rank=0, world=1):
    a = Augment(cfg, seed, CPU, rank, world)
    a.begin_epoch(epoch)
    return a(X)


@pytest.mark.parametrize("ops", [["elastic"], ["scale"], ["noise"], ALL])
def test_background_stays_exactly_zero(brains, ops):
    out = augmented(demo(**{**STRONG, "ops": ops}), brains)
    background = brains == 0
    assert out.shape == brains.shape and out.dtype == brains.dtype
    assert (out[background] == 0).all()
    assert torch.isfinite(out).all()
    changed = (out != brains)[~background].float().mean().item()
    assert changed > 0.5, f"only {changed:.2f} of the brain changed under {ops}"


def test_noise_and_scale_are_the_configured_sizes(brains):
    noise = augmented(demo(ops=["noise"], noise_std=0.25), brains) - brains
    inside = brains != 0
    assert noise[inside].std().item() == pytest.approx(0.25, rel=0.02)
    assert noise[~inside].abs().max().item() == 0
    out = augmented(demo(ops=["scale"], scale_spread=0.2), brains)
    factor = out[inside].view(4, -1) / brains[inside].view(4, -1)  # one factor per volume
    assert torch.allclose(factor, factor[:, :1], rtol=1e-5)
    assert ((factor[:, 0] >= 0.8) & (factor[:, 0] <= 1.2)).all() and factor[:, 0].std() > 0


def test_warp_by_whole_voxels_is_a_shift():
    """A constant displacement of one voxel along each axis samples the neighbour along that axis: the axis order
    of grid_sample's (W, H, D) coordinates against plain slicing."""
    warp = Warp((9, 11, 7), 4.0, CPU)
    x = torch.randn(1, 9, 11, 7) + 10  # no zero: the mask is the whole volume
    mask = x != 0
    zero = torch.zeros(1, 3, *warp.grid)
    assert torch.allclose(warp(x, mask, zero), x, atol=1e-5)
    for c, dim in ((0, 3), (1, 2), (2, 1)):  # shift channels are (W, H, D)
        shift = zero.clone()
        shift[:, c] = 1.0
        out = warp(x, mask, shift)
        n = x.shape[dim]
        assert torch.allclose(out.narrow(dim, 0, n - 1), x.narrow(dim, 1, n - 1), atol=1e-4), dim


def test_warp_keeps_the_mask_and_does_not_darken_its_edge():
    """A brain-only average: a constant brain stays that constant everywhere in the mask, whatever the shift."""
    warp = Warp((12, 10, 8), 3.0, CPU)
    mask = torch.zeros(2, 12, 10, 8, dtype=torch.bool)
    mask[:, 3:9, 2:8, 2:6] = True
    x = torch.where(mask, 2.5, 0.0)
    out = warp(x, mask, 2.0 * torch.randn(2, 3, *warp.grid, generator=torch.Generator().manual_seed(0)))
    assert (out[~mask] == 0).all()
    assert torch.allclose(out[mask], torch.full_like(out[mask], 2.5))


def test_same_seed_and_epoch_same_batch_and_ranks_agree(brains):
    cfg = demo()
    a = augmented(cfg, brains)
    assert torch.equal(a, augmented(cfg, brains))  # a resumed epoch draws what the interrupted one drew
    assert not torch.equal(a, augmented(cfg, brains, epoch=1))
    assert not torch.equal(a, augmented(cfg, brains, seed=8))
    halves = [augmented(cfg, brains[r * 2:(r + 1) * 2], rank=r, world=2) for r in (0, 1)]
    assert torch.equal(torch.cat(halves), a)  # two ranks augment what one process does


def test_steps_of_an_epoch_differ_and_half_precision_stays_half(brains):
    a = Augment(demo(), 7, CPU)
    a.begin_epoch(0)
    first, second = a(brains), a(brains)
    assert not torch.equal(first, second)
    x = brains.to(torch.bfloat16)
    out = Augment(demo(), 7, CPU)
    out.begin_epoch(0)
    y = out(x)
    assert y.dtype == torch.bfloat16 and (y[x == 0] == 0).all()


def test_default_is_flips_only_and_the_step_sees_the_gathered_batches():
    """The default config adds nothing to a step: no augmentation object, flips as before, the step called with
    the very batch `epoch_batches` gathered. `--augment` with no name turns the flips off too."""
    cfg = preset("demo")
    assert cfg.augment.ops == ("flip",) and flip_fraction(cfg) == cfg.data.flip_fraction
    assert flip_fraction(cfg.override({"augment": {"ops": []}})) == 0.0
    cfg = cfg.override({"model": tiny_config().__dict__, "train": {"batch_size": 2, "device": "cpu",
                                                                 "precision": "fp32"}})
    setup = stages.setup_stage("finetune", cfg, CPU)
    assert setup.augment is None
    seen = []
    X = np.random.default_rng(0).standard_normal((6, 3, 14, 6)).astype(np.float32)
    split = DeviceSplit(X, np.arange(6) % 2, CPU)
    inner = setup.step

    def spy(x, y):
        seen.append(x)
        return inner(x, y)

    setup.begin_epoch(0)
    batches = list(split.epoch_batches(2, epoch=0, seed=setup.seed, flip_fraction=1.0, flip_axis=0))
    engine.train_one_epoch(spy, setup.model, setup.optimizer, setup.scaler, iter(batches), 3, setup.optim, 0,
                           quiet=True)
    assert all(torch.equal(s, b[0]) for s, b in zip(seen, batches))


def test_config_refuses_bad_augmentations(tmp_path):
    for bad, key in (({"ops": ["blur"]}, "augment.ops"), ({"ops": ["noise", "noise"]}, "augment.ops"),
                     ({"noise_std": -1}, "augment.noise_std"), ({"elastic_spacing": 0.5}, "augment.elastic_spacing"),
                     ({"scale_spread": 1.0}, "augment.scale_spread"), ({"noise_std": "0.1"}, "augment.noise_std")):
        with pytest.raises(ConfigError) as e:
            preset("demo").override({"augment": bad})
        assert e.value.key == key
    data = write_tiny_data(tmp_path / "d.npz")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**TINY_RUN, "augment": {"noise_std": "0.1"}}))
    out = tmp_path / "run"
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet"]) == 2
    assert not out.exists()

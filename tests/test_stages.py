"""One setup for every stage: the trainer, the profiler and the benchmarks step through `stages.setup_stage`, so
the step the profiler times is the step that trains (same losses on the same batches and noise; the same compiled
graph), and a stage's masking noise depends only on (seed, epoch)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stvit import engine, stages
from stvit.config import preset
from stvit.data import DeviceSplit
from stvit.profile import StepRunner, Variant

from helpers import tiny_config

CPU = torch.device("cpu")


def config(compile: bool = False):
    cfg = preset("demo")
    cfg.model = tiny_config()
    cfg.train.batch_size, cfg.train.compile, cfg.train.device, cfg.train.precision = 2, compile, "cpu", "fp32"
    return cfg


def data(n: int = 6):
    g = np.random.default_rng(0)
    return g.standard_normal((n, 3, 14, 6)).astype(np.float32), np.arange(n) % 2


def training_steps(cfg, stage: str, X, y, n: int) -> engine.EpochStats:
    """`n` steps of epoch 0 as `stvit.fit` makes them."""
    torch.manual_seed(0)
    setup = stages.setup_stage(stage, cfg, CPU)
    split = DeviceSplit(X, y, CPU)
    setup.begin_epoch(0)
    batches = split.epoch_batches(cfg.train.batch_size, epoch=0, seed=setup.seed, flip_fraction=cfg.data.flip_fraction,
                                  flip_axis=cfg.data.flip_axis)
    return engine.train_one_epoch(setup.step, setup.model, setup.optimizer, setup.scaler, batches, n, setup.optim, 0,
                                  quiet=True)


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_profiler_steps_are_the_training_steps(stage):
    cfg = config()
    X, y = data()
    want = training_steps(cfg, stage, X, y, 3)
    torch.manual_seed(0)
    runner = StepRunner(cfg, stage, Variant("eager", False, "device", True), X, y, CPU)
    got = runner.run(3)
    runner.close()
    assert got.loss == want.loss and got.acc == want.acc and got.samples == want.samples == 6


def test_profiler_compiles_no_graph_of_its_own():
    """After a training step has compiled the pretrain graph, the profiler's compiled step reuses it: no new
    graph and no recompile (Dynamo would raise)."""
    torch._dynamo.reset()
    cfg = config(compile=True)
    X, y = data()
    training_steps(cfg, "pretrain", X, y, 1)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    runner = StepRunner(cfg, "pretrain", Variant("eager", True, "device", True), X, y, CPU)
    with torch._dynamo.config.patch(error_on_recompile=True):
        runner.run(2)
    runner.close()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def test_mask_noise_depends_on_seed_and_epoch_only():
    cfg = config()
    a, b = (stages.MaskNoise(cfg, 7, CPU) for _ in range(2))
    a.begin_epoch(3)
    first = [a() for _ in range(2)]
    b.begin_epoch(3)
    assert all(torch.equal(x, b()) for x in first)  # a resumed epoch draws the same masks
    b.begin_epoch(4)
    assert not torch.equal(first[0], b())
    S, P = cfg.train.batch_size * cfg.model.volume[0], cfg.model.num_patches
    assert first[0].shape == (S, P)
    halves = [stages.MaskNoise(cfg, 7, CPU, rank=r, world=2) for r in (0, 1)]
    for h in halves:
        h.begin_epoch(3)
    assert torch.equal(torch.cat([h() for h in halves]), first[0])  # two ranks mask what one process masks

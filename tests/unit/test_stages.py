"""One setup for every stage: the trainer, the profiler and the benchmarks step through `stages.setup_stage`, so
the step the profiler times is the step that trains (same losses on the same batches and noise), and a stage's
masking noise depends only on (seed, epoch). The same compiled graph: tests/e2e/test_stages.py."""
from __future__ import annotations

import pytest
import torch

from stvit.training import engine
from stvit.training import stages
from stvit.perf.profiler import StepRunner, Variant

from helpers import run_epoch, stage_config, tiny_volumes

CPU = torch.device("cpu")


def training_steps(cfg, stage: str, X, y, n: int) -> engine.EpochStats:
    """`n` steps of epoch 0 as `stvit.fit` makes them."""
    torch.manual_seed(0)
    return run_epoch(stages.setup_stage(stage, cfg, CPU), X, y, n)


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_profiler_steps_are_the_training_steps(stage):
    cfg = stage_config()
    X, y = tiny_volumes()
    want = training_steps(cfg, stage, X, y, 3)
    torch.manual_seed(0)
    runner = StepRunner(cfg, stage, Variant("eager", False, "device", True), X, y, CPU)
    got = runner.run(3)
    runner.close()
    assert got.loss == want.loss and got.acc == want.acc and got.samples == want.samples == 6


def test_mask_noise_depends_on_seed_and_epoch_only():
    cfg = stage_config()
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

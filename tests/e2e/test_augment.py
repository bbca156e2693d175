"""The batch augmentations (`stvit.data.augment`) in compiled steps and whole runs: under torch.compile without
recompiles, changing training, resume-exact after a SIGKILL. The augmentations themselves:
tests/unit/test_augment.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from stvit.training import engine
from stvit.training import stages
from stvit.config import preset
from stvit.data import DeviceSplit
from stvit.data.augment import flip_fraction

from helpers import ROOT, TINY_RUN, killer_script, losses, run_main, tiny_config, write_tiny_data
from unit.test_augment import ALL, CPU, STRONG


def test_compiled_step_never_recompiles_with_augmentations():
    """The augmentations run outside the compiled step and keep the batch's shape, dtype and layout: two epochs
    of compiled steps with every augmentation, and Dynamo would raise on a recompile."""
    torch._dynamo.reset()
    cfg = preset("demo")
    cfg.model = tiny_config()
    cfg.train.batch_size, cfg.train.compile, cfg.train.device, cfg.train.precision = 2, True, "cpu", "fp32"
    cfg = cfg.override({"augment": {**STRONG, "elastic_spacing": 2.0}})
    g = np.random.default_rng(0)
    X = g.standard_normal((6, 3, 14, 6)).astype(np.float32)
    X[:, :, :2] = 0  # a background
    split = DeviceSplit(X, np.arange(6) % 2, CPU)
    torch.manual_seed(0)
    setup = stages.setup_stage("pretrain", cfg, CPU)
    assert setup.augment is not None
    with torch._dynamo.config.patch(error_on_recompile=True):
        for epoch in range(2):
            setup.begin_epoch(epoch)
            batches = split.epoch_batches(2, epoch=epoch, seed=setup.seed, flip_fraction=flip_fraction(cfg))
            stats = engine.train_one_epoch(setup.step, setup.model, setup.optimizer, setup.scaler, batches, 3,
                                           setup.optim, epoch, quiet=True)
            assert np.isfinite(stats.loss)


@pytest.fixture(scope="module")
def augmented_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("aug")
    data = write_tiny_data(d / "tiny.npz")
    cfg = d / "aug.json"
    cfg.write_text(json.dumps({**TINY_RUN, "augment": {**STRONG, "elastic_spacing": 3.0}}))
    out = d / "full"
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    return data, cfg, out


def test_augmentations_change_training(augmented_run, tmp_path):
    data, _, out = augmented_run
    plain = tmp_path / "plain"
    flags = ["--data", str(data), "--out", str(plain), "--quiet", "--augment", "flip"]
    cfg = tmp_path / "plain.json"
    cfg.write_text(json.dumps(TINY_RUN))
    assert run_main(flags + ["--config", str(cfg)]) == 0
    assert losses(plain) != losses(out)
    assert json.loads((out / "config.json").read_text())["augment"]["ops"] == ALL


def test_resume_after_sigkill_with_augmentations_is_bit_identical(augmented_run, tmp_path):
    data, cfg, full = augmented_run
    out = tmp_path / "killed"
    script = killer_script(tmp_path / "killer.py", TINY_RUN["finetune"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(script), "--data", str(data), "--config", str(cfg), "--out", str(out),
                        "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    assert run_main(["--resume", str(out), "--quiet"]) == 0
    assert losses(out) == losses(full)

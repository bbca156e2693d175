"""The recipe's step minimum: a small training split gets more epochs (and a warmup stretched with them), a large
one keeps its epochs, and an epoch count a user writes is run as written."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stvit import cli
from stvit.training import engine
from stvit import train as T
from stvit.training import api as API
from stvit.config import Config, OptimConfig, preset

from helpers import TINY_RUN, write_tiny_data


def test_min_steps_stretches_epochs_and_warmup():
    o = OptimConfig(epochs=6, lr=1e-3, warmup_epochs=1.5, min_steps=1000, schedule="cosine")
    small = o.for_steps_per_epoch(27)  # 6 epochs of 27 steps = 162 < 1000
    assert small.epochs == 38 and small.epochs * 27 >= 1000 > (small.epochs - 1) * 27
    assert small.warmup_epochs == pytest.approx(1.5 * 38 / 6)  # the same share of the stage
    assert small.for_steps_per_epoch(27) == small  # applying it again changes nothing
    # the schedule keeps its shape in steps: warm-up ends, and the cosine reaches half, at the same share
    for share in (0.25, 0.5, 0.9):
        assert engine.lr_at(small, share * small.epochs) == pytest.approx(engine.lr_at(o, share * o.epochs))
    assert o.for_steps_per_epoch(200) == o  # 1,200 steps already
    assert OptimConfig(epochs=0, lr=1e-3, min_steps=1000).for_steps_per_epoch(10).epochs == 0  # a stage left off
    step = OptimConfig(epochs=20, lr=1e-3, schedule="step", step_size=14, min_steps=400).for_steps_per_epoch(10)
    assert (step.epochs, step.step_size) == (40, 28)


def test_for_training_split_counts_full_batches():
    cfg = Config().override({"train": {"batch_size": 8}, "pretrain": {"epochs": 1, "min_steps": 100},
                             "finetune": {"epochs": 2, "min_steps": 0}})
    out = cfg.for_training_split(215)  # 26 full batches of 8
    assert (out.pretrain.epochs, out.finetune.epochs) == (4, 2)
    assert cfg.for_training_split(8 * 100) == cfg


def test_written_epochs_are_run_as_written(tmp_path):
    cpu = torch.device("cpu")
    assert preset("demo").finetune.min_steps > 0
    cfg = cli.load_config("demo", None, {"finetune.epochs": 3}, cpu)
    assert (cfg.finetune.epochs, cfg.finetune.min_steps) == (3, 0)
    assert cfg.pretrain.min_steps == preset("demo").pretrain.min_steps  # the stage not written keeps it
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"pretrain": {"epochs": 2}, "finetune": {"epochs": 4, "min_steps": 50}}))
    cfg = cli.load_config("demo", str(f), {}, cpu)
    assert (cfg.pretrain.min_steps, cfg.finetune.min_steps) == (0, 50)


def test_a_new_run_plans_the_stretched_recipe(tmp_path):
    data = write_tiny_data(tmp_path / "tiny.npz", n_train=48)
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"model": {**TINY_RUN["model"]},
                             "data": {"val_fraction": 0.25}, "train": {"batch_size": 4},
                             "finetune": {"epochs": 2, "min_steps": 40}}))
    args = T.build_parser().parse_args(["--data", str(data), "--config", str(f), "--out", str(tmp_path / "r")])
    plan = API.plan(API.Request.from_flags(args))
    steps = len(plan.split["train"]) // 4
    assert plan.cfg.finetune.epochs == int(np.ceil(40 / steps)) > 2
    assert not (tmp_path / "r").exists()  # planned, nothing written

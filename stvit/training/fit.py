"""The one loop that runs any stage: epochs from where the run stopped, validation and the best checkpoint for a
stage that evaluates, a log line and a resumable checkpoint after every epoch.

    setup = stages.setup_stage(stage, cfg, device, ...)   # model, optimizer, scaler, (compiled) step
    fit(setup, run, splits, resume)                       # epochs -> log.jsonl, checkpoints/

One epoch of optimizer steps is `engine.train_one_epoch`; the batches are the split's `epoch_batches` (shuffled
and flipped by the stage's seed and the epoch) and `eval_batches`. Distributed, every rank runs the same loop on
its shard of each batch; rank 0 alone writes (`RunDir`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from stvit.training import distributed as DIST
from stvit.training import engine
from stvit import rng
from stvit.config import Config, DataConfig
from stvit.data.augment import flip_fraction
from stvit.data.batches import Split
from stvit.data.placement import place
from stvit.training.rundir import RunDir
from stvit.training.stages import StageSetup

LEAK_WARNING = ("WARNING: --select-on-test picks the best epoch on the TEST split (the seed's protocol). "
                "The reported test accuracy is optimistically biased: it leaks test information into model "
                "selection. Do not report it as a held-out result.")


@dataclass
class Splits:
    """The splits of a run: train and validation (carved from the file's training split) and the test split,
    materialized on first use (the final evaluation, or `--select-on-test`); resident on the device or streamed
    from a packed file, as `stvit.data.placement` chose (`placement`: its record)."""

    train: Split
    val: Split
    make_test: Callable[[], Split]
    index: dict[str, np.ndarray]  # positions of train and val in the file's training split
    _test: Split | None = field(default=None, repr=False)
    placement: dict[str, Any] | None = None  # where the data lives, why, the budget and the bytes

    @classmethod
    def build(cls, data, index: dict[str, np.ndarray], device: torch.device, dtype: torch.dtype,
              data_cfg: DataConfig | None = None) -> "Splits":
        """`data_cfg`: the placement and the streaming loader (`data.placement`, ...); None: the defaults."""
        d = data_cfg or DataConfig()
        placed = place(data, index, device, dtype, placement=d.placement, memory_share=d.memory_share,
                       workers=d.loader_workers, prefetch=d.loader_prefetch)
        return cls(placed.train, placed.val, placed.make_test, index, placement=placed.record)

    def test(self) -> Split:
        if self._test is None:
            self._test = self.make_test()
        return self._test


def predict_split(fn: Callable, model: torch.nn.Module, split: Split,
                  cfg: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(probs (N, C), labels (N,), positions (N,), mean cross-entropy) of a whole split through the evaluation
    function `fn`; under torchrun each rank predicts its shards and every rank gets the whole split."""
    world = DIST.world_size()
    batches = split.eval_batches(cfg.train.eval_batch_size, rank=DIST.rank(), world_size=world)
    return engine.predict(fn, model, batches, cfg.train.eval_batch_size // world)


def resumable_state(setup: StageSetup, epoch: int, index: dict[str, np.ndarray], **extra) -> dict[str, Any]:
    """What `--resume` needs: weights, optimizer, scaler, every RNG (gathered from every rank when distributed:
    `rng_per_rank`; `rng` is rank 0's, all one process needs), the config and the split. Collective."""
    state = rng.rng_state()
    if DIST.world_size() > 1:
        extra["rng_per_rank"] = DIST.all_gather_object(state)
    return {"stage": setup.stage.name, "epoch": epoch, **setup.state_dicts(), "scheduler": {"epoch": epoch},
            "rng": state, "config": setup.cfg.to_dict(), "split": {k: torch.from_numpy(v) for k, v in index.items()},
            **extra}


def restore_rng(resume: dict[str, Any], run: RunDir) -> None:
    """This rank's RNG state from the checkpoint; call it last, after anything that draws from the streams."""
    per_rank, world = resume.get("rng_per_rank"), DIST.world_size()
    if per_rank is not None and len(per_rank) == world:
        rng.set_rng_state(per_rank[DIST.rank()])
        return
    if DIST.is_main():
        rng.set_rng_state(resume["rng"])  # rank 0's streams; other ranks keep their fresh seeds
        if world > 1 or per_rank is not None:
            run.note(f"note: the checkpoint was written by {len(per_rank) if per_rank else 1} process(es), this run "
                     f"has {world}: dropout draws differ from an uninterrupted run")


def fit(setup: StageSetup, run: RunDir, splits: Splits, resume: dict[str, Any] | None = None, *,
        quiet: bool = False, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Run the epochs of `setup.stage` that are left (all of them, or those after `resume`'s epoch).

    on_epoch: called with each epoch's log record once the epoch is logged and saved; it may raise to stop the
    stage there (the tuner's pruning, `stvit.tune`)."""
    stage, cfg, t, optim = setup.stage, setup.cfg, setup.cfg.train, setup.optim
    start, best = 0, {"epoch": 0, "acc": -1.0}
    if resume is not None:
        start, best = resume["epoch"], dict(resume.get("best", best))
        restore_rng(resume, run)  # last: the setup above drew from the global streams (weight init)
    steps = len(splits.train) // t.batch_size
    select = "test" if t.select_on_test else "val"
    if stage.evaluates and t.select_on_test:
        run.note(LEAK_WARNING)
    for epoch in range(start, optim.epochs):
        setup.begin_epoch(epoch)
        batches = splits.train.epoch_batches(t.batch_size, epoch=epoch, seed=setup.seed,
                                             flip_fraction=flip_fraction(cfg), flip_axis=cfg.data.flip_axis,
                                             rank=DIST.rank(), world_size=DIST.world_size())
        stats = engine.train_one_epoch(setup.step, setup.model, setup.optimizer, setup.scaler, batches, steps, optim,
                                       epoch, log_every=t.log_every, max_nonfinite=t.max_nonfinite_steps,
                                       desc=f"{stage.name} {epoch + 1}/{optim.epochs}", quiet=quiet)
        record = {"stage": stage.name, "epoch": epoch + 1}
        record.update({"train_loss": stats.loss, "train_acc": stats.acc} if stage.evaluates else {"loss": stats.loss})
        record.update(lr=stats.lr, samples_per_s=stats.samples_per_s, seconds=stats.seconds,
                      skipped_steps=stats.skipped)
        if stage.evaluates:
            record.update(validate(setup, splits, test=t.select_on_test))
        if epoch == start:
            record["kernels"] = setup.ops.to_json()  # which ops ran fused, and why
            record["data_placement"] = splits.placement  # where the data lives, why, the budget and the bytes
            if t.compile:
                record["compile_seconds"] = setup.compile_seconds
        run.log(record)
        extra = {}
        if stage.evaluates:
            if record[f"{select}_acc"] > best["acc"]:
                best = {"epoch": epoch + 1, "acc": record[f"{select}_acc"]}
                run.save("best.pt", {"stage": stage.name, "epoch": epoch + 1, "model": setup.model.state_dict(),
                                     "config": cfg.to_dict(), "selected_on": select, "val_acc": record["val_acc"]})
            extra["best"] = best
        run.save("last.pt", resumable_state(setup, epoch + 1, splits.index, **extra))
        if on_epoch is not None:
            on_epoch(record)
    if stage.checkpoint:  # a finished stage resumed with no epoch left writes it again
        run.save(stage.checkpoint, {"stage": stage.name, "epoch": optim.epochs, "model": setup.model.state_dict(),
                                    "config": cfg.to_dict()})


def validate(setup: StageSetup, splits: Splits, test: bool) -> dict[str, float]:
    """Validation loss and accuracy (and the test split's, with `--select-on-test`)."""
    out = {}
    for name, split in (("val", splits.val),) + ((("test", splits.test()),) if test else ()):
        probs, y, _, out[f"{name}_loss"] = predict_split(setup.eval_fn, setup.model, split, setup.cfg)
        out[f"{name}_acc"] = float((probs.argmax(1) == y).mean())
    return out

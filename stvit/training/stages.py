"""A training stage as data, and the one setup that makes any stage ready to step.

A `Stage` says what a stage is: its name, the model it trains, the forward + loss of its step, whether each step
draws MAE masking noise, whether it is evaluated on the validation split after each epoch, and the checkpoint it
leaves when it ends. `setup_stage` builds, for any stage, run config and device: the model, its AdamW, the
GradScaler of the precision, the (compiled) step with the masking noise (random or attention-guided:
`stvit.masking`) and the batch augmentations drawn outside the graph, the data-parallel wrapper under torchrun,
and the evaluation function.

The trainer (`stvit.fit`), the profiler (`stvit.profile`) and the benchmarks (`bench/`) all build their steps
here, so what they time is what trains: the same graph, the same noise.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

import kernels.select

from stvit.training import distributed as DIST
from stvit.training import steps
from stvit.config import Config, ModelConfig, OptimConfig, stage_sections
from stvit.data.augment import Augment
from stvit.training.engine import make_optimizer, param_groups
from stvit.errors import UserError
from stvit.model.masking import MaskNoise, mask_noise
from stvit.model.vit import MAE, SpatioTemporalClassifier
from stvit.model.precision import Precision
from stvit.rng import stage_seed


@dataclass(frozen=True)
class Stage:
    """One training stage, the one table of what it is (every other place asks this record)."""

    name: str  # the config section (`cfg.optim(name)`), the log's `stage`, the checkpoints' `stage`
    order: int  # its place in a run: stages run, log and resume in this order
    seed_offset: int  # its per-epoch streams' seed: train.seed * 1000 + seed_offset (`rng.stage_seed`)
    checkpoint: str | None  # written when the stage ends (the pre-trained MAE), None: nothing
    build_model: Callable[[ModelConfig], nn.Module]
    loss: Callable  # steps.mae_loss or steps.classifier_loss: (model, precision, x, noise | y) -> loss [, logits]
    masks: bool  # each step draws MAE masking noise (`stvit.model.masking`)
    evaluates: bool  # after each epoch: validation accuracy, best.pt by it

    def seed(self, run_seed: int) -> int:
        """The seed of this stage's per-epoch streams (order, flips, augmentations, masks)."""
        return stage_seed(run_seed, self.seed_offset)

    @property
    def length_key(self) -> str:
        """The config key of its length (a resumed run may lengthen it, never shorten it)."""
        return f"{self.name}.epochs"


PRETRAIN = Stage("pretrain", 0, 1, "pretrain.pt", MAE, steps.mae_loss, masks=True, evaluates=False)
FINETUNE = Stage("finetune", 1, 2, None, SpatioTemporalClassifier, steps.classifier_loss, masks=False,
                 evaluates=True)
STAGES = {s.name: s for s in (PRETRAIN, FINETUNE)}  # in order
assert tuple(STAGES) == stage_sections(), "every stage has its config section, in the same order"


def order(name: str) -> int:
    """A stage's place in a run (for sorting log records and checkpoints)."""
    return STAGES[name].order


def choose_ops(cfg: Config, device: torch.device, precision: Precision) -> kernels.select.Selection:
    """The ops of a run (`kernels.select` for `model.kernels`, the device and the autocast dtype), once per process
    and setting: the self-check on a GPU runs once, before the first stage. In `fused` mode an op that fails its
    self-check is a UserError: the user asked for the kernels and they do not work here."""
    try:
        return _select(cfg.model.kernels, str(device), precision.dtype, tuple(cfg.model.patch))
    except kernels.select.KernelCheckError as e:
        raise UserError(f"--kernels fused: {e.op} failed its startup self-check on {device} ({e.reason}); "
                        "--kernels auto falls back to the reference for it") from None


@functools.lru_cache(maxsize=None)
def _select(mode: str, device: str, dtype: torch.dtype, patch: tuple[int, int]) -> kernels.select.Selection:
    return kernels.select.select(mode, device, dtype, patch=patch)


@dataclass
class StageSetup:
    """Everything it takes to step a stage: `step(x, y) -> (loss, logits or None)` is what the loop calls."""

    stage: Stage
    cfg: Config
    device: torch.device
    precision: Precision
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_fn: steps.Timed  # the (compiled) forward + loss
    step: Callable[[Tensor, Tensor], tuple[Tensor, Tensor | None]]
    eval_fn: steps.Timed | None  # (compiled) logits for evaluation, stages that evaluate
    noise: MaskNoise | None
    seed: int  # the stage's seed (`rng.stage_seed`): data order, flips, augmentations and masks
    ops: kernels.select.Selection  # which of the four ops are fused, and why
    augment: Augment | None = None  # the batch augmentations other than flips (`cfg.augment.ops`)

    @property
    def optim(self) -> OptimConfig:
        return self.cfg.optim(self.stage.name)

    def begin_epoch(self, epoch: int) -> None:
        """Call before each epoch's first step: the masking noise and the augmentations of the epoch."""
        if self.noise is not None:
            self.noise.begin_epoch(epoch)
        if self.augment is not None:
            self.augment.begin_epoch(epoch)

    def state_dicts(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict()}

    @property
    def compile_seconds(self) -> float | None:
        """Compile time of the first train step (forward and backward graphs) and of the first evaluation."""
        parts = [self.train_fn.compile_seconds, self.train_fn.backward_compile_seconds,
                 self.eval_fn.compile_seconds if self.eval_fn is not None else None]
        return None if self.train_fn.compile_seconds is None else sum(p for p in parts if p is not None)


def setup_stage(stage: Stage | str, cfg: Config, device: torch.device, *, precision: Precision | None = None,
                init: Callable[[nn.Module], None] | None = None, resume: dict | None = None,
                compile: bool | None = None, fused_adamw: bool = True) -> StageSetup:
    """Build `stage` for `cfg` on `device`.

    init: called on the new model before anything else sees it (the fine-tuning stage copies the pre-trained
    encoder in). resume: a checkpoint of this stage (model, optimizer and scaler states are loaded; the RNG is
    the caller's, restored last). compile: overrides `cfg.train.compile`. fused_adamw: False gives torch's
    default AdamW (the profiler's seed-style baseline); True the fused one on CUDA.
    """
    stage = STAGES[stage] if isinstance(stage, str) else stage
    precision = precision or Precision.resolve(cfg.train.precision, device)
    compile = cfg.train.compile if compile is None else compile
    optim = cfg.optim(stage.name)
    ops = choose_ops(cfg, device, precision)
    model = stage.build_model(cfg.model).to(device).use_ops(ops.ops)
    if init is not None:
        init(model)
    if fused_adamw:
        optimizer = make_optimizer(model, optim, device)
    else:
        optimizer = torch.optim.AdamW(param_groups(model, optim.weight_decay), lr=optim.lr, betas=tuple(optim.betas))
    scaler = precision.grad_scaler()
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["scaler"])
    train_fn = steps.build(stage.loss, model, precision, compile=compile, name=f"{stage.name} train step")
    parallel = DIST.data_parallel(train_fn, model)  # train_fn itself in one process
    seed = stage.seed(cfg.train.seed)
    noise = mask_noise(cfg, seed, device, model, precision, DIST.rank(), DIST.world_size()) if stage.masks else None
    augment = None  # flips happen as batches are gathered; the other augmentations here, outside the graph
    if set(cfg.augment.ops) - {"flip"}:
        augment = Augment(cfg, seed, device, DIST.rank(), DIST.world_size())

    def step(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
        x = x if augment is None else augment(x)
        return (parallel(x, noise(x)), None) if noise is not None else parallel(x, y)

    eval_fn = None
    if stage.evaluates:
        eval_fn = steps.build(steps.classifier_logits, model, precision, compile=compile, name=f"{stage.name} eval")
    return StageSetup(stage, cfg, device, precision, model, optimizer, scaler, train_fn, step, eval_fn, noise, seed,
                      ops, augment)

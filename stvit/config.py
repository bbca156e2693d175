"""Configuration: dataclasses for the model, the data and the recipe, and the named presets.

A `Config` is plain data (ints, floats, strings, tuples): it round-trips through JSON
(`Config.to_dict` / `Config.from_dict`) and is stored as such in checkpoints and run directories.

Presets (DESIGN.md sections 2-3):
- `paper`: the seed's write-up (d 192, 4 spatial + 2 temporal blocks, 4 heads, pre-training 80 epochs,
  fine-tune 20).
- `notebook`: the public notebook behind the seed's numbers (8 heads, pre-training 100 epochs at lr 1.5e-3,
  fine-tune lr 3e-4 with StepLR(14, 0.1), flips along axis 2).
- `demo`: the same code at small widths, depths, epochs and data, so it trains in minutes on 2 CPU cores; its
  stages run at least a fixed number of optimizer steps (`OptimConfig.min_steps`), so that a small data set gets
  as many steps as the built-in one (epochs derived from the data size).

Axis convention: a volume is (53, 63, 46) on SPM's 3 mm grid: axis 0 is left-right, axis 1
posterior-anterior, axis 2 inferior-superior. The model reads axis 0 as a sequence of 53 sagittal slices
(the seed calls it "time"; it is space).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

PRESETS = ("paper", "notebook", "demo")
STAGES = ("pretrain", "finetune")  # the training stages, in order; each has an OptimConfig section of its name
LEGACY_SECTIONS = {"mae": "pretrain"}  # old name -> name; configs that use the old one still load


@dataclass
class ModelConfig:
    volume: tuple[int, int, int] = (53, 63, 46)  # (slices, H, W): slices run left-right
    patch: tuple[int, int] = (7, 2)
    dim: int = 192
    depth: int = 4  # spatial encoder blocks
    heads: int = 4
    mlp_ratio: float = 4.0
    temporal_depth: int = 2  # blocks of the transformer over the slice sequence
    temporal_heads: int = 4
    temporal_mlp_ratio: float = 2.0
    head_hidden: int = 96
    num_classes: int = 2
    dropout: float = 0.1
    # MAE decoder (pre-training only)
    mask_ratio: float = 0.65
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    pos_init: str = "sincos"  # learnable position embeddings start as MAE's sin-cos table ("normal": N(0, init_std))
    kernels: str = "eager"  # "eager" (plain-torch reference ops) or "fused" (Triton kernels)

    def __post_init__(self):
        ph, pw = self.patch
        if ph < 1 or pw < 1 or ph > self.volume[1] or pw > self.volume[2]:
            raise ValueError(f"model.patch {tuple(self.patch)} does not fit a {self.volume[1]}x{self.volume[2]} slice")

    @property
    def grid(self) -> tuple[int, int]:
        """Patches per slice along (H, W): (9, 23) for 63x46 slices and 7x2 patches."""
        return self.volume[1] // self.patch[0], self.volume[2] // self.patch[1]

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid
        return gh * gw

    @property
    def patch_dim(self) -> int:
        return self.patch[0] * self.patch[1]

    @property
    def len_keep(self) -> int:
        """Visible patches per slice during MAE pre-training (MAE's `int(L * (1 - ratio))`)."""
        return int(self.num_patches * (1 - self.mask_ratio))


@dataclass
class DataConfig:
    path: str | None = None  # None: the built-in synthetic set (generated and cached)
    class_names: tuple[str, ...] = ("class0", "class1")
    val_fraction: float = 0.1  # carved from train, grouped by subject, stratified by label
    flip_fraction: float = 0.1  # share of training volumes flipped each epoch
    flip_axis: int = 0  # axis of the (53, 63, 46) volume: 0 = left-right
    zscore: bool = False  # per-volume z-scoring for inputs that are not already normalized
    nan_to_zero: bool = False  # repair NaN/Inf voxels instead of refusing the file
    synth_train: int = 3200  # size of the built-in synthetic set
    synth_test: int = 800
    synth_seed: int = 0
    max_train: int | None = None  # optional caps (demo preset, smoke runs)
    max_test: int | None = None


@dataclass
class OptimConfig:
    epochs: int
    lr: float
    warmup_epochs: float = 0.0
    schedule: str = "cosine"  # "cosine" (warmup + cosine, set every iteration), "step", "constant"
    step_size: int = 14  # StepLR, in epochs
    gamma: float = 0.1
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = None
    # At least this many optimizer steps in the stage (0: `epochs` as given). A small training split gets more
    # epochs, so that the recipe does not depend on the data size: see `OptimConfig.for_steps_per_epoch`.
    min_steps: int = 0

    def for_steps_per_epoch(self, steps_per_epoch: int) -> "OptimConfig":
        """This section for a training split of `steps_per_epoch` optimizer steps per epoch.

        When `epochs` epochs hold fewer than `min_steps` steps, the stage runs ceil(min_steps / steps_per_epoch)
        epochs instead, and its warmup (and StepLR's step size) stretch by the same factor: the schedule keeps its
        shape, counted in steps. A stage of 0 epochs stays off; a section that already holds `min_steps` steps is
        returned as it is (so applying it twice changes nothing)."""
        if self.epochs == 0 or self.min_steps <= self.epochs * steps_per_epoch:
            return self
        epochs = math.ceil(self.min_steps / max(steps_per_epoch, 1))
        f = epochs / self.epochs
        return dataclasses.replace(self, epochs=epochs, warmup_epochs=self.warmup_epochs * f,
                                   step_size=max(1, round(self.step_size * f)))


@dataclass
class TrainConfig:
    batch_size: int = 8  # volumes per step (x 53 slices for the spatial encoder)
    eval_batch_size: int = 16
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto, fp32, bf16, fp16
    compile: bool = True
    select_on_test: bool = False  # the seed's protocol: picks the epoch on the test set (leaks)
    max_nonfinite_steps: int = 3
    log_every: int = 10
    baseline: bool = True  # a logistic-regression baseline beside the model in the final evaluation (stvit.baseline)


@dataclass
class Config:
    preset: str = "paper"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=80, lr=1.5e-4, warmup_epochs=10))
    finetune: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=20, lr=3e-5, warmup_epochs=0))
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def for_training_split(self, n_train: int) -> "Config":
        """The recipe for a training split of `n_train` volumes: each stage's `min_steps` applied to its steps per
        epoch (`n_train // batch_size`, the last partial batch is dropped)."""
        steps = n_train // self.train.batch_size
        return dataclasses.replace(self, **{s: self.optim(s).for_steps_per_epoch(steps) for s in STAGES})

    def optim(self, stage: str) -> "OptimConfig":
        """The optimizer and schedule section of a training stage (`pretrain` or `finetune`)."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage '{stage}' (choose from {', '.join(STAGES)})")
        return getattr(self, stage)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        """Inverse of `to_dict`; unknown keys raise `ValueError` naming the key."""
        return _from_dict(cls, _renamed(d), "")

    def override(self, d: dict[str, Any]) -> "Config":
        """A copy with the (possibly partial, nested) values of `d` applied on top."""
        merged = _merge(self.to_dict(), _renamed(d), "")
        return Config.from_dict(merged)


def _renamed(d: Any) -> Any:
    """`d` with the legacy section names replaced (one deprecation line each); anything else as it is."""
    if not isinstance(d, dict):
        return d
    out = dict(d)
    for old, new in LEGACY_SECTIONS.items():
        if old in out:
            if new in out:
                raise ValueError(f"config sections '{old}' and '{new}' are the same section; keep '{new}'")
            log.warning("note: config section '%s' is deprecated, it is now called '%s' (read as such)", old, new)
            out[new] = out.pop(old)
    return out


def _merge(base: dict, upd: dict, where: str) -> dict:
    out = dict(base)
    for k, v in upd.items():
        if k not in base:
            raise ValueError(f"unknown config key '{where}{k}'")
        if isinstance(base[k], dict) and isinstance(v, dict):
            out[k] = _merge(base[k], v, f"{where}{k}.")
        else:
            out[k] = v
    return out


def _from_dict(cls, d: dict[str, Any], where: str):
    if not isinstance(d, dict):
        raise ValueError(f"config section '{where.rstrip('.') or 'root'}' must be an object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in d.items():
        if k not in fields:
            raise ValueError(f"unknown config key '{where}{k}'")
        ftype = fields[k].type
        sub = {"ModelConfig": ModelConfig, "DataConfig": DataConfig, "OptimConfig": OptimConfig,
               "TrainConfig": TrainConfig}.get(ftype if isinstance(ftype, str) else getattr(ftype, "__name__", ""))
        if sub is not None:
            v = _from_dict(sub, v, f"{where}{k}.")
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


def preset(name: str) -> Config:
    """The named preset (`paper`, `notebook`, `demo`)."""
    if name == "paper":
        return Config(preset="paper")
    if name == "notebook":
        return Config(
            preset="notebook",
            model=ModelConfig(heads=8, temporal_heads=8, decoder_heads=8),
            data=DataConfig(flip_axis=2),
            pretrain=OptimConfig(epochs=100, lr=1.5e-3, warmup_epochs=5),
            finetune=OptimConfig(epochs=20, lr=3e-4, schedule="step", step_size=14, gamma=0.1),
        )
    if name == "demo":
        # The same code, sized for a 2-core CPU: 21x23 patches (6 per slice instead of 207), one spatial and one
        # temporal block at width 64, 1,920 + 320 synthetic volumes. With 7x2 or 7x23 patches a model this small sat
        # at chance for 500-900 steps of batch 8 (its CLS has to learn where to attend before the loss moves); with
        # 21x23 patches it leaves chance in the first epoch or two (bench/results/2026-11-26-cpu-demo-calibration.md).
        # Sized for any data set, not only the built-in one (bench/results/2026-11-29-cpu-demo-recipe.md): each stage
        # runs at least the optimizer steps it runs on the 1,920-volume set (min_steps: 216 pre-training, 1,296
        # fine-tuning; a smaller training split gets more epochs, its warmup stretched with them), so 240 volumes
        # are not left ~150 steps in; and dropout 0.1, which a small split needs once it gets those steps (it
        # memorizes 224 volumes in ~10 epochs without it). On the synthetic set from 240 to 1,920 training
        # volumes this stays within 3 points of the logistic-regression baseline of the same split (3 seeds).
        return Config(
            preset="demo",
            model=ModelConfig(patch=(21, 23), dim=64, depth=1, heads=4, temporal_depth=1, temporal_heads=4,
                              head_hidden=32, dropout=0.1, decoder_dim=32, decoder_depth=1, decoder_heads=2),
            data=DataConfig(synth_train=1920, synth_test=320),
            pretrain=OptimConfig(epochs=1, lr=1.5e-3, warmup_epochs=0.2, min_steps=216),
            finetune=OptimConfig(epochs=6, lr=3e-4, warmup_epochs=1.0, min_steps=1296),
            train=TrainConfig(batch_size=8, compile=False),
        )
    raise ValueError(f"unknown preset '{name}' (choose from {', '.join(PRESETS)})")

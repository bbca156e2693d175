"""Configuration: dataclasses for the model, the data and the recipe, and the named presets.

A `Config` is plain data (ints, floats, strings, tuples): it round-trips through JSON
(`Config.to_dict` / `Config.from_dict`) and is stored as such in checkpoints and run directories.

Every value is checked when a config is built: its type against the field's annotation when it comes from JSON
(`from_dict`: a bool only from true/false, a number only from a number, a tuple of the right length; a string
"3e-4" is not a number) and its range in each section's `check` (a batch of at least 1, a fraction in [0, 1),
heads that divide the width, ...). A bad value raises `ConfigError` naming its key (`finetune.lr`), so the
command line can say `error: cfg.json: finetune.lr must be a number, got "3e-4"` before anything runs.

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
import json
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

PRESETS = ("paper", "notebook", "demo")
LEGACY_SECTIONS = {"mae": "pretrain"}  # old name -> name; configs that use the old one still load
KERNELS = ("auto", "fused", "eager")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("cosine", "step", "constant")
POS_INITS = ("sincos", "normal")
MASK_STRATEGIES = ("random", "attention")
AUGMENTS = ("flip", "elastic", "scale", "noise")  # the training augmentations, in the order they are applied
# Upper bounds of values that are absurd beyond them (the lower bounds are in each `check`): a size past these is a
# typo, and some would hang or fail only after files are written (a depth of 2**63 builds blocks forever). The
# model's total size is bounded against the machine's memory when a run is planned (`stvit.training.api`).
MAX_VOXELS_PER_AXIS = 1024  # volumes of the real data are 53 x 63 x 46; a 1 mm whole-brain grid is ~200 a side
MAX_DEPTH = 256  # blocks per transformer (the largest ViTs have 48)
MAX_MLP_RATIO = 64.0  # MLP width / model width (ViTs use 4)
MAX_SEED = 2**32 - 1  # numpy's global generator takes seeds below 2**32
MAX_PERMUTATIONS = 1_000_000  # train.permutations: a (resamples x subjects) float64 matrix stays in memory
PLACEMENTS = ("auto", "device", "stream")  # where a packed data set lives while training (data.placement)


class ConfigError(ValueError):
    """A config value of the wrong type or out of range; `key` is its dotted name (`finetune.lr`)."""

    def __init__(self, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(f"{key} {problem}")

    def within(self, section: str) -> "ConfigError":
        """The same error with its section's name in front of the key."""
        return ConfigError(f"{section}.{self.key}" if section else self.key, self.problem)


def show_value(v: Any) -> str:
    """A config value as the user wrote it in JSON (strings quoted, lists as lists)."""
    return json.dumps(list(v) if isinstance(v, tuple) else v) if isinstance(v, (str, bool, tuple, list)) or v is None \
        else repr(v)


def _num(x: float) -> str:
    """A bound as a message says it: whole numbers in full, others short."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def _need(ok: bool, key: str, problem: str, value: Any) -> None:
    if not ok:
        raise ConfigError(key, f"{problem}, got {show_value(value)}")


def at_least(obj, low: float, *keys: str) -> None:
    for k in keys:
        v = getattr(obj, k)
        _need(v >= low, k, f"must be >= {_num(low)}", v)


def at_most(obj, high: float, *keys: str) -> None:
    for k in keys:
        v = getattr(obj, k)
        _need(v <= high, k, f"must be <= {_num(high)}", v)


def in_range(obj, key: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> None:
    v = getattr(obj, key)
    ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    _need(ok, key, f"must be in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}", v)


def one_of(obj, key: str, choices: tuple) -> None:
    v = getattr(obj, key)
    _need(v in choices, key, f"must be one of {', '.join(map(str, choices))}", v)


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
    # "auto": the Triton kernels on a GPU, each after a startup self-check (the reference for an op that fails it,
    # with a warning), the reference on a CPU; "fused": the kernels, a failed self-check is an error; "eager": the
    # plain-torch reference ops everywhere
    kernels: str = "auto"

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Ranges and consistency (types are `from_dict`'s job); `ConfigError` naming the key."""
        _need(all(1 <= v <= MAX_VOXELS_PER_AXIS for v in self.volume), "volume",
              f"must be 3 sizes in [1, {MAX_VOXELS_PER_AXIS}]", list(self.volume))
        ph, pw = self.patch
        if ph < 1 or pw < 1 or ph > self.volume[1] or pw > self.volume[2]:
            raise ConfigError("patch", f"{tuple(self.patch)} does not fit a {self.volume[1]}x{self.volume[2]} slice")
        at_least(self, 1, "dim", "depth", "heads", "temporal_depth", "temporal_heads", "head_hidden", "decoder_dim",
                 "decoder_depth", "decoder_heads")
        at_least(self, 2, "num_classes")
        at_most(self, MAX_DEPTH, "depth", "temporal_depth", "decoder_depth")
        for width, heads in (("dim", "heads"), ("dim", "temporal_heads"), ("decoder_dim", "decoder_heads")):
            w, h = getattr(self, width), getattr(self, heads)
            _need(w % h == 0, heads, f"must divide {width} {w}", h)
        for k, width in (("mlp_ratio", "dim"), ("temporal_mlp_ratio", "dim"), ("decoder_mlp_ratio", "decoder_dim")):
            in_range(self, k, 0, MAX_MLP_RATIO, low_open=True)
            w = getattr(self, width)
            _need(int(w * getattr(self, k)) >= 1, k, f"leaves an MLP of no unit at {width} {w}", getattr(self, k))
        for k in ("norm_eps", "init_std"):
            in_range(self, k, 0, 1, low_open=True)
        in_range(self, "dropout", 0, 1, high_open=True)
        in_range(self, "mask_ratio", 0, 1, low_open=True, high_open=True)
        _need(self.len_keep >= 1, "mask_ratio", f"leaves no visible patch of {self.num_patches}", self.mask_ratio)
        one_of(self, "pos_init", POS_INITS)
        one_of(self, "kernels", KERNELS)

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
    # per-voxel standardization fitted on the training split alone (stvit.data.standardize): for files whose
    # volumes were not cleaned per voxel; an imported study (python -m stvit.data import) already is
    standardize: bool = False
    nan_to_zero: bool = False  # repair NaN/Inf voxels instead of refusing the file
    synth_train: int = 3200  # size of the built-in synthetic set
    synth_test: int = 800
    synth_seed: int = 0
    max_train: int | None = None  # optional caps (demo preset, smoke runs)
    max_test: int | None = None
    # voxels beyond +-max_abs are refused as a unit or scaling error (z-scored volumes hold a few units, raw scanner
    # intensities tens of thousands); None: no bound
    max_abs: float | None = 1e6
    # where a packed data file lives while training (stvit.data.placement): auto = resident on the device when the
    # training + validation rows fit memory_share of its free memory (host MemAvailable on a CPU), else streamed
    # from the file; device; stream. A file read whole (MAT, npz, NIfTI) is resident as dense volumes.
    placement: str = "auto"
    memory_share: float = 0.6  # leaves 40% of the device to the model, its activations and the allocator
    loader_workers: int = 2  # streaming: DataLoader worker processes reading rows (0: read in the main process)
    loader_prefetch: int = 4  # streaming: batches each worker reads ahead

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        _need(len(self.class_names) >= 1 and all(self.class_names), "class_names", "must be non-empty names",
              list(self.class_names))
        one_of(self, "placement", PLACEMENTS)
        in_range(self, "memory_share", 0, 1, low_open=True)
        at_least(self, 0, "loader_workers")
        at_least(self, 1, "loader_prefetch")
        in_range(self, "val_fraction", 0, 1, high_open=True)
        in_range(self, "flip_fraction", 0, 1)
        one_of(self, "flip_axis", (0, 1, 2))
        at_least(self, 1, "synth_train", "synth_test")
        in_range(self, "synth_seed", 0, MAX_SEED)
        for k in ("max_train", "max_test"):
            if getattr(self, k) is not None:
                at_least(self, 1, k)
        if self.max_abs is not None:
            _need(self.max_abs > 0, "max_abs", "must be > 0 (or null: no bound)", self.max_abs)


@dataclass
class AugmentConfig:
    """The augmentations of every training batch, on the device (`stvit.data.augment`): `ops` says which, applied
    in the order of `AUGMENTS` whatever the order of the list. Validation and test batches are never augmented.

    flip: `data.flip_fraction` of the volumes flipped along `data.flip_axis` each epoch (the seed's augmentation);
    elastic: a smooth random displacement of the brain inside its own mask; scale: each volume's intensities times
    a random factor; noise: Gaussian noise added inside the brain. Background voxels (exactly 0) stay exactly 0."""

    ops: tuple[str, ...] = ("flip",)
    elastic_magnitude: float = 1.5  # std of the displacement at each control point, in voxels
    elastic_spacing: float = 8.0  # voxels between control points of the displacement: larger is smoother
    scale_spread: float = 0.1  # intensity factor uniform in [1 - spread, 1 + spread], one per volume
    noise_std: float = 0.1  # std of the added noise, in the data's units (z-scored volumes: 1 = a voxel's spread)

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        for op in self.ops:
            _need(op in AUGMENTS, "ops", f"must name augmentations among {', '.join(AUGMENTS)}", list(self.ops))
        _need(len(set(self.ops)) == len(self.ops), "ops", "names an augmentation twice", list(self.ops))
        at_least(self, 0, "elastic_magnitude", "noise_std")
        at_least(self, 1, "elastic_spacing")
        in_range(self, "scale_spread", 0, 1, high_open=True)


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

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        at_least(self, 0, "epochs", "warmup_epochs", "min_steps", "min_lr", "weight_decay")
        _need(self.lr > 0, "lr", "must be > 0", self.lr)
        _need(self.min_lr <= self.lr, "min_lr", f"must be <= lr {self.lr:g} (the schedule decays from lr to min_lr)",
              self.min_lr)
        one_of(self, "schedule", SCHEDULES)
        at_least(self, 1, "step_size")
        in_range(self, "gamma", 0, 1, low_open=True)
        _need(all(0 <= b < 1 for b in self.betas), "betas", "must be two numbers in [0, 1)", list(self.betas))
        if self.grad_clip is not None:
            _need(self.grad_clip > 0, "grad_clip", "must be > 0 (or null: no clipping)", self.grad_clip)


@dataclass
class PretrainConfig(OptimConfig):
    """The pre-training stage's section: its optimizer and schedule, and how the MAE chooses the patches it removes
    (`stvit.masking`). How many it removes is the model's `mask_ratio` (it fixes the shapes); which ones is a
    recipe, so it lives here, in the one section that only pre-training reads.

    mask_strategy: "random" (MAE's uniform masking) or "attention": a share `mask_guide_ratio` of the removed
    patches of each slice is drawn without replacement in proportion to score ** (1 / mask_temperature), the
    score being the attention the patch receives in the current encoder; the rest are removed at random."""

    mask_strategy: str = "random"
    mask_guide_ratio: float = 0.5  # share of the removed patches chosen by attention (0: random masking)
    mask_temperature: float = 1.0  # lower: the most attended patches are removed more surely; higher: more uniform

    def check(self) -> None:
        super().check()
        one_of(self, "mask_strategy", MASK_STRATEGIES)
        in_range(self, "mask_guide_ratio", 0, 1)
        t = self.mask_temperature
        _need(math.isfinite(t) and t > 0, "mask_temperature", "must be a finite number > 0", t)


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
    # label permutations of the permutation test against chance, and subject resamples of the bootstrap intervals, in
    # the final statistics (stvit.training.stats); 10,000 take well under a second; 0: neither
    permutations: int = 10_000

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        at_least(self, 1, "batch_size", "eval_batch_size", "max_nonfinite_steps", "log_every")
        in_range(self, "seed", 0, MAX_SEED)
        at_least(self, 0, "seed")
        in_range(self, "permutations", 0, MAX_PERMUTATIONS)
        one_of(self, "device", DEVICES)
        one_of(self, "precision", PRECISIONS)


@dataclass
class Config:
    preset: str = "paper"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(epochs=80, lr=1.5e-4, warmup_epochs=10))
    finetune: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=20, lr=3e-5, warmup_epochs=0))
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        one_of(self, "preset", PRESETS)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def for_training_split(self, n_train: int) -> "Config":
        """The recipe for a training split of `n_train` volumes: each stage's `min_steps` applied to its steps per
        epoch (`n_train // batch_size`, the last partial batch is dropped)."""
        steps = n_train // self.train.batch_size
        return dataclasses.replace(self, **{s: self.optim(s).for_steps_per_epoch(steps) for s in stage_sections()})

    def optim(self, stage: str) -> "OptimConfig":
        """The optimizer and schedule section of a training stage (`pretrain` or `finetune`)."""
        if stage not in stage_sections():
            raise ValueError(f"unknown stage '{stage}' (choose from {', '.join(stage_sections())})")
        return getattr(self, stage)


    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        """Inverse of `to_dict`; unknown keys raise `ValueError` naming the key."""
        return _from_dict(cls, _renamed(d), "")

    def override(self, d: dict[str, Any]) -> "Config":
        """A copy with the (possibly partial, nested) values of `d` applied on top."""
        merged = _merge(self.to_dict(), _renamed(d), "")
        return Config.from_dict(merged)


def stage_sections() -> tuple[str, ...]:
    """The config sections that hold a training stage's optimizer and schedule (an `OptimConfig`), in the order of
    `Config`'s fields. The stages themselves (order, seed, checkpoint, model) are `stvit.training.stages.STAGES`."""
    hints = typing.get_type_hints(Config)
    return tuple(f.name for f in dataclasses.fields(Config)
                 if isinstance(hints[f.name], type) and issubclass(hints[f.name], OptimConfig))


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
    """An instance of dataclass `cls` from JSON-like `d`, every value checked against its field's type."""
    section = where.rstrip(".")
    if not isinstance(d, dict):
        raise ConfigError(section or "config", f"must be an object of keys, got {show_value(d)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in d.items():
        if k not in hints:
            raise ValueError(f"unknown config key '{where}{k}'")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = _from_dict(tp, v, f"{where}{k}.")
        else:
            kwargs[k] = _typed(v, tp, f"{where}{k}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise e.within(section) from None
    except TypeError as e:  # a required field is missing
        raise ConfigError(section or "config", f"is incomplete ({e})") from None


def _typed(v: Any, tp: Any, key: str) -> Any:
    """`v` as a value of type `tp` (JSON lists become tuples); ConfigError when it is not one."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _typed(v, inner[0], key)
    if tp is bool:
        _need(isinstance(v, bool), key, "must be true or false", v)
    elif tp is int:
        _need(isinstance(v, int) and not isinstance(v, bool), key, "must be a whole number", v)
    elif tp is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        _need(ok, key, "must be a number", v)
        return float(v)
    elif tp is str:
        _need(isinstance(v, str), key, "must be a string", v)
    elif origin is tuple:
        _need(isinstance(v, (list, tuple)), key, "must be a list", v)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed(x, args[0], f"{key}[{i}]") for i, x in enumerate(v))
        _need(len(v) == len(args), key, f"must be a list of {len(args)}", v)
        return tuple(_typed(x, a, f"{key}[{i}]") for i, (x, a) in enumerate(zip(v, args)))
    return v


def preset(name: str) -> Config:
    """The named preset (`paper`, `notebook`, `demo`)."""
    if name == "paper":
        return Config(preset="paper")
    if name == "notebook":
        return Config(
            preset="notebook",
            model=ModelConfig(heads=8, temporal_heads=8, decoder_heads=8),
            data=DataConfig(flip_axis=2),
            pretrain=PretrainConfig(epochs=100, lr=1.5e-3, warmup_epochs=5),
            finetune=OptimConfig(epochs=20, lr=3e-4, schedule="step", step_size=14, gamma=0.1),
        )
    if name == "demo":
        # The same code, sized for a 2-core CPU: 21x23 patches (6 per slice instead of 207), one spatial and one
        # temporal block at width 64, 1,920 + 320 synthetic volumes. With 7x2 or 7x23 patches a model this small sat
        # at chance for 500-900 steps of batch 8 (its CLS has to learn where to attend before the loss moves); with
        # 21x23 patches it leaves chance in the first epoch or two (bench/studies/2026-11-26-cpu-demo-calibration/).
        # Sized for any data set, not only the built-in one (bench/studies/2026-11-29-cpu-demo-recipe/): each stage
        # runs at least the optimizer steps it runs on the 1,920-volume set (min_steps: 216 pre-training, 1,296
        # fine-tuning; a smaller training split gets more epochs, its warmup stretched with them), so 240 volumes
        # are not left ~150 steps in. No dropout: 0.1 helped 240 and 480 volumes by 1-4 points but cost the
        # 1,920-volume set 4-6 points of test accuracy at 1,296 and at 2,592 fine-tune steps (same report).
        return Config(
            preset="demo",
            model=ModelConfig(patch=(21, 23), dim=64, depth=1, heads=4, temporal_depth=1, temporal_heads=4,
                              head_hidden=32, dropout=0.0, decoder_dim=32, decoder_depth=1, decoder_heads=2),
            data=DataConfig(synth_train=1920, synth_test=320),
            pretrain=PretrainConfig(epochs=1, lr=1.5e-3, warmup_epochs=0.2, min_steps=216),
            finetune=OptimConfig(epochs=6, lr=3e-4, warmup_epochs=1.0, min_steps=1296),
            train=TrainConfig(batch_size=8, compile=False),
        )
    raise ValueError(f"unknown preset '{name}' (choose from {', '.join(PRESETS)})")

"""`python -m stvit.train`: pre-training (MAE) -> fine-tuning -> one final test evaluation.

This file is the command line and the order of the stages. A stage is data (`stvit.stages`), run by one loop
(`stvit.fit`); the run directory owns every write (`stvit.rundir`); the final evaluation is `stvit.evaluation`.
The test split is touched once, at the end, with the checkpoint chosen on the validation split
(`--select-on-test` reproduces the seed's protocol, which picks the epoch on the test set, and says it leaks).

Run directory: config.json, split.json, log.jsonl (one line per epoch), checkpoints/{last,best,pretrain}.pt,
predictions.npz, metrics.json, figures/*.png.

Under `torchrun --nproc-per-node=N -m stvit.train ...` the same run is data-parallel (`stvit.distributed`): the
configured batch is the global batch, each rank steps on its shard of it, rank 0 alone writes the run directory,
and every rank resumes from it.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stvit import cli
from stvit import data as D
from stvit.training import distributed as DIST
from stvit import rng
from stvit.config import AUGMENTS, KERNELS, MASK_STRATEGIES, PLACEMENTS, PRESETS, Config, show_value
from stvit.training.engine import NonFiniteLoss
from stvit.errors import UserError, run_cli
from stvit.training.evaluation import evaluate
from stvit.training.fit import Splits, fit
from stvit.model.vit import MAE, transfer_encoder
from stvit.model.precision import CHOICES as PRECISIONS
from stvit.model.precision import Precision
from stvit.training.rundir import STAGE_ORDER, RunDir, WriteError
from stvit.training.stages import FINETUNE, PRETRAIN, choose_ops, setup_stage

log = logging.getLogger("stvit.train")
STAGE_CHOICES = ("all", "pretrain", "finetune", "evaluate")


EPILOG = """examples:
  python -m stvit.train                                  the built-in synthetic set, the preset for this machine
  python -m stvit.train --data HCP_emotion_4D_sample.mat --preset paper --out runs/paper-seed0
  python -m stvit.train --resume runs/paper-seed0        continue it exactly (--ft-epochs N to lengthen it)
  python -m stvit.train --stage finetune --out runs/r1   fine-tune the pre-trained encoder of an earlier run

exit codes: 0 done; 2 bad input (one 'error:' line, nothing written); 3 a non-finite loss stopped the run;
4 a file could not be written (disk full): continue with --resume. A run's files: see README, Training."""


def help_context(argv: list[str] | None) -> tuple[Config, torch.device]:
    """The config and device `--help` describes: those of the --preset, --device and --config on this command
    line (the machine's defaults otherwise); never an error, since help must always print."""
    pre = argparse.ArgumentParser(add_help=False)
    for flag in ("--preset", "--device", "--config"):
        pre.add_argument(flag)
    known, _ = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        device = cli.resolve_device(known.device if known.device in cli.DEVICES else None)
    except UserError:
        device = torch.device("cpu")
    name = known.preset if known.preset in PRESETS else None
    try:
        return cli.load_config(name, known.config, {}, device), device
    except UserError:
        return cli.load_config(name, None, {}, device), device


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line; its help gives each default as it is for the preset and device of `argv`."""
    cfg, device = help_context(argv)
    m, d, t = cfg.model, cfg.data, cfg.train
    here = f"{cfg.preset} preset on {device.type}"
    about = (__doc__.split("\n\n")[0].replace("\n", " ") + f" The defaults below are those of the {here}; "
             "--preset, --device and --config given with --help show others.")
    ap = argparse.ArgumentParser(prog="python -m stvit.train", description=textwrap.fill(about, 100), epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", metavar="FILE", help=(
        "the data set: a .mat (v5/v7/v7.3), .npz or HDF5 file with X_train, y_train, X_test, y_test (ids_* "
        "optional), or a NIfTI folder with labels.csv; default: the built-in synthetic set "
        f"({d.synth_train} + {d.synth_test} volumes here), generated once into $STVIT_CACHE"))
    ap.add_argument("--preset", choices=PRESETS, help=(
        "model and recipe: paper (the write-up: 7x2 patches, d 192), notebook (the public notebook's recipe), demo "
        f"(small, for a CPU); default: paper on a CUDA GPU, demo on a CPU (here: {cli.default_preset(device)})"))
    ap.add_argument("--config", metavar="FILE", help=(
        "a JSON file of config values over the preset, nested like a run's config.json (sections model, data, "
        "pretrain, finetune, train, augment); flags override it"))
    ap.add_argument("--out", metavar="DIR", help="the new run directory (absent or empty); default: "
                                                 "runs/<preset>-<date>-<time>")
    ap.add_argument("--resume", metavar="DIR", help=(
        "continue the run in DIR exactly, from its checkpoints/last.pt; a flag that would change the run is "
        "refused, --ft-epochs / --pretrain-epochs may lengthen it"))
    ap.add_argument("--stage", choices=STAGE_CHOICES, default="all", help=(
        "what to run: all (pre-training, fine-tuning, then the one test evaluation), pretrain, finetune (with "
        "--out DIR of an earlier pretrain run: from its pretrain.pt), evaluate (DIR's best.pt on the test split); "
        "default: all"))
    ap.add_argument("--device", choices=cli.DEVICES, help=(
        f"where to train: auto (a CUDA GPU if there is one), cpu or cuda; default: {t.device} (here: {device.type})"))
    ap.add_argument("--pretrain-epochs", "--mae-epochs", dest="pretrain_epochs", type=int, metavar="N", help=(
        f"epochs of MAE pre-training of the spatial encoder, 0 to skip it; default: {_epochs(cfg.pretrain)}"))
    ap.add_argument("--ft-epochs", type=int, metavar="N", help=f"epochs of fine-tuning; default: {_epochs(cfg.finetune)}")
    ap.add_argument("--batch-size", type=int, metavar="N", help=(
        f"volumes per optimizer step (each volume is {m.volume[0]} slices); under torchrun the global batch; "
        f"default: {t.batch_size}"))
    ap.add_argument("--seed", type=int, metavar="N", help=(
        f"seeds the validation split, initial weights, batch order, flips and masks; default: {t.seed}"))
    ap.add_argument("--kernels", choices=KERNELS, help=(
        "the patch-embedding, MAE gather/scatter and loss ops: auto (the Triton kernels on a GPU, each after a "
        "startup self-check, falling back to the reference with a warning; the reference on a CPU), fused (the "
        "kernels; a failed self-check stops the run) or eager (the plain-torch reference everywhere); "
        f"default: {m.kernels}"))
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help=(
        f"compile each stage's train step with torch.compile(fullgraph=True); default: {_on(t.compile)}"))
    ap.add_argument("--precision", choices=PRECISIONS, help=(
        "autocast: auto (bf16 on a GPU of compute capability 8.0+, fp16 with a GradScaler below, fp32 on a CPU), "
        f"fp32, bf16 or fp16; default: {t.precision}"))
    pre = cfg.pretrain
    ap.add_argument("--mask-strategy", choices=MASK_STRATEGIES, help=(
        "how pre-training chooses the patches it removes: random (MAE) or attention (a share of them drawn in "
        "proportion to the attention each patch receives in the current encoder, the rest at random; see README, "
        f"Mask strategy); default: {pre.mask_strategy}"))
    ap.add_argument("--mask-guide-ratio", type=float, metavar="R", help=(
        "with --mask-strategy attention: the share of each slice's removed patches chosen by attention, in [0, 1]; "
        f"default: {pre.mask_guide_ratio:g}"))
    ap.add_argument("--mask-temperature", type=float, metavar="T", help=(
        "with --mask-strategy attention: a patch is chosen with probability ~ score ** (1/T); lower T follows the "
        f"attention more closely, higher T is closer to random; default: {pre.mask_temperature:g}"))
    ap.add_argument("--class-names", nargs="+", metavar="NAME", help=(
        f"names of the labels 0, 1, ... in metrics and figures; default: {' '.join(d.class_names)}"))
    ap.add_argument("--flip-axis", type=int, choices=(0, 1, 2), help=(
        f"volume axis of the flip augmentation ({100 * d.flip_fraction:.0f}%% of the training volumes each epoch): "
        f"0 left-right, 1 posterior-anterior, 2 inferior-superior; default: {d.flip_axis}"))
    ap.add_argument("--augment", nargs="*", choices=AUGMENTS, metavar="OP", help=(
        f"the training augmentations, among {', '.join(AUGMENTS)}: flip (as --flip-axis says), elastic (a smooth "
        "random deformation inside the brain), scale (intensities times a random factor), noise (Gaussian, inside "
        "the brain); their strengths: the config's augment section; the flag alone: none; "
        f"default: {' '.join(cfg.augment.ops) or 'none'}"))
    ap.add_argument("--data-placement", choices=PLACEMENTS, help=(
        "where a packed data file (python -m stvit.data pack) lives while training: auto (its rows resident on the "
        f"device when they fit {d.memory_share:g} of its free memory (data.memory_share; host memory on a CPU), else "
        "streamed from the file by worker processes), device or stream; the same batches either way; a file read "
        f"whole is resident as dense volumes; default: {d.placement}"))
    ap.add_argument("--nan-to-zero", action="store_true", default=None,
                    help="set NaN/Inf voxels to 0 instead of refusing the file; default: refuse")
    ap.add_argument("--select-on-test", action="store_true", default=None, help=(
        "pick the best epoch on the TEST split (the seed notebook's protocol); the result leaks and is marked so; "
        "default: the validation split"))
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=None, help=(
        "a logistic-regression baseline on the in-brain voxels of the same training split, fitted and tested beside "
        f"the model in the final evaluation (stvit.baseline); default: {_on(t.baseline)}"))
    ap.add_argument("--explain", action="store_true", help=(
        "after the final evaluation, write brain maps of the test split to RUN/maps (python -m stvit.explain with "
        "its defaults; needs pip install 'stvit[maps]'); default: off"))
    ap.add_argument("--quiet", action="store_true",
                    help="no progress bars (they are off anyway when stderr is not a terminal)")
    return ap


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _epochs(section) -> str:
    """A stage's default length, as --help says it."""
    if not section.min_steps:
        return str(section.epochs)
    return (f"{section.epochs}, or more on a small training split: at least {section.min_steps} optimizer steps "
            "(min_steps); a number given here is run as given")


# the flags that set a config value: flag -> (argparse dest, config key)
FLAGS = {"--data": ("data", "data.path"), "--class-names": ("class_names", "data.class_names"),
         "--flip-axis": ("flip_axis", "data.flip_axis"), "--nan-to-zero": ("nan_to_zero", "data.nan_to_zero"),
         "--data-placement": ("data_placement", "data.placement"),
         "--augment": ("augment", "augment.ops"),
         "--pretrain-epochs": ("pretrain_epochs", "pretrain.epochs"), "--ft-epochs": ("ft_epochs", "finetune.epochs"),
         "--kernels": ("kernels", "model.kernels"), "--batch-size": ("batch_size", "train.batch_size"),
         "--seed": ("seed", "train.seed"), "--device": ("device", "train.device"),
         "--compile": ("compile", "train.compile"), "--precision": ("precision", "train.precision"),
         "--select-on-test": ("select_on_test", "train.select_on_test"), "--baseline": ("baseline", "train.baseline"),
         "--mask-strategy": ("mask_strategy", "pretrain.mask_strategy"),
         "--mask-guide-ratio": ("mask_guide_ratio", "pretrain.mask_guide_ratio"),
         "--mask-temperature": ("mask_temperature", "pretrain.mask_temperature")}


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """{config key: value} of the flags given on the command line."""
    out = {}
    for dest, key in FLAGS.values():
        v = getattr(args, dest)
        if v is not None:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def resolve_config(args: argparse.Namespace) -> Config:
    """Preset, then the JSON config file, then the flags (each overrides the one before); checked."""
    cfg = cli.load_config(args.preset, args.config, flag_values(args), cli.resolve_device(args.device),
                          {key: flag for flag, (_, key) in FLAGS.items()})
    if len(cfg.data.class_names) != cfg.model.num_classes:
        raise UserError(f"--class-names: {len(cfg.data.class_names)} names for {cfg.model.num_classes} classes")
    return cfg


def check_world(cfg: Config) -> None:
    """Under torchrun the configured batches are global: each must split evenly over the processes."""
    w = DIST.world_size()
    for name, v in (("--batch-size", cfg.train.batch_size), ("train.eval_batch_size", cfg.train.eval_batch_size)):
        if v % w:
            raise UserError(f"{name} {v} is not a multiple of the {w} processes (each takes {name} / {w} volumes)")


def load_data(cfg: Config) -> D.HCPData:
    path = cfg.data.path
    if path is None:
        dc = cfg.data
        path = D.builtin_dataset_path(dc.synth_train, dc.synth_test, dc.synth_seed)
    data = D.open_dataset(path, volume_shape=tuple(cfg.model.volume), num_classes=cfg.model.num_classes,
                          nan_to_zero=cfg.data.nan_to_zero, zscore=cfg.data.zscore, max_abs=cfg.data.max_abs,
                          placement=cfg.data.placement)
    caps = {"train": cfg.data.max_train, "test": cfg.data.max_test}
    for split, cap in caps.items():
        if cap is not None:
            X, y, ids = data.split(split)
            data = dataclasses.replace(data, **{f"X_{split}": X[:cap], f"y_{split}": y[:cap],
                                                f"ids_{split}": None if ids is None else ids[:cap]})
    return data


def make_split(cfg: Config, data: D.HCPData) -> dict[str, np.ndarray]:
    tr, va = D.split_train_val(data.ids_train, data.y_train, cfg.data.val_fraction, cfg.train.seed)
    if len(va) == 0 or len(tr) == 0:
        raise UserError(f"the validation fraction {cfg.data.val_fraction} leaves an empty split", data.source)
    return {"train": tr, "val": va}


def check_split(cfg: Config, split: dict[str, np.ndarray], data: D.HCPData) -> None:
    """The training split must hold at least one batch (a step drops the last partial batch)."""
    n = len(split["train"])
    if n < cfg.train.batch_size:
        raise UserError(f"the training split has {n} volumes, fewer than one batch of {cfg.train.batch_size}",
                        data.source)


@dataclass
class Plan:
    """What a run will do, every input read and checked before anything is written."""

    cfg: Config
    run_dir: Path
    data: D.HCPData
    split: dict[str, np.ndarray]
    resume: dict[str, Any] | None  # the checkpoint a --resume continues from
    stage: str
    notes: list[str]  # what a continued run lengthens ("finetune.epochs 3 -> 5")
    fingerprint: tuple  # the run directory's state when planned (`RunDir.fingerprint`)


# how a run computes, not what it is (a stage's min_steps is already spent in its epochs, see `plan_new`)
FREE = ("train.device", "train.compile", "train.log_every", "pretrain.min_steps", "finetune.min_steps",
        "data.placement", "data.memory_share", "data.loader_workers", "data.loader_prefetch")
LENGTHS = {"pretrain.epochs": "pretrain", "finetune.epochs": "finetune"}  # a resumed run may get longer


def flatten(d: dict, where: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{where}{k}."))
        else:
            out[f"{where}{k}"] = v
    return out


def requested(args: argparse.Namespace, cfg: Config, where: Path) -> tuple[Config, dict[str, tuple[Any, Any, str]]]:
    """An existing run's `cfg` with what the command line asks for (`--preset`, `--config`, flags) applied, and
    the changes: key -> (run's value, asked value, what asked for it)."""
    said, by = {}, {}
    if args.config:
        for key, v in flatten(cli.read_config_file(args.config)).items():
            said[key], by[key] = v, f"{key} in {args.config}"
    given = flag_values(args)
    flag_of = {key: flag for flag, (_, key) in FLAGS.items()}
    for key, v in given.items():
        said[key], by[key] = v, flag_of[key]
    try:
        wanted = cfg.override(cli.exact_epochs(cli.nested(said))) if said else cfg
    except ValueError as e:
        raise UserError(str(e), args.config or where) from None
    old, new = flatten(cfg.to_dict()), flatten(wanted.to_dict())
    changes = {k: (old[k], new[k], by.get(k, k)) for k in new if new[k] != old[k]}
    if args.preset and args.preset != cfg.preset:
        changes["preset"] = (cfg.preset, args.preset, "--preset")
    return wanted, changes


def allow(changes: dict[str, tuple[Any, Any, str]], where: Path, *, may_change=(), may_lengthen=()) -> list[str]:
    """Refuse a change that would make the run another run, naming what asked for it; returns the lengthenings."""
    notes = []
    for key, (old, new, by) in changes.items():
        if key in FREE or any(key == m or key.startswith(m + ".") for m in may_change):
            continue
        if key in may_lengthen and new > old:
            notes.append(f"{key} {old} -> {new}")
            continue
        why = "would shorten it" if key in LENGTHS and new < old else "would make it another run"
        raise UserError(f"{by}: {show_value(new)} differs from this run's {show_value(old)}; continuing a run with it {why} "
                        "(start a new run with --out)", where)
    return notes


def plan_resume(args: argparse.Namespace, data: D.HCPData | None = None) -> Plan:
    run = RunDir(args.resume)
    if not (run.path / "config.json").exists() or not run.has("last.pt"):
        raise UserError("not a run directory to resume (needs config.json and checkpoints/last.pt)", run.path)
    resume = run.load("last.pt")
    cfg = Config.from_dict(resume["config"])
    cfg, changes = requested(args, cfg, run.path)
    stage_left = [s for s in LENGTHS.values() if STAGE_ORDER[s] >= STAGE_ORDER[resume["stage"]]]
    notes = allow(changes, run.path, may_lengthen=[k for k, s in LENGTHS.items() if s in stage_left])
    data = load_data(cfg) if data is None else data
    split = {k: v.numpy() for k, v in resume["split"].items()}
    return Plan(cfg, run.path, data, split, resume, args.stage, notes, run.fingerprint())


def plan_new(args: argparse.Namespace, data: D.HCPData | None = None) -> Plan:
    cfg = resolve_config(args)
    out = Path(args.out) if args.out else Path("runs") / f"{cfg.preset}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    cli.check_writable(out, "directory")
    run, notes = RunDir(out), []
    if not run.is_empty():
        if args.stage == "finetune" and run.has("pretrain.pt") and not run.has("best.pt"):
            need, may_change = "pretrain.pt", ("finetune", "train.eval_batch_size", "train.select_on_test")
        elif args.stage == "evaluate" and run.has("best.pt"):
            need, may_change = "best.pt", ("train.eval_batch_size",)
        else:
            raise UserError("run directory exists and is not empty; choose another --out, or --resume it", out)
        run.load(need)  # a truncated or foreign checkpoint stops here, before anything is written
        if (out / "config.json").exists():  # later stages of an earlier run keep that run's config
            try:
                earlier = Config.from_dict(cli.read_config_file(out / "config.json"))
            except ValueError as e:
                raise UserError(str(e), out / "config.json") from None
            cfg, changes = requested(args, earlier, out)
            notes = allow(changes, out, may_change=may_change)
    data = load_data(cfg) if data is None else data
    split = make_split(cfg, data)
    if not (out / "config.json").exists():
        # the stages' lengths for this training split (min_steps); an earlier run's config.json already holds them
        cfg = cfg.for_training_split(len(split["train"]))
    return Plan(cfg, out, data, split, None, args.stage, notes, run.fingerprint())


def plan_run(args: argparse.Namespace, data: D.HCPData | None = None) -> Plan:
    """Read and check everything a user gave (every rank; nothing written), and choose the ops (on a GPU, the
    kernels' self-check runs here: in `fused` mode a failure stops the run before anything is written). `data`:
    train on this data set instead of reading the file the config names (a cross-validation fold, `stvit.cv`)."""
    plan = plan_resume(args, data) if args.resume else plan_new(args, data)
    if args.explain:
        from stvit import explain

        if plan.stage == "pretrain":
            raise UserError("--explain maps the classifier after the final evaluation: not with --stage pretrain")
        explain.require_packages(explain.METHODS)
        explain.check_out(plan.run_dir / "maps")
    check_world(plan.cfg)
    check_split(plan.cfg, plan.split, plan.data)
    device = DIST.local_device(cli.resolve_device(plan.cfg.train.device))
    choose_ops(plan.cfg, device, Precision.resolve(plan.cfg.train.precision, device))
    return plan


def pretrained_encoder(run: RunDir, cfg: Config):
    """The fine-tuning stage's `init`: copy the pre-trained encoder in (None, with a note, when there is none)."""
    if not run.has("pretrain.pt"):
        run.note("note: no pre-training checkpoint in the run directory; fine-tuning from scratch")
        return None

    def init(classifier) -> None:
        mae = MAE(cfg.model)
        mae.load_state_dict(run.load("pretrain.pt")["model"])
        transfer_encoder(mae, classifier)

    return init


def fit_stages(cfg: Config, run: RunDir, splits: Splits, device, precision: Precision, *, stage: str = "all",
               resume: dict | None = None, quiet: bool = False, on_epoch=None) -> None:
    """The training stages `stage` asks for, in order: pre-training, then fine-tuning from its encoder; `resume`
    continues the stage of its checkpoint. on_epoch: `fit`'s per-epoch callback (`stvit.tune`)."""
    if stage in ("all", "pretrain") and cfg.pretrain.epochs > 0 and (resume is None or resume["stage"] == "pretrain"):
        # a finished pre-training resumes to zero epochs and (re)writes pretrain.pt
        setup = setup_stage(PRETRAIN, cfg, device, precision=precision, resume=resume)
        fit(setup, run, splits, resume, quiet=quiet, on_epoch=on_epoch)
        resume = None
    if stage in ("all", "finetune"):
        resume = resume if resume is not None and resume["stage"] == "finetune" else None
        init = None if resume is not None else pretrained_encoder(run, cfg)
        setup = setup_stage(FINETUNE, cfg, device, precision=precision, init=init, resume=resume)
        fit(setup, run, splits, resume, quiet=quiet, on_epoch=on_epoch)


def run_stages(plan: Plan, run: RunDir, splits: Splits, device, precision: Precision, quiet: bool) -> dict | None:
    """The stages the plan asks for, in order; the final evaluation's metrics (None without one)."""
    cfg, stage = plan.cfg, plan.stage
    fit_stages(cfg, run, splits, device, precision, stage=stage, resume=plan.resume, quiet=quiet)

    def draw(folder):
        from stvit.training.figures import plot_curves  # matplotlib, only when figures are drawn

        plot_curves(run.records(), folder)

    run.write_figure(draw)
    if stage in ("all", "finetune", "evaluate"):
        return evaluate(run, cfg, splits, device, precision, plan.data)
    return None


def claim(plan, run: RunDir) -> None:
    """Lock the run directory (rank 0) and check it is still as `plan.fingerprint` says (a run's Plan, or a
    cross-validation's): another process may have started a run there, or finished one, between the plan and the
    lock."""
    if not run.main:
        return
    run.lock()
    if run.fingerprint() != plan.fingerprint:
        run.close()
        raise UserError("the run directory changed while this run was starting (another stvit process?); "
                        "nothing was written", run.path)


def start_run_dir(plan: Plan, run: RunDir) -> None:
    """A new run writes its config and split; a resumed one drops log lines past its checkpoint; a lengthened
    one keeps its new length in config.json and says so in the log."""
    if plan.notes:
        run.note("note: continuing the run " + ", ".join(plan.notes))
        run.annotate_next("extended", ", ".join(plan.notes))
        run.write_json("config.json", plan.cfg.to_dict())
    if plan.resume is not None:
        run.truncate_log(plan.resume["stage"], plan.resume["epoch"])
    elif run.main and not (run.path / "config.json").exists():
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_json("config.json", plan.cfg.to_dict())
        run.write_split(plan.split, ids=plan.data.ids_train, seed=plan.cfg.train.seed,
                        fraction=plan.cfg.data.val_fraction)
    DIST.barrier()


def main(argv: list[str] | None = None) -> int:
    return in_process_group(_main, build_parser(argv).parse_args(argv))


def in_process_group(fn, args: argparse.Namespace) -> int:
    """`fn(args)` inside the torchrun process group (none without torchrun): a UserError is raised by rank 0
    (run_cli prints it) and ends every other rank with exit code 2."""
    DIST.init()  # torchrun with WORLD_SIZE > 1: join the process group; otherwise nothing
    try:
        return fn(args)
    except UserError:
        if DIST.is_main():
            raise  # run_cli prints the one line
        return 2  # every rank stops with the same error (`DIST.agree`); rank 0 alone says it
    finally:
        DIST.teardown()


def agreed_plan(args: argparse.Namespace, data: D.HCPData | None = None) -> tuple[Plan, RunDir]:
    """`plan_run` on every rank, and the run directory claimed (rank 0 holds its lock); the first rank's UserError
    raised on all of them (collective). `data`: see `plan_run`."""
    error, plan, run = None, None, None
    try:
        plan = plan_run(args, data)
        run = RunDir(plan.run_dir, echo=DIST.is_main())
        claim(plan, run)
    except UserError as e:
        error = e
    DIST.agree(error)  # every rank checked the input (rank 0 holds the lock) before rank 0 writes anything
    return plan, run


def _main(args: argparse.Namespace) -> int:
    """The command: exit code 0, 3 (a non-finite loss stopped the run) or 4 (a write failed)."""
    logging.basicConfig(level=logging.INFO if DIST.is_main() else logging.WARNING, format="%(message)s")
    plan, run = agreed_plan(args)
    say = print if run.main else (lambda *a, **k: None)
    quiet = args.quiet or not sys.stderr.isatty() or not run.main
    t0 = time.perf_counter()
    try:
        m = run_plan(plan, run, quiet)
    except NonFiniteLoss as e:
        last = run.checkpoint("last.pt")
        kept = f"; last good checkpoint: {last}" if last.exists() else ""
        say(f"error: training stopped: {e}{kept}", file=sys.stderr)
        return 3
    except WriteError as e:
        last = run.checkpoint("last.pt")
        then = (f"the last good checkpoint {last} is intact: make room and continue with "
                f"python -m stvit.train --resume {run.path}") if last.is_file() else "no checkpoint was written yet"
        say(f"error: {e}; {then}", file=sys.stderr)
        return 4
    if m is None:
        return 0
    say(f"{result_line(m)}; total {time.perf_counter() - t0:.0f} s; {run.path / 'metrics.json'}")
    if args.explain and run.main:
        from stvit import explain

        device = DIST.local_device(cli.resolve_device(plan.cfg.train.device))
        return explain.main([str(run.path), "--device", device.type, *(["--quiet"] if quiet else [])],
                            data=plan.data)
    return 0


def result_line(m: dict) -> str:
    """The model's test metrics beside the baseline's, on one line."""
    def scores(t):
        auc = "n/a" if t["roc_auc"] is None else f"{t['roc_auc']:.3f}"
        lost = f", {t['n_nonfinite']} without a finite prediction" if t.get("n_nonfinite") else ""
        return f"accuracy {t['accuracy']:.3f}, ROC-AUC {auc}{lost}"

    line = (f"test: {scores(m['test'])} on {m['test']['n']} volumes (best epoch {m['best_epoch']} by "
            f"{m['selected_on']} accuracy; val accuracy {m['val']['accuracy']:.3f})")
    b = m.get("baseline")
    if b is not None:
        line += f" | baseline (logistic regression, C {b['C']:g}): {scores(b)}"
    return line


def run_plan(plan: Plan, run: RunDir, quiet: bool = False) -> dict | None:
    """Carry out a checked and claimed plan (`agreed_plan`): the run directory, the stages, the final evaluation;
    its metrics (None without an evaluation). Releases the run directory. Raises NonFiniteLoss when training stops
    on a non-finite loss, WriteError when a file cannot be written."""
    try:
        start_run_dir(plan, run)
        cfg = plan.cfg
        rng.seed_everything(DIST.rank_seed(cfg.train.seed, DIST.rank()))
        device = DIST.local_device(cli.resolve_device(cfg.train.device))
        precision = Precision.resolve(cfg.train.precision, device)
        splits = Splits.build(plan.data, plan.split, device, precision.storage_dtype, cfg.data)
        world = DIST.world_size()
        procs = f", {world} processes of {cfg.train.batch_size // world} volumes" if world > 1 else ""
        fused = ", ".join(choose_ops(cfg, device, precision).fused) or "none"
        steps = len(splits.train) // cfg.train.batch_size
        say = print if run.main else (lambda *a, **k: None)
        say(f"run directory: {run.path}  (preset {cfg.preset}, device {device}{procs}, precision {precision.name}, "
            f"kernels {cfg.model.kernels} (fused: {fused}), compile {cfg.train.compile}; data {plan.data.source}: "
            f"{len(splits.train)} train / {len(splits.val)} val / {len(plan.data.y_test)} test volumes; "
            f"{cfg.pretrain.epochs} pretrain + {cfg.finetune.epochs} finetune epochs of {steps} steps; "
            f"{D.placement_line(splits.placement)})", flush=True)
        return run_stages(plan, run, splits, device, precision, quiet or not run.main)
    finally:
        run.close()


if __name__ == "__main__":
    sys.exit(run_cli(main))

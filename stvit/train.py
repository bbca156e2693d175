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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import cli
from . import data as D
from . import distributed as DIST
from . import rng
from .config import PRESETS, Config
from .engine import NonFiniteLoss
from .errors import UserError, run_cli
from .evaluation import evaluate
from .fit import Splits, fit
from .model import MAE, transfer_encoder
from .precision import CHOICES as PRECISIONS
from .precision import Precision
from .rundir import RunDir
from .stages import FINETUNE, PRETRAIN, setup_stage

log = logging.getLogger("stvit.train")
STAGE_CHOICES = ("all", "pretrain", "finetune", "evaluate")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m stvit.train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", help="data file (.mat v5/v7/v7.3, .npz) or NIfTI folder; default: the built-in "
                                   "synthetic set (generated once and cached)")
    ap.add_argument("--preset", choices=PRESETS, help="default: paper on CUDA, demo on CPU")
    ap.add_argument("--config", help="JSON file of config values (nested like config.json) applied over the preset")
    ap.add_argument("--out", help="run directory (default: runs/<preset>-<time>)")
    ap.add_argument("--resume", metavar="DIR", help="continue the run in DIR from checkpoints/last.pt")
    ap.add_argument("--stage", choices=STAGE_CHOICES, default="all")
    ap.add_argument("--device", choices=cli.DEVICES)
    ap.add_argument("--pretrain-epochs", "--mae-epochs", dest="pretrain_epochs", type=int)
    ap.add_argument("--ft-epochs", type=int)
    ap.add_argument("--batch-size", type=int, help="volumes per optimizer step")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--kernels", choices=("fused", "eager"))
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--precision", choices=PRECISIONS)
    ap.add_argument("--class-names", nargs="+", help="names of the label values 0, 1, ...")
    ap.add_argument("--flip-axis", type=int, choices=(0, 1, 2))
    ap.add_argument("--nan-to-zero", action="store_true", default=None, help="repair NaN/Inf voxels to 0")
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=None,
                    help="the logistic-regression baseline beside the model in the final evaluation "
                         "(stvit.baseline; None: the config's train.baseline, on in every preset)")
    ap.add_argument("--select-on-test", action="store_true", default=None,
                    help="pick the best epoch on the test split (the seed's protocol; leaks)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def resolve_config(args: argparse.Namespace) -> Config:
    """Preset, then the JSON config file, then the flags (each overrides the one before); checked."""
    flags = {
        "data": {"path": args.data, "class_names": tuple(args.class_names) if args.class_names else None,
                 "flip_axis": args.flip_axis, "nan_to_zero": args.nan_to_zero},
        "pretrain": {"epochs": args.pretrain_epochs}, "finetune": {"epochs": args.ft_epochs},
        "model": {"kernels": args.kernels},
        "train": {"batch_size": args.batch_size, "seed": args.seed, "device": args.device, "compile": args.compile,
                  "precision": args.precision, "select_on_test": args.select_on_test, "baseline": args.baseline},
    }
    cfg = cli.load_config(args.preset, args.config, flags, cli.resolve_device(args.device))
    for name, v in (("--pretrain-epochs", cfg.pretrain.epochs), ("--ft-epochs", cfg.finetune.epochs)):
        if v < 0:
            raise UserError(f"{name} must be >= 0, got {v}")
    if cfg.train.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {cfg.train.batch_size}")
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
    data = D.load_dataset(path, volume_shape=tuple(cfg.model.volume), num_classes=cfg.model.num_classes,
                          nan_to_zero=cfg.data.nan_to_zero, zscore=cfg.data.zscore)
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


def plan_resume(args: argparse.Namespace, data: D.HCPData | None = None) -> Plan:
    run = RunDir(args.resume)
    if not (run.path / "config.json").exists() or not run.has("last.pt"):
        raise UserError("not a run directory to resume (needs config.json and checkpoints/last.pt)", run.path)
    resume = run.load("last.pt")
    cfg = Config.from_dict(resume["config"])
    data = load_data(cfg) if data is None else data
    return Plan(cfg, run.path, data, {k: v.numpy() for k, v in resume["split"].items()}, resume, args.stage)


def plan_new(args: argparse.Namespace, data: D.HCPData | None = None) -> Plan:
    cfg = resolve_config(args)
    out = Path(args.out) if args.out else Path("runs") / f"{cfg.preset}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a directory", out)
    run = RunDir(out)
    if not run.is_empty():
        later = (args.stage == "finetune" and run.has("pretrain.pt") and not run.has("best.pt")) or \
                (args.stage == "evaluate" and run.has("best.pt"))
        if not later:
            raise UserError("run directory exists and is not empty; choose another --out, or --resume it", out)
        if (out / "config.json").exists():  # later stages of an earlier run keep that run's config
            cfg = Config.from_dict(cli.read_config_file(out / "config.json"))
    data = load_data(cfg) if data is None else data
    split = make_split(cfg, data)
    # the stages' lengths for this training split (min_steps); a run's own config.json already holds them
    return Plan(cfg.for_training_split(len(split["train"])), out, data, split, None, args.stage)


def plan_run(args: argparse.Namespace, data: D.HCPData | None = None) -> Plan:
    """Read and check everything a user gave (every rank; nothing written). `data`: train on this data set
    instead of reading the file the config names (a cross-validation fold, `stvit.cv`)."""
    plan = plan_resume(args, data) if args.resume else plan_new(args, data)
    check_world(plan.cfg)
    check_split(plan.cfg, plan.split, plan.data)
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


def run_stages(plan: Plan, run: RunDir, splits: Splits, device, precision: Precision, quiet: bool) -> dict | None:
    """The stages the plan asks for, in order; the final evaluation's metrics (None without one)."""
    cfg, stage, resume = plan.cfg, plan.stage, plan.resume
    if stage in ("all", "pretrain") and cfg.pretrain.epochs > 0 and (resume is None or resume["stage"] == "pretrain"):
        # a finished pre-training resumes to zero epochs and (re)writes pretrain.pt
        fit(setup_stage(PRETRAIN, cfg, device, precision=precision, resume=resume), run, splits, resume, quiet=quiet)
        resume = None
    if stage in ("all", "finetune"):
        resume = resume if resume is not None and resume["stage"] == "finetune" else None
        init = None if resume is not None else pretrained_encoder(run, cfg)
        setup = setup_stage(FINETUNE, cfg, device, precision=precision, init=init, resume=resume)
        fit(setup, run, splits, resume, quiet=quiet)

    def draw(folder):
        from .figures import plot_curves  # matplotlib, only when figures are drawn

        plot_curves(run.records(), folder)

    run.write_figure(draw)
    if stage in ("all", "finetune", "evaluate"):
        return evaluate(run, cfg, splits, device, precision, plan.data)
    return None


def start_run_dir(plan: Plan, run: RunDir) -> None:
    """A new run writes its config and split; a resumed one drops log lines past its checkpoint."""
    if plan.resume is not None:
        run.truncate_log(plan.resume["stage"], plan.resume["epoch"])
    elif run.main and not (run.path / "config.json").exists():
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_json("config.json", plan.cfg.to_dict())
        run.write_split(plan.split, ids=plan.data.ids_train, seed=plan.cfg.train.seed,
                        fraction=plan.cfg.data.val_fraction)
    DIST.barrier()


def main(argv: list[str] | None = None) -> int:
    return in_process_group(_main, build_parser().parse_args(argv))


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


def agreed_plan(args: argparse.Namespace, data: D.HCPData | None = None) -> Plan:
    """`plan_run` on every rank; the first rank's UserError raised on all of them (collective)."""
    error, plan = None, None
    try:
        plan = plan_run(args, data)
    except UserError as e:
        error = e
    DIST.agree(error)  # every rank checked the input before rank 0 touches the run directory
    return plan


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if DIST.is_main() else logging.WARNING, format="%(message)s")
    plan = agreed_plan(args)
    say = print if DIST.is_main() else (lambda *a, **k: None)
    t0 = time.perf_counter()
    try:
        m = run_plan(plan, quiet=args.quiet)
    except NonFiniteLoss as e:
        last = RunDir(plan.run_dir).checkpoint("last.pt")
        kept = f"; last good checkpoint: {last}" if last.exists() else ""
        say(f"error: training stopped: {e}{kept}", file=sys.stderr)
        return 3
    if m is not None:
        say(f"{result_line(m)}; total {time.perf_counter() - t0:.0f} s; {plan.run_dir / 'metrics.json'}")
    return 0


def result_line(m: dict) -> str:
    """The model's test metrics beside the baseline's, on one line."""
    def scores(t):
        auc = "n/a" if t["roc_auc"] is None else f"{t['roc_auc']:.3f}"
        return f"accuracy {t['accuracy']:.3f}, ROC-AUC {auc}"

    line = (f"test: {scores(m['test'])} on {m['test']['n']} volumes (best epoch {m['best_epoch']} by "
            f"{m['selected_on']} accuracy; val accuracy {m['val']['accuracy']:.3f})")
    b = m.get("baseline")
    if b is not None:
        line += f" | baseline (logistic regression, C {b['C']:g}): {scores(b)}"
    return line


def run_plan(plan: Plan, quiet: bool = False) -> dict | None:
    """Carry out a checked plan: the run directory, the stages, the final evaluation; its metrics (None without
    an evaluation). Raises NonFiniteLoss when training stops on a non-finite loss."""
    main_rank = DIST.is_main()
    cfg = plan.cfg
    run = RunDir(plan.run_dir)
    start_run_dir(plan, run)
    rng.seed_everything(DIST.rank_seed(cfg.train.seed, DIST.rank()))
    device = DIST.local_device(cli.resolve_device(cfg.train.device))
    precision = Precision.resolve(cfg.train.precision, device)
    splits = Splits.build(plan.data, plan.split, device, precision.storage_dtype)
    quiet = quiet or not sys.stderr.isatty() or not main_rank
    say = print if main_rank else (lambda *a, **k: None)
    world = DIST.world_size()
    procs = f", {world} processes of {cfg.train.batch_size // world} volumes" if world > 1 else ""
    say(f"run directory: {run.path}  (preset {cfg.preset}, device {device}{procs}, precision {precision.name}, "
        f"kernels {cfg.model.kernels}, compile {cfg.train.compile}; data {plan.data.source}: "
        f"{len(splits.train)} train / {len(splits.val)} val / {len(plan.data.y_test)} test volumes; "
        f"{cfg.pretrain.epochs} pretrain + {cfg.finetune.epochs} finetune epochs of "
        f"{len(splits.train) // cfg.train.batch_size} steps)", flush=True)
    try:
        return run_stages(plan, run, splits, device, precision, quiet)
    finally:
        run.close()


if __name__ == "__main__":
    sys.exit(run_cli(main))

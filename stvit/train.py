"""`python -m stvit.train`: MAE pre-training -> fine-tuning -> one final test evaluation.

Setup lives here (arguments, config, data, run directory, checkpoints); one epoch of the loop lives in
`stvit.engine`. The test split is touched once, at the end, with the checkpoint chosen on the validation split
(`--select-on-test` reproduces the seed's protocol, which picks the epoch on the test set, and says it leaks).

Run directory: config.json, split.json, log.jsonl (one line per epoch), checkpoints/{last,best,mae}.pt,
predictions.npz, metrics.json, figures/*.png.

Under `torchrun --nproc-per-node=N -m stvit.train ...` the same run is data-parallel (`stvit.distributed`): the
configured batch is the global batch, each rank steps on its shard of it, rank 0 alone writes the run directory,
and every rank resumes from it.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import checkpoint as ckpt
from . import data as D
from . import distributed as DIST
from . import steps
from .config import PRESETS, Config, preset
from .data.batches import epoch_generator, shard_bounds
from .engine import NonFiniteLoss, make_optimizer, predict, train_one_epoch
from .errors import UserError, run_cli
from .model import MAE, SpatioTemporalClassifier, transfer_encoder
from .precision import CHOICES as PRECISIONS
from .precision import Precision

log = logging.getLogger("stvit.train")
STAGES = ("all", "pretrain", "finetune", "evaluate")
LEAK_WARNING = ("WARNING: --select-on-test picks the best epoch on the TEST split (the seed's protocol). "
                "The reported test accuracy is optimistically biased: it leaks test information into model "
                "selection. Do not report it as a held-out result.")
MASK_STREAM = 3  # generator stream of the MAE masking noise (the data order and flips use 1 and 2)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m stvit.train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", help="data file (.mat v5/v7/v7.3, .npz) or NIfTI folder; default: the built-in "
                                   "synthetic set (generated once and cached)")
    ap.add_argument("--preset", choices=PRESETS, help="default: paper on CUDA, demo on CPU")
    ap.add_argument("--config", help="JSON file of config values (nested like config.json) applied over the preset")
    ap.add_argument("--out", help="run directory (default: runs/<preset>-<time>)")
    ap.add_argument("--resume", metavar="DIR", help="continue the run in DIR from checkpoints/last.pt")
    ap.add_argument("--stage", choices=STAGES, default="all")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--mae-epochs", type=int)
    ap.add_argument("--ft-epochs", type=int)
    ap.add_argument("--batch-size", type=int, help="volumes per optimizer step")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--kernels", choices=("fused", "eager"))
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--precision", choices=PRECISIONS)
    ap.add_argument("--class-names", nargs="+", help="names of the label values 0, 1, ...")
    ap.add_argument("--flip-axis", type=int, choices=(0, 1, 2))
    ap.add_argument("--nan-to-zero", action="store_true", default=None, help="repair NaN/Inf voxels to 0")
    ap.add_argument("--select-on-test", action="store_true", default=None,
                    help="pick the best epoch on the test split (the seed's protocol; leaks)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    return torch.device(name)


def resolve_config(args: argparse.Namespace) -> Config:
    """Preset, then the JSON config file, then the flags (each overrides the one before)."""
    device = resolve_device(args.device or "auto")
    cfg = preset(args.preset or ("paper" if device.type == "cuda" else "demo"))
    if args.config:
        path = Path(args.config)
        try:
            values = json.loads(path.read_text())
            cfg = cfg.override(values)
        except FileNotFoundError:
            raise UserError("no such file", path) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"not valid JSON ({e})", path) from None
        except (ValueError, TypeError) as e:
            raise UserError(str(e), path) from None
    flags = {
        "data": {"path": args.data, "class_names": tuple(args.class_names) if args.class_names else None,
                 "flip_axis": args.flip_axis, "nan_to_zero": args.nan_to_zero},
        "mae": {"epochs": args.mae_epochs}, "finetune": {"epochs": args.ft_epochs},
        "model": {"kernels": args.kernels},
        "train": {"batch_size": args.batch_size, "seed": args.seed, "device": args.device, "compile": args.compile,
                  "precision": args.precision, "select_on_test": args.select_on_test},
    }
    cfg = cfg.override({k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in flags.items()})
    for name, v in (("--mae-epochs", cfg.mae.epochs), ("--ft-epochs", cfg.finetune.epochs)):
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Run:
    """One run directory: its config, data, split, models and the stages that fill it.

    Distributed, every rank builds the same Run (the whole split on its own device) and runs the same stages on
    its shard of each batch; rank 0 alone writes files, and the others wait for its checkpoints (`save`)."""

    def __init__(self, cfg: Config, run_dir: Path, data: D.HCPData, split: dict[str, np.ndarray], quiet: bool):
        self.cfg, self.dir, self.quiet = cfg, run_dir, quiet
        self.rank, self.world, self.main = DIST.rank(), DIST.world_size(), DIST.is_main()
        self.device = DIST.local_device(resolve_device(cfg.train.device))
        self.precision = Precision.resolve(cfg.train.precision, self.device)
        self.data = data
        self.split = split
        dtype = self.precision.storage_dtype
        self.train_split = D.DeviceSplit(data.X_train, data.y_train, self.device, dtype, index=split["train"])
        self.val_split = D.DeviceSplit(data.X_train, data.y_train, self.device, dtype, index=split["val"])
        self._test_split = None  # materialized only for the final evaluation (or --select-on-test)
        self.records = read_log(self.dir / "log.jsonl")
        self.tb = _tensorboard(self.dir) if self.main else None

    # ---- helpers ---------------------------------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.dir / "checkpoints"

    def test_split(self) -> "D.DeviceSplit":
        if self._test_split is None:
            self._test_split = D.DeviceSplit(self.data.X_test, self.data.y_test, self.device,
                                             self.precision.storage_dtype)
        return self._test_split

    def log_epoch(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if not self.main:
            return
        with open(self.dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(f"{record['stage']}/{k}", v, record["epoch"])
        parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()]
        print(" ".join(parts), flush=True)

    def state(self, stage: str, epoch: int, model, optimizer, scaler, **extra) -> dict[str, Any]:
        """The resumable state (collective when distributed: every rank's RNG state is gathered, `rng_per_rank`;
        `rng` is rank 0's, which is all one process needs)."""
        rng = ckpt.rng_state()
        if self.world > 1:
            extra["rng_per_rank"] = DIST.all_gather_object(rng)
        return {"stage": stage, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "scheduler": {"epoch": epoch}, "rng": rng,
                "config": self.cfg.to_dict(), "split": {k: torch.from_numpy(v) for k, v in self.split.items()},
                **extra}

    def save(self, name: str, state: dict[str, Any]) -> None:
        """Rank 0 writes checkpoints/<name> (atomically); every rank waits until the file is complete."""
        if self.main:
            ckpt.save(self.ckpt_dir / name, state)
        DIST.barrier()

    def restore_rng(self, resume: dict[str, Any]) -> None:
        """This rank's RNG state from the checkpoint; call it last, after anything that draws from the streams."""
        per_rank = resume.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == self.world:
            ckpt.set_rng_state(per_rank[self.rank])
            return
        if self.main:
            ckpt.set_rng_state(resume["rng"])  # rank 0's streams; other ranks keep their fresh seeds
            if self.world > 1 or per_rank is not None:
                print(f"note: the checkpoint was written by {len(per_rank) if per_rank else 1} process(es), this run "
                      f"has {self.world}: dropout draws differ from an uninterrupted run", file=sys.stderr)

    def mask_noise(self, stage_seed: int, epoch: int) -> Callable[[], torch.Tensor]:
        """This rank's MAE masking noise for each step of `epoch` (one call per step).

        Each step draws the noise of the whole global batch (B * T slices, P patches) from a generator seeded by
        (seed, epoch) and keeps this rank's rows: one process and N processes mask every slice alike, and a
        resumed epoch draws the same masks as an uninterrupted one."""
        m, B = self.cfg.model, self.cfg.train.batch_size
        T, P = m.volume[0], m.num_patches
        a, b = shard_bounds(B, self.rank, self.world)  # this rank's volumes of the global batch
        g = torch.Generator(self.device).manual_seed(epoch_generator(stage_seed, epoch, MASK_STREAM).initial_seed())
        return lambda: torch.rand(B * T, P, generator=g, device=self.device)[a * T:b * T]

    def batches(self, split: "D.DeviceSplit", epoch: int, stage_seed: int, train: bool):
        t = self.cfg.train
        shard = {"rank": self.rank, "world_size": self.world}
        if train:
            return split.batches(t.batch_size, epoch=epoch, seed=stage_seed, shuffle=True, drop_last=True,
                                 flip_fraction=self.cfg.data.flip_fraction, flip_axis=self.cfg.data.flip_axis,
                                 **shard)
        return split.batches(t.eval_batch_size, shuffle=False, drop_last=False, **shard)

    @property
    def eval_batch_size(self) -> int:
        """Volumes per evaluation batch on this rank."""
        return self.cfg.train.eval_batch_size // self.world

    # ---- stages ----------------------------------------------------------------------------------------------
    def pretrain(self, resume: dict | None) -> None:
        cfg, t = self.cfg, self.cfg.train
        mae = MAE(cfg.model).to(self.device)
        opt = make_optimizer(mae, cfg.mae, self.device)
        scaler = self.precision.grad_scaler()
        start = 0
        if resume is not None:
            mae.load_state_dict(resume["model"])
            opt.load_state_dict(resume["optimizer"])
            scaler.load_state_dict(resume["scaler"])
            start = resume["epoch"]
        fn = steps.build(steps.mae_loss, mae, self.precision, compile=t.compile, name="MAE train step")
        step = DIST.data_parallel(fn, mae)  # fn itself in one process
        if resume is not None:
            self.restore_rng(resume)  # last: nothing above may draw from the restored streams
        n_steps = len(self.train_split) // t.batch_size
        if n_steps == 0:
            raise UserError(f"the training split has {len(self.train_split)} volumes, fewer than one batch "
                            f"of {t.batch_size}", self.data.source)
        for epoch in range(start, cfg.mae.epochs):
            noise = self.mask_noise(t.seed * 1000 + 1, epoch)
            stats = train_one_epoch(lambda x, y: (step(x, noise()), None), mae, opt, scaler,
                                    self.batches(self.train_split, epoch, t.seed * 1000 + 1, True), n_steps,
                                    cfg.mae, epoch, log_every=t.log_every, max_nonfinite=t.max_nonfinite_steps,
                                    desc=f"MAE {epoch + 1}/{cfg.mae.epochs}", quiet=self.quiet)
            self.log_epoch({"stage": "pretrain", "epoch": epoch + 1, "loss": stats.loss, "lr": stats.lr,
                            "samples_per_s": stats.samples_per_s, "seconds": stats.seconds,
                            **({"compile_seconds": fn.compile_seconds} if epoch == start and t.compile else {})})
            self.save("last.pt", self.state("pretrain", epoch + 1, mae, opt, scaler))
        self.save("mae.pt", {"stage": "pretrain", "epoch": cfg.mae.epochs, "model": mae.state_dict(),
                             "config": cfg.to_dict()})

    def finetune(self, resume: dict | None) -> None:
        cfg, t = self.cfg, self.cfg.train
        clf = SpatioTemporalClassifier(cfg.model).to(self.device)
        mae_path = self.ckpt_dir / "mae.pt"
        if resume is None or resume["stage"] != "finetune":
            if mae_path.exists():
                mae = MAE(cfg.model)
                mae.load_state_dict(ckpt.load(mae_path)["model"])
                transfer_encoder(mae, clf)
            elif self.main:
                print("note: no MAE checkpoint in the run directory; fine-tuning from scratch", file=sys.stderr)
        opt = make_optimizer(clf, cfg.finetune, self.device)
        scaler = self.precision.grad_scaler()
        start, best = 0, {"epoch": 0, "acc": -1.0}
        if resume is not None and resume["stage"] == "finetune":
            clf.load_state_dict(resume["model"])
            opt.load_state_dict(resume["optimizer"])
            scaler.load_state_dict(resume["scaler"])
            start, best = resume["epoch"], dict(resume["best"])
        train_fn = steps.build(steps.classifier_loss, clf, self.precision, compile=t.compile,
                               name="classifier train step")
        step = DIST.data_parallel(train_fn, clf)  # train_fn itself in one process
        eval_fn = steps.build(steps.classifier_logits, clf, self.precision, compile=t.compile,
                              name="classifier eval")
        if resume is not None and resume["stage"] == "finetune":
            self.restore_rng(resume)  # last: nothing above may draw from the restored streams
        n_steps = len(self.train_split) // t.batch_size
        if n_steps == 0:
            raise UserError(f"the training split has {len(self.train_split)} volumes, fewer than one batch "
                            f"of {t.batch_size}", self.data.source)
        select = "test" if t.select_on_test else "val"
        if t.select_on_test and self.main:
            print(LEAK_WARNING, file=sys.stderr, flush=True)
        for epoch in range(start, cfg.finetune.epochs):
            stats = train_one_epoch(step, clf, opt, scaler,
                                    self.batches(self.train_split, epoch, t.seed * 1000 + 2, True), n_steps,
                                    cfg.finetune, epoch, log_every=t.log_every, max_nonfinite=t.max_nonfinite_steps,
                                    desc=f"fine-tune {epoch + 1}/{cfg.finetune.epochs}", quiet=self.quiet)
            rec = {"stage": "finetune", "epoch": epoch + 1, "train_loss": stats.loss, "train_acc": stats.acc,
                   "lr": stats.lr, "samples_per_s": stats.samples_per_s, "seconds": stats.seconds}
            probs, y, _, rec["val_loss"] = predict(eval_fn, clf, self.batches(self.val_split, 0, 0, False),
                                                   self.eval_batch_size)
            rec["val_acc"] = float((probs.argmax(1) == y).mean())
            if t.select_on_test:
                probs, y, _, rec["test_loss"] = predict(eval_fn, clf, self.batches(self.test_split(), 0, 0, False),
                                                        self.eval_batch_size)
                rec["test_acc"] = float((probs.argmax(1) == y).mean())
            if epoch == start and t.compile:
                rec["compile_seconds"] = (train_fn.compile_seconds or 0.0) + (eval_fn.compile_seconds or 0.0)
            self.log_epoch(rec)
            if rec[f"{select}_acc"] > best["acc"]:
                best = {"epoch": epoch + 1, "acc": rec[f"{select}_acc"]}
                self.save("best.pt", {"stage": "finetune", "epoch": epoch + 1, "model": clf.state_dict(),
                                      "config": cfg.to_dict(), "selected_on": select, "val_acc": rec["val_acc"]})
            self.save("last.pt", self.state("finetune", epoch + 1, clf, opt, scaler, best=best))

    def evaluate(self) -> dict[str, Any]:
        """The one evaluation of the test split, with the best checkpoint; writes predictions and metrics."""
        cfg = self.cfg
        best_path = self.ckpt_dir / "best.pt"
        if not best_path.exists():
            raise UserError("no checkpoints/best.pt to evaluate (run the finetune stage first)", self.dir)
        best = ckpt.load(best_path)
        clf = SpatioTemporalClassifier(cfg.model).to(self.device)
        clf.load_state_dict(best["model"])
        fn = steps.build(steps.classifier_logits, clf, self.precision, compile=False, name="evaluation")
        names = list(cfg.data.class_names)
        v_probs, v_y, _, _ = predict(fn, clf, self.batches(self.val_split, 0, 0, False), self.eval_batch_size)
        probs, y, idx, _ = predict(fn, clf, self.batches(self.test_split(), 0, 0, False), self.eval_batch_size)
        from .metrics import classification_metrics  # scikit-learn, only when metrics are computed

        metrics = {
            "test": classification_metrics(y, probs, names),
            "val": classification_metrics(v_y, v_probs, names),
            "best_epoch": int(best["epoch"]),
            "selected_on": best.get("selected_on", "val"),
            "class_names": names,
            "data": self.data.source,
        }
        if metrics["selected_on"] == "test":
            metrics["warning"] = LEAK_WARNING
        if not self.main:
            return metrics
        np.savez(self.dir / "predictions.npz", test_probs=probs, test_labels=y, test_index=idx,
                 val_probs=v_probs, val_labels=v_y, val_index=self.split["val"])
        ckpt.atomic_write_bytes(self.dir / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=2).encode()))
        from .figures import plot_confusion  # matplotlib, only when figures are drawn

        plot_confusion(metrics["test"]["confusion_matrix"], names, self.dir / "figures" / "confusion_matrix.png",
                       f"test, best epoch {metrics['best_epoch']}")
        return metrics

    def figures(self) -> None:
        if self.main:
            from .figures import plot_curves

            plot_curves(self.records, self.dir / "figures")


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_log(path: Path, stage: str, epoch: int) -> None:
    """Drop log lines written after the checkpoint we resume from (an epoch logged, then killed before saving)."""
    order = {"pretrain": 0, "finetune": 1}
    keep = [r for r in read_log(path) if (order[r["stage"]], r["epoch"]) <= (order[stage], epoch)]
    text = "".join(json.dumps(r) + "\n" for r in keep)
    ckpt.atomic_write_bytes(path, lambda f: f.write(text.encode()))


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def load_data(cfg: Config) -> D.HCPData:
    path = cfg.data.path
    if path is None:
        dc = cfg.data
        path = D.builtin_dataset_path(dc.synth_train, dc.synth_test, dc.synth_seed)
    data = D.load_dataset(path, volume_shape=tuple(cfg.model.volume), num_classes=cfg.model.num_classes,
                          nan_to_zero=cfg.data.nan_to_zero, zscore=cfg.data.zscore)
    if cfg.data.max_train is not None:
        data = dataclasses.replace(data, X_train=data.X_train[: cfg.data.max_train],
                                   y_train=data.y_train[: cfg.data.max_train],
                                   ids_train=None if data.ids_train is None else data.ids_train[: cfg.data.max_train])
    if cfg.data.max_test is not None:
        data = dataclasses.replace(data, X_test=data.X_test[: cfg.data.max_test], y_test=data.y_test[: cfg.data.max_test],
                                   ids_test=None if data.ids_test is None else data.ids_test[: cfg.data.max_test])
    return data


def make_split(cfg: Config, data: D.HCPData) -> dict[str, np.ndarray]:
    tr, va = D.split_train_val(data.ids_train, data.y_train, cfg.data.val_fraction, cfg.train.seed)
    if len(va) == 0 or len(tr) == 0:
        raise UserError(f"the validation fraction {cfg.data.val_fraction} leaves an empty split", data.source)
    return {"train": tr, "val": va}


def prepare_new_run(args: argparse.Namespace) -> tuple[Config, Path, D.HCPData, dict]:
    """Validate everything a user gave before the run directory is created or touched."""
    cfg = resolve_config(args)
    out = Path(args.out) if args.out else Path("runs") / f"{cfg.preset}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    existing = out.exists() and any(out.iterdir())
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a directory", out)
    if existing:
        ok = (args.stage == "finetune" and (out / "checkpoints" / "mae.pt").exists()
              and not (out / "checkpoints" / "best.pt").exists()) or \
             (args.stage == "evaluate" and (out / "checkpoints" / "best.pt").exists())
        if not ok:
            raise UserError("run directory exists and is not empty; choose another --out, or --resume it", out)
        if (out / "config.json").exists():  # later stages of an earlier run keep that run's config
            cfg = Config.from_dict(json.loads((out / "config.json").read_text()))
    data = load_data(cfg)
    return cfg, out, data, make_split(cfg, data)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    DIST.init()  # torchrun with WORLD_SIZE > 1: join the process group; otherwise nothing
    try:
        return _main(args)
    except UserError:
        if DIST.is_main():
            raise  # run_cli prints the one line
        return 2  # every rank stops with the same error (`DIST.agree`); rank 0 alone says it
    finally:
        DIST.teardown()


def setup(args: argparse.Namespace) -> tuple[Config, Path, D.HCPData, dict, dict | None, str]:
    """Read and check everything a user gave (every rank, nothing written). -> cfg, run dir, data, split, resume
    state (or None), stage."""
    if args.resume:
        run_dir = Path(args.resume)
        last = run_dir / "checkpoints" / "last.pt"
        if not (run_dir / "config.json").exists() or not last.exists():
            raise UserError("not a run directory to resume (needs config.json and checkpoints/last.pt)", run_dir)
        try:
            resume = ckpt.load(last)
        except Exception as e:  # a truncated or foreign file
            raise UserError(f"cannot read checkpoint ({type(e).__name__}: {e})", last) from None
        cfg = Config.from_dict(resume["config"])
        data = load_data(cfg)
        split = {k: v.numpy() for k, v in resume["split"].items()}
        check_world(cfg)
        return cfg, run_dir, data, split, resume, args.stage
    cfg, run_dir, data, split = prepare_new_run(args)
    check_world(cfg)
    return cfg, run_dir, data, split, None, args.stage


def _main(args: argparse.Namespace) -> int:
    main_rank = DIST.is_main()
    logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING, format="%(message)s")
    error = None
    try:
        cfg, run_dir, data, split, resume, stage = setup(args)
    except UserError as e:
        error = e
    DIST.agree(error)  # every rank checked the input before rank 0 touches the run directory
    if main_rank and resume is not None:
        truncate_log(run_dir / "log.jsonl", resume["stage"], resume["epoch"])
    elif main_rank:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "config.json").exists():
            ckpt.atomic_write_bytes(run_dir / "config.json",
                                    lambda f: f.write(json.dumps(cfg.to_dict(), indent=2).encode()))
            D.save_split(run_dir, split["train"], split["val"], ids=data.ids_train, seed=cfg.train.seed,
                         fraction=cfg.data.val_fraction)
    DIST.barrier()
    seed_everything(DIST.rank_seed(cfg.train.seed, DIST.rank()))
    run = Run(cfg, run_dir, data, split, quiet=args.quiet or not sys.stderr.isatty() or not main_rank)
    say = print if main_rank else (lambda *a, **k: None)
    procs = f", {run.world} processes of {cfg.train.batch_size // run.world} volumes" if run.world > 1 else ""
    say(f"run directory: {run_dir}  (preset {cfg.preset}, device {run.device}{procs}, precision {run.precision.name}, "
        f"kernels {cfg.model.kernels}, compile {cfg.train.compile}; data {data.source}: "
        f"{len(split['train'])} train / {len(split['val'])} val / {len(data.y_test)} test volumes)", flush=True)
    t0 = time.perf_counter()
    try:
        if stage in ("all", "pretrain") and cfg.mae.epochs > 0 and (resume is None or resume["stage"] == "pretrain"):
            run.pretrain(resume)  # a finished pre-training resumes to zero epochs and (re)writes mae.pt
            resume = None
        if stage in ("all", "finetune"):
            run.finetune(resume if resume is not None and resume["stage"] == "finetune" else None)
        run.figures()
        if stage in ("all", "finetune", "evaluate"):
            m = run.evaluate()
            t = m["test"]
            auc = "n/a" if t["roc_auc"] is None else f"{t['roc_auc']:.3f}"
            say(f"test: accuracy {t['accuracy']:.3f}, ROC-AUC {auc} on {t['n']} volumes "
                f"(best epoch {m['best_epoch']} by {m['selected_on']} accuracy; val accuracy "
                f"{m['val']['accuracy']:.3f}); total {time.perf_counter() - t0:.0f} s; {run_dir / 'metrics.json'}")
    except NonFiniteLoss as e:
        last = run.ckpt_dir / "last.pt"
        kept = f"; last good checkpoint: {last}" if last.exists() else ""
        say(f"error: training stopped: {e}{kept}", file=sys.stderr)
        return 3
    finally:
        if run.tb is not None:
            run.tb.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

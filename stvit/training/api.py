"""The run API: a request -> `plan` (every check, nothing written) -> `run` (the stages in order, the final
evaluation). Every way into training goes through here with objects, never argv: `python -m stvit.train` builds a
`Request` from its flags, `stvit.cv` one per fold with the fold's data, `stvit.tune` one per trial fold (with its
fixed validation split and no evaluation), the benchmarks and the scikit-learn estimator theirs.

    request = Request(preset="demo", values={"train.seed": 1}, out="runs/r1")
    plan = api.plan(request)          # config, data, split, resume: read and checked; nothing written
    metrics = api.run(plan)           # claim the directory, pre-train, fine-tune, evaluate the test split once

A run directory is claimed (locked) by `run` before its first write and released when it returns. Under torchrun
every rank plans (the first rank's error is raised on all of them, `DIST.agree`), rank 0 alone writes.
Errors: `UserError` for anything the request or its files get wrong (from `plan`, or from `run` when another
process took the directory meanwhile); `NonFiniteLoss` and `WriteError` from `run`, with a hint saying what is
intact and how to continue.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from stvit import cli, rng
from stvit import data as D
from stvit.config import Config, show_value
from stvit.errors import NonFiniteLoss, UserError, WriteError
from stvit.model.precision import Precision
from stvit.model.vit import transfer_encoder
from stvit.training import distributed as DIST
from stvit.training.evaluation import evaluate
from stvit.training.fit import Splits, fit
from stvit.training.provenance import provenance
from stvit.training.rundir import RunDir, load_model
from stvit.training.stages import (FINETUNE, PRETRAIN, STAGES, check_model_size, choose_ops, memory_bytes,
                                   setup_stage)


@dataclass
class Request:
    """What a caller asks of a run. Config values are layered: the preset (default: the device's), then `config`
    (nested sections, as a config file holds them), then `config_file`, then `values` ({"train.seed": 1}); each
    value's origin is in `sources` ({"train.seed": "--seed"}), so an error or a refused change names it."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    preset: str | None = None
    config: dict[str, Any] | None = None
    config_file: str | Path | None = None
    out: str | Path | None = None  # a new run directory (None: runs/<preset>-<date>-<time>)
    resume: str | Path | None = None  # continue the run in this directory
    stage: str = "all"  # all, pretrain, finetune (from an earlier pretrain run's directory), evaluate
    split: dict[str, np.ndarray] | None = None  # fixed train/val positions (a search's fold); None: carved by seed
    evaluate: bool = True  # False: no final evaluation and no test split (a search's fold)
    quiet: bool = False  # no progress bars
    echo: bool = True  # print the run-directory line and each epoch's record (rank 0)
    command: str | None = None  # the command line that asked for the run, for its provenance (None: from Python)
    report: bool = True  # write report.html after the final evaluation

    @classmethod
    def from_flags(cls, args, command: str | None = None) -> "Request":
        """A request from a command's parsed flags (`cli.FLAGS`); flags a command does not take are left out.
        `command`: the command line as typed (`provenance.command_line`)."""
        values = cli.config_values(args)
        return cls(values=values, sources={k: cli.FLAG_OF_KEY[k] for k in values}, preset=getattr(args, "preset", None),
                   config_file=getattr(args, "config", None), out=getattr(args, "out", None),
                   resume=getattr(args, "resume", None), stage=getattr(args, "stage", None) or "all",
                   quiet=bool(getattr(args, "quiet", False)), command=command)

    def layers(self) -> list[tuple[dict[str, Any], str]]:
        """The config layers over the preset, in order, each with where it came from."""
        out = []
        if self.config is not None:
            out.append((self.config, "the request's config"))
        if self.config_file:
            out.append((cli.read_config_file(self.config_file), str(self.config_file)))
        return out


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
    evaluate: bool = True
    quiet: bool = False
    echo: bool = True
    command: str | None = None
    report: bool = True
    shared_data: bool = False  # `data` came from the caller (a fold, a search, the estimator): never changed in place


# --- the config ----------------------------------------------------------------------------------------------------

def resolve_config(request: Request) -> Config:
    """Preset, the request's config layers, then its values (each overriding the one before); checked. A bad value
    is a UserError naming its file, or its flag."""
    device = cli.resolve_device(request.values.get("train.device"))
    cfg = cli.load_config(request.preset, None, {}, device)
    for layer, where in request.layers():
        try:
            cfg = cfg.override(cli.exact_epochs(layer))
        except ValueError as e:
            raise UserError(str(e), where if where != "the request's config" else None) from None
    try:
        cfg = cfg.override(cli.exact_epochs(cli.nested(request.values)))
    except ValueError as e:
        key = getattr(e, "key", None)
        flag = request.sources.get(key)
        raise UserError(f"{flag} {e.problem}" if flag and hasattr(e, "problem") else str(e)) from None
    if len(cfg.data.class_names) != cfg.model.num_classes:
        raise UserError(f"--class-names: {len(cfg.data.class_names)} names for {cfg.model.num_classes} classes")
    return cfg


def flatten(d: dict, where: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{where}{k}."))
        else:
            out[f"{where}{k}"] = v
    return out


# how a run computes, not what it is (a stage's min_steps is already spent in its epochs, see `plan_new`)
FREE = ("train.device", "train.compile", "train.log_every", "train.permutations",
        *(f"{s}.min_steps" for s in STAGES), "data.placement", "data.memory_share", "data.loader_workers", "data.loader_prefetch")


def requested(request: Request, cfg: Config, where: Path) -> tuple[Config, dict[str, tuple[Any, Any, str]]]:
    """An existing run's `cfg` with what the request asks for applied, and the changes: key -> (run's value, asked
    value, what asked for it)."""
    said, by = {}, {}
    for layer, origin in request.layers():
        for key, v in flatten(layer).items():
            said[key], by[key] = v, f"{key} in {origin}"
    for key, v in request.values.items():
        said[key], by[key] = v, request.sources.get(key, key)
    try:
        wanted = cfg.override(cli.exact_epochs(cli.nested(said))) if said else cfg
    except ValueError as e:
        raise UserError(str(e), request.config_file or where) from None
    old, new = flatten(cfg.to_dict()), flatten(wanted.to_dict())
    changes = {k: (old[k], new[k], by.get(k, k)) for k in new if new[k] != old[k]}
    if request.preset and request.preset != cfg.preset:
        changes["preset"] = (cfg.preset, request.preset, "--preset")
    return wanted, changes


def allow(changes: dict[str, tuple[Any, Any, str]], where: Path, *, may_change=(), may_lengthen=()) -> list[str]:
    """Refuse a change that would make the run another run, naming what asked for it; returns the lengthenings."""
    notes = []
    lengths = {s.length_key for s in STAGES.values()}
    for key, (old, new, by) in changes.items():
        if key in FREE or any(key == m or key.startswith(m + ".") for m in may_change):
            continue
        if key in may_lengthen and new > old:
            notes.append(f"{key} {old} -> {new}")
            continue
        why = "would shorten it" if key in lengths and new < old else "would make it another run"
        raise UserError(f"{by}: {show_value(new)} differs from this run's {show_value(old)}; continuing a run with it "
                        f"{why} (start a new run with --out)", where)
    return notes


# --- data and split --------------------------------------------------------------------------------------------------

def load_data(cfg: Config) -> D.HCPData:
    """The data set the config names (the built-in synthetic set without a path), read and checked."""
    path = cfg.data.path
    if path is None:
        dc = cfg.data
        need = (dc.synth_train + dc.synth_test) * 4 * int(np.prod(D.VOLUME_SHAPE))  # float32 volumes
        have = memory_bytes(torch.device("cpu"))
        if have is not None and need > have:
            raise UserError(f"data.synth_train + data.synth_test = {dc.synth_train + dc.synth_test} volumes: the "
                            f"built-in set would take {need / 1e9:.3g} GB, more than the {have / 1e9:.3g} GB of "
                            "memory here")
        path = D.builtin_dataset_path(dc.synth_train, dc.synth_test, dc.synth_seed)
    data = D.open_dataset(path, volume_shape=tuple(cfg.model.volume), num_classes=cfg.model.num_classes,
                          nan_to_zero=cfg.data.nan_to_zero, zscore=cfg.data.zscore, max_abs=cfg.data.max_abs,
                          class_names=cfg.data.class_names,
                          placement=cfg.data.placement)  # a packed file: opened, its rows read as training needs
    caps = {"train": cfg.data.max_train, "test": cfg.data.max_test}
    for split, cap in caps.items():
        if cap is not None:
            X, y, ids = data.split(split)
            meta = None if data.meta is None else {**data.meta, split: {k: v[:cap] for k, v in data.meta[split].items()}}
            data = dataclasses.replace(data, **{f"X_{split}": X[:cap], f"y_{split}": y[:cap],
                                                f"ids_{split}": None if ids is None else ids[:cap]}, meta=meta)
    return data


def make_split(cfg: Config, data: D.HCPData) -> dict[str, np.ndarray]:
    """The validation split carved from the training volumes: grouped by subject, stratified, by seed."""
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


def check_classes(cfg: Config, split: dict[str, np.ndarray], data: D.HCPData, *, test: bool = True) -> None:
    """Every class the model has is in the training split (a class never seen cannot be learned), and the
    validation split (and, with `test`, the test split) holds at least two classes: accuracy, ROC-AUC and the
    baseline are undefined on one. A UserError naming the data and saying what to change otherwise."""
    names = cfg.data.class_names
    k = cfg.model.num_classes

    def shown(classes) -> str:
        return ", ".join(f"{c} ({names[c]})" if c < len(names) else str(c) for c in classes)

    y = np.asarray(data.y_train)
    present = np.unique(y[split["train"]])
    if len(present) < 2:
        raise UserError(f"the training split ({len(split['train'])} volumes once the validation split is carved) "
                        f"holds only class {shown(present)}: a classifier needs at least 2; add volumes of the other "
                        "classes, or try another --seed or data.val_fraction", data.source)
    missing = [c for c in range(k) if c not in present]
    if missing:
        raise UserError(f"model.num_classes is {k}, but the training split holds no volume of class "
                        f"{shown(missing)}: a class the model never sees cannot be learned (set model.num_classes "
                        f"to {len(present)} with as many --class-names, or add volumes of that class)", data.source)
    parts = [("validation", y[split["val"]], "another --seed, a larger data.val_fraction or more subjects")]
    if test and data.y_test is not None:
        parts.append(("test", np.asarray(data.y_test), "volumes of the other classes in the test split"))
    for name, labels, fix in parts:
        present = np.unique(labels)
        if len(present) < 2:
            raise UserError(f"the {name} split ({len(labels)} volumes) holds only class {shown(present)}: its "
                            f"accuracy, ROC-AUC and baseline need at least 2 classes; try {fix}", data.source)


def check_world(cfg: Config) -> None:
    """Under torchrun the configured batches are global: each must split evenly over the processes."""
    w = DIST.world_size()
    for name, v in (("--batch-size", cfg.train.batch_size), ("train.eval_batch_size", cfg.train.eval_batch_size)):
        if v % w:
            raise UserError(f"{name} {v} is not a multiple of the {w} processes (each takes {name} / {w} volumes)")


# --- the plan ----------------------------------------------------------------------------------------------------------

def _plan_resume(request: Request, data: D.HCPData | None) -> Plan:
    run = RunDir(cli.check_path(request.resume))
    if not (run.path / "config.json").exists() or not run.has("last.pt"):
        raise UserError("not a run directory to resume (needs config.json and checkpoints/last.pt)", run.path)
    resume = run.load("last.pt")
    try:
        cfg = Config.from_dict(resume["config"])
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"bad config in the checkpoint ({e})", run.checkpoint("last.pt")) from None
    cfg, changes = requested(request, cfg, run.path)
    check_model_size(cfg.model, cli.resolve_device(cfg.train.device))
    load_model(run.checkpoint("last.pt"), state=resume)  # weights that fit their config, before anything is written
    left = [s for s in STAGES.values() if s.order >= STAGES[resume["stage"]].order]
    notes = allow(changes, run.path, may_lengthen=[s.length_key for s in left])
    data = load_data(cfg) if data is None else data
    split = {k: v.numpy() for k, v in resume["split"].items()}
    return Plan(cfg, run.path, data, split, resume, request.stage, notes, run.fingerprint())


def _plan_new(request: Request, data: D.HCPData | None) -> Plan:
    cfg = resolve_config(request)
    try:
        check_model_size(cfg.model, cli.resolve_device(cfg.train.device))  # on the meta device: sizes, no memory
    except UserError as e:
        raise UserError(str(e), request.config_file) from None
    out = Path(request.out) if request.out else Path("runs") / f"{cfg.preset}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    cli.check_writable(out, "directory")
    run, notes = RunDir(out), []
    if not run.is_empty():
        if request.stage == "finetune" and run.has("pretrain.pt") and not run.has("best.pt"):
            need, may_change = "pretrain.pt", ("finetune", "train.eval_batch_size", "train.select_on_test")
        elif request.stage == "evaluate" and run.has("best.pt"):
            need, may_change = "best.pt", ("train.eval_batch_size",)
        else:
            raise UserError("run directory exists and is not empty; choose another --out, or --resume it", out)
        # a truncated or foreign checkpoint, or weights that do not fit their config, stop here, before anything
        # is written or redrawn
        load_model(run.checkpoint(need), stage="finetune" if need == "best.pt" else "pretrain")
        if (out / "config.json").exists():  # later stages of an earlier run keep that run's config
            try:
                earlier = Config.from_dict(cli.read_config_file(out / "config.json"))
            except ValueError as e:
                raise UserError(str(e), out / "config.json") from None
            cfg, changes = requested(request, earlier, out)
            notes = allow(changes, out, may_change=may_change)
    data = load_data(cfg) if data is None else data
    split = make_split(cfg, data) if request.split is None else {k: np.asarray(v, np.int64)
                                                                 for k, v in request.split.items()}
    if not (out / "config.json").exists():
        # the stages' lengths for this training split (min_steps); an earlier run's config.json already holds them
        cfg = cfg.for_training_split(len(split["train"]))
    return Plan(cfg, out, data, split, None, request.stage, notes, run.fingerprint())


def plan(request: Request, data: D.HCPData | None = None) -> Plan:
    """Read and check everything the request gives (on every rank; nothing written), and choose the ops (on a GPU
    the kernels' self-check runs here: in `fused` mode a failure stops the run before anything is written).
    `data`: train on this in-memory data set instead of the file the config names (a cross-validation fold, the
    estimator's arrays). Collective under torchrun: the first rank's error is raised on every rank."""
    DIST.init()  # torchrun with WORLD_SIZE > 1: join the process group (once); otherwise nothing
    error, result = None, None
    try:
        result = _plan_resume(request, data) if request.resume else _plan_new(request, data)
        result.evaluate, result.quiet, result.echo = request.evaluate, request.quiet, request.echo
        result.command, result.report = request.command, request.report
        result.shared_data = data is not None
        if request.stage not in cli.STAGE_CHOICES:
            raise UserError(f"unknown stage '{request.stage}' (choose from {', '.join(cli.STAGE_CHOICES)})")
        check_world(result.cfg)
        if result.cfg.data.standardize and result.cfg.data.placement == "stream":
            raise UserError("data.standardize needs the volumes in memory, so it does not stream: use placement "
                            "auto or device, or import the study cleaned (each voxel standardized per run)")
        check_split(result.cfg, result.split, result.data)
        if request.stage != "pretrain":  # the MAE needs no labels
            check_classes(result.cfg, result.split, result.data, test=request.evaluate)
        device = DIST.local_device(cli.resolve_device(result.cfg.train.device))
        choose_ops(result.cfg, device, Precision.resolve(result.cfg.train.precision, device))
    except UserError as e:
        error = e
    DIST.agree(error)  # every rank checked the input before rank 0 writes anything
    return result


# --- the run ---------------------------------------------------------------------------------------------------------

def claim(fingerprint: tuple, run: RunDir) -> None:
    """Lock the run directory (rank 0) and check it is still as `fingerprint` says (a run's plan, or a
    cross-validation's): another process may have started a run there, or finished one, between the plan and the
    lock. Collective under torchrun."""
    error = None
    if run.main:
        try:
            run.lock()
            if run.fingerprint() != fingerprint:
                run.close()
                raise UserError("the run directory changed while this run was starting (another stvit process?); "
                                "nothing was written", run.path)
        except UserError as e:
            error = e
    DIST.agree(error)


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


def pretrained_encoder(run: RunDir) -> Callable | None:
    """The fine-tuning stage's `init`: copy the pre-trained encoder in (None, with a note, when there is none)."""
    if not run.has("pretrain.pt"):
        run.note("note: no pre-training checkpoint in the run directory; fine-tuning from scratch")
        return None

    def init(classifier) -> None:
        transfer_encoder(run.model("pretrain.pt").model, classifier)

    return init


def fit_stages(cfg: Config, run: RunDir, splits: Splits, device, precision: Precision, *, stage: str = "all",
               resume: dict | None = None, quiet: bool = False, on_epoch=None) -> None:
    """The training stages `stage` asks for, in order: pre-training, then fine-tuning from its encoder; `resume`
    continues the stage of its checkpoint. on_epoch: `fit`'s per-epoch callback (the search's pruning)."""
    if stage in ("all", "pretrain") and cfg.pretrain.epochs > 0 and (resume is None or resume["stage"] == "pretrain"):
        # a finished pre-training resumes to zero epochs and (re)writes pretrain.pt
        setup = setup_stage(PRETRAIN, cfg, device, precision=precision, resume=resume)
        fit(setup, run, splits, resume, quiet=quiet, on_epoch=on_epoch)
        resume = None
    if stage in ("all", "finetune"):
        resume = resume if resume is not None and resume["stage"] == "finetune" else None
        init = None if resume is not None else pretrained_encoder(run)
        setup = setup_stage(FINETUNE, cfg, device, precision=precision, init=init, resume=resume)
        fit(setup, run, splits, resume, quiet=quiet, on_epoch=on_epoch)


def no_test_split():
    raise RuntimeError("this run has no test split (a search's fold never reads one)")


def describe(plan: Plan, splits: Splits, device, precision: Precision) -> str:
    """The run-directory line a run starts with."""
    cfg = plan.cfg
    world = DIST.world_size()
    procs = f", {world} processes of {cfg.train.batch_size // world} volumes" if world > 1 else ""
    fused = ", ".join(choose_ops(cfg, device, precision).fused) or "none"
    steps = len(splits.train) // cfg.train.batch_size
    test = f" / {len(plan.data.y_test)} test" if plan.evaluate else ""
    return (f"run directory: {plan.run_dir}  (preset {cfg.preset}, device {device}{procs}, precision "
            f"{precision.name}, kernels {cfg.model.kernels} (fused: {fused}), compile {cfg.train.compile}; data "
            f"{plan.data.source}: {len(splits.train)} train / {len(splits.val)} val{test} volumes; "
            f"{cfg.pretrain.epochs} pretrain + {cfg.finetune.epochs} finetune epochs of {steps} steps; "
            f"{D.placement_line(splits.placement)})")


def run(plan: Plan, *, on_epoch: Callable[[dict], None] | None = None) -> dict | None:
    """Carry out a checked plan: claim the run directory, start it, run the stages in order, then the final
    evaluation; its metrics (None without an evaluation). Releases the directory however it ends. `on_epoch`: a
    callback after every logged epoch (it may raise to stop the run there). Raises NonFiniteLoss or WriteError with
    a hint saying what is intact and how to continue. A run with an evaluation writes metrics.json with its
    `provenance` (`plan.command`, versions, commit, start, host, device), then report.html (`plan.report`)."""
    run_dir = RunDir(plan.run_dir, echo=DIST.is_main() and plan.echo)
    claim(plan.fingerprint, run_dir)
    try:
        start_run_dir(plan, run_dir)
        cfg = plan.cfg
        rng.seed_everything(DIST.rank_seed(cfg.train.seed, DIST.rank()))
        device = DIST.local_device(cli.resolve_device(cfg.train.device))
        origin = provenance(plan.command, device)
        precision = Precision.resolve(cfg.train.precision, device)
        if cfg.data.standardize:
            plan.data = standardized(plan, run_dir)
        if plan.evaluate:
            splits = Splits.build(plan.data, plan.split, device, precision.storage_dtype, cfg.data)
        else:
            full = Splits.build(plan.data, plan.split, device, precision.storage_dtype, cfg.data)
            splits = Splits(full.train, full.val, no_test_split, full.index, placement=full.placement)
        if run_dir.main and run_dir.echo:
            print(describe(plan, splits, device, precision), flush=True)
        quiet = plan.quiet or not run_dir.main or not sys.stderr.isatty()  # no progress bars in a log file
        fit_stages(cfg, run_dir, splits, device, precision, stage=plan.stage, resume=plan.resume, quiet=quiet,
                   on_epoch=on_epoch)

        def draw(folder):
            from stvit.training.figures import plot_curves  # matplotlib, only when figures are drawn

            plot_curves(run_dir.records(), folder)

        run_dir.write_figure(draw)
        if plan.evaluate and plan.stage in ("all", "finetune", "evaluate"):
            metrics = evaluate(run_dir, cfg, splits, device, precision, plan.data, origin)
            if plan.report:
                from stvit.training.report_page import write_report  # jinja2, only when a page is written

                write_report(run_dir)
            return metrics
        return None
    except NonFiniteLoss as e:
        last = run_dir.checkpoint("last.pt")
        e.hint = e.hint or (f"last good checkpoint: {last}" if last.exists() else None)
        raise
    except WriteError as e:
        last = run_dir.checkpoint("last.pt")
        if plan.stage == "evaluate":
            e.hint = e.hint or "the checkpoints are intact: make room and run the same command again"
        elif last.is_file():
            e.hint = e.hint or (f"the last good checkpoint {last} is intact: make room and continue with "
                                f"python -m stvit.train --resume {run_dir.path}")
        else:
            e.hint = e.hint or (f"no checkpoint was written yet, so there is nothing to resume: make room, remove "
                                f"{run_dir.path} and run the same command again")
        raise
    finally:
        run_dir.close()


def standardized(plan: Plan, run_dir: RunDir) -> D.HCPData:
    """`data.standardize`: the run's data set with each in-brain voxel standardized by the statistics of the run's
    training volumes (validation and test only transformed; a copy when the caller owns the data, so that a search
    or a cross-validation never standardizes twice), the statistics saved in the run directory
    (`standardize.STATS_FILE`, what `stvit.load` applies to new input)."""
    from stvit.data.standardize import STATS_FILE, standardize_split

    data = plan.data
    lazy = not (isinstance(data.X_train, np.ndarray) and isinstance(data.X_test, np.ndarray))
    if plan.shared_data or lazy:  # a packed file's rows are read as stored: standardized here, as dense volumes
        data = dataclasses.replace(data, X_train=np.array(data.X_train, np.float32, order="C", copy=True),
                                   X_test=np.array(data.X_test, np.float32, order="C", copy=True))
    stats = standardize_split(data, plan.split["train"])
    run_dir.write_arrays(STATS_FILE, **stats.arrays())
    return data


def timed_run(plan: Plan, **kw) -> tuple[dict | None, float]:
    """`run(plan)` and its wall time in seconds."""
    t0 = time.perf_counter()
    return run(plan, **kw), time.perf_counter() - t0


def device_of(cfg: Config) -> torch.device:
    """The device a run of `cfg` trains on (this rank's GPU under torchrun)."""
    return DIST.local_device(cli.resolve_device(cfg.train.device))

"""`python -m stvit.tune`: a hyperparameter search (Optuna) over subject-grouped folds of the training split.

    python -m stvit.tune --data FILE --trials N [--folds K] [--space SPACE.json] [--study NAME] [--storage URL]
                         [--out DIR] [--preset P] [--config JSON] [stvit.train flags: the base recipe]

Each trial samples values from the search space (TPE) over the base config (preset, --config, flags) and trains
that config on K folds carved from the file's TRAINING split (`data.subject_folds`: whole subjects per fold,
stratified by label): fold k trains on the other folds and validates on fold k, through the trainer's own stages
(`train.fit_stages`). The trial's value is the mean over folds of the best epoch's validation accuracy (the epoch
a run keeps as best.pt). After each fine-tune epoch the validation accuracy goes to a median pruner, which stops a
trial below the median of earlier trials at the same fold and epoch. The test split is never read during the
search: the folds' splits have none to give.

Then: best_config.json (the base config with the best trial's values: `python -m stvit.train --config` takes it),
Optuna's figures (optimization history, intermediate values, parameter importances once 2 trials completed), and
one run of the best config in final-trial-N/: pre-training, fine-tuning and the one evaluation of the test split
(with the same-split baseline where the trainer reports one). summary.json and summary.md hold the numbers.

The search space is a JSON file (default: stvit/training/tune_space.json) of config keys:
    {"params": {"finetune.lr": {"low": 0.3, "high": 3.0, "log": true, "times": "finetune.lr"},
                "model.dropout": {"low": 0.0, "high": 0.3},
                "model.dim": {"choices": [32, 64]},
                "augment.ops": {"choices": [["flip"], ["flip", "elastic", "scale", "noise"]]},
                "pretrain.epochs": {"value": 2}},
     "sampler": {"n_startup_trials": 5}, "pruner": {"n_startup_trials": 3, "n_warmup_steps": 1}}
A range ("low", "high"; "log", "step" optional) is searched as floats, or as whole numbers for a whole-number key;
"times" multiplies the range by the base config's value of that key, so one space fits every preset; "choices"
is a categorical choice, "value" a fixed value. "sampler" and "pruner" go to TPESampler and MedianPruner.

DIR (default runs/tune-<preset>):
    study.db            the study (SQLite), unless --storage names another database
    space.json          the search space, as read
    trials/N/fold-K/    each fold's run directory (config.json, log.jsonl; its checkpoints dropped when it ends)
    best_config.json, figures/*.png, final-trial-N/, summary.json, summary.md

Resume: run the same command again. Completed and pruned trials are kept; a trial that a kill interrupted is
found by its heartbeat (silent for GRACE_S seconds) and run again with its values, reusing the folds it finished;
trials go on until the study holds N; an interrupted final run continues (`stvit.train --resume`).
Several processes or machines share one study through a database server: the same `--study` and
`--storage postgresql://user@host/db` (any URL Optuna's RDBStorage takes) and each its own `--sampler-seed`;
each runs trials until the study holds N, and writes the results (`--no-final`: leave them to one of them).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stvit import cli, rng
from stvit import data as D
from stvit import train as T
from stvit.config import Config
from stvit.training.engine import NonFiniteLoss
from stvit.errors import UserError, run_cli
from stvit.training.rundir import RunDir, WriteError

HEARTBEAT_S, GRACE_S = 10, 30  # a running trial's heartbeat; the silence after which it counts as interrupted
SAMPLER_KEYS = ("n_startup_trials", "multivariate", "constant_liar")
PRUNER_KEYS = ("n_startup_trials", "n_warmup_steps", "interval_steps")
RANGE_KEYS = ("low", "high", "log", "step", "times")
FOLD_STEPS = 100_000  # the pruner's step of fold k, epoch e: k * FOLD_STEPS + e - 1 (no fold has that many epochs)
INSTALL = "the search needs Optuna: pip install 'stvit[tune]' (or pip install optuna)"


EPILOG = """examples:
  python -m stvit.tune --data HCP_emotion_4D_sample.mat --trials 40 --out runs/tune-paper
  python -m stvit.tune --data FILE --trials 40 --out runs/tune-paper      the same command again: it continues
  python -m stvit.tune --data FILE --trials 40 --storage postgresql://user@host/db --sampler-seed 1 --no-final
                                                     (one of several processes sharing a study)

exit codes: 0 done; 2 bad input (one 'error:' line); 3 the final run stopped on a non-finite loss; 4 a file could
not be written: run the same command again."""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The flags of `stvit.train` (the base recipe of every trial) and the search's own."""
    ap = argparse.ArgumentParser(prog="python -m stvit.tune", description=__doc__.split("\n\n")[0],
                                 parents=[T.build_parser(argv)], add_help=False, conflict_handler="resolve",
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, required=True, metavar="N",
                    help="the search ends when the study holds N completed or pruned trials")
    ap.add_argument("--folds", type=int, default=3, metavar="K",
                    help="subject-grouped folds of the training split; a trial trains K times; default: 3")
    ap.add_argument("--space", metavar="FILE",
                    help="the search space, a JSON file of config keys; default: stvit/training/tune_space.json")
    ap.add_argument("--study", default="stvit", metavar="NAME", help="the study's name in the storage; default: stvit")
    ap.add_argument("--storage", metavar="URL",
                    help="the study's database, a URL Optuna takes (postgresql://...); default: sqlite:///DIR/study.db")
    ap.add_argument("--out", metavar="DIR", help="the tune directory; default: runs/tune-<preset>")
    ap.add_argument("--sampler-seed", type=int, metavar="N",
                    help="the TPE sampler's seed; processes sharing a study each need their own; default: --seed")
    ap.add_argument("--final", action=argparse.BooleanOptionalAction, default=True,
                    help="at the end, write the results and train + test the best config once; default: on")
    ap.add_argument("--resume", metavar="DIR",
                    help="not for a search: it continues when the same command runs again (same --out, --study)")
    ap.add_argument("--stage", metavar="STAGE", help="not for a search: every trial runs pre-training and fine-tuning")
    return ap


# --- the search space -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    """One config key of the search space: a range, a categorical choice or a fixed value."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    whole: bool = False  # a whole-number key: suggest_int
    choices: tuple | None = None
    value: Any = None
    fixed: bool = False

    def candidates(self) -> list:
        """The values that bound what this parameter can take (each must make a valid config)."""
        return [self.value] if self.fixed else list(self.choices) if self.choices is not None else [self.low, self.high]

    def suggest(self, trial) -> Any:
        if self.fixed:
            return self.value
        if self.choices is not None:
            if all(c is None or isinstance(c, (bool, int, float, str)) for c in self.choices):
                return trial.suggest_categorical(self.key, list(self.choices))
            labels = [json.dumps(c) for c in self.choices]  # lists (augment.ops) as their JSON text
            return json.loads(trial.suggest_categorical(self.key, labels))
        if self.whole:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)


@dataclass
class Space:
    params: list[Param]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    raw: dict[str, Any]  # as read: stored with the study, written to space.json


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_param(key: str, spec: Any, base: Config, where: str) -> Param:
    """One entry of "params", checked against the base config; UserError naming the file and key."""
    flat = T.flatten(base.to_dict())
    name = f"params.{key}"
    if key not in flat:
        raise UserError(f"{name}: not a config key (keys are written like finetune.lr)", where)
    if not isinstance(spec, dict):
        raise UserError(f"{name}: must be an object: {{\"low\", \"high\"}}, {{\"choices\"}} or {{\"value\"}}", where)
    kinds = [k for k in ("low", "choices", "value") if k in spec]
    allowed = {"low": set(RANGE_KEYS), "choices": {"choices"}, "value": {"value"}}
    if len(kinds) != 1 or set(spec) - allowed[kinds[0]]:
        raise UserError(f"{name}: give low and high (with log, step, times), or choices, or value; got "
                        f"{', '.join(sorted(spec)) or 'nothing'}", where)
    if "value" in spec:
        return Param(key, value=spec["value"], fixed=True)
    if "choices" in spec:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise UserError(f"{name}.choices: must be a non-empty list", where)
        return Param(key, choices=tuple(spec["choices"]))
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    if not (_number(low) and _number(high) and low <= high):
        raise UserError(f"{name}: low and high must be numbers with low <= high, got {low!r}, {high!r}", where)
    if not isinstance(log, bool) or (step is not None and not (_number(step) and step > 0)):
        raise UserError(f"{name}: log must be true or false and step a number > 0", where)
    if "times" in spec:
        times = spec["times"]
        if times not in flat or not _number(flat[times]):
            raise UserError(f"{name}.times: must name a numeric config key, got {times!r}", where)
        low, high = low * flat[times], high * flat[times]
    if log and (low <= 0 or step is not None):
        raise UserError(f"{name}: a log range needs low > 0 and no step", where)
    whole = isinstance(flat[key], int) and not isinstance(flat[key], bool)
    if whole:
        low, high = math.ceil(low), math.floor(high)
        if low > high:
            raise UserError(f"{name}: no whole number between low and high", where)
    return Param(key, float(low) if not whole else low, float(high) if not whole else high, log, step, whole)


def read_space(path: str | None, base: Config) -> Space:
    """The search space of `path` (default: the one shipped), every value checked to make a valid config."""
    where = path or str(Path(__file__).parent / "training" / "tune_space.json")
    raw = cli.read_config_file(where)
    unknown = set(raw) - {"params", "sampler", "pruner"}
    if unknown or not isinstance(raw.get("params"), dict) or not raw["params"]:
        raise UserError('a search space holds "params" (an object of config keys) and optionally "sampler" and '
                        f'"pruner"{"; unknown: " + ", ".join(sorted(unknown)) if unknown else ""}', where)
    params = [parse_param(k, v, base, where) for k, v in raw["params"].items()]
    for p in params:
        for v in p.candidates():
            try:
                base.override(cli.nested({p.key: v}))
            except ValueError as e:
                raise UserError(f"params.{p.key}: {json.dumps(v)} makes an invalid config ({e})", where) from None
    options = {}
    for section, keys in (("sampler", SAMPLER_KEYS), ("pruner", PRUNER_KEYS)):
        given = raw.get(section, {})
        if not isinstance(given, dict) or set(given) - set(keys):
            raise UserError(f"{section}: an object of {', '.join(keys)}", where)
        options[section] = given
    return Space(params, options["sampler"], options["pruner"], raw)


# --- the plan: every check before anything is written -------------------------------------------------------------

@dataclass
class Search:
    args: argparse.Namespace
    base: Config
    space: Space
    data: D.HCPData
    folds: np.ndarray  # (N,) fold of each volume of the training split
    out: Path
    storage: str
    setup: dict[str, Any] = field(default_factory=dict)  # what a resumed study must match

    @property
    def k(self) -> int:
        return int(self.folds.max()) + 1


def data_fingerprint(data: D.HCPData) -> str:
    h = hashlib.sha256(np.asarray(data.y_train, np.int64).tobytes())
    h.update("\n".join(np.asarray(data.ids_train).astype(str).tolist()).encode())
    return h.hexdigest()[:16]


def plan_search(args: argparse.Namespace) -> Search:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UserError(INSTALL) from None
    if args.resume:
        raise UserError("--resume: a search resumes when the same command runs again (same --out and --study)")
    if args.stage not in (None, "all"):
        raise UserError("--stage: every trial runs every stage")
    if args.trials < 1:
        raise UserError(f"--trials must be >= 1, got {args.trials}")
    base = T.resolve_config(args)
    if base.train.select_on_test:
        raise UserError("--select-on-test: a search never reads the test split")
    if base.finetune.epochs < 1:
        raise UserError("--ft-epochs: a trial's value is its validation accuracy, which needs a fine-tune epoch")
    space = read_space(args.space, base)
    out = Path(args.out) if args.out else Path("runs") / f"tune-{base.preset}"
    cli.check_writable(out, "directory")
    data = T.load_data(base)
    if data.ids_train is None:
        raise UserError("no subject ids in the training split: the folds cannot be grouped by subject", data.source)
    try:
        folds = D.subject_folds(data.ids_train, data.y_train, args.folds, base.train.seed)
    except ValueError as e:
        raise UserError(f"--folds {args.folds}: {e}", data.source) from None
    smallest = len(folds) - np.bincount(folds).max()
    if smallest < base.train.batch_size:
        raise UserError(f"a fold leaves {smallest} training volumes, fewer than one batch of {base.train.batch_size}",
                        data.source)
    storage = args.storage or f"sqlite:///{(out / 'study.db').absolute()}"
    flat = {k: v for k, v in T.flatten(base.to_dict()).items() if k not in T.FREE and k != "data.path"}
    setup = {"space": space.raw, "base_config": flat, "folds": int(args.folds), "fold_seed": base.train.seed,
             "data": {"n_train": int(len(folds)), "fingerprint": data_fingerprint(data)}}
    return Search(args, base, space, data, folds, out, storage, json.loads(json.dumps(setup)))


def shown(url: str) -> str:
    """A storage URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as given (it holds no usable password)
        return url


def open_study(search: Search):
    """The study (created, or loaded to resume); refused if it was started for another search."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    search.out.mkdir(parents=True, exist_ok=True)
    retry = RetryHeartbeatStaleTrialCallback(max_retry=3, inherit_intermediate_values=True)
    try:
        storage = RDBStorage(search.storage, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                             heartbeat_stale_trial_callback=retry)
    except Exception as e:  # noqa: BLE001 - a bad URL, a missing driver, a server that does not answer
        raise UserError(f"--storage: cannot open {shown(search.storage)} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    seed = search.args.sampler_seed if search.args.sampler_seed is not None else search.base.train.seed
    sampler = optuna.samplers.TPESampler(seed=seed, **search.space.sampler)
    pruner = optuna.pruners.MedianPruner(**search.space.pruner)
    study = optuna.create_study(study_name=search.args.study, storage=storage, sampler=sampler, pruner=pruner,
                                direction="maximize", load_if_exists=True)
    had = study.user_attrs.get("setup")
    if had is None:
        study.set_user_attr("setup", search.setup)
    elif had != search.setup:
        what = [k for k in search.setup if had.get(k) != search.setup[k]]
        if "base_config" in what:
            what += [k for k in search.setup["base_config"] if had["base_config"].get(k) != search.setup["base_config"][k]]
        raise UserError(f"study '{search.args.study}' in {shown(search.storage)} was started for another search "
                        f"(differs: {', '.join(what)}); choose another --study or --out")
    return study


# --- trials -------------------------------------------------------------------------------------------------------

def no_test_split():
    raise RuntimeError("the search never reads the test split")


class Objective:
    """One trial: a config from the space, trained on every fold; its value the mean best validation accuracy."""

    def __init__(self, search: Search, quiet: bool):
        from stvit.data.batches import DeviceSplit
        from stvit.model.precision import Precision

        self.search, self.quiet = search, quiet
        self.device = cli.resolve_device(search.base.train.device)
        dtype = Precision.resolve(search.base.train.precision, self.device).storage_dtype
        self.train = DeviceSplit(search.data.X_train, search.data.y_train, self.device, dtype)  # once, all folds

    def __call__(self, trial) -> float:
        values = {p.key: p.suggest(trial) for p in self.search.space.params}
        trial.set_user_attr("config_values", values)
        try:
            cfg = self.search.base.override(cli.nested(values))
        except ValueError as e:  # values that are valid alone but not together (heads that do not divide a width)
            trial.set_user_attr("error", str(e))
            print(f"trial {trial.number}: invalid config ({e})", flush=True)
            return float("nan")  # a failed trial
        accs = list(trial.user_attrs.get("fold_accuracy", []))  # a trial run again keeps the folds it finished
        for k in range(len(accs), self.search.k):
            accs.append(self.fold(trial, cfg, k))
            trial.set_user_attr("fold_accuracy", accs)
        return float(np.mean(accs))

    def fold(self, trial, cfg: Config, k: int) -> float:
        """Train `cfg` on every fold but k, validate on fold k; the best epoch's validation accuracy."""
        import optuna

        from stvit.data.batches import DeviceSplit
        from stvit.training.fit import Splits
        from stvit.model.precision import Precision

        t0 = time.perf_counter()
        run = RunDir(self.search.out / "trials" / str(trial.number) / f"fold-{k + 1}", echo=False)
        if run.path.exists():  # a trial number is never reused: only a fold cut short before its first epoch
            shutil.rmtree(run.path)
        run.path.mkdir(parents=True)
        folds = self.search.folds
        index = {"train": np.flatnonzero(folds != k), "val": np.flatnonzero(folds == k)}
        cfg = cfg.for_training_split(len(index["train"]))  # the stages' lengths, as a run on this split gets them
        run.write_json("config.json", cfg.to_dict())
        precision = Precision.resolve(cfg.train.precision, self.device)
        parts = {s: DeviceSplit(self.train.X, self.train.y, self.device, precision.storage_dtype, index=index[s])
                 for s in index}
        splits = Splits(parts["train"], parts["val"], no_test_split, index)
        best = -1.0

        def on_epoch(record: dict) -> None:
            nonlocal best
            if record["stage"] != "finetune":
                return
            best = max(best, record["val_acc"])
            trial.report(record["val_acc"], k * FOLD_STEPS + record["epoch"] - 1)
            if trial.should_prune():
                raise optuna.TrialPruned(f"fold {k + 1}, epoch {record['epoch']}: validation accuracy "
                                         f"{record['val_acc']:.3f}, under the median")

        rng.seed_everything(cfg.train.seed)  # every trial and fold starts from the same weights' seed
        try:
            T.fit_stages(cfg, run, splits, self.device, precision, quiet=self.quiet, on_epoch=on_epoch)
        finally:
            shutil.rmtree(run.checkpoints, ignore_errors=True)
            run.close()
        print(f"trial {trial.number} fold {k + 1}/{self.search.k}: best validation accuracy {best:.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        return best


def counts(study) -> tuple[int, int]:
    """(trials completed or pruned, trials failed and not run again)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    return done, sum(t.state == TrialState.FAIL and t.number not in retried for t in trials)


def run_trials(search: Search, study, quiet: bool) -> None:
    """Trials until the study holds --trials completed or pruned ones (or as many failed ones: a space whose every
    trial fails stops too)."""
    n = search.args.trials

    def enough() -> bool:
        done, failed = counts(study)
        return done >= n or failed >= n

    def after(study, trial) -> None:
        done, _ = counts(study)
        value = "" if trial.value is None else f" {trial.value:.4f}"
        print(f"trial {trial.number}: {trial.state.name.lower()}{value} ({done} of {n} done)", flush=True)
        if enough():
            study.stop()

    if not enough():
        study.optimize(Objective(search, quiet), callbacks=[after], catch=(NonFiniteLoss,))


# --- results ------------------------------------------------------------------------------------------------------

def draw_figures(study, folder: Path) -> dict[str, Any]:
    """Optuna's optimization history, intermediate values and parameter importances (fANOVA; from 2 completed
    trials) as PNG; returns the importances (None, with the reason, when there are none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"importance": None}

    def save(ax, name):
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(7, 4.5)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)

    save(ovm.plot_optimization_history(study), "history.png")
    save(ovm.plot_intermediate_values(study), "intermediate_values.png")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        out["importance_note"] = f"{len(complete)} completed trial(s): importances need 2"
        return out
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        out["importance"] = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError) as e:  # e.g. no parameter that varies over the completed trials
        out["importance_note"] = f"not computed: {e}"
        return out
    save(ovm.plot_param_importances(study, evaluator=evaluator), "importance.png")
    return out


def final_run(search: Search, best_number: int, config_path: Path, quiet: bool) -> tuple[int, Path]:
    """Train and test the best config once, as `python -m stvit.train --config best_config.json` does (continuing
    an interrupted run of the same best trial). (exit code, run directory)."""
    run = search.out / f"final-trial-{best_number}"
    flags = ["--quiet"] if quiet else []
    if (run / "metrics.json").is_file():
        return 0, run
    if (run / "checkpoints" / "last.pt").is_file():
        return T.main(["--resume", str(run)] + flags), run
    if run.exists():  # stopped before its first checkpoint: nothing to continue
        shutil.rmtree(run)
    return T.main(["--config", str(config_path), "--out", str(run)] + flags), run


def trial_rows(study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value,
                     "fold_accuracy": t.user_attrs.get("fold_accuracy"), "values": t.user_attrs.get("config_values"),
                     "retry_of": t.system_attrs.get("failed_trial"),
                     "last_step": t.last_step, "seconds": t.duration.total_seconds() if t.duration else None})
    return rows


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, (list, tuple, str)) else str(v)


def report(summary: dict[str, Any]) -> str:
    """summary.md: the trials, the best values, the final run."""
    keys = list(summary["space"]["params"])
    lines = [f"# Hyperparameter search `{summary['study']}`", "",
             f"- Objective: mean over {summary['folds']} subject-grouped folds of the training split of the best "
             "fine-tune epoch's validation accuracy (the test split is not read during the search)",
             f"- Storage: `{summary['storage']}`; data: `{summary['data']}`", "",
             "| trial | state | value | fold accuracies | " + " | ".join(keys) + " |",
             "|---" * (4 + len(keys)) + "|"]
    for r in summary["trials"]:
        folds = ", ".join(f"{a:.3f}" for a in r["fold_accuracy"] or [])
        vals = [fmt((r["values"] or {}).get(k, "")) for k in keys]
        value = "" if r["value"] is None else f"{r['value']:.4f}"
        lines.append(f"| {r['number']} | {r['state']} | {value} | {folds} | " + " | ".join(vals) + " |")
    b = summary["best"]
    lines += ["", f"Best: trial {b['number']}, value {b['value']:.4f}; config `best_config.json`.", ""]
    if summary.get("importance"):
        lines.append("Parameter importances (fANOVA): " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                                     summary["importance"].items()))
    elif summary.get("importance_note"):
        lines.append(f"Parameter importances: {summary['importance_note']}")
    f = summary.get("final")
    if f:
        lines += ["", f"Final run of the best config (`{f['run']}`): test accuracy {f['test']['accuracy']:.4f}, "
                      f"ROC-AUC {fmt(f['test']['roc_auc'])} on {f['test']['n']} volumes; validation accuracy "
                      f"{f['val']['accuracy']:.4f}."]
        if f.get("baseline"):
            lines.append(f"Baseline on the same split: {json.dumps(f['baseline'])}")
    return "\n".join(lines) + "\n"


def finish(search: Search, study, quiet: bool) -> int:
    """best_config.json, figures, the final run, summary.json and summary.md."""
    from optuna.trial import TrialState

    tune = RunDir(search.out, echo=False)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise UserError("no trial completed, so there is no best config (see the failed and pruned trials above)",
                        search.out)
    best = study.best_trial
    cfg = search.base.override(cli.nested(best.user_attrs["config_values"]))
    tune.write_json("best_config.json", cfg.to_dict())
    figures: dict[str, Any] = {}
    tune.write_figure(lambda folder: figures.update(draw_figures(study, folder)))
    summary = {"study": search.args.study, "storage": shown(search.storage), "data": search.data.source,
               "folds": search.k, "space": search.space.raw, "trials": trial_rows(study),
               "best": {"number": best.number, "value": best.value, "fold_accuracy": best.user_attrs["fold_accuracy"],
                        "values": best.user_attrs["config_values"]}, **figures}
    code = 0
    if search.args.final:
        code, run = final_run(search, best.number, search.out / "best_config.json", quiet)
        if code == 0:
            m = json.loads((run / "metrics.json").read_text())
            summary["final"] = {"run": str(run), "test": m["test"], "val": m["val"], "best_epoch": m["best_epoch"],
                                "baseline": m.get("baseline")}
    tune.write_json("summary.json", summary)
    (search.out / "summary.md").write_text(report(summary))
    print(f"best: trial {best.number}, mean validation accuracy {best.value:.4f} over {search.k} folds; "
          f"{search.out / 'best_config.json'}; {search.out / 'summary.md'}", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    search = plan_search(args)
    quiet = args.quiet or not sys.stderr.isatty()
    study = open_study(search)
    (search.out / "space.json").write_text(json.dumps(search.space.raw, indent=2) + "\n")
    try:
        run_trials(search, study, quiet)
        return finish(search, study, quiet) if args.final else 0
    except WriteError as e:
        print(f"error: {e}; the study is kept: run the same command again to continue", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(run_cli(main))

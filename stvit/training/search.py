"""A hyperparameter search (Optuna) over subject-grouped folds of the training split (`python -m stvit.tune` is
its command line).

Each trial samples values from the search space (TPE) over the base config (preset, --config, flags) and trains
that config on K folds carved from the file's TRAINING split (`data.subject_folds`: whole subjects per fold,
stratified by label): fold k trains on the other folds and validates on fold k, through the trainer's own stages
(each fold a run of the run API, `stvit.training.api`, with its fixed validation split and no test
split). The trial's value is the mean over folds of the best epoch's validation accuracy (the epoch
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

import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stvit import cli
from stvit import data as D
from stvit.config import Config
from stvit.errors import NonFiniteLoss, UserError, WriteError
from stvit.perf.report import fmt
from stvit.training import api
from stvit.training.rundir import RunDir

HEARTBEAT_S, GRACE_S = 10, 30  # a running trial's heartbeat; the silence after which it counts as interrupted
SAMPLER_KEYS = ("n_startup_trials", "multivariate", "constant_liar")
PRUNER_KEYS = ("n_startup_trials", "n_warmup_steps", "interval_steps")
RANGE_KEYS = ("low", "high", "log", "step", "times")
FOLD_STEPS = 100_000  # the pruner's step of fold k, epoch e: k * FOLD_STEPS + e - 1 (no fold has that many epochs)
INSTALL = "the search needs Optuna: pip install 'stvit[tune]' (or pip install optuna)"


@dataclass(frozen=True)
class Options:
    """The search's own settings (the recipe is the request's)."""

    trials: int  # the search ends when the study holds this many completed or pruned trials
    folds: int = 3  # subject-grouped folds of the training split
    space: str | None = None  # the search space file (None: the one shipped)
    study: str = "stvit"  # the study's name in the storage
    storage: str | None = None  # the study's database URL (None: sqlite:///OUT/study.db)
    sampler_seed: int | None = None  # the TPE sampler's seed (None: the recipe's seed)
    final: bool = True  # write the results and train + test the best config once


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
    flat = api.flatten(base.to_dict())
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
    where = path or str(Path(__file__).with_name("tune_space.json"))
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
    options: Options
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


def plan_search(request: api.Request, options: Options) -> Search:
    """Every check of the search before anything is written: Optuna present, the recipe, the space, the output
    folder, the data and its folds."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UserError(INSTALL) from None
    if request.resume:
        raise UserError("--resume: a search resumes when the same command runs again (same --out and --study)")
    if request.stage not in (None, "all"):
        raise UserError("--stage: every trial runs every stage")
    if options.trials < 1:
        raise UserError(f"--trials must be >= 1, got {options.trials}")
    base = api.resolve_config(request)
    if base.train.select_on_test:
        raise UserError("--select-on-test: a search never reads the test split")
    if base.finetune.epochs < 1:
        raise UserError("--ft-epochs: a trial's value is its validation accuracy, which needs a fine-tune epoch")
    space = read_space(options.space, base)
    out = Path(request.out) if request.out else Path("runs") / f"tune-{base.preset}"
    cli.check_writable(out, "directory")
    data = api.load_data(base)
    if data.ids_train is None:
        raise UserError("no subject ids in the training split: the folds cannot be grouped by subject", data.source)
    try:
        folds = D.subject_folds(data.ids_train, data.y_train, options.folds, base.train.seed)
    except ValueError as e:
        raise UserError(f"--folds {options.folds}: {e}", data.source) from None
    smallest = len(folds) - np.bincount(folds).max()
    if smallest < base.train.batch_size:
        raise UserError(f"a fold leaves {smallest} training volumes, fewer than one batch of {base.train.batch_size}",
                        data.source)
    storage = options.storage or f"sqlite:///{(out / 'study.db').absolute()}"
    flat = {k: v for k, v in api.flatten(base.to_dict()).items() if k not in api.FREE and k != "data.path"}
    setup = {"space": space.raw, "base_config": flat, "folds": int(options.folds), "fold_seed": base.train.seed,
             "data": {"n_train": int(len(folds)), "fingerprint": D.fingerprint(data.y_train, data.ids_train)}}
    return Search(options, base, space, data, folds, out, storage, json.loads(json.dumps(setup)))


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
    seed = search.options.sampler_seed if search.options.sampler_seed is not None else search.base.train.seed
    sampler = optuna.samplers.TPESampler(seed=seed, **search.space.sampler)
    pruner = optuna.pruners.MedianPruner(**search.space.pruner)
    study = optuna.create_study(study_name=search.options.study, storage=storage, sampler=sampler, pruner=pruner,
                                direction="maximize", load_if_exists=True)
    had = study.user_attrs.get("setup")
    if had is None:
        study.set_user_attr("setup", search.setup)
    elif had != search.setup:
        what = [k for k in search.setup if had.get(k) != search.setup[k]]
        if "base_config" in what:
            what += [k for k in search.setup["base_config"] if had["base_config"].get(k) != search.setup["base_config"][k]]
        raise UserError(f"study '{search.options.study}' in {shown(search.storage)} was started for another search "
                        f"(differs: {', '.join(what)}); choose another --study or --out")
    return study


# --- trials -------------------------------------------------------------------------------------------------------

class Objective:
    """One trial: a config from the space, trained on every fold; its value the mean best validation accuracy."""

    def __init__(self, search: Search, quiet: bool):
        self.search, self.quiet = search, quiet
        d = search.data  # the training split alone: a fold's data has no test part
        self.data = D.HCPData(d.X_train, d.y_train, d.ids_train, None, None, None, source=d.source,
                              meta=None if d.meta is None else {"train": d.meta["train"]})

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
        """Train `cfg` on every fold but k, validate on fold k (a run of the run API with that fixed split and no
        evaluation, in trials/N/fold-k); the best epoch's validation accuracy."""
        import optuna

        t0 = time.perf_counter()
        out = self.search.out / "trials" / str(trial.number) / f"fold-{k + 1}"
        if out.exists():  # a trial number is never reused: only a fold cut short before its first epoch
            shutil.rmtree(out)
        folds = self.search.folds
        split = {"train": np.flatnonzero(folds != k), "val": np.flatnonzero(folds == k)}
        request = api.Request(preset=cfg.preset, config=cfg.to_dict(), out=out, split=split, evaluate=False,
                              quiet=self.quiet, echo=False)
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

        try:
            api.run(api.plan(request, self.data), on_epoch=on_epoch)
        finally:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
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
    n = search.options.trials

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


def final_run(search: Search, best_number: int, config_path: Path, quiet: bool) -> Path:
    """Train and test the best config once, as `python -m stvit.train --config best_config.json` does (continuing
    an interrupted run of the same best trial); its run directory."""
    run = search.out / f"final-trial-{best_number}"
    if (run / "metrics.json").is_file():
        return run
    if (run / "checkpoints" / "last.pt").is_file():
        request = api.Request(resume=run, quiet=quiet)
    else:
        if run.exists():  # stopped before its first checkpoint: nothing to continue
            shutil.rmtree(run)
        request = api.Request(config_file=config_path, out=run, quiet=quiet)
    api.run(api.plan(request))
    return run


def trial_rows(study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value,
                     "fold_accuracy": t.user_attrs.get("fold_accuracy"), "values": t.user_attrs.get("config_values"),
                     "retry_of": t.system_attrs.get("failed_trial"),
                     "last_step": t.last_step, "seconds": t.duration.total_seconds() if t.duration else None})
    return rows


def value_text(v: Any) -> str:
    """A trial's value of a parameter as the summary shows it."""
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
        vals = [value_text((r["values"] or {}).get(k, "")) for k in keys]
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


def finish(search: Search, study, quiet: bool) -> None:
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
    summary = {"study": search.options.study, "storage": shown(search.storage), "data": search.data.source,
               "folds": search.k, "space": search.space.raw, "trials": trial_rows(study),
               "best": {"number": best.number, "value": best.value, "fold_accuracy": best.user_attrs["fold_accuracy"],
                        "values": best.user_attrs["config_values"]}, **figures}
    if search.options.final:
        run = final_run(search, best.number, search.out / "best_config.json", quiet)
        m = json.loads((run / "metrics.json").read_text())
        summary["final"] = {"run": str(run), "test": m["test"], "val": m["val"], "best_epoch": m["best_epoch"],
                            "baseline": m.get("baseline")}
    tune.write_json("summary.json", summary)
    (search.out / "summary.md").write_text(report(summary))
    print(f"best: trial {best.number}, mean validation accuracy {best.value:.4f} over {search.k} folds; "
          f"{search.out / 'best_config.json'}; {search.out / 'summary.md'}", flush=True)


def run_search(search: Search, quiet: bool = False) -> None:
    """Open (or resume) the study, run trials until it holds enough, then the results and the final run. A write
    error keeps the study: the same command continues it."""
    study = open_study(search)
    (search.out / "space.json").write_text(json.dumps(search.space.raw, indent=2) + "\n")
    try:
        run_trials(search, study, quiet)
        if search.options.final:
            finish(search, study, quiet)
    except WriteError as e:
        e.hint = e.hint or "the study is kept: run the same command again to continue"
        raise

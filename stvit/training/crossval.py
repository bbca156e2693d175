"""K-fold cross-validation grouped by subject and stratified by label, each fold a whole run of the run API
(`python -m stvit.cv` is its command line).

Folds: the volumes (the file's train and test splits pooled; its train split alone with `--within-train`) are cut
into K folds by scikit-learn's `StratifiedGroupKFold` (grouped by subject id, so no subject is in two folds;
stratified by label; shuffled by `--seed`: the same seed and data give the same folds). Fold k is a whole
run (`stvit.training.api`) on an in-memory data set (training: the other folds; test: fold k), through the same plan and
stages as the command: its own validation split carved from its training subjects, pre-training, fine-tuning,
and the final evaluation with the linear baseline, in DIR/fold-k/.

DIR:
    config.json      the resolved config of every fold (each fold's own config.json adds its stage lengths)
    folds.json       the fold of every volume; a resumed cross-validation uses these folds
    fold-1/ ...      the run directory of each fold
    cv.json, cv.md   per-fold and summary metrics; cv_accuracy.png: per-fold test accuracy, model vs baseline

Summary, for the model, the baseline and their paired per-fold difference (model - baseline): the mean of the K
fold scores (test accuracy, ROC-AUC), their standard deviation (ddof 1) and a 95% confidence interval from the
t-distribution with K - 1 degrees of freedom, mean +- t(0.975, K-1) sd / sqrt(K). The folds share training data,
so their scores are not independent and this interval is narrower than the truth (Bengio & Grandvalet, 2004):
read it as the spread of the estimate over folds, not as a guarantee.

Resume: a fold with metrics.json is done; a fold with checkpoints/last.pt continues as a resumed run does (bit-identical on CPU); a fold with neither (stopped before its first checkpoint) starts over.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stvit import data as D
from stvit.cli import read_config_file
from stvit.config import Config
from stvit.errors import NonFiniteLoss, UserError, WriteError
from stvit.training import api
from stvit.training import distributed as DIST
from stvit.training.evaluation import result_line
from stvit.perf.report import fmt
from stvit.training.rundir import RunDir

FOLDS_FILE = "folds.json"
METRICS = ("accuracy", "roc_auc")


# --- folds ------------------------------------------------------------------------------------------------------

@dataclass
class Pool:
    """The volumes the folds are cut from."""

    X: np.ndarray  # (N, 53, 63, 46) float32
    y: np.ndarray  # (N,) int64
    ids: np.ndarray  # (N,) str
    source: str
    within_train: bool

    def fingerprint(self) -> str:
        """A digest of the labels and subject ids: a resumed cross-validation checks it is on the same volumes."""
        return D.fingerprint(self.y, self.ids)


def pool_volumes(data: D.HCPData, within_train: bool) -> Pool:
    """The file's train and test volumes in one pool (or the train split alone); refused without subject ids."""
    parts = [data.split("train")] if within_train else [data.split("train"), data.split("test")]
    if any(ids is None for _, _, ids in parts):
        raise UserError("no subject ids: the folds cannot be grouped by subject (volumes of one subject on both "
                        "sides of a fold would inflate its accuracy); add ids_train and ids_test to the file",
                        data.source)
    if within_train:
        X, y, ids = parts[0]
    else:
        X = np.concatenate([p[0] for p in parts])
        y, ids = (np.concatenate([p[i] for p in parts]) for i in (1, 2))
    return Pool(X, y, ids.astype(str), data.source, within_train)


def fold_data(pool: Pool, fold: np.ndarray, f: int, with_volumes: bool = True) -> D.HCPData:
    """Fold f as a data set: training = the other folds, test = fold f (volumes copied; None without them)."""
    te = fold == f
    tr = ~te
    X = (lambda rows: pool.X[rows]) if with_volumes else (lambda rows: None)
    return D.HCPData(X(tr), pool.y[tr], pool.ids[tr], X(te), pool.y[te], pool.ids[te],
                     source=f"{pool.source} (fold {f + 1} of {int(fold.max()) + 1})")


# --- the plan: everything checked before anything is written -------------------------------------------------------

@dataclass
class CVPlan:
    """A cross-validation, every input read and checked before anything is written."""

    cfg: Config
    out: Path
    pool: Pool
    fold: np.ndarray  # (N,) fold of each volume
    resumed: bool
    fingerprint: tuple  # the directory's state when planned (`RunDir.fingerprint`)

    @property
    def k(self) -> int:
        return int(self.fold.max()) + 1


def plan_cv(request: api.Request, *, folds: int = 5, within_train: bool = False) -> CVPlan:
    """A new cross-validation (`request.out`, or runs/cv-<preset>-<time>) of `folds` folds with the request's
    recipe, or, with `request.resume`, the one in that directory with its own config and folds."""
    if request.resume:
        return _plan_resume(Path(request.resume))
    if folds < 2:
        raise UserError(f"--folds must be >= 2, got {folds}")
    cfg = api.resolve_config(request)
    out = Path(request.out) if request.out else Path("runs") / f"cv-{cfg.preset}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        hint = "continue it with --resume" if (out / FOLDS_FILE).exists() else "choose another --out"
        raise UserError(f"exists and is not an empty directory; {hint}", out)
    pool = pool_volumes(api.load_data(cfg), within_train)
    subjects = len(np.unique(pool.ids))
    if subjects < folds:
        raise UserError(f"{subjects} subjects for {folds} folds: each fold's test part needs subjects of its "
                        f"own (use --folds {subjects} or fewer)", pool.source)
    fold = D.subject_folds(pool.ids, pool.y, folds, cfg.train.seed)
    plan = CVPlan(cfg, out, pool, fold, False, RunDir(out).fingerprint())
    for f in range(plan.k):  # each fold's validation split and batch, before anything is written
        light = fold_data(pool, fold, f, with_volumes=False)
        api.check_split(cfg, api.make_split(cfg, light), light)
    return plan


def _plan_resume(out: Path) -> CVPlan:
    if not (out / "config.json").is_file() or not (out / FOLDS_FILE).is_file():
        raise UserError(f"not a cross-validation directory to resume (needs config.json and {FOLDS_FILE})", out)
    try:
        cfg = Config.from_dict(read_config_file(out / "config.json"))
    except (ValueError, TypeError) as e:
        raise UserError(str(e), out / "config.json") from None
    record = read_config_file(out / FOLDS_FILE)
    pool = pool_volumes(api.load_data(cfg), record["within_train"])
    if pool.fingerprint() != record["fingerprint"] or len(pool.y) != len(record["fold"]):
        raise UserError(f"the data is not the one the folds in {FOLDS_FILE} were made for", pool.source)
    return CVPlan(cfg, out, pool, np.asarray(record["fold"], np.int64), True, RunDir(out).fingerprint())


def start(plan: CVPlan, run: RunDir) -> None:
    """A new cross-validation writes its config and its folds."""
    if not plan.resumed and run.main:
        plan.out.mkdir(parents=True, exist_ok=True)
        run.write_json("config.json", plan.cfg.to_dict())
        p = plan.pool
        run.write_json(FOLDS_FILE, {
            "folds": plan.k, "seed": plan.cfg.train.seed, "within_train": p.within_train, "data": p.source,
            "method": f"sklearn StratifiedGroupKFold(n_splits={plan.k}, shuffle=True, random_state=seed), "
                      "grouped by subject id, stratified by label",
            "n_volumes": int(len(p.y)), "fingerprint": p.fingerprint(),
            "subjects": [sorted(set(p.ids[plan.fold == f].tolist())) for f in range(plan.k)],
            "fold": plan.fold.tolist()})
    DIST.barrier()


# --- the folds, through the training code --------------------------------------------------------------------------

def run_fold(plan: CVPlan, f: int, quiet: bool) -> dict[str, Any] | None:
    """Fold f's metrics: read when the fold is done, else its run (continued from last.pt when there is one)."""
    out = plan.out / f"fold-{f + 1}"
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    fold = RunDir(out)
    if fold.has("last.pt"):
        request = api.Request(resume=out, quiet=quiet)
    else:
        if out.exists() and fold.main:
            shutil.rmtree(out)  # stopped before its first checkpoint: nothing to continue from
        DIST.barrier()
        request = api.Request(preset=plan.cfg.preset, config=plan.cfg.to_dict(), out=out, quiet=quiet)
    return api.run(api.plan(request, fold_data(plan.pool, plan.fold, f)))


# --- the summary -----------------------------------------------------------------------------------------------------

def interval(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, standard deviation (ddof 1) and the 95% t-interval of the fold scores (None scores left out)."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None], np.float64)
    out = {"n": int(len(v)), "mean": float(v.mean()) if len(v) else None, "sd": None, "ci95": None}
    if len(v) >= 2:
        sd = float(v.std(ddof=1))
        half = float(stats.t.ppf(0.975, len(v) - 1) * sd / np.sqrt(len(v)))
        out.update(sd=sd, ci95=[out["mean"] - half, out["mean"] + half])
    return out


def summarize(plan: CVPlan, results: list[dict[str, Any]]) -> dict[str, Any]:
    """cv.json: every fold's test metrics (model and baseline) and their intervals."""
    with_baseline = all("baseline" in m for m in results)
    folds = []
    for f, m in enumerate(results):
        row = {"fold": f + 1, "n_test": m["test"]["n"],
               "test_subjects": len(set(plan.pool.ids[plan.fold == f].tolist())),
               "best_epoch": m["best_epoch"], "model": {k: m["test"][k] for k in METRICS}}
        if with_baseline:
            row["baseline"] = {k: m["baseline"][k] for k in METRICS + ("C",)}
            row["difference"] = {k: None if m["test"][k] is None or m["baseline"][k] is None
                                 else m["test"][k] - m["baseline"][k] for k in METRICS}
        folds.append(row)
    parts = ("model", "baseline", "difference") if with_baseline else ("model",)
    summary = {p: {k: interval([r[p][k] for r in folds]) for k in METRICS} for p in parts}
    p = plan.pool
    return {"folds_k": plan.k, "seed": plan.cfg.train.seed, "preset": plan.cfg.preset, "data": p.source,
            "pooled": "train" if p.within_train else "train+test", "n_volumes": int(len(p.y)),
            "n_subjects": int(len(np.unique(p.ids))),
            "interval": "95% t-interval over folds: mean +- t(0.975, K-1) * sd / sqrt(K); folds share training "
                        "data, so it is narrower than the truth",
            "folds": folds, "summary": summary}


def fmt_interval(s: dict[str, Any]) -> str:
    if s["ci95"] is None:
        return f"{fmt(s['mean'], '.3f')} (one fold)"
    return f"{fmt(s['mean'], '.3f')} ± {s['sd']:.3f} (95% CI {s['ci95'][0]:.3f} to {s['ci95'][1]:.3f})"


def report(cv: dict[str, Any]) -> str:
    """cv.md."""
    parts = [p for p in ("model", "baseline", "difference") if p in cv["summary"]]
    lines = [f"# Cross-validation: {cv['folds_k']} folds, grouped by subject, stratified by label", "",
             f"- Data: {cv['data']} ({cv['pooled']} pooled: {cv['n_volumes']} volumes of {cv['n_subjects']} "
             f"subjects)", f"- Preset {cv['preset']}, seed {cv['seed']}; each fold is a full `stvit.train` run "
             "in fold-k/ (its validation split from its own training subjects)",
             f"- Interval: {cv['interval']}", "",
             "| fold | test volumes | test subjects | best epoch | model accuracy | model ROC-AUC"
             + (" | baseline accuracy | baseline ROC-AUC | baseline C | difference (accuracy) |"
                if "baseline" in parts else " |"),
             "|---" * (10 if "baseline" in parts else 6) + "|"]
    for r in cv["folds"]:
        row = f"| {r['fold']} | {r['n_test']} | {r['test_subjects']} | {r['best_epoch']} | " \
              f"{fmt(r['model']['accuracy'], '.3f')} | {fmt(r['model']['roc_auc'], '.3f')} |"
        if "baseline" in parts:
            row += f" {fmt(r['baseline']['accuracy'], '.3f')} | {fmt(r['baseline']['roc_auc'], '.3f')} | " \
                   f"{r['baseline']['C']:g} | {fmt(r['difference']['accuracy'], '.3f')} |"
        lines.append(row)
    lines += ["", "| | accuracy: mean ± sd (95% CI) | ROC-AUC: mean ± sd (95% CI) |", "|---|---|---|"]
    names = {"model": "model", "baseline": "baseline (logistic regression)",
             "difference": "difference, model - baseline (paired by fold)"}
    for p in parts:
        lines.append(f"| {names[p]} | {fmt_interval(cv['summary'][p]['accuracy'])} | "
                     f"{fmt_interval(cv['summary'][p]['roc_auc'])} |")
    return "\n".join(lines) + "\n"


def summary_line(cv: dict[str, Any], out: Path) -> str:
    s = cv["summary"]
    line = f"cv ({cv['folds_k']} folds, grouped by subject): model accuracy {fmt_interval(s['model']['accuracy'])}"
    if "baseline" in s:
        line += (f" | baseline {fmt_interval(s['baseline']['accuracy'])} | difference "
                 f"{fmt_interval(s['difference']['accuracy'])}")
    return f"{line}; {out / 'cv.md'}"


def write_summary(plan: CVPlan, run: RunDir, cv: dict[str, Any]) -> None:
    run.write_json("cv.json", cv)
    run.write_text("cv.md", report(cv))

    def draw(_):
        from stvit.training.figures import plot_cv_accuracy  # matplotlib, only when figures are drawn

        base = [r["baseline"]["accuracy"] for r in cv["folds"]] if "baseline" in cv["summary"] else None
        plot_cv_accuracy([r["model"]["accuracy"] for r in cv["folds"]], base, plan.out / "cv_accuracy.png",
                         f"{cv['folds_k']}-fold cross-validation, grouped by subject")

    run.write_figure(draw)


def run_cv(plan: CVPlan, quiet: bool = False) -> dict[str, Any]:
    """Claim the directory, run (or read, or continue) every fold, write cv.json, cv.md and the figure; the
    summary. A fold stopped by a non-finite loss or a write error raises it with a hint to resume."""
    run = RunDir(plan.out)
    api.claim(plan.fingerprint, run)  # the same lock and check as a run's
    say = print if run.main else (lambda *a, **k: None)
    f = 0
    try:
        start(plan, run)
        results = []
        for f in range(plan.k):
            say(f"fold {f + 1} of {plan.k}: {plan.out / f'fold-{f + 1}'}", flush=True)
            m = run_fold(plan, f, quiet)
            say(result_line(m), flush=True)
            results.append(m)
        cv = summarize(plan, results)
        write_summary(plan, run, cv)
        return cv
    except (NonFiniteLoss, WriteError) as e:
        e.hint = f"fold {f + 1} stopped; python -m stvit.cv --resume {plan.out} continues it"
        raise
    finally:
        run.close()

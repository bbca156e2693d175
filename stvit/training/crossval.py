"""K-fold cross-validation grouped by subject and stratified by label, each fold a whole run of the run API
(`python -m stvit.cv` is its command line), with its statistics and, when asked, a cross-validated permutation null.

Folds: the volumes (the file's train and test splits pooled; its train split alone with `--within-train`) are cut
into K folds by scikit-learn's `StratifiedGroupKFold` (grouped by subject id, so no subject is in two folds;
stratified by label; shuffled by `--seed`: the same seed and data give the same folds). Fold k is a whole
run (`stvit.training.api`) on an in-memory data set (training: the other folds; test: fold k), through the same plan
and stages as the command: its own validation split carved from its training subjects, pre-training, fine-tuning,
and the final evaluation with the linear baseline, in DIR/fold-k/.

DIR:
    config.json      the resolved config of every fold (each fold's own config.json adds its stage lengths)
    folds.json       the fold of every volume; a resumed cross-validation uses these folds
    fold-1/ ...      the run directory of each fold
    cv.json, cv.md   per-fold and summary metrics, the statistics; cv_accuracy.png: per-fold test accuracy, model vs
                     baseline; report.html: the page of it all
    nulls.json       how many permutations each null asked for (the model's, the baseline's), and how labels are
                     permuted; a resumed cross-validation keeps them unless told otherwise
    permutation-1/ ...   with --permutations N: each permutation's whole cross-validation on permuted labels
                     (fold-k/, and permutation.json, its result)

Summary, for the model, the baseline and their paired per-fold difference (model - baseline): the mean of the K
fold scores (test accuracy, ROC-AUC), their standard deviation (ddof 1) and a 95% percentile interval of the mean
by resampling the test subjects within each fold (`stats.fold_mean_intervals`: bounded by [0, 1], each fold's
model held fixed). cv.json files written before the statistics hold, under the same key `ci95`, the t-interval
mean +- t(0.975, K-1) sd / sqrt(K) (their `interval` field says so): unbounded, and too narrow, since folds share
training data. The statistics (`stats.cv_statistics`): per fold and pooled, as a run's; model against baseline
across folds by the corrected resampled t-test (Nadeau & Bengio 2003) beside the plain paired one. The baseline's
cross-validated null (`stats.cv_refit_null`, `--baseline-permutations`, cheap: the baseline refitted in each fold
on permuted labels) always; the model's (`--permutations N`) only when asked: each permutation reruns the whole
cross-validation, through the same fold runs, on the pooled labels permuted within subject (and run, by whole
blocks when the data carry onsets; `stats.permuted_labels` with seed (train.seed, i)), without the baseline.

Resume: a fold with metrics.json is done; a fold with checkpoints/last.pt continues as a resumed run does
(bit-identical on CPU); a fold with neither (stopped before its first checkpoint) starts over. The same for every
fold of a permutation; a permutation with permutation.json is done.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stvit import data as D
from stvit.cli import check_path, check_writable, read_config_file
from stvit.config import Config
from stvit.errors import NonFiniteLoss, UserError, WriteError
from stvit.training import api
from stvit.training import distributed as DIST
from stvit.training import stats as S
from stvit.training.evaluation import result_line
from stvit.perf.report import fmt
from stvit.training.provenance import provenance
from stvit.training.rundir import RunDir

FOLDS_FILE = "folds.json"
NULLS_FILE = "nulls.json"
METRICS = ("accuracy", "roc_auc")
BASELINE_PERMUTATIONS = 100  # the baseline's refit null: each costs one small fit per fold (seconds for 100)
NULL_FOLD = {"train": {"baseline": False, "permutations": 0}}  # a permutation's folds: the model's accuracy only


# --- folds ------------------------------------------------------------------------------------------------------

@dataclass
class Pool:
    """The volumes the folds are cut from."""

    X: np.ndarray  # (N, 53, 63, 46) float32
    y: np.ndarray  # (N,) int64
    ids: np.ndarray  # (N,) str
    source: str
    within_train: bool
    meta: dict[str, np.ndarray] = field(default_factory=dict)  # (N,) session, run, volume, onset, ... when known

    def fingerprint(self) -> str:
        """A digest of the labels and subject ids: a resumed cross-validation checks it is on the same volumes."""
        return D.fingerprint(self.y, self.ids)

    def blocks(self) -> S.Blocks:
        """The exchangeability blocks of the pooled labels: within subject (and run), whole blocks with onsets."""
        return S.exchangeability_blocks(self.y, {**self.meta, "subject": self.ids})


def pool_volumes(data: D.HCPData, within_train: bool) -> Pool:
    """The file's train and test volumes in one pool (or the train split alone); refused without subject ids."""
    names = ("train",) if within_train else ("train", "test")
    parts = [data.split(n) for n in names]
    if any(ids is None for _, _, ids in parts):
        raise UserError("no subject ids: the folds cannot be grouped by subject (volumes of one subject on both "
                        "sides of a fold would inflate its accuracy); add ids_train and ids_test to the file",
                        data.source)
    metas = [(data.meta or {}).get(n) or {} for n in names]
    meta = {k: np.concatenate([np.asarray(m[k]) for m in metas]) for k in metas[0] if all(k in m for m in metas)}
    if within_train:
        X, y, ids = parts[0]
    else:
        X = np.concatenate([p[0] for p in parts])
        y, ids = (np.concatenate([p[i] for p in parts]) for i in (1, 2))
    return Pool(X, y, ids.astype(str), data.source, within_train, meta)


def fold_data(pool: Pool, fold: np.ndarray, f: int, with_volumes: bool = True) -> D.HCPData:
    """Fold f as a data set: training = the other folds, test = fold f (volumes copied; None without them)."""
    te = fold == f
    tr = ~te
    X = (lambda rows: pool.X[rows]) if with_volumes else (lambda rows: None)
    meta = {"train": {k: v[tr] for k, v in pool.meta.items()}, "test": {k: v[te] for k, v in pool.meta.items()}} \
        if pool.meta else None
    return D.HCPData(X(tr), pool.y[tr], pool.ids[tr], X(te), pool.y[te], pool.ids[te],
                     source=f"{pool.source} (fold {f + 1} of {int(fold.max()) + 1})", meta=meta)


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
    command: str | None = None  # the command line, for the provenance
    permutations: int = 0  # whole cross-validations on permuted labels (the model's null)
    baseline_permutations: int = BASELINE_PERMUTATIONS  # refits of the baseline (its null)

    @property
    def k(self) -> int:
        return int(self.fold.max()) + 1


def plan_cv(request: api.Request, *, folds: int = 5, within_train: bool = False, permutations: int | None = None,
            baseline_permutations: int | None = None) -> CVPlan:
    """A new cross-validation (`request.out`, or runs/cv-<preset>-<time>) of `folds` folds with the request's
    recipe, or, with `request.resume`, the one in that directory with its own config and folds. `permutations`: the
    model's cross-validated null, `baseline_permutations`: the baseline's (None: 0 and `BASELINE_PERMUTATIONS`, or
    what the resumed one asked for)."""
    for name, n in (("--permutations", permutations), ("--baseline-permutations", baseline_permutations)):
        if n is not None and n < 0:
            raise UserError(f"{name} must be >= 0, got {n}")
    if request.resume:
        plan = _plan_resume(check_path(request.resume))
        asked = read_config_file(plan.out / NULLS_FILE) if (plan.out / NULLS_FILE).is_file() else {}
        return dataclasses.replace(
            plan, command=request.command,
            permutations=asked.get("permutations", 0) if permutations is None else permutations,
            baseline_permutations=asked.get("baseline_permutations", BASELINE_PERMUTATIONS)
            if baseline_permutations is None else baseline_permutations)
    if folds < 2:
        raise UserError(f"--folds must be >= 2, got {folds}")
    cfg = api.resolve_config(request)
    out = Path(request.out) if request.out else Path("runs") / f"cv-{cfg.preset}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    check_writable(out, "directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        hint = "continue it with --resume" if (out / FOLDS_FILE).exists() else "choose another --out"
        raise UserError(f"exists and is not an empty directory; {hint}", out)
    pool = pool_volumes(api.load_data(cfg), within_train)
    subjects = len(np.unique(pool.ids))
    if subjects < folds:
        raise UserError(f"{subjects} subjects for {folds} folds: each fold's test part needs subjects of its "
                        f"own (use --folds {subjects} or fewer)", pool.source)
    fold = D.subject_folds(pool.ids, pool.y, folds, cfg.train.seed)
    plan = CVPlan(cfg, out, pool, fold, False, RunDir(out).fingerprint(), request.command, permutations or 0,
                  BASELINE_PERMUTATIONS if baseline_permutations is None else baseline_permutations)
    for f in range(plan.k):  # each fold's validation split, batch and classes, before anything is written
        light = fold_data(pool, fold, f, with_volumes=False)
        split = api.make_split(cfg, light)
        api.check_split(cfg, split, light)
        api.check_classes(cfg, split, light)
    return plan


def _plan_resume(out: Path) -> CVPlan:
    if not (out / "config.json").is_file() or not (out / FOLDS_FILE).is_file():
        raise UserError(f"not a cross-validation directory to resume (needs config.json and {FOLDS_FILE})", out)
    try:
        cfg = Config.from_dict(read_config_file(out / "config.json"))
    except (ValueError, TypeError) as e:
        raise UserError(str(e), out / "config.json") from None
    record = read_folds(out / FOLDS_FILE)
    pool = pool_volumes(api.load_data(cfg), record["within_train"])
    if pool.fingerprint() != record["fingerprint"] or len(pool.y) != len(record["fold"]):
        raise UserError(f"the data is not the one the folds in {FOLDS_FILE} were made for", pool.source)
    plan = CVPlan(cfg, out, pool, np.asarray(record["fold"], np.int64), True, RunDir(out).fingerprint())
    for f in range(plan.k):  # a finished fold is read, not rerun: its metrics must be whole
        read_fold_metrics(out / f"fold-{f + 1}" / "metrics.json")
    return plan


def read_folds(path: Path) -> dict[str, Any]:
    """folds.json, checked: the fields a resumed cross-validation uses, of the right types."""
    record = read_config_file(path)
    fold = record.get("fold")
    ok = (isinstance(record.get("within_train"), bool) and isinstance(record.get("fingerprint"), str)
          and isinstance(fold, list) and len(fold) > 0
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in fold))
    if ok:
        k = max(fold) + 1
        ok = k >= 2 and len(set(fold)) == k and record.get("folds", k) == k
    if not ok:
        raise UserError("damaged: not the folds a cross-validation wrote (needs within_train, fingerprint and fold: "
                        "a fold number >= 0 per volume, at least 2 folds); restore it, or start a new "
                        "cross-validation with --out", path)
    return record


def read_fold_metrics(path: Path) -> dict[str, Any] | None:
    """A finished fold's metrics.json (None when the fold is not finished); damaged: a UserError saying how to
    redo the fold's evaluation."""
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text())
        ok = isinstance(m, dict) and isinstance(m.get("test"), dict) and "best_epoch" in m \
            and all(k in m["test"] for k in ("n", *METRICS))
    except (ValueError, UnicodeDecodeError, OSError):
        ok = False
    if not ok:
        raise UserError("damaged (not the metrics a fold's run wrote); remove it, and --resume evaluates the fold "
                        "again from its checkpoints", path)
    return m


def start(plan: CVPlan, run: RunDir) -> None:
    """A new cross-validation writes its config and its folds; every one, how many permutations its nulls ask for."""
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
    if run.main:
        run.write_json(NULLS_FILE, {"permutations": plan.permutations,
                                    "baseline_permutations": plan.baseline_permutations, "seed": plan.cfg.train.seed,
                                    "labels": "permutation i: stats.permuted_labels(y, blocks, (seed, i))",
                                    "blocks": plan.pool.blocks().describe()})
    DIST.barrier()


# --- the folds, through the training code --------------------------------------------------------------------------

def run_fold(plan: CVPlan, f: int, quiet: bool, *, root: Path | None = None, pool: Pool | None = None,
             values: dict[str, Any] | None = None, report: bool = True) -> tuple[dict[str, Any], float | None]:
    """Fold f's metrics and the seconds its run took here (None when it was done already and is read), run (or
    continued from its last.pt) in root/fold-<f+1> (root: the cross-validation's directory, or a permutation's) on
    `pool` (its labels permuted, for a permutation) with the config's `values` over the cross-validation's."""
    out = (root or plan.out) / f"fold-{f + 1}"
    done = read_fold_metrics(out / "metrics.json")
    if done is not None:
        return done, None
    fold = RunDir(out)
    if fold.has("last.pt"):
        request = api.Request(resume=out, quiet=quiet, command=plan.command, report=report)
    else:
        if out.exists() and fold.main:
            shutil.rmtree(out)  # stopped before its first checkpoint: nothing to continue from
        DIST.barrier()
        cfg = plan.cfg if values is None else plan.cfg.override(values)
        request = api.Request(preset=cfg.preset, config=cfg.to_dict(), out=out, quiet=quiet, command=plan.command,
                              report=report)
    metrics, seconds = api.timed_run(api.plan(request, fold_data(pool or plan.pool, plan.fold, f)))
    return metrics, seconds


def n_correct(m: dict[str, Any]) -> int:
    """The number of correct test predictions of a fold's metrics."""
    return int(m["stats"]["n_correct"]) if "stats" in m else int(round(m["test"]["accuracy"] * m["test"]["n"]))


# --- the pooled predictions and the statistics --------------------------------------------------------------------

@dataclass
class Pooled:
    """Every fold's test predictions in pool order."""

    y: np.ndarray  # (N,) labels
    probs: np.ndarray  # (N, C) the model's probabilities
    baseline: np.ndarray | None  # (N, C) the baseline's, or None
    rows: list[np.ndarray]  # per fold, the pool rows of its test volumes (in the order of its predictions)
    n_train: list[int]  # per fold, its training volumes (the validation split excluded)


def pooled_predictions(plan: CVPlan, with_baseline: bool) -> Pooled:
    """The folds' predictions.npz and split.json, in the order of the pool."""
    n_classes = plan.cfg.model.num_classes
    y = np.full(len(plan.pool.y), -1, np.int64)
    probs, base = np.full((len(y), n_classes), np.nan), np.full((len(y), n_classes), np.nan) if with_baseline else None
    rows, n_train = [], []
    for f in range(plan.k):
        folder = plan.out / f"fold-{f + 1}"
        with np.load(folder / "predictions.npz") as pred:
            r = np.flatnonzero(plan.fold == f)[pred["test_index"]]
            if not np.array_equal(pred["test_labels"], plan.pool.y[r]):
                raise UserError(f"the test labels are not those of fold {f + 1} in {FOLDS_FILE}",
                                folder / "predictions.npz")
            y[r], probs[r] = pred["test_labels"], pred["test_probs"]
            if with_baseline:
                base[r] = pred["baseline_test_probs"]
        rows.append(r)
        n_train.append(int(read_config_file(folder / "split.json")["n_train"]))
    return Pooled(y, probs, base, rows, n_train)


def fold_of(pooled: Pooled, n: int) -> np.ndarray:
    """(n,) the fold of each pool row."""
    fold = np.full(n, -1, np.int64)
    for f, r in enumerate(pooled.rows):
        fold[r] = f
    return fold


def baseline_null(plan: CVPlan, results: list[dict[str, Any]], observed: float) -> dict[str, Any]:
    """The baseline's cross-validated refit null: in each fold the baseline (its voxels, scaler and chosen C, from
    the fold's own training split) refitted on the training labels of each of `plan.baseline_permutations`
    permutations of the pool (the model's permutations 1, 2, ...), scored on the fold's permuted test labels."""
    from stvit.training import baseline as B  # scikit-learn, only when the null is computed

    t0 = time.perf_counter()
    pool, folds, truth = plan.pool, [], 0
    for f in range(plan.k):
        split = read_config_file(plan.out / f"fold-{f + 1}" / "split.json")
        train = np.flatnonzero(plan.fold != f)[np.asarray(split["train"], np.int64)]
        test = np.flatnonzero(plan.fold == f)
        mask = B.inbrain_mask(pool.X, train)
        Xtr, Xte = B.voxels(pool.X, train, mask), B.voxels(pool.X, test, mask)
        scaler = B.fit_scaler(Xtr)
        refit = B.refitter(scaler.transform(Xtr), scaler.transform(Xte), results[f]["baseline"]["C"],
                           plan.cfg.model.num_classes)
        del Xtr, Xte
        truth += int(np.sum(refit(pool.y[train]) == pool.y[test]))
        folds.append((refit, train, test))
    seeds = [(plan.cfg.train.seed, i) for i in range(1, plan.baseline_permutations + 1)]
    null = S.cv_refit_null(folds, pool.y, pool.blocks(), observed, seeds)
    return {**null, "classifier": "baseline", "refit_observed": truth / len(pool.y),
            "unconverged": sum(r.unconverged for r, _, _ in folds), "seconds": round(time.perf_counter() - t0, 3),
            "seconds_per_permutation": round((time.perf_counter() - t0) / max(len(seeds), 1), 4),
            "method": "the baseline refitted in every fold (its voxels, scaler and C from the fold's training split) "
                      "on the permuted training labels, scored on the fold's permuted test labels; permutation i "
                      "uses the labels of the model's cross-validated permutation i"}


def summarize(plan: CVPlan, results: list[dict[str, Any]], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """cv.json: every fold's test metrics (model and baseline), their means, spreads and bounded intervals, the
    statistics of the pooled predictions, and the baseline's null (`previous`'s when it has the same one)."""
    with_baseline = all("baseline" in m for m in results)
    pooled = pooled_predictions(plan, with_baseline)
    p, n = plan.pool, plan.cfg.train.permutations
    stats = S.cv_statistics(pooled.y, pooled.probs, fold_of(pooled, len(p.y)), plan.cfg.model.num_classes,
                            pooled.n_train, {**p.meta, "subject": p.ids}, pooled.baseline, n_perm=n, n_boot=n,
                            seed=plan.cfg.train.seed)
    folds = []
    for f, m in enumerate(results):
        s = stats["folds"][f]
        row = {"fold": f + 1, "n_test": m["test"]["n"], "n_train": pooled.n_train[f],
               "test_subjects": len(set(p.ids[plan.fold == f].tolist())), "best_epoch": m["best_epoch"],
               "model": {**{k: m["test"][k] for k in METRICS}, "balanced_accuracy": s["balanced_accuracy"]},
               "permutation_p": None if s["permutation"] is None else s["permutation"]["p"]}
        if with_baseline:
            row["baseline"] = {**{k: m["baseline"][k] for k in METRICS}, "C": m["baseline"]["C"],
                               "balanced_accuracy": s["baseline"]["baseline_balanced_accuracy"]}
            row["difference"] = {k: None if m["test"][k] is None or m["baseline"][k] is None
                                 else m["test"][k] - m["baseline"][k] for k in METRICS}
            row["mcnemar_p"] = s["baseline"]["mcnemar"]["p"]
        folds.append(row)
    parts = ("model", "baseline", "difference") if with_baseline else ("model",)
    summary = {q: {k: spread([r[q][k] for r in folds], stats["fold_mean"][q][k]) for k in METRICS} for q in parts}
    cv = {"folds_k": plan.k, "seed": plan.cfg.train.seed, "preset": plan.cfg.preset, "data": p.source,
          "pooled": "train" if p.within_train else "train+test", "n_volumes": int(len(p.y)),
          "n_subjects": int(len(np.unique(p.ids))), "unit": "subjects",
          "interval": f"95% percentile bootstrap interval of the mean over folds, resampling the test subjects within "
                      f"each fold ({n:,} resamples), each fold's model held fixed: within [0, 1] (cv.json files "
                      "written before the statistics held a t-interval here)",
          "folds": folds, "summary": summary, "stats": stats, "baseline_null": None, "null": None}
    if with_baseline and plan.baseline_permutations:
        old = (previous or {}).get("baseline_null")
        observed = stats["pooled"]["baseline"]["baseline_accuracy"]
        same = old is not None and old.get("n_permutations") == plan.baseline_permutations and \
            old.get("observed") == observed
        cv["baseline_null"] = old if same else baseline_null(plan, results, observed)
    return cv


def spread(values: list[float | None], ci: list[float] | None) -> dict[str, Any]:
    """Mean and standard deviation (ddof 1) of the fold scores (None scores left out), with the interval `ci`."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    return {"n": int(len(v)), "mean": float(v.mean()) if len(v) else None,
            "sd": float(v.std(ddof=1)) if len(v) >= 2 else None, "ci95": ci}


# --- the model's cross-validated null ----------------------------------------------------------------------------

def run_permutation(plan: CVPlan, i: int, blocks: S.Blocks, quiet: bool, say) -> dict[str, Any]:
    """Permutation i of the model's null: the whole cross-validation rerun (or continued, or read when done) in
    DIR/permutation-i/ on the pooled labels permuted within `blocks` (seed (train.seed, i)), the same folds, the
    model alone (`NULL_FOLD`); its pooled test accuracy and cost, as written to permutation.json."""
    root = plan.out / f"permutation-{i}"
    if (root / "permutation.json").is_file():
        return json.loads((root / "permutation.json").read_text())
    seed = [plan.cfg.train.seed, i]
    pool = dataclasses.replace(plan.pool, y=S.permuted_labels(plan.pool.y, blocks, seed))
    results, seconds = [], []
    for f in range(plan.k):
        say(f"permutation {i} of {plan.permutations}, fold {f + 1} of {plan.k}: {root / f'fold-{f + 1}'}", flush=True)
        m, t = run_fold(plan, f, quiet, root=root, pool=pool, values=NULL_FOLD, report=False)
        results.append(m)
        seconds.append(t)
    record = {"permutation": i, "seed": seed, "accuracy": sum(map(n_correct, results)) / len(pool.y),
              "folds": [m["test"]["accuracy"] for m in results],
              "seconds": round(sum(t for t in seconds if t is not None), 1), "whole": None not in seconds}
    RunDir(root).write_json("permutation.json", record)
    return record


def model_null(plan: CVPlan, records: list[dict[str, Any]], observed: float) -> dict[str, Any]:
    """cv.json's `null`: the pooled accuracies of the permutations against the observed one, with the cost of one
    permutation (the median over those run in one go; else over all, which then undercounts)."""
    whole = [r["seconds"] for r in records if r["whole"]]
    cost = float(np.median(whole or [r["seconds"] for r in records]))
    return {**S.cv_null(observed, [r["accuracy"] for r in records], cost), "classifier": "model",
            **plan.pool.blocks().describe(),
            "method": "the whole cross-validation rerun on the pooled labels permuted within blocks (same folds, "
                      "the model alone), its pooled test accuracy", "cost_measured_on": len(whole)}


# --- words and files -----------------------------------------------------------------------------------------------

def fmt_interval(s: dict[str, Any]) -> str:
    if s["sd"] is None:
        return f"{fmt(s['mean'], '.3f')} (one fold)"
    ci = "" if not s["ci95"] else f" (95% CI {s['ci95'][0]:.3f} to {s['ci95'][1]:.3f})"
    return f"{fmt(s['mean'], '.3f')} ± {s['sd']:.3f}{ci}"


def fmt_seconds(t: float | None) -> str:
    """'0.042 s', '12 s', '3.5 min'."""
    return "n/a" if t is None else f"{t:.2g} s" if t < 10 else f"{t:.0f} s" if t < 120 else f"{t / 60:.1f} min"


def comparison_text(cv: dict[str, Any]) -> str | None:
    """'corrected resampled t-test p = 0.25 (plain p = 0.04)' of the model - baseline comparison, or None."""
    c = cv["stats"].get("comparison")
    if c is None or c["corrected"] is None:
        return None
    p = {k: "n/a" if c[k]["p"] is None else S.fmt_p(c[k]["p"], None) for k in ("corrected", "plain")}
    return f"corrected resampled t-test {p['corrected']} (plain paired t-test {p['plain']})"


def null_text(null: dict[str, Any], what: str) -> str:
    return (f"{what}: {S.fmt_p(null['p'], None)}, {null['n_permutations']:,} permutations (null mean "
            f"{null['mean']:.3f}, 95th percentile {null['q95']:.3f}; {fmt_seconds(null['seconds_per_permutation'])} "
            f"per permutation)")


def report(cv: dict[str, Any]) -> str:
    """cv.md."""
    parts = [p for p in ("model", "baseline", "difference") if p in cv["summary"]]
    lines = [f"# Cross-validation: {cv['folds_k']} folds, grouped by subject, stratified by label", "",
             S.cv_sentence({**cv["stats"], "null": cv.get("null")}), "",
             f"- Data: {cv['data']} ({cv['pooled']} pooled: {cv['n_volumes']} volumes of {cv['n_subjects']} "
             f"subjects)", f"- Preset {cv['preset']}, seed {cv['seed']}; each fold is a full `stvit.train` run "
             "in fold-k/ (its validation split from its own training subjects)",
             f"- Interval: {cv['interval']}", "",
             "| fold | test volumes | test subjects | best epoch | model accuracy | balanced | model ROC-AUC | "
             "permutation p" + (" | baseline accuracy | baseline ROC-AUC | baseline C | difference (accuracy) | "
                                "McNemar p |" if "baseline" in parts else " |"),
             "|---" * (13 if "baseline" in parts else 8) + "|"]
    for r in cv["folds"]:
        p = "n/a" if r.get("permutation_p") is None else S.fmt_p(r["permutation_p"], None)
        row = f"| {r['fold']} | {r['n_test']} | {r['test_subjects']} | {r['best_epoch']} | " \
              f"{fmt(r['model']['accuracy'], '.3f')} | {fmt(r['model'].get('balanced_accuracy'), '.3f')} | " \
              f"{fmt(r['model']['roc_auc'], '.3f')} | {p} |"
        if "baseline" in parts:
            row += f" {fmt(r['baseline']['accuracy'], '.3f')} | {fmt(r['baseline']['roc_auc'], '.3f')} | " \
                   f"{r['baseline']['C']:g} | {fmt(r['difference']['accuracy'], '.3f')} | " \
                   f"{S.fmt_p(r['mcnemar_p'])} |"
        lines.append(row)
    lines += ["", "| | accuracy: mean ± sd over folds (95% CI) | ROC-AUC: mean ± sd over folds (95% CI) |",
              "|---|---|---|"]
    names = {"model": "model", "baseline": "baseline (logistic regression)",
             "difference": "difference, model - baseline (paired by fold)"}
    for p in parts:
        lines.append(f"| {names[p]} | {fmt_interval(cv['summary'][p]['accuracy'])} | "
                     f"{fmt_interval(cv['summary'][p]['roc_auc'])} |")
    c = cv["stats"].get("comparison")
    if c is not None and c["corrected"] is not None:
        lines += ["", "Model - baseline accuracy across folds (the folds share training data: the corrected test "
                  f"inflates the variance by 1/K + n_test/n_train = {c['corrected']['variance_factor']:.3f} instead "
                  f"of 1/K = {c['plain']['variance_factor']:.3f}):", "",
                  "| test | t | df | p (two-sided) | 95% CI of the mean difference |", "|---|---|---|---|---|"]
        for name, r in (("corrected resampled t-test (Nadeau & Bengio 2003)", c["corrected"]),
                        ("plain paired t-test", c["plain"])):
            ci = "n/a" if r["ci"] is None else f"{r['ci'][0]:.3f} to {r['ci'][1]:.3f}"
            lines.append(f"| {name} | {fmt(r['t'], '.2f')} | {r['df']} | "
                         f"{'n/a' if r['p'] is None else S.fmt_p(r['p'], None)} | {ci} |")
    nulls = [(cv.get("baseline_null"), "Baseline's cross-validated refit null"),
             (cv.get("null"), "Model's cross-validated null (whole cross-validations on permuted labels)")]
    if any(n for n, _ in nulls):
        lines += [""] + [f"- {null_text(n, what)}" for n, what in nulls if n]
    return "\n".join(lines) + "\n"


def summary_line(cv: dict[str, Any], out: Path) -> str:
    s = cv["summary"]
    line = (f"cv ({cv['folds_k']} folds, grouped by subject; intervals resample subjects): model accuracy "
            f"{fmt_interval(s['model']['accuracy'])}")
    if "baseline" in s:
        line += (f" | baseline {fmt_interval(s['baseline']['accuracy'])} | difference "
                 f"{fmt_interval(s['difference']['accuracy'])}")
        test = comparison_text(cv)
        if test:
            line += f", {test}"
    return f"{line}; {out / 'report.html'}"


def write_summary(plan: CVPlan, run: RunDir, cv: dict[str, Any]) -> None:
    """cv.json, cv.md, cv_accuracy.png and report.html."""
    run.write_json("cv.json", cv)
    run.write_text("cv.md", report(cv))

    def draw(_):
        from stvit.training.figures import plot_cv_accuracy  # matplotlib, only when figures are drawn

        base = [r["baseline"]["accuracy"] for r in cv["folds"]] if "baseline" in cv["summary"] else None
        plot_cv_accuracy([r["model"]["accuracy"] for r in cv["folds"]], base, plan.out / "cv_accuracy.png",
                         f"{cv['folds_k']}-fold cross-validation, grouped by subject")

    run.write_figure(draw)
    from stvit.training.report_page import write_report  # jinja2, only when a page is written

    write_report(run, "cv")


def run_cv(plan: CVPlan, quiet: bool = False) -> dict[str, Any]:
    """Claim the directory, run (or read, or continue) every fold, write cv.json, cv.md, the figure and
    report.html; then, when asked, every permutation of the model's null, and write them again with it. The
    summary. A fold stopped by a non-finite loss or a write error raises it with a hint to resume."""
    run = RunDir(plan.out)
    api.claim(plan.fingerprint, run)  # the same lock and check as a run's
    say = print if run.main else (lambda *a, **k: None)
    where = "fold 1"
    try:
        origin = provenance(plan.command, api.device_of(plan.cfg))
        start(plan, run)
        results, seconds = [], []
        for f in range(plan.k):
            where = f"fold {f + 1}"
            say(f"fold {f + 1} of {plan.k}: {plan.out / f'fold-{f + 1}'}", flush=True)
            m, t = run_fold(plan, f, quiet)
            say(result_line(m), flush=True)
            results.append(m)
            seconds.append(t)
        where = None  # every fold is done: what is left is the summary
        previous = json.loads((plan.out / "cv.json").read_text()) if (plan.out / "cv.json").is_file() else None
        cv = {**summarize(plan, results, previous), "provenance": origin}
        cv["timing"] = {"folds": [None if t is None else round(t, 1) for t in seconds],
                        "cross_validation": None if None in seconds else round(sum(seconds), 1)}
        if cv["timing"]["cross_validation"] is None and previous:  # folds read: the time measured when they ran
            cv["timing"]["cross_validation"] = (previous.get("timing") or {}).get("cross_validation")
        write_summary(plan, run, cv)
        if plan.permutations:
            blocks = plan.pool.blocks()
            say(f"the model's cross-validated null: {plan.permutations} permutations of the labels ({blocks.kind} "
                f"within {blocks.within}), each a whole {plan.k}-fold cross-validation without the baseline in "
                f"{plan.out / 'permutation-i'} (the cross-validation took "
                f"{fmt_seconds(cv['timing']['cross_validation'])})", flush=True)
            records = []
            for i in range(1, plan.permutations + 1):
                where = f"permutation {i}"
                records.append(run_permutation(plan, i, blocks, quiet, say))
                say(f"permutation {i}: cross-validated accuracy {records[-1]['accuracy']:.3f} "
                    f"({fmt_seconds(records[-1]['seconds'])})", flush=True)
            cv["null"] = model_null(plan, records, cv["stats"]["pooled"]["accuracy"])
            cv["timing"]["per_permutation"] = cv["null"]["seconds_per_permutation"]
            write_summary(plan, run, cv)
        return cv
    except (NonFiniteLoss, WriteError) as e:
        e.hint = (f"{where} stopped, what finished before it is intact; python -m stvit.cv --resume {plan.out} "
                  "continues it" if where else f"every fold is done and intact; python -m stvit.cv --resume "
                  f"{plan.out} writes the summary")
        raise
    finally:
        run.close()

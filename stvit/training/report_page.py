"""report.html: one self-contained page per run directory and per cross-validation directory, for a person to read.

`render_run(folder)` and `render_cv(folder)` read what the folder holds and return the page's text; `write_report`
writes it through the folder's `RunDir`. Every part is optional: what a folder lacks is left out of the page and
named in a note.

    run directory    config.json, metrics.json (its `stats`: `stvit.training.stats.run_statistics`; its
                     `provenance`: command, versions, commit, started, host, device), log.jsonl, split.json,
                     predictions.npz (the ROC curves; and the statistics, computed here from its labels,
                     probabilities and subjects, when metrics.json has none), figures/*.png, maps/maps.json and
                     maps/<map>_{stat,glass}.png
    cv directory     config.json, cv.json (its `stats`: `stats.cv_statistics`; `summary`: means, spreads and
                     intervals over folds; `baseline_null` and `null`: the cross-validated nulls; `timing`;
                     `provenance`; its per-fold rows), folds.json, cv_accuracy.png

A file that is there but not as stvit writes it (not JSON, not an npz) is a UserError naming it.

The page is one HTML file with nothing outside it: figures are PNG data URIs (drawn by matplotlib, or read from the
folder), the style is inline, there is no script, no font, no link; a Content-Security-Policy forbids everything
but inline style and data: images, so a browser refuses anything else even if it crept in. Wide enough for a laptop,
printable (@media print). The template is `templates/report.html.j2` (Jinja2, autoescaped).
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stvit.errors import UserError
from stvit.training import stats as S

TEMPLATE = "report.html.j2"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# every key the template reads, empty: a context names only what it has
BLANK = {"title": "stvit report", "folder": "", "kind": "run", "sentence": None, "warning": None, "notes": [],
         "scores": [], "scores_title": "Test scores", "score_columns": ["model"], "scores_note": None, "folds": [],
         "comparison": [], "nulls": [], "stats": [], "figures": [], "per_unit": None, "maps": None, "what": [],
         "config": None, "timing": []}
CURVES = (("pretrain_loss.png", "Pre-training loss"), ("finetune_loss.png", "Fine-tuning loss"),
          ("finetune_accuracy.png", "Fine-tuning accuracy"))


# --- reading a folder -------------------------------------------------------------------------------------------------

def read_json(path: Path) -> Any:
    """The JSON of `path`, or None when the file is absent; a UserError naming it when it is not JSON."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"not valid JSON ({e})", path) from None


def read_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an .npz file (no pickled objects), or None when it is absent; a UserError naming it when it is
    not one."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: zipfile, OSError, ValueError
        raise UserError(f"cannot read it as .npz ({type(e).__name__}: {e})", path) from None


def read_log(path: Path) -> list[dict]:
    """log.jsonl's records (a torn last line left out), [] without the file; `rundir.read_log`, imported only here
    since the run directory module imports torch."""
    from stvit.training.rundir import read_log as read

    return read(path)


def data_uri(png: bytes) -> str:
    """A PNG as a data: URI."""
    if not png.startswith(PNG_MAGIC):
        raise ValueError("not a PNG")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image(path: Path, title: str) -> dict[str, str] | None:
    """{title, uri} of a PNG file, or None when it is absent."""
    return {"title": title, "uri": data_uri(path.read_bytes())} if path.is_file() else None


# --- figures drawn for the page ---------------------------------------------------------------------------------------

def png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (and closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_figure(y: np.ndarray, curves: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """ROC curves of binary labels y (N,) for each (name, score of class 1 (N,)); non-finite scores left out."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4))
    for name, score in curves:
        keep = np.isfinite(score)
        fpr, tpr, _ = roc_curve(y[keep], score[keep])
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y[keep], score[keep]):.3f})")
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test split", xlim=(0, 1),
           ylim=(0, 1.01), aspect="equal")
    ax.legend(loc="lower right", fontsize=8)
    return png(fig)


def null_figure(perm: dict[str, Any], chance: float, title: str) -> bytes:
    """The permutation null's histogram (from its stored edges and counts), the observed accuracy and chance."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    edges, counts = np.asarray(perm["histogram"]["edges"]), np.asarray(perm["histogram"]["counts"])
    ax.stairs(counts, edges, fill=True, color="0.75", label=f"null ({perm['n_permutations']:,} permutations)")
    ax.axvline(perm["observed"], color="C3", linewidth=2, label=f"observed {perm['observed']:.3f}")
    ax.axvline(chance, color="0.3", linestyle=":", linewidth=1, label=f"chance {chance:.3f}")
    ax.set(xlabel="accuracy", ylabel="permutations", title=title)
    ax.legend(fontsize=8)
    return png(fig)


def unit_figure(per_unit: dict[str, Any], chance: float) -> bytes:
    """Accuracy of each unit (subject or run), sorted, with their mean and chance."""
    plt = pyplot()
    rows = sorted(per_unit["rows"], key=lambda r: r["accuracy"])
    n = len(rows)
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    ax.plot(range(n), [r["accuracy"] for r in rows], "o", color="C0", markersize=5)
    ax.axhline(per_unit["mean"], color="C0", linestyle="--", linewidth=1, label=f"mean {per_unit['mean']:.3f}")
    ax.axhline(chance, color="0.3", linestyle=":", linewidth=1, label=f"chance {chance:.3f}")
    ax.set_xticks(range(n), [r["id"] for r in rows] if n <= 30 else [""] * n, rotation=90, fontsize=6)
    ax.set(ylabel="test accuracy", ylim=(min(0.0, chance - 0.1) if n else 0, 1.02),
           title=f"accuracy per {per_unit['unit'][:-1]} ({n} {per_unit['unit']})")
    ax.legend(fontsize=8, loc="lower right")
    return png(fig)


# --- words and numbers ------------------------------------------------------------------------------------------------

def f3(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def ci(pair: Sequence[float] | None, digits: int = 3) -> str:
    return "" if pair is None else f"{pair[0]:.{digits}f} to {pair[1]:.{digits}f}"


def stats_rows(s: dict[str, Any]) -> list[dict[str, str]]:
    """The statistics table of `run_statistics`' result: {name, value, detail} rows."""
    iv, perm, chance, per, b = s["interval"], s["permutation"], s["chance"], s["per_unit"], s.get("baseline")
    unit = iv["unit"]
    rows = [
        {"name": "Accuracy", "value": f"{s['accuracy']:.3f}",
         "detail": f"{s['n_correct']} of {s['n']} volumes; 95% CI {ci(iv['accuracy'])} ({iv['method']}, "
                   f"{iv['n_boot']:,} resamples)" if iv["accuracy"] else f"{s['n_correct']} of {s['n']} volumes"},
        {"name": "Balanced accuracy", "value": f"{s['balanced_accuracy']:.3f}", "detail": "mean recall over classes"},
        {"name": "Chance level", "value": f"{chance['majority']:.3f}",
         "detail": f"majority rate of the test labels (class {chance['majority_class']}); 1/k = "
                   f"{chance['uniform']:.3f}. {chance['why'].capitalize()}."},
        {"name": "Exact binomial test", "value": S.fmt_p(s["binomial"]["p"]),
         "detail": s["binomial"]["method"].capitalize()},
        permutation_row(perm),
    ]
    if iv.get("roc_auc"):
        rows.insert(2, {"name": "ROC-AUC interval", "value": ci(iv["roc_auc"]),
                        "detail": f"95% CI, {iv['method']}"})
    if per is not None:
        sd = "" if per["sd"] is None else f" ± {per['sd']:.3f}"
        rows.append({"name": f"Accuracy per {unit[:-1]}", "value": f"{per['mean']:.3f}{sd}",
                     "detail": f"mean ± sd over {per['n']} {unit}; min {per['min']:.3f}, max {per['max']:.3f}"})
    if b is not None:
        mc = b["mcnemar"]
        rows += [
            {"name": "Model - baseline", "value": f"{b['difference']:+.3f}",
             "detail": (f"95% CI {ci(b['ci'])} ({b['method']}); " if b["ci"] else "")
             + f"model {b['model_accuracy']:.3f}, baseline {b['baseline_accuracy']:.3f}"},
            {"name": "McNemar test", "value": S.fmt_p(mc["p"]),
             "detail": f"{mc['only_first']} volumes right by the model only, {mc['only_second']} by the baseline "
                       f"only; {mc['method']}"},
        ]
    return rows


def permutation_row(perm: dict[str, Any] | None, name: str = "Permutation test") -> dict[str, str]:
    """The row of a permutation test against chance (`stats.permutation_test`, or None when none was run)."""
    if perm is None:
        return {"name": name, "value": "not run", "detail": "train.permutations is 0 (--test-permutations)"}
    return {"name": name, "value": S.fmt_p(perm["p"], None),
            "detail": f"{perm['n_permutations']:,} permutations of the labels of {perm['n_units']:,} "
                      f"{'condition blocks' if perm['units'] == 'blocks' else 'volumes'} within "
                      f"{perm['within']} ({perm['n_groups']} groups); null mean {perm['mean']:.3f}, 95th percentile "
                      f"{perm['q95']:.3f}; p = (1 + #null >= observed) / (1 + permutations)"
                      + (f". Caveat: {perm['caveat']}" if perm["caveat"] else "")
                      + (f". Assumption: {perm['assumption']}" if perm.get("assumption") else "")}


def score_rows(metrics: dict[str, Any], stats: dict[str, Any] | None) -> list[dict[str, str]]:
    """Model and baseline side by side: accuracy, balanced accuracy, ROC-AUC, per-class recall and precision."""
    parts = [("model", metrics.get("test"))] + ([("baseline", metrics["baseline"])] if metrics.get("baseline") else [])
    names = metrics.get("class_names") or []
    rows = [{"name": "Test accuracy", **{p: f3(m["accuracy"]) for p, m in parts}},
            {"name": "ROC-AUC", **{p: f3(m.get("roc_auc")) for p, m in parts}}]
    if stats is not None:
        bal = {"model": stats["balanced_accuracy"]}
        if stats.get("baseline") is not None:
            bal["baseline"] = stats["baseline"]["baseline_balanced_accuracy"]
        rows.insert(1, {"name": "Balanced accuracy", **{p: f3(bal.get(p)) for p, _ in parts}})
    for name in names:
        rows.append({"name": f"{name}: recall / precision",
                     **{p: f"{m['per_class'][name]['recall']:.3f} / {m['per_class'][name]['precision']:.3f}"
                        for p, m in parts if name in m.get("per_class", {})}})
    if "val" in metrics:
        rows.append({"name": "Validation accuracy", "model": f3(metrics["val"]["accuracy"]),
                     "baseline": f3(metrics.get("baseline", {}).get("val_accuracy"))})
    return rows


def provenance_rows(prov: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """(name, value) rows of a `provenance` section: versions, commit, started, host."""
    prov = prov or {}
    commit = prov.get("commit")
    if commit and prov.get("dirty"):
        commit += " (with uncommitted changes)"
    versions = ", ".join(f"{k} {v}" for k, v in (prov.get("versions") or {}).items())
    return [("Versions", versions or None), ("Commit", commit), ("Started", prov.get("started")),
            ("Host", prov.get("host"))]


def what_rows(folder: Path, cfg: dict | None, metrics: dict | None, split: dict | None) -> list[dict[str, str]]:
    """What was run: command, preset, data and its size, device, precision, kernels, recipe, versions, commit."""
    cfg, metrics = cfg or {}, metrics or {}
    prov = metrics.get("provenance") or {}
    kern = metrics.get("kernels") or {}
    train = cfg.get("train", {})
    command = prov.get("command") or ("(called from Python)" if prov else None)
    rows = [("Run directory", str(folder)), ("Command", command), ("Preset", cfg.get("preset"))]
    data = metrics.get("data") or (cfg.get("data") or {}).get("path")
    if data:
        size = []
        if split:
            size.append(f"{split['n_train']} training / {split['n_val']} validation volumes (validation split "
                        f"{'grouped by subject' if split.get('grouped_by_subject') else 'by volume'})")
        if metrics.get("test"):
            units = (metrics.get("stats") or {}).get("units")
            size.append(f"{metrics['test']['n']} test volumes"
                        + (f" of {units['n']} {units['name']}" if units and units["name"] != "volumes" else ""))
        rows.append(("Data", data + (": " + "; ".join(size) if size else "")))
    if metrics.get("class_names"):
        rows.append(("Classes", ", ".join(f"{i} = {n}" for i, n in enumerate(metrics["class_names"]))))
    if kern or prov.get("device"):
        device = prov.get("device") or kern.get("device")
        rows.append(("Device, precision", f"{device} (asked: {train.get('device', '?')}), "
                                          f"{kern.get('dtype', '?')} (asked: {train.get('precision', '?')})"))
    if kern:
        fused = [op for op, v in (kern.get("ops") or {}).items() if v.get("fused")]
        rows.append(("Kernels", f"{kern.get('mode')}: fused {', '.join(fused) if fused else 'none'}"))
    if cfg:
        m, pre, ft = cfg.get("model", {}), cfg.get("pretrain", {}), cfg.get("finetune", {})
        rows.append(("Model", f"dim {m.get('dim')}, spatial depth {m.get('depth')}, temporal depth "
                              f"{m.get('temporal_depth')}, {m.get('heads')} heads, patch {m.get('patch')}"))
        rows.append(("Recipe", f"pre-training {epochs(pre.get('epochs'))} (lr {pre.get('lr')}), fine-tuning "
                               f"{epochs(ft.get('epochs'))} (lr {ft.get('lr')}), batch {train.get('batch_size')}, "
                               f"seed {train.get('seed')}, compile {train.get('compile')}"))
    if "best_epoch" in metrics:
        rows.append(("Checkpoint", f"best epoch {metrics['best_epoch']} by {metrics.get('selected_on')} accuracy"))
    if metrics.get("baseline"):
        b = metrics["baseline"]
        rows.append(("Baseline", f"{b.get('model')}, C {b.get('C')}, {b.get('n_voxels')} voxels"))
    rows += provenance_rows(prov)
    return [{"name": k, "value": str(v)} for k, v in rows if v is not None]


def epochs(n: int | None) -> str:
    return "? epochs" if n is None else f"{n} epoch" + ("" if n == 1 else "s")


def timing_rows(records: list[dict], metrics: dict | None) -> list[dict[str, str]]:
    """Per stage: epochs, seconds, median throughput (volumes/s); then the baseline and the statistics."""
    rows = []
    for stage in ("pretrain", "finetune"):
        rs = [r for r in records if r.get("stage") == stage]
        if rs:
            secs = sum(r.get("seconds", 0.0) for r in rs)
            rate = [r["samples_per_s"] for r in rs if "samples_per_s" in r]
            rows.append({"name": {"pretrain": "Pre-training", "finetune": "Fine-tuning"}[stage],
                         "value": f"{secs:.1f} s", "detail": f"{epochs(len(rs))}; median "
                         f"{np.median(rate):.0f} volumes/s" if rate else epochs(len(rs))})
    metrics = metrics or {}
    if (metrics.get("baseline") or {}).get("seconds") is not None:
        rows.append({"name": "Baseline", "value": f"{metrics['baseline']['seconds']:.1f} s",
                     "detail": "fit over the C grid and test"})
    if (metrics.get("stats") or {}).get("seconds") is not None:
        rows.append({"name": "Statistics", "value": f"{metrics['stats']['seconds']:.2f} s",
                     "detail": "permutation test, bootstrap, binomial and McNemar tests"})
    return rows


# --- the two pages ----------------------------------------------------------------------------------------------------

def run_context(folder: Path | str) -> dict[str, Any]:
    """Everything the page of a run directory shows, as plain data (strings, rows, data URIs)."""
    folder = Path(folder)
    cfg, metrics = read_json(folder / "config.json"), read_json(folder / "metrics.json")
    split, records = read_json(folder / "split.json"), read_log(folder / "log.jsonl")
    pred = read_npz(folder / "predictions.npz")
    stats = (metrics or {}).get("stats")
    notes, figures = [], []
    if metrics is None:
        notes.append("no metrics.json: the run has not been evaluated")
    elif stats is None and pred is not None and "test_labels" in pred:
        stats = stats_of_predictions(pred, cfg or {}, len(metrics.get("class_names") or [0, 1]))
        notes.append("metrics.json has no statistics (a run evaluated before they were computed): those on this page "
                     "were computed for it from predictions.npz"
                     + ("" if "test_subject" in pred else ", which has no subject ids: volumes are the only unit"))
    elif stats is None:
        notes.append("metrics.json has no statistics (a run evaluated before they were computed)")
    figures += [image(folder / "figures" / name, title) for name, title in CURVES]
    figures.append(image(folder / "figures" / "confusion_matrix.png", "Confusion matrix, test split"))
    figures.append(roc_image(pred))
    if stats is not None:
        if stats["permutation"] is not None:
            figures.append({"title": "Permutation test", "uri": data_uri(null_figure(
                stats["permutation"], stats["chance"]["majority"], "test accuracy against its permutation null"))})
        if stats["per_unit"] is not None:
            figures.append({"title": f"Accuracy per {stats['per_unit']['unit'][:-1]}",
                            "uri": data_uri(unit_figure(stats["per_unit"], stats["chance"]["majority"]))})
    has_baseline = bool((metrics or {}).get("baseline"))
    return {
        "kind": "run", "title": f"stvit run: {folder.name}", "folder": str(folder),
        "sentence": S.sentence(stats) if stats else None,
        "warning": (metrics or {}).get("warning"), "notes": notes,
        "what": what_rows(folder, cfg, metrics, split),
        "scores": score_rows(metrics, stats) if metrics and "test" in metrics else [],
        "score_columns": ["model", "baseline"] if has_baseline else ["model"],
        "stats": stats_rows(stats) if stats else [],
        "per_unit": stats["per_unit"] if stats else None,
        "figures": [f for f in figures if f is not None],
        "maps": maps_context(folder / "maps"), "timing": timing_rows(records, metrics),
        "config": json.dumps(cfg, indent=2) if cfg else None,
    }


META = ("subject", "session", "run", "volume", "onset")


def stats_of_predictions(pred: dict[str, np.ndarray], cfg: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """`run_statistics` of the arrays of a predictions.npz (labels, probabilities, the baseline's, each test volume's
    subject, session, run, frame and onset when stored), with the run's permutations and seed."""
    train = cfg.get("train") or {}
    n = int(train.get("permutations", S.N_PERMUTATIONS))
    meta = {k: pred[f"test_{k}"] for k in META if f"test_{k}" in pred}
    return S.run_statistics(pred["test_labels"], pred["test_probs"], num_classes, meta,
                            pred.get("baseline_test_probs"), n_perm=n, n_boot=n, seed=int(train.get("seed", 0)))


def roc_image(pred: dict[str, np.ndarray] | None) -> dict[str, str] | None:
    """{title, uri} of the ROC curves of predictions.npz's arrays (model and baseline), None without them or for
    other than two classes."""
    if pred is None or "test_labels" not in pred:
        return None
    y, probs = pred["test_labels"], pred["test_probs"]
    if probs.ndim != 2 or probs.shape[1] != 2 or len(np.unique(y)) != 2:
        return None
    curves = [("model", probs[:, 1])]
    if "baseline_test_probs" in pred:
        curves.append(("baseline", pred["baseline_test_probs"][:, 1]))
    return {"title": "ROC curves", "uri": data_uri(roc_figure(y, curves))}


def maps_context(folder: Path) -> dict[str, Any] | None:
    """The brain maps of `stvit.explain` (maps.json and its figures), or None without them."""
    record = read_json(folder / "maps.json")
    if record is None:
        return None
    figures = [image(folder / f"{name}_{kind}.png", f"{name} ({'glass brain' if kind == 'glass' else 'slices'})")
               for name in record.get("maps", []) for kind in ("stat", "glass")]
    ig = record.get("integrated_gradients") or {}
    detail = (f"{len(record.get('volumes', []))} {record.get('split', '')} volumes, checkpoint "
              f"{record.get('checkpoint')}; methods {', '.join(record.get('methods', []))}")
    if ig:
        detail += (f"; Integrated Gradients completeness: {ig.get('incomplete')} volume(s) off by more than 5% of "
                   f"the logit gap")
    return {"detail": detail, "figures": [f for f in figures if f is not None]}


def seconds(t: float | None) -> str:
    """'0.042 s', '12 s', '3.5 min'."""
    return "n/a" if t is None else f"{t:.2g} s" if t < 10 else f"{t:.0f} s" if t < 120 else f"{t / 60:.1f} min"


def cv_score_rows(cv: dict[str, Any]) -> list[dict[str, str]]:
    """Mean ± sd over folds and the 95% interval of the mean, for accuracy and ROC-AUC: model, baseline,
    difference."""
    summary, rows = cv.get("summary") or {}, []
    for metric, name in (("accuracy", "Accuracy"), ("roc_auc", "ROC-AUC")):
        mean = {"name": f"{name}: mean ± sd over folds"}
        interval = {"name": f"{name}: 95% CI of the mean"}
        for part, s in summary.items():
            v = s.get(metric)
            if v is None:
                continue
            sign = "+.3f" if part == "difference" else ".3f"
            mean[part] = "n/a" if v["mean"] is None else format(v["mean"], sign) + (
                "" if v["sd"] is None else f" ± {v['sd']:.3f}")
            interval[part] = ci(v.get("ci95"))
        rows += [mean, interval]
    return rows


def null_rows(cv: dict[str, Any]) -> list[dict[str, str]]:
    """The cross-validated nulls: the baseline's refits and the model's whole cross-validations."""
    rows = []
    for key, name in (("baseline_null", "Baseline, refitted"), ("null", "Model, whole cross-validations")):
        null = cv.get(key)
        if null is None:
            continue
        cost = (f"{seconds(null.get('seconds_per_permutation'))} per permutation"
                + (f", {seconds(null['seconds'])} in all" if null.get("seconds") is not None else ""))
        rows.append({"name": name, "value": S.fmt_p(null["p"], None),
                     "detail": f"observed {null['observed']:.3f} against {null['n_permutations']:,} permutations of "
                               f"the labels within {null.get('within', 'subject')} (null mean {null['mean']:.3f}, 95th "
                               f"percentile {null['q95']:.3f}, max {null['max']:.3f}); {cost}. "
                               f"{null.get('method', '').capitalize()}"
                               + (f". Caveat: {null['caveat']}" if null.get("caveat") else "")})
    if cv.get("null") is None and cv.get("stats"):
        rows.append({"name": "Model, whole cross-validations", "value": "not run",
                     "detail": "python -m stvit.cv --resume DIR --permutations N adds it: N whole cross-validations "
                               "on permuted labels, each about the cost of the cross-validation without its baseline"
                               + (f" ({seconds((cv.get('timing') or {}).get('cross_validation'))} with it here)"
                                  if (cv.get("timing") or {}).get("cross_validation") else "")})
    return rows


def cv_timing_rows(cv: dict[str, Any]) -> list[dict[str, str]]:
    timing, rows = cv.get("timing") or {}, []
    if timing.get("folds"):
        rows.append({"name": "Folds", "value": seconds(timing.get("cross_validation")),
                     "detail": "; ".join(f"fold {f + 1}: {seconds(t)}" for f, t in enumerate(timing["folds"]))
                     + " (n/a: read, run by an earlier process)"})
    if timing.get("per_permutation") is not None:
        rows.append({"name": "One permutation", "value": seconds(timing["per_permutation"]),
                     "detail": "a whole cross-validation on permuted labels, without the baseline (median)"})
    if (cv.get("baseline_null") or {}).get("seconds") is not None:
        rows.append({"name": "Baseline's null", "value": seconds(cv["baseline_null"]["seconds"]),
                     "detail": f"{cv['baseline_null']['n_permutations']:,} refits in each of the folds, with the "
                               "features and the Gram matrix of each fold"})
    return rows


def cv_context(folder: Path | str) -> dict[str, Any]:
    """Everything the page of a cross-validation directory shows, as plain data."""
    folder = Path(folder)
    cv, cfg, folds = read_json(folder / "cv.json"), read_json(folder / "config.json"), read_json(folder / "folds.json")
    notes, figures, rows = [], [], []
    stats = (cv or {}).get("stats")
    if cv is None:
        notes.append("no cv.json: the cross-validation has not finished")
    elif stats is None:
        notes.append("cv.json has no statistics (a cross-validation summarized before they were computed); its "
                     "intervals are t-intervals over folds")
    figures.append(image(folder / "cv_accuracy.png", "Test accuracy per fold"))
    for f, row in enumerate((cv or {}).get("folds", [])):
        s = stats["folds"][f] if stats else None
        rows.append({"fold": row["fold"], "n_test": row["n_test"], "subjects": row["test_subjects"],
                     "model": f3(row["model"]["accuracy"]),
                     "balanced": f3(s["balanced_accuracy"]) if s else "",
                     "ci": ci(s["interval"]["accuracy"]) if s else "",
                     "auc": f3(row["model"]["roc_auc"]),
                     "baseline": f3(row["baseline"]["accuracy"]) if "baseline" in row else "",
                     "difference": f"{row['difference']['accuracy']:+.3f}" if "difference" in row else "",
                     "p": S.fmt_p(s["permutation"]["p"], None) if s and s["permutation"] else ""})
    comparison = []
    if stats and stats.get("comparison") and stats["comparison"]["corrected"]:
        c = stats["comparison"]
        for name, r in (("corrected resampled t-test (Nadeau & Bengio 2003)", c["corrected"]),
                        ("plain paired t-test (ignores the shared training data)", c["plain"])):
            comparison.append({"name": name, "t": f3(r["t"]), "df": r["df"],
                               "p": "n/a" if r["p"] is None else S.fmt_p(r["p"], None), "ci": ci(r["ci"]),
                               "factor": f"{r['variance_factor']:.3f}"})
    pooled = stats["pooled"] if stats else None
    if pooled is not None:
        if pooled["permutation"] is not None:
            figures.append({"title": "Permutation test, pooled predictions", "uri": data_uri(null_figure(
                pooled["permutation"], pooled["chance"]["majority"],
                "pooled accuracy against its permutation null"))})
        if pooled["per_unit"] is not None:
            figures.append({"title": f"Accuracy per {pooled['per_unit']['unit'][:-1]}",
                            "uri": data_uri(unit_figure(pooled["per_unit"], pooled["chance"]["majority"]))})
    for key, title in (("baseline_null", "baseline refitted on permuted labels"),
                       ("null", "model: cross-validations on permuted labels")):
        null = (cv or {}).get(key)
        if null is not None and pooled is not None:
            figures.append({"title": f"Cross-validated null, {'baseline' if key == 'baseline_null' else 'model'}",
                            "uri": data_uri(null_figure(null, pooled["chance"]["majority"], title))})
    what = [{"name": "Directory", "value": str(folder)}]
    if cv:
        prov = cv.get("provenance") or {}
        what += [{"name": k, "value": str(v)} for k, v in (
            ("Command", prov.get("command")), ("Preset", cv.get("preset")),
            ("Data", f"{cv['data']} ({cv['pooled']} pooled: {cv['n_volumes']} volumes of {cv['n_subjects']} "
                     f"subjects)"),
            ("Folds", (folds or {}).get("method", f"{cv['folds_k']} folds")), ("Seed", cv.get("seed")),
            ("Device", prov.get("device")), *provenance_rows(prov)) if v is not None]
    summary = (cv or {}).get("summary") or {}
    return {
        "kind": "cv", "title": f"stvit cross-validation: {folder.name}", "folder": str(folder),
        "sentence": S.cv_sentence({**stats, "null": cv.get("null")}) if stats else None, "warning": None,
        "notes": notes, "what": what, "scores": cv_score_rows(cv or {}),
        "scores_title": "Scores over folds", "score_columns": [p for p in ("model", "baseline", "difference")
                                                               if p in summary],
        "scores_note": (cv or {}).get("interval"),
        "folds": rows, "comparison": comparison, "nulls": null_rows(cv or {}),
        "stats": stats_rows(pooled) if pooled else [], "per_unit": pooled["per_unit"] if pooled else None,
        "figures": [f for f in figures if f is not None], "timing": cv_timing_rows(cv or {}),
        "config": json.dumps(cfg, indent=2) if cfg else None,
    }


def page(context: dict[str, Any]) -> str:
    """The HTML text of a context (`run_context`, `cv_context`) through the packaged template."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("stvit.training", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return env.get_template(TEMPLATE).render(**{**BLANK, **context})


def render_run(folder: Path | str) -> str:
    """report.html of a run directory."""
    return page(run_context(folder))


def render_cv(folder: Path | str) -> str:
    """report.html of a cross-validation directory."""
    return page(cv_context(folder))


def write_report(run, kind: str = "run") -> Path:
    """report.html of the run directory (or, kind "cv", cross-validation directory) of `run` (a `RunDir`), rendered
    from the files in it and written through it (atomically, by rank 0); its path."""
    if run.main:
        run.write_text("report.html", (render_cv if kind == "cv" else render_run)(run.path))
    return run.path / "report.html"

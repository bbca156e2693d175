"""report.html (`stvit.training.report_page`) of a run directory and of a cross-validation directory.

What is checked:
- Static, on the HTML text (the standard library's html.parser): a doctype; every element closed in order (void
  elements aside); no <script>, <link>, <base>, <iframe>, <object>, <embed>, <form>; every <img> a
  `data:image/png;base64,` URI whose bytes are a PNG; no other attribute that loads anything (href, src, srcset,
  action, poster, ...); no attribute value and no CSS with "http", "//", "url(", "@import" or "@font-face"; the
  Content-Security-Policy meta that allows inline style and data: images only. And the content: the statistics
  sentence, every table, every figure, the per-subject rows, the maps.
- Rendered, in headless Chromium (Debian's package; skipped only when /usr/bin/chromium is absent, with that reason):
  the page is opened from a file with a probe script added to a copy of it (allowed by its hash in the page's own
  policy) that writes, after the load event, each image's naturalWidth into a body attribute, read back from
  `--dump-dom`. Every image must have decoded (naturalWidth > 0), and the browser's console, which Chromium writes
  to stderr with `--enable-logging=stderr`, must be empty: no error, no policy violation, no message at all. A
  control page with a corrupt image, an external image and a script error proves that the harness sees each.
- A real run directory of the tiny training run: its own report.html passes the audit and renders in Chromium; with
  its statistics removed (a run made before they existed) the page still renders and says so.
"""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from stvit.training import crossval
from stvit.training import report_page as R
from stvit.training import stats as S
from stvit.training.figures import plot_confusion, plot_curves, plot_cv_accuracy
from stvit.training.metrics import classification_metrics

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
FORBIDDEN_TAGS = {"script", "link", "base", "iframe", "object", "embed", "form", "frame", "frameset", "audio", "video"}
LOADING_ATTRS = {"href", "src", "srcset", "action", "poster", "background", "data", "formaction", "ping", "xlink:href"}
OUTSIDE = ("http", "//", "url(", "@import", "@font-face")
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
NAMES = ["face", "shape"]


# --- a run directory and a cross-validation directory with everything a report shows ----------------------------------

def predictions(rng, y, strength):
    """(N, 2) probabilities that follow the labels y (N,) with the given strength."""
    p = np.clip(0.5 + strength * (y - 0.5) + 0.35 * rng.standard_normal(len(y)), 0.01, 0.99)
    return np.stack([1 - p, p], axis=1)


def small_png(path: Path, title: str) -> None:
    """A stand-in for a nilearn map figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2))
    ax.imshow(np.random.default_rng(0).random((20, 60)), cmap="hot")
    ax.set_title(title)
    fig.savefig(path)
    plt.close(fig)


def make_run_dir(folder: Path, seed: int = 0) -> dict:
    """A run directory as a finished run with statistics leaves it (10 subjects of 16 test volumes, a baseline,
    maps); returns its metrics."""
    rng = np.random.default_rng(seed)
    (folder / "figures").mkdir(parents=True)
    subject = np.repeat([f"sub-{i:02d}" for i in range(10)], 16)
    y = np.tile(np.repeat([0, 1], 8), 10)
    probs, base = predictions(rng, y, 0.5), predictions(rng, y, 0.4)
    records = [{"stage": "pretrain", "epoch": e, "loss": 1 / e, "seconds": 3.0, "samples_per_s": 200.0}
               for e in (1, 2)]
    records += [{"stage": "finetune", "epoch": e, "train_loss": 0.7 / e, "train_acc": 0.5 + 0.1 * e,
                 "val_loss": 0.7 / e, "val_acc": 0.5 + 0.08 * e, "seconds": 2.0, "samples_per_s": 400.0}
                for e in (1, 2, 3)]
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics = {"test": classification_metrics(y, probs, NAMES), "val": classification_metrics(y, base, NAMES),
               "best_epoch": 3, "selected_on": "val", "class_names": NAMES, "data": "study.h5",
               "kernels": {"mode": "auto", "device": "cpu", "dtype": "float32",
                           "ops": {"patch_embed": {"fused": False}}},
               "baseline": {"model": "logistic regression", **classification_metrics(y, base, NAMES), "C": 0.01,
                            "val_accuracy": 0.7, "n_voxels": 1000, "seconds": 1.5},
               "stats": S.run_statistics(y, probs, 2, {"subject": subject}, base, n_perm=999, n_boot=1000),
               "provenance": {"command": "python -m stvit.train --data study.h5", "commit": "abc1234",
                              "versions": {"stvit": "0.1.0", "torch": "2.13.0"}}}
    (folder / "metrics.json").write_text(json.dumps(metrics, allow_nan=False))
    (folder / "config.json").write_text(json.dumps({"preset": "demo", "train": {"device": "auto", "seed": 0}}))
    (folder / "split.json").write_text(json.dumps({"n_train": 400, "n_val": 40, "grouped_by_subject": True}))
    np.savez(folder / "predictions.npz", test_probs=probs, test_labels=y, baseline_test_probs=base)
    plot_curves(records, folder / "figures")
    plot_confusion(metrics["test"]["confusion_matrix"], NAMES, folder / "figures" / "confusion_matrix.png", "test")
    (folder / "maps").mkdir()
    (folder / "maps" / "maps.json").write_text(json.dumps({"maps": ["ig_abs_mean"], "methods": ["ig"],
                                                           "volumes": list(range(16)), "split": "test",
                                                           "checkpoint": "checkpoints/best.pt"}))
    for kind in ("stat", "glass"):
        small_png(folder / "maps" / f"ig_abs_mean_{kind}.png", f"ig_abs_mean {kind}")
    return metrics


def make_cv_dir(folder: Path, seed: int = 0) -> dict:
    """A cross-validation directory of 3 folds with statistics and a cross-validated null; returns its cv.json."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    subject = np.repeat([f"sub-{i:02d}" for i in range(12)], 16)
    y = np.tile(np.repeat([0, 1], 8), 12)
    fold = np.repeat([0, 1, 2], 64)
    probs, base = predictions(rng, y, 0.5), predictions(rng, y, 0.3)
    stats = S.cv_statistics(y, probs, fold, 2, [128] * 3, {"subject": subject}, base, n_perm=999, n_boot=1000)
    rows = [{"fold": f + 1, "n_test": 64, "test_subjects": 4, "best_epoch": 2,
             "model": {"accuracy": s["accuracy"], "roc_auc": 0.8},
             "baseline": {"accuracy": s["baseline"]["baseline_accuracy"], "roc_auc": 0.7, "C": 0.01},
             "difference": {"accuracy": s["baseline"]["difference"], "roc_auc": 0.1}}
            for f, s in enumerate(stats["folds"])]
    fm = stats["fold_mean"]
    summary = {p: {m: crossval.spread([r[p][m] for r in rows], fm[p][m]) for m in ("accuracy", "roc_auc")}
               for p in ("model", "baseline", "difference")}
    blocks = S.exchangeability_blocks(y, {"subject": subject})
    folds = [(lambda labels: labels[..., :64], np.flatnonzero(fold != f), np.flatnonzero(fold == f))
             for f in range(3)]
    cv = {"folds_k": 3, "seed": 0, "preset": "demo", "data": "study.h5", "pooled": "train+test", "n_volumes": 192,
          "n_subjects": 12, "interval": "95% percentile bootstrap interval of the mean over folds", "folds": rows,
          "summary": summary, "stats": stats,
          "baseline_null": {**S.cv_refit_null(folds, y, blocks, 0.7, [(0, i) for i in range(1, 100)]),
                            "method": "the baseline refitted in every fold"},
          "null": S.cv_null(stats["pooled"]["accuracy"], rng.normal(0.5, 0.03, 20), 30.0),
          "timing": {"folds": [40.0, 41.5, None], "cross_validation": None, "per_permutation": 30.0},
          "provenance": {"command": "python -m stvit.cv --data study.h5 --folds 3", "commit": "abc1234",
                         "dirty": False, "versions": {"stvit": "0.1.0"}, "device": "cpu (2 threads)"}}
    (folder / "cv.json").write_text(json.dumps(cv, allow_nan=False))
    (folder / "config.json").write_text(json.dumps({"preset": "demo"}))
    plot_cv_accuracy([r["model"]["accuracy"] for r in rows], [r["baseline"]["accuracy"] for r in rows],
                     folder / "cv_accuracy.png", "3-fold cross-validation")
    return cv


# --- the static audit -------------------------------------------------------------------------------------------------

class Audit(HTMLParser):
    """Walks a page and records what would make it not self-contained or not well-formed."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.problems, self.images, self.doctype, self.text = [], [], [], False, []
        self.in_style = False

    def handle_decl(self, decl):
        self.doctype |= decl.lower() == "doctype html"

    def handle_starttag(self, tag, attrs):
        self.check(tag, attrs)
        if tag not in VOID:
            self.stack.append(tag)
        self.in_style = tag == "style"

    def handle_startendtag(self, tag, attrs):
        self.check(tag, attrs)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
        else:
            self.stack.pop()
        self.in_style = False

    def handle_data(self, data):
        if self.in_style:
            self.problems += [f"CSS has {bad!r}" for bad in OUTSIDE if bad in data.lower()]
        else:
            self.text.append(data)

    def check(self, tag, attrs):
        if tag in FORBIDDEN_TAGS:
            self.problems.append(f"<{tag}>")
        for name, value in attrs:
            value = value or ""
            if tag == "img" and name == "src":
                self.images.append(value)
                prefix = "data:image/png;base64,"
                if not value.startswith(prefix) or not base64.b64decode(value[len(prefix):]).startswith(R.PNG_MAGIC):
                    self.problems.append(f"<img src={value[:40]!r}> is not an inline PNG")
                continue
            if name in LOADING_ATTRS:
                self.problems.append(f"<{tag} {name}={value[:40]!r}> loads something")
            self.problems += [f"<{tag} {name}> has {bad!r}" for bad in OUTSIDE if bad in value.lower()]


def audit(html: str) -> Audit:
    a = Audit()
    a.feed(html)
    a.close()
    assert a.doctype, "no <!DOCTYPE html>"
    assert not a.problems, a.problems[:10]
    assert not a.stack, f"never closed: {a.stack}"
    assert f'content="{POLICY}"' in html
    return a


# --- the browser ------------------------------------------------------------------------------------------------------

PROBE = ("window.addEventListener('load', () => document.body.setAttribute('data-probe', "
         "JSON.stringify([...document.images].map(i => i.complete ? i.naturalWidth : -1))));")


class Body(HTMLParser):
    """The data-probe attribute of the dumped DOM's <body>."""

    probe = None

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.probe = dict(attrs).get("data-probe")


def chromium(html: str, tmp: Path, scripts: tuple[str, ...] = ()) -> tuple[list[int], list[str]]:
    """Open a copy of the page in headless Chromium with PROBE (and `scripts`) added, allowed by their hashes in the
    page's policy. Returns (each image's naturalWidth after the load event: 0 = not decoded, -1 = not complete; the
    console lines Chromium wrote to stderr)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian's chromium package; .ci/run installs it)")
    allowed = " ".join("'sha256-%s'" % base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()
                       for s in (PROBE, *scripts))
    assert POLICY in html
    page = html.replace(POLICY, f"{POLICY}; script-src {allowed}").replace(
        "</body>", "".join(f"<script>{s}</script>" for s in (*scripts, PROBE)) + "</body>")
    (tmp / "page.html").write_text(page)
    profile = tmp / "profile"
    shutil.rmtree(profile, ignore_errors=True)
    profile.mkdir()
    out = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
         "--window-size=1280,2000", "--dump-dom", (tmp / "page.html").as_uri()],
        capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    body = Body()
    body.feed(out.stdout)
    assert body.probe is not None, f"the probe did not run: {out.stderr[-2000:]}"
    return json.loads(body.probe), [line for line in out.stderr.splitlines() if ":CONSOLE" in line]


# --- the tests --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report") / "run"
    return folder, make_run_dir(folder)


@pytest.fixture(scope="module")
def cv_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report") / "cv"
    return folder, make_cv_dir(folder)


def test_run_report_is_self_contained_and_complete(run_dir):
    """The run page passes the static audit and shows the sentence, scores, statistics, 8 figures (3 curves,
    confusion matrix, ROC, permutation null, per-subject accuracy, 2 maps), every subject, what was run and the
    timing."""
    folder, metrics = run_dir
    html = R.render_run(folder)
    a = audit(html)
    text = " ".join(" ".join(a.text).split())
    assert len(a.images) == 9
    for part in (S.sentence(metrics["stats"]), "Test scores", "Balanced accuracy", "Exact binomial test",
                 "Permutation test", "Model - baseline", "McNemar test", "Accuracy per subject", "sub-09",
                 "ROC curves", "Brain maps", "ig_abs_mean (glass brain)", "python -m stvit.train --data study.h5",
                 "abc1234", "Timing and throughput", "Statistics", "best epoch 3 by val accuracy"):
        assert part in text, part


def test_cv_report_is_self_contained_and_complete(cv_dir):
    """The cross-validation page passes the static audit and shows its sentence (with the corrected test and the
    cross-validated null), the scores over folds with their intervals, the folds, both t-tests, both nulls with
    their cost per permutation, the pooled statistics, what was run, the timing and 5 figures."""
    folder, cv = cv_dir
    html = R.render_cv(folder)
    a = audit(html)
    text = " ".join(" ".join(a.text).split())
    assert len(a.images) == 5
    for part in (S.cv_sentence({**cv["stats"], "null": cv["null"]}), "corrected resampled t-test (Nadeau & Bengio",
                 "plain paired t-test", "Statistics of the pooled predictions", "sub-11", "Folds", "Scores over folds",
                 "Accuracy: 95% CI of the mean", R.ci(cv["summary"]["model"]["accuracy"]["ci95"]),
                 "Cross-validated permutation nulls", "Baseline, refitted", "99 permutations",
                 "Model, whole cross-validations", "30 s per permutation", "python -m stvit.cv --data study.h5",
                 "abc1234", "fold 3: n/a", "One permutation"):
        assert part in text, part


def test_a_run_without_statistics_still_renders(tiny_run, tmp_path):
    """A real run directory (the tiny training run) evaluated before statistics existed (its metrics.json without
    `stats` and `provenance`, its predictions.npz without subjects): the page renders, passes the audit, shows the
    scores, curves, confusion matrix and ROC, and statistics computed for it from predictions.npz, saying so."""
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    metrics = json.loads((old / "metrics.json").read_text())
    older = {k: v for k, v in metrics.items() if k not in ("stats", "provenance")}
    (old / "metrics.json").write_text(json.dumps(older))
    with np.load(old / "predictions.npz") as pred:
        np.savez(old / "predictions.npz", **{k: pred[k] for k in pred.files if k != "test_subject"})
    html = R.render_run(old)
    a = audit(html)
    text = " ".join(" ".join(a.text).split())
    assert "metrics.json has no statistics" in text and "computed for it from predictions.npz" in text
    assert "volumes are the only unit" in text and "Test scores" in text and "Exact binomial test" in text
    assert len(a.images) >= 5  # 3 curves, confusion matrix, ROC, the permutation null


def test_reports_render_in_chromium(run_dir, cv_dir, tmp_path):
    """Both pages in headless Chromium: every image decoded, nothing on the console."""
    for html in (R.render_run(run_dir[0]), R.render_cv(cv_dir[0])):
        widths, console = chromium(html, tmp_path)
        assert len(widths) == html.count("<img ") and all(w > 0 for w in widths), widths
        assert console == [], console


def test_a_real_run_report_renders_in_chromium(tiny_run, tmp_path):
    """The report.html a real run wrote (the tiny training run, with its statistics): the static audit, then headless
    Chromium: every image decoded, nothing on the console."""
    html = (tiny_run / "report.html").read_text()
    a = audit(html)
    assert len(a.images) >= 6  # 3 curves, confusion matrix, ROC, the permutation null (and per-subject accuracy)
    widths, console = chromium(html, tmp_path)
    assert len(widths) == html.count("<img ") and all(w > 0 for w in widths), widths
    assert console == [], console


def test_the_browser_harness_sees_what_goes_wrong(tmp_path):
    """The control: a corrupt inline image and an external one do not decode (the external one is also refused
    by the policy, on the console) where a good one does, and a script error and a console.error reach the
    console."""
    import matplotlib.pyplot as plt

    good = R.data_uri(R.png(plt.subplots(figsize=(1, 1))[0]))
    page = R.page({"title": "control", "figures": [{"title": "a good image", "uri": good}]})
    bad = '<img src="data:image/png;base64,AAAA"><img src="http://example.invalid/x.png">'
    page = page.replace("<main>", f"<main>{bad}")
    widths, console = chromium(page, tmp_path, scripts=('console.error("boom"); undefined_function();',))
    assert widths[:2] == [0, 0] and widths[2] > 0
    joined = "\n".join(console)
    assert "Content Security Policy" in joined and '"boom"' in joined and "Uncaught ReferenceError" in joined


@pytest.mark.parametrize("bad, problem", [
    ('<img src="http://example.org/a.png">', "not an inline PNG"),
    ('<img src="data:image/png;base64,AAAA">', "not an inline PNG"),
    ('<script src="x.js"></script>', "<script>"),
    ('<link rel="stylesheet" href="a.css">', "<link>"),
    ('<a href="//example.org">x</a>', "loads something"),
    ('<div style="background: url(x.png)">x</div>', "'url('"),
    ("<style>@import 'x.css';</style>", "CSS has '@import'"),
    ("<div><p>x</div>", "</div> closes <p>"),
])
def test_the_static_audit_sees_what_goes_wrong(bad, problem):
    """The control of the audit: each kind of outside resource, and a badly nested element, is caught."""
    page = R.page({"title": "control"}).replace("<main>", f"<main>{bad}")
    with pytest.raises(AssertionError, match=problem.replace("(", r"\(")):
        audit(page)

"""The statistics, provenance and report.html of whole runs of the commands: `stvit.train` ends with them,
`stvit.report` rebuilds a page from a folder alone (and refuses anything else in one line, writing nothing), and
`stvit.cv --permutations N` reruns the whole cross-validation on labels permuted within subjects, resumably."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from stvit import cv as CV
from stvit import report as REPORT
from stvit.errors import run_cli
from stvit.training import stats as S
from stvit.training.rundir import RunDir

from helpers import ROOT, TINY_RUN, run_main
from e2e.test_report_html import audit, make_cv_dir

pytestmark = pytest.mark.e2e


def strict(path):
    """The JSON of `path`, refusing NaN and Infinity."""
    def refuse(name):
        raise AssertionError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_run_ends_with_statistics_provenance_and_a_report(tiny, tmp_path, capsys):
    """The final line has balanced accuracy, chance and the permutation p, the sentence follows it; metrics.json has
    the statistics (with the number of permutations asked for) and the provenance, in strict JSON; predictions.npz
    has each test volume's subject; report.html is there and self-contained."""
    data, cfg = tiny
    out = tmp_path / "run"
    args = ["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet", "--test-permutations", "999"]
    assert run_main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    m = strict(out / "metrics.json")
    s = m["stats"]
    assert lines[-2].startswith(f"test: accuracy {m['test']['accuracy']:.3f} (balanced {s['balanced_accuracy']:.3f}; "
                                f"chance {s['chance']['majority']:.3f}, permutation p = ")
    assert lines[-1] == S.sentence(s) and "of 3 subjects" in lines[-1]
    assert s["permutation"]["n_permutations"] == 999 and s["interval"]["n_boot"] == 999
    assert s["units"] == {"name": "subjects", "n": 3} and s["baseline"]["unit"] == "subjects"
    prov = m["provenance"]
    assert prov["command"] == "python -m stvit.train " + " ".join(args) and prov["device"].startswith("cpu")
    assert set(prov) == {"command", "versions", "commit", "dirty", "started", "host", "device"}
    with np.load(out / "predictions.npz") as pred, np.load(data) as raw:
        np.testing.assert_array_equal(pred["test_subject"], raw["ids_test"][pred["test_index"]])
    a = audit((out / "report.html").read_text())
    text = " ".join(" ".join(a.text).split())
    assert S.sentence(s) in text and prov["command"] in text and "Accuracy per subject" in text


def test_report_command_rebuilds_the_page_and_writes_nothing_else(tiny_run, tmp_path, capsys):
    """`python -m stvit.report DIR` on a run directory without its page writes report.html and nothing else; on a
    cross-validation directory, the cross-validation page; through `python -m` as well."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "report.html").unlink()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert run_cli(REPORT.main, [str(run)]) == 0
    assert capsys.readouterr().out.startswith(f"{run / 'report.html'} (run; ")
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert set(after) - set(before) == {run / "report.html"} and all(after[p] == b for p, b in before.items())
    audit((run / "report.html").read_text())
    cv = tmp_path / "cv"
    make_cv_dir(cv)
    proc = subprocess.run([sys.executable, "-m", "stvit.report", str(cv)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0 and "(cross-validation; " in proc.stdout, proc.stderr[-2000:]
    assert "Cross-validated permutation nulls" in (cv / "report.html").read_text()


def test_report_command_refuses_in_one_line_and_overwrites_nothing(tiny_run, tmp_path, capsys):
    """No such folder, a file, a folder of neither kind, a damaged metrics.json or predictions.npz, a directory
    another process holds: one 'error:' line naming the path, exit 2, report.html as it was."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "report.html").write_text("the page as it was")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    cases = [(tmp_path / "absent", "no such directory"), (run / "config.json", "not a directory"),
             (tmp_path / "other", "neither a run directory")]
    for folder, problem in cases:
        assert run_cli(REPORT.main, [str(folder)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {folder}: {problem}") and err.count("\n") == 1, err
    good = (run / "metrics.json").read_text()
    (run / "metrics.json").write_text(good[:-40])
    assert run_cli(REPORT.main, [str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run / 'metrics.json'}: not valid JSON") and err.count("\n") == 1, err
    (run / "metrics.json").write_text(good)
    (run / "predictions.npz").write_bytes(b"PK\x03\x04 not a zip")
    assert run_cli(REPORT.main, [str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run / 'predictions.npz'}: cannot read it as .npz") and err.count("\n") == 1
    busy = RunDir(run)
    busy.lock()  # a run still writing there (flock: per open file, so this works in one process)
    try:
        assert run_cli(REPORT.main, [str(run)]) == 2
        assert "another stvit process is using this run directory" in capsys.readouterr().err
    finally:
        busy.close()
    assert (run / "report.html").read_text() == "the page as it was"


# --- the model's cross-validated null ---------------------------------------------------------------------------------

CV_RUN = {**TINY_RUN, "pretrain": {**TINY_RUN["pretrain"], "epochs": 1},
          "finetune": {**TINY_RUN["finetune"], "epochs": 2}}


@pytest.fixture(scope="module")
def cv_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cv-null") / "cv.json"
    path.write_text(json.dumps(CV_RUN))
    return path


def pool_rows(out, fold_dir, f):
    """The pool rows of a fold's test predictions (the order of folds.json)."""
    fold = np.asarray(json.loads((out / "folds.json").read_text())["fold"])
    with np.load(fold_dir / "predictions.npz") as pred:
        return np.flatnonzero(fold == f)[pred["test_index"]], pred["test_labels"], pred["test_subject"]


def test_cv_permutations_rerun_the_whole_cross_validation_within_subjects_and_resume(tiny, cv_config, tmp_path,
                                                                                    capsys):
    """Two permutations of a 2-fold cross-validation: each a whole cross-validation in DIR/permutation-i/ (the model
    alone, no page), on the pooled labels permuted within subjects exactly as `permuted_labels(y, blocks, (seed,
    i))` says; cv.json's null has their accuracies and a cost per permutation, the baseline's refit null its count.
    A permutation killed in its second fold continues from its first; --resume --permutations 3 adds a third and
    reads the others."""
    data, _ = tiny
    out = tmp_path / "cv"
    assert run_cli(CV.main, ["--data", str(data), "--config", str(cv_config), "--out", str(out), "--folds", "2",
                             "--permutations", "2", "--baseline-permutations", "20", "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    cv = strict(out / "cv.json")
    assert lines[-1] == S.cv_sentence({**cv["stats"], "null": cv["null"]}) and "2 cross-validations" in lines[-1]
    assert "corrected resampled t-test" in lines[-2] and lines[-2].endswith(f"{out / 'report.html'}")
    null, base = cv["null"], cv["baseline_null"]
    assert null["n_permutations"] == 2 and null["seconds_per_permutation"] > 0 and null["within"] == "subject"
    assert cv["timing"]["per_permutation"] == null["seconds_per_permutation"]
    assert base["n_permutations"] == 20 and base["observed"] == cv["stats"]["pooled"]["baseline"]["baseline_accuracy"]
    with np.load(data) as raw:
        y = np.concatenate([raw["y_train"].ravel(), raw["y_test"].ravel()]).astype(np.int64)
        ids = np.concatenate([raw["ids_train"], raw["ids_test"]])
    blocks = S.exchangeability_blocks(y, {"subject": ids})
    accuracies = []
    for i in (1, 2):
        root = out / f"permutation-{i}"
        expected = S.permuted_labels(y, blocks, (0, i))
        assert not np.array_equal(expected, y)
        correct = 0
        for f in range(2):
            rows, labels, subject = pool_rows(out, root / f"fold-{f + 1}", f)
            np.testing.assert_array_equal(labels, expected[rows])
            np.testing.assert_array_equal(subject, ids[rows])
            m = json.loads((root / f"fold-{f + 1}" / "metrics.json").read_text())
            assert "baseline" not in m and not (root / f"fold-{f + 1}" / "report.html").exists()
            correct += m["stats"]["n_correct"]
        for s in np.unique(ids):
            assert sorted(expected[ids == s]) == sorted(y[ids == s])
        record = json.loads((root / "permutation.json").read_text())
        assert record["accuracy"] == correct / len(y) and record["whole"]
        accuracies.append(record["accuracy"])
    assert null["mean"] == pytest.approx(np.mean(accuracies))
    assert null["p"] == (1 + sum(a >= null["observed"] - 1e-12 for a in accuracies)) / 3

    # a permutation stopped in its second fold: its first fold is read, the second runs again, the same result
    (out / "permutation-2" / "permutation.json").unlink()
    shutil.rmtree(out / "permutation-2" / "fold-2")
    first = (out / "permutation-2" / "fold-1" / "metrics.json").read_bytes()
    assert run_cli(CV.main, ["--resume", str(out), "--quiet"]) == 0
    capsys.readouterr()
    again = strict(out / "cv.json")
    assert (out / "permutation-2" / "fold-1" / "metrics.json").read_bytes() == first
    assert json.loads((out / "permutation-2" / "permutation.json").read_text())["accuracy"] == accuracies[1]
    assert again["null"]["p"] == null["p"] and again["baseline_null"] == base  # the baseline's null is read back
    assert run_cli(CV.main, ["--resume", str(out), "--permutations", "3", "--quiet"]) == 0
    capsys.readouterr()
    three = strict(out / "cv.json")
    assert three["null"]["n_permutations"] == 3 and (out / "permutation-3" / "permutation.json").is_file()
    assert json.loads((out / "nulls.json").read_text())["permutations"] == 3

"""The linear baseline in a run: its place (metrics.json, predictions.npz, the final line), a test split read only
inside the final evaluation, and --no-baseline. The fit itself: tests/unit/test_baseline.py."""
from __future__ import annotations

import json

import numpy as np
import pytest

from stvit.training import baseline as B
from stvit import data as D
from stvit.training import fit as FIT
from stvit.training import api as API
from stvit.data import load_split
from stvit.training.metrics import classification_metrics
from stvit.training.rundir import RunDir

from helpers import TINY_RUN, VOLUME, run_main, write_tiny_data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-baseline")
    cfg = d / "tiny.json"
    cfg.write_text(json.dumps({**TINY_RUN, "pretrain": {**TINY_RUN["pretrain"], "epochs": 1},
                               "finetune": {**TINY_RUN["finetune"], "epochs": 2}}))
    return write_tiny_data(d / "tiny.npz"), cfg


def test_a_run_reports_its_baseline_and_reads_test_only_at_the_end(tiny, tmp_path, monkeypatch, capsys):
    data, cfg = tiny
    events = []
    real_log, real_test, real_split, real_fit = RunDir.log, FIT.Splits.test, D.HCPData.split, B.fit_baseline
    real_evaluate = API.evaluate
    monkeypatch.setattr(RunDir, "log", lambda self, r: (events.append("epoch"), real_log(self, r))[1])
    monkeypatch.setattr(FIT.Splits, "test", lambda self: (events.append("test"), real_test(self))[1])
    monkeypatch.setattr(D.HCPData, "split", lambda self, name: (events.append(f"split {name}"),
                                                                real_split(self, name))[1])
    monkeypatch.setattr(B, "fit_baseline", lambda *a: (events.append("baseline fit"), real_fit(*a))[1])
    monkeypatch.setattr(API, "evaluate", lambda *a: (events.append("evaluate"), real_evaluate(*a))[1])
    out = tmp_path / "run"
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet"]) == 0

    # the model's test split and the baseline's test volumes are read once each, inside the final evaluation,
    # after every epoch, and the baseline only after its fit and choice of C on train and validation
    assert events.count("test") == 1 and events.count("split test") == 1
    first = min(events.index("test"), events.index("split test"))
    assert events.index("evaluate") < first and "epoch" not in events[first:]
    assert events.index("baseline fit") < events.index("split test")

    m = json.loads((out / "metrics.json").read_text())
    b = m["baseline"]
    assert {"accuracy", "roc_auc", "confusion_matrix", "per_class", "C", "n_voxels", "seconds"} <= b.keys()
    assert b["C"] in B.C_GRID and b["n_voxels"] == np.prod(VOLUME)
    pred = np.load(out / "predictions.npz")
    assert b["accuracy"] == classification_metrics(pred["test_labels"], pred["baseline_test_probs"],
                                                   m["class_names"])["accuracy"]
    # the same numbers as a baseline fitted afresh on the run's own split
    tr, va = load_split(out)
    again, _ = B.baseline_metrics(D.load_dataset(data, volume_shape=VOLUME), {"train": tr, "val": va},
                                  m["class_names"])
    assert again["accuracy"] == b["accuracy"] and again["C"] == b["C"]
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("test: "))
    assert line.startswith(f"test: accuracy {m['test']['accuracy']:.3f}")
    assert f"| baseline (logistic regression, C {b['C']:g}): accuracy {b['accuracy']:.3f}" in line


def test_no_baseline_flag(tiny, tmp_path):
    data, cfg = tiny
    out = tmp_path / "plain"
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet", "--no-baseline",
                     "--pretrain-epochs", "0", "--ft-epochs", "1"]) == 0
    assert "baseline" not in json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "config.json").read_text())["train"]["baseline"] is False
    assert "baseline_test_probs" not in np.load(out / "predictions.npz")

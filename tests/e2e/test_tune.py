"""`python -m stvit.tune`: a tiny study end to end (2 trials, 2 folds), killed mid-trial and resumed, with the test
split instrumented so that a read during the search fails; pruning inside a fold. The search space's checks and the
refusals: tests/unit/test_tune.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

optuna = pytest.importorskip("optuna")  # the tune extra, in dev: CI has it

from stvit.training import fit as FIT  # noqa: E402
from stvit import tune as TU  # noqa: E402
from stvit.training import search as S  # noqa: E402
from stvit.config import Config  # noqa: E402

from helpers import ROOT  # noqa: E402
from unit import test_tune as unit  # noqa: E402
from unit.test_tune import tune_main  # noqa: E402

files = unit.files  # the fixture: data, recipe and search space

KILLER = """
import os, signal, sys
import stvit.tune as TU
import stvit.training.search as S
S.HEARTBEAT_S, S.GRACE_S = 1, 2
real = S.Objective.fold
def fold(self, trial, cfg, k):
    if trial.number == 0 and k == 1:  # trial 0 finished its first fold: die before the second
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, trial, cfg, k)
S.Objective.fold = fold
sys.exit(TU.run_cli(TU.main, sys.argv[1:]))
"""


def test_study_is_leak_free_resumes_after_a_kill_and_ends_with_a_final_run(files, tmp_path, monkeypatch):
    data, cfg, space = files
    out = tmp_path / "tune"
    args = ["--data", str(data), "--config", str(cfg), "--space", str(space), "--trials", "2", "--folds", "2",
            "--out", str(out), "--quiet"]
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    r = subprocess.run([sys.executable, str(script)] + args, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    time.sleep(3)  # the killed trial's heartbeat is older than its grace period

    events, folds = [], []
    monkeypatch.setattr(S, "HEARTBEAT_S", 1)
    monkeypatch.setattr(S, "GRACE_S", 2)
    real_test, real_final, real_fold = FIT.Splits.test, S.final_run, S.Objective.fold
    monkeypatch.setattr(FIT.Splits, "test", lambda self: events.append("test") or real_test(self))
    monkeypatch.setattr(S, "final_run", lambda *a, **k: events.append("final") or real_final(*a, **k))
    monkeypatch.setattr(S.Objective, "fold",
                        lambda self, trial, c, k: folds.append((trial.number, k)) or real_fold(self, trial, c, k))
    assert tune_main(args) == 0
    assert events[0] == "final" and "test" in events  # the test split is read by the final run, never before

    study = optuna.load_study(study_name="stvit", storage=f"sqlite:///{out / 'study.db'}")
    trials = study.get_trials()
    killed = trials[0]
    assert killed.state.name == "FAIL" and len(killed.user_attrs["fold_accuracy"]) == 1
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == killed.params
    assert retry[0].user_attrs["fold_accuracy"][0] == killed.user_attrs["fold_accuracy"][0]
    assert (retry[0].number, 0) not in folds and (retry[0].number, 1) in folds  # its finished fold was kept
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2

    best = json.loads((out / "best_config.json").read_text())
    assert Config.from_dict(best).finetune.lr == study.best_trial.params["finetune.lr"]
    summary = json.loads((out / "summary.json").read_text())
    final = out / f"final-trial-{study.best_trial.number}"
    assert summary["final"]["test"]["n"] == 10 and (final / "metrics.json").is_file()
    assert (out / "figures" / "history.png").is_file() and (out / "figures" / "intermediate_values.png").is_file()
    assert (out / "figures" / "importance.png").is_file() or summary["importance_note"]
    assert "| trial | state |" in (out / "summary.md").read_text()
    assert not list(out.glob("trials/*/fold-*/checkpoints"))  # a finished fold keeps its log, not its weights

    folds.clear()
    assert tune_main(args) == 0  # the same command again: the study is complete, the final run done
    assert folds == []


def test_a_fold_stops_when_the_pruner_says_so(files, tmp_path):
    data, cfg, space = files
    args = TU.build_parser().parse_args(["--data", str(data), "--config", str(cfg), "--space", str(space),
                                         "--trials", "1", "--folds", "2", "--out", str(tmp_path / "t"), "--quiet"])
    search = TU.plan_from_args(args)
    objective = S.Objective(search, quiet=True)
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    reports = []
    trial.report = lambda value, step: reports.append((step, value))
    trial.should_prune = lambda: True
    with pytest.raises(optuna.TrialPruned, match="fold 2, epoch 1"):
        objective.fold(trial, search.base, 1)
    assert [s for s, _ in reports] == [S.FOLD_STEPS]  # step = fold * FOLD_STEPS + epoch - 1
    log = (tmp_path / "t" / "trials" / "0" / "fold-2" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["stage"] for line in log] == ["pretrain", "finetune"]
    assert not (tmp_path / "t" / "trials" / "0" / "fold-2" / "checkpoints").exists()
    # a trial's fold gets the stages' lengths a run on its training split would get (min_steps)
    cfg = search.base.override({"finetune": {"min_steps": 1000}})
    with pytest.raises(optuna.TrialPruned):
        objective.fold(trial, cfg, 0)
    written = json.loads((tmp_path / "t" / "trials" / "0" / "fold-1" / "config.json").read_text())
    steps = int((search.folds != 0).sum()) // cfg.train.batch_size
    assert written["finetune"]["epochs"] == -(-1000 // steps) > cfg.finetune.epochs

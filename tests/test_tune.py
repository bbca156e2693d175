"""`python -m stvit.tune`: a tiny study end to end (2 trials, 2 folds), killed mid-trial and resumed, with the test
split instrumented so that a read during the search fails; the search space's checks; pruning inside a fold;
subject-grouped folds."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")  # the tune extra, in dev: CI has it

from stvit.training import fit as FIT  # noqa: E402
from stvit import tune as TU  # noqa: E402
from stvit.training import search as S  # noqa: E402
from stvit.config import Config  # noqa: E402
from stvit.data import subject_folds  # noqa: E402

from helpers import ROOT, TINY_RUN, write_tiny_data  # noqa: E402

# one pre-training and two fine-tune epochs per fold; 32 training volumes of 8 subjects -> 2 folds of 4 subjects
RECIPE = {**TINY_RUN, "pretrain": {**TINY_RUN["pretrain"], "epochs": 1}, "finetune": {**TINY_RUN["finetune"],
                                                                                      "epochs": 2}}
SPACE = {"params": {"finetune.lr": {"low": 0.3, "high": 3.0, "log": True, "times": "finetune.lr"},
                    "augment.ops": {"choices": [["flip"], ["flip", "noise"]]},
                    "augment.noise_std": {"low": 0.0, "high": 0.3},
                    "pretrain.epochs": {"value": 1}},
         "pruner": {"n_startup_trials": 5}}

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


def tune_main(args: list[str]) -> int:
    from stvit.errors import run_cli

    return run_cli(TU.main, args)


@pytest.fixture()
def files(tmp_path):
    data = write_tiny_data(tmp_path / "tiny.npz")
    cfg = tmp_path / "recipe.json"
    cfg.write_text(json.dumps(RECIPE))
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    return data, cfg, space


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


@pytest.mark.parametrize("space, says", [
    ({"params": {"finetune.learning_rate": {"low": 1, "high": 2}}}, "params.finetune.learning_rate: not a config key"),
    ({"params": {"finetune.lr": {"low": 2e-3, "high": 1e-3}}}, "low <= high"),
    ({"params": {"finetune.lr": {"low": "1e-4", "high": 1e-3}}}, "must be numbers"),
    ({"params": {"model.dropout": {"low": 0.0, "high": 1.5}}}, "params.model.dropout: 1.5 makes an invalid config"),
    ({"params": {"augment.ops": {"choices": [["flip", "blur"]]}}}, "augment.ops"),
    ({"params": {"finetune.lr": {"low": 0.0, "high": 1e-3, "log": True}}}, "a log range needs low > 0"),
    ({"params": {"finetune.lr": {"value": 1e-3}}, "pruner": {"patience": 3}}, "pruner: an object of"),
    ({"finetune.lr": {"low": 1e-4, "high": 1e-3}}, 'a search space holds "params"'),
])
def test_a_bad_search_space_is_one_line_and_writes_nothing(files, tmp_path, capsys, space, says):
    data, cfg, _ = files
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(space))
    out = tmp_path / "never"
    assert tune_main(["--data", str(data), "--config", str(cfg), "--space", str(path), "--trials", "2",
                      "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and says in err and err.count("\n") == 1, err
    assert not out.exists()


def test_search_refuses_what_would_leak_or_cannot_fold(files, tmp_path, capsys):
    data, cfg, space = files
    base = ["--data", str(data), "--config", str(cfg), "--space", str(space), "--trials", "2",
            "--out", str(tmp_path / "never")]
    assert tune_main(base + ["--select-on-test"]) == 2
    assert tune_main(base + ["--folds", "9"]) == 2  # 8 subjects
    assert tune_main(base + ["--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "never reads the test split" in err[0] and "8 subjects cannot make 9 folds" in err[1]
    assert "runs again" in err[2] and not (tmp_path / "never").exists()


def test_without_optuna_one_line_says_what_to_install(files, tmp_path, capsys, monkeypatch):
    data, cfg, space = files
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    assert tune_main(["--data", str(data), "--trials", "2", "--out", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err == f"error: {S.INSTALL}\n"


def test_shipped_space_fits_every_preset():
    from stvit.config import PRESETS, preset

    for name in PRESETS:
        space = S.read_space(None, preset(name))
        assert {"finetune.lr", "model.dropout", "augment.noise_std"} <= {p.key for p in space.params}


def test_subject_folds_are_grouped_stratified_and_seeded():
    ids = np.repeat([f"S{i:02d}" for i in range(12)], 6)
    y = np.tile([0, 0, 0, 1, 1, 1], 12)
    fold = subject_folds(ids, y, 3, seed=0)
    assert sorted(np.unique(fold)) == [0, 1, 2]
    for f in range(3):
        assert not set(ids[fold == f]) & set(ids[fold != f])  # no subject on two sides
        assert y[fold == f].mean() == pytest.approx(0.5)
    assert np.array_equal(fold, subject_folds(ids, y, 3, seed=0))
    assert any(not np.array_equal(fold, subject_folds(ids, y, 3, seed=s)) for s in (1, 2, 3))
    with pytest.raises(ValueError, match="12 subjects cannot make 13 folds"):
        subject_folds(ids, y, 13, seed=0)

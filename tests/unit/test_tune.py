"""`python -m stvit.tune`: the search space's checks, the refusals, the shipped space, subject-grouped folds. A
tiny study end to end and pruning inside a fold: tests/e2e/test_tune.py."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")  # the tune extra, in dev: CI has it

from stvit import tune as TU  # noqa: E402
from stvit.training import search as S  # noqa: E402
from stvit.data import subject_folds  # noqa: E402

from helpers import TINY_RUN, write_tiny_data  # noqa: E402

# one pre-training and two fine-tune epochs per fold; 32 training volumes of 8 subjects -> 2 folds of 4 subjects
RECIPE = {**TINY_RUN, "pretrain": {**TINY_RUN["pretrain"], "epochs": 1}, "finetune": {**TINY_RUN["finetune"],
                                                                                      "epochs": 2}}
SPACE = {"params": {"finetune.lr": {"low": 0.3, "high": 3.0, "log": True, "times": "finetune.lr"},
                    "augment.ops": {"choices": [["flip"], ["flip", "noise"]]},
                    "augment.noise_std": {"low": 0.0, "high": 0.3},
                    "pretrain.epochs": {"value": 1}},
         "pruner": {"n_startup_trials": 5}}


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

"""Configs checked before anything runs, data checked for finite garbage, every check before the first byte, steps
that never take a non-finite loss, and the small things users meet. On runs (the lock, resumes, a full disk):
tests/e2e/test_reliability.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stvit.training import engine
from stvit.config import OptimConfig
from stvit.training.metrics import classification_metrics
from stvit.training.rundir import read_log

from helpers import run_main, write_tiny_data


def one_error_line(err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for p in parts:
        assert p in lines[0], (p, lines[0])


# --- 2. config values, checked before anything is written ------------------------------------------------------

@pytest.mark.parametrize("values, message", [
    ({"train": {"select_on_test": "false"}}, 'train.select_on_test must be true or false, got "false"'),
    ({"finetune": {"lr": "3e-4"}}, 'finetune.lr must be a number, got "3e-4"'),
    ({"train": {"batch_size": "8"}}, 'train.batch_size must be a whole number, got "8"'),
    ({"data": {"val_fraction": "0.2"}}, 'data.val_fraction must be a number, got "0.2"'),
    ({"model": {"dim": "64"}}, 'model.dim must be a whole number, got "64"'),
    ({"model": {"dim": 18}}, "model.heads must divide dim 18"),
    ({"finetune": {"epochs": -1}}, "finetune.epochs must be >= 0"),
    ({"mae": {"lr": 0}}, "pretrain.lr must be > 0"),
    ([1, 2], "one JSON object"),
])
def test_bad_config_values_are_refused_before_anything_is_written(tiny, tmp_path, values, message, capsys):
    data, _ = tiny
    bad = tmp_path / "cfg.json"
    bad.write_text(json.dumps(values))
    out = tmp_path / "never"
    assert run_main(["--data", str(data), "--config", str(bad), "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, str(bad), message)
    assert not out.exists()


def test_bad_flag_value_names_the_flag(tiny, tmp_path, capsys):
    data, cfg = tiny
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(tmp_path / "n"), "--batch-size", "0"]) == 2
    one_error_line(capsys.readouterr().err, "--batch-size must be >= 1, got 0")


# --- 3. finite garbage in the data --------------------------------------------------------------------------------

def test_evaluation_reports_what_it_cannot_compute():
    y = np.array([0, 1, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [np.nan, np.nan], [0.6, 0.4], [0.1, 0.9]])
    m = classification_metrics(y, probs, ["a", "b"])
    assert m["n"] == 5 and m["n_nonfinite"] == 1
    assert m["accuracy"] == pytest.approx(3 / 5)  # the volume without a prediction counts as an error
    assert sum(map(sum, m["confusion_matrix"])) == 4 and m["roc_auc"] is not None


# --- 5 and 6. every check before the first byte; one line, not a traceback ---------------------------------------

def test_training_split_smaller_than_a_batch_writes_nothing(tiny, tmp_path, capsys):
    data, cfg = tiny
    out = tmp_path / "never"
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--batch-size", "64"]) == 2
    one_error_line(capsys.readouterr().err, "fewer than one batch of 64")
    assert not out.exists()


def test_out_under_a_file_or_a_file_is_one_line(tiny, tmp_path, capsys):
    data, cfg = tiny
    afile = tmp_path / "a_file"
    afile.write_text("x")
    for out, part in ((afile, "exists and is not a directory"), (afile / "run", "is a file")):
        assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out)]) == 2
        one_error_line(capsys.readouterr().err, part)


# --- 7. a non-finite loss never reaches the weights ----------------------------------------------------------------

@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_non_finite_step_is_not_taken(fused, dtype):
    """Two steps, the second with a NaN loss: the weights, moments and step count are those of one step. `fused`
    is the path a CUDA run takes (the fused AdamW's found_inf flag, no host sync); bf16 has no GradScaler."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 0])
    cfg = OptimConfig(epochs=1, lr=0.1)

    def run(n_good: int, poison: bool):
        m = torch.nn.Linear(4, 2)
        m.load_state_dict(model.state_dict())
        opt = torch.optim.AdamW(m.parameters(), lr=0.1, fused=fused)
        calls = {"n": 0}

        def step(xb, yb):
            calls["n"] += 1
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                loss = torch.nn.functional.cross_entropy(m(xb).float(), yb)
            return (loss * float("nan") if poison and calls["n"] > n_good else loss), None

        batches = [(x, y, None)] * (n_good + poison)
        stats = engine.train_one_epoch(step, m, opt, torch.amp.GradScaler("cpu", enabled=False), batches,
                                       len(batches), cfg, 0, quiet=True, max_nonfinite=5)
        return m, opt, stats

    clean, opt_c, s_c = run(1, poison=False)
    poisoned, opt_p, s_p = run(1, poison=True)
    for a, b in zip(clean.parameters(), poisoned.parameters()):
        assert torch.equal(a, b) and torch.isfinite(b).all()
        assert torch.equal(opt_c.state[a]["exp_avg"], opt_p.state[b]["exp_avg"])
        assert float(opt_c.state[a]["step"]) == float(opt_p.state[b]["step"]) == 1
    assert s_p.skipped == 1 and s_c.skipped == 0 and s_p.loss == s_c.loss  # the mean is over the finite steps


# --- 8. the smaller ones --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, hint", [
    ("minus_one", "labels -1/1?"),
    ("matlab_layout", "permute(X, [4 1 2 3])"),
])
def test_hints_for_common_layouts(tmp_path, change, hint, capsys):
    from stvit.data import load_dataset
    from stvit.data.dataset import DataError

    path = write_tiny_data(tmp_path / "d.npz")
    arrays = dict(np.load(path))
    if change == "minus_one":
        arrays["y_train"] = arrays["y_train"] * 2 - 1
    else:
        arrays["X_train"] = np.moveaxis(arrays["X_train"], 0, -1).copy()  # (5, 14, 6, N)
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=hint.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]").replace("?", r"\?")):
        load_dataset(path, volume_shape=(5, 14, 6))


def test_a_torn_last_log_line_is_left_out(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"stage": "pretrain", "epoch": 1}\n{"stage": "pre')
    assert read_log(log) == [{"stage": "pretrain", "epoch": 1}]

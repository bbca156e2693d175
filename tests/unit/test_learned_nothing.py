"""The 'learned nothing' warning: the pure decision (`metrics.learned_nothing`) and a real run that gets it in its
final line, its metrics.json and on stderr."""
from __future__ import annotations

import json

import numpy as np

from stvit.training.metrics import chance_level, learned_nothing

NAMES = ("face", "shape")


def ft(*accs):
    return [{"stage": "pretrain", "epoch": 1, "loss": 1.0}] + [
        {"stage": "finetune", "epoch": i + 1, "train_acc": a} for i, a in enumerate(accs)]


def test_training_at_chance_in_every_epoch_warns():
    y = np.arange(400) % 2
    text = learned_nothing(ft(0.49, 0.51, 0.52), np.arange(50) % 2, np.arange(50) % 2, y, NAMES)
    assert text is not None and text.startswith("WARNING: the model learned nothing")
    assert "chance 0.500 on 400 training volumes" in text and "--standardize" in text


def test_one_epoch_above_chance_or_a_learning_model_does_not_warn():
    y = np.arange(400) % 2
    assert learned_nothing(ft(0.5, 0.51, 0.70), np.arange(50) % 2, np.arange(50) % 2, y, NAMES) is None
    assert learned_nothing(ft(0.9), np.arange(50) % 2, np.arange(50) % 2, y, NAMES) is None


def test_chance_is_the_majority_share():
    y = np.array([0] * 300 + [1] * 100)
    assert chance_level(y) == 0.75
    assert learned_nothing(ft(0.76), np.arange(50) % 2, np.arange(50) % 2, y, NAMES) is not None
    assert learned_nothing(ft(0.85), np.arange(50) % 2, np.arange(50) % 2, y, NAMES) is None


def test_one_class_for_every_test_volume_warns_only_when_the_test_split_has_several():
    y = np.arange(400) % 2
    text = learned_nothing(ft(0.9), np.ones(50, int), np.arange(50) % 2, y, NAMES)
    assert text is not None and "every one of the 50 test volumes was predicted 'shape'" in text
    assert learned_nothing(ft(0.9), np.ones(50, int), np.ones(50, int), y, NAMES) is None


def test_a_run_on_volumes_without_information_says_so(tmp_path, tiny, capsys):
    """Every volume identical: the model cannot tell them apart, so every test volume gets one class."""
    from helpers import run_main

    _, cfg = tiny
    rng = np.random.default_rng(0)
    one = rng.standard_normal((5, 14, 6)).astype(np.float32)
    def split(n, first):
        return (np.repeat(one[None], n, 0), (np.arange(n) % 2).astype(np.float64),
                np.array([f"S{first + i // 4}" for i in range(n)]))
    Xtr, ytr, itr = split(32, 0)
    Xte, yte, ite = split(8, 100)
    data = tmp_path / "flat.npz"
    np.savez(data, X_train=Xtr, y_train=ytr, ids_train=itr, X_test=Xte, y_test=yte, ids_test=ite)
    out = tmp_path / "nothing"
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet",
                     "--pretrain-epochs", "0", "--ft-epochs", "2"]) == 0
    captured = capsys.readouterr()
    final = [line for line in captured.out.splitlines() if line.startswith("test: accuracy")]
    assert len(final) == 1 and "WARNING: the model learned nothing" in final[0]
    assert "WARNING: the model learned nothing" in captured.err
    m = json.loads((out / "metrics.json").read_text())
    assert any(w.startswith("WARNING: the model learned nothing") for w in m["warnings"])
    assert "learned nothing" in m["warning"]

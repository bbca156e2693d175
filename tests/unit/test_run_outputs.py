"""What a run records beside its metrics, without training: the provenance (and that it never fails without git),
the final line with balanced accuracy, chance and the permutation p, and the flag that sets the number of
permutations."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from stvit import cli
from stvit.errors import UserError
from stvit.training import api
from stvit.training import provenance as P
from stvit.training import stats as S
from stvit.training.evaluation import result_line


def test_provenance_names_the_command_versions_commit_host_and_device():
    """The command as typed (quoted where a shell needs it), the libraries' versions, the commit of this checkout
    (the tests run from one), a start time with its offset, the host and the device; strict JSON."""
    P.commit.cache_clear()
    prov = P.provenance(P.command_line("python -m stvit.train", ["--data", "my file.mat", "--seed", "1"]), "cpu")
    assert prov["command"] == "python -m stvit.train --data 'my file.mat' --seed 1"
    assert {"python", "torch", "numpy", "scipy", "scikit-learn"} <= set(prov["versions"])
    head = subprocess.run(["git", "-C", str(P.Path(P.__file__).parent), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert prov["commit"] == head and isinstance(prov["dirty"], bool)
    assert prov["started"][10] == "T" and prov["started"][-6] in "+-" and prov["host"]
    assert prov["device"].startswith("cpu (") and json.loads(json.dumps(prov, allow_nan=False)) == prov


def test_provenance_never_fails_without_git(monkeypatch):
    """No git on the PATH, or a git that fails: the commit is None and the rest is there."""
    P.commit.cache_clear()
    monkeypatch.setenv("PATH", "/nonexistent")
    prov = P.provenance("python -m stvit.train")
    assert (prov["commit"], prov["dirty"], prov["device"]) == (None, None, None) and prov["versions"]["numpy"]
    P.commit.cache_clear()
    monkeypatch.setattr(P, "git", lambda root, *args: None)
    assert P.provenance(None)["commit"] is None
    P.commit.cache_clear()


def metrics_with(stats):
    m = {"test": {"accuracy": 0.8, "roc_auc": 0.87, "n": 320}, "val": {"accuracy": 0.79}, "best_epoch": 6,
         "selected_on": "val", "baseline": {"accuracy": 0.81, "roc_auc": 0.88, "C": 0.01}}
    return {**m, "stats": stats} if stats is not None else m


def test_final_line_has_balanced_accuracy_chance_and_the_permutation_p():
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 160)
    probs = np.stack([1 - (p := np.clip(0.5 * y + 0.5 * rng.random(320), 0, 1)), p], axis=1)
    s = S.run_statistics(y, probs, 2, {"subject": np.repeat(np.arange(20), 16)}, n_perm=999, n_boot=100)
    line = result_line(metrics_with(s))
    assert line.startswith(f"test: accuracy 0.800 (balanced {s['balanced_accuracy']:.3f}; chance 0.500, "
                           f"permutation p = 0.001), ROC-AUC 0.870 on 320 volumes")
    assert "| baseline (logistic regression, C 0.01): accuracy 0.810" in line and "\n" not in line
    none = result_line(metrics_with(S.run_statistics(y, probs, 2, n_perm=0, n_boot=0)))
    assert "no permutation test" in none
    assert result_line(metrics_with(None)).startswith("test: accuracy 0.800, ROC-AUC 0.870")  # an older run


def request(argv):
    return api.Request.from_flags(cli.add_run_flags(p := cli.command_parser("t", "t")) and p.parse_args(argv))


def test_test_permutations_flag_sets_the_config_and_is_checked():
    assert cli.FLAG_OF_KEY["train.permutations"] == "--test-permutations"
    assert api.resolve_config(request(["--device", "cpu"])).train.permutations == 10_000
    assert api.resolve_config(request(["--device", "cpu", "--test-permutations", "0"])).train.permutations == 0
    with pytest.raises(UserError, match="--test-permutations must be in"):
        api.resolve_config(request(["--device", "cpu", "--test-permutations", "-1"]))
    assert "train.permutations" in api.FREE  # a resumed or re-evaluated run may ask for another number

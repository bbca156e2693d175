"""`python -m stvit.profile` on a CPU: bad arguments are one line with exit code 2; the NVML sampler without a GPU,
the host batches, each step variant timed. A whole profile (report.md/json, the PNG, "NVML not available"):
tests/e2e/test_profile.py.

The steps use the eager ops: the test session sets TRITON_INTERPRET=1, under which the fused ops would run
Triton's interpreter (seconds per slice)."""
import json

import numpy as np
import pytest
import torch

from stvit import profile
from stvit.perf import profiler
from stvit.config import preset
from stvit.errors import run_cli
from stvit.perf.nvml import NvmlSampler

from helpers import SMALL

# the small model at the real volume (the profiler draws from the synthetic set)
TINY = {"model": {k: v for k, v in SMALL.items() if k != "volume"}, "train": {"batch_size": 1}}


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--n-train", "1", "--batch-size", "2"], "smaller than one batch"),
    (["--config", "/nonexistent/x.json"], "no such file"),
    (["--interval", "0"], "--interval must be > 0"),
])
def test_bad_arguments_are_one_line(tmp_path, argv, message, capsys):
    rc = run_cli(profile.main, ["--device", "cpu", "--out", str(tmp_path / "p"), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "p").exists()


def test_nvml_sampler_on_cpu_is_a_no_op():
    s = NvmlSampler(torch.device("cpu"))
    assert not s.available and "not a GPU" in s.reason
    s.start(0.0)
    s.stop()
    assert s.samples == [] and s.summary() == {"samples": 0}


def test_host_batches_copy_float32_volumes_to_the_device():
    X = np.random.rand(5, 2, 3, 4).astype(np.float32)
    y = np.arange(5) % 2
    it = profiler.host_batches(X, y, 2, torch.device("cpu"), num_workers=0)
    seen = [next(it) for _ in range(4)]  # 2 batches per epoch (last partial dropped), then the next epoch
    for x, yb, idx in seen:
        assert x.shape == (2, 2, 3, 4) and x.dtype == torch.float32
        assert torch.equal(x, torch.from_numpy(X)[idx]) and torch.equal(yb, torch.from_numpy(y)[idx])
    it.close()


def test_time_epochs_runs_each_variant():
    cfg = preset("demo").override({**TINY, "train": {"batch_size": 1, "device": "cpu"}})
    X = np.random.randn(2, *cfg.model.volume).astype(np.float32)
    rows = profiler.time_epochs(cfg, X, np.array([0, 1]), torch.device("cpu"), stages=("pretrain",), warmup=0,
                               variants=("baseline", profiler.Variant("eager", False, "device", True)))
    assert [r["variant"] for r in rows] == ["baseline", "eager ops, no compile, device data"]
    assert all(r["steps"] == 2 and r["samples"] == 2 and r["epoch_seconds"] > 0 for r in rows)

"""`python -m stvit.profile` on a CPU: a few steps of a tiny config write report.md/json (and a PNG where
matplotlib is installed) and say that NVML was not available. The refusals and the pieces: tests/unit/test_profile.py.

The steps use the eager ops: the test session sets TRITON_INTERPRET=1, under which the fused ops would run
Triton's interpreter (seconds per slice)."""
import json

import torch

from stvit import profile
from stvit.errors import run_cli

from unit import test_profile as unit

tiny_config = unit.tiny_config  # the fixture: the small model at the real volume


def test_profile_writes_a_report_without_nvml(tmp_path, tiny_config, capsys):
    out = tmp_path / "prof"
    rc = run_cli(profile.main, ["--device", "cpu", "--config", str(tiny_config), "--stage", "pretrain", "--no-compile",
                                "--kernels", "eager",
                                "--steps", "2", "--warmup", "1", "--window", "1", "--profile-steps", "1",
                                "--n-train", "2", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "NVML not available" in printed
    r = json.loads((out / "report.json").read_text())
    assert r["steps"] == 2 and r["samples"] == 2 and r["samples_per_s"] > 0 and r["tflops"] > 0
    assert len(r["series"]) == 2 and r["nvml"]["available"] is False and r["nvml"]["samples"] == []
    assert r["run"]["kernels"] == "eager" and r["run"]["compile"] is False and r["run"]["loader"] == "device"
    assert r["top_kernels"] and r["top_kernels"][0]["self_us"] > 0
    assert r["env"]["torch"] == torch.__version__ and r["command"].startswith("python -m stvit.profile")
    md = (out / "report.md").read_text()
    assert "NVML not available" in md and "samples/s" in md and "Top kernels" in md and r["env"]["date"] in md
    try:
        import matplotlib  # noqa: F401
        assert (out / "throughput.png").stat().st_size > 0
    except ImportError:
        assert not (out / "throughput.png").exists()

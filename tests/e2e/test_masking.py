"""MAE masking strategies (`stvit.masking`) in the compiled step (no recompiles) and in a run resumed after a
SIGKILL (bit-identical). The sampler and the score: tests/unit/test_masking.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import torch

from stvit.training import checkpoint as ckpt
from stvit.training import stages
from stvit.model.masking import AttentionMaskNoise

from helpers import (ROOT, TINY_RUN, killer_script, losses, run_epoch, run_main, stage_config, tiny_volumes,
                     write_tiny_data)
from unit.test_masking import CPU


def test_compiled_attention_strategy_never_recompiles():
    """Three epochs of the compiled pretrain step with attention-guided noise: the noise is an input of the graph
    (computed outside it, eagerly, in eval mode), so after the first step nothing compiles again."""
    torch._dynamo.reset()
    cfg = stage_config(compile=True, mask_strategy="attention")
    X, y = tiny_volumes()
    setup = stages.setup_stage("pretrain", cfg, CPU)
    assert isinstance(setup.noise, AttentionMaskNoise) and setup.noise.guided == 2
    graphs = lambda: torch._dynamo.utils.counters["stats"]["unique_graphs"]  # noqa: E731
    run_epoch(setup, X, y, 3, epoch=0)
    after_first = graphs()
    for epoch in (1, 2):
        with torch._dynamo.config.patch(error_on_recompile=True):
            stats_ = run_epoch(setup, X, y, 3, epoch=epoch)
        assert torch.isfinite(torch.tensor(stats_.loss))
    assert graphs() == after_first


def test_resume_after_sigkill_mid_pretrain_epoch_is_bit_identical(tmp_path):
    """Attention strategy, killed in the middle of the 2nd pre-training epoch, resumed: the same losses as an
    uninterrupted run (the noise is a function of seed, epoch, step and the restored weights). Resuming with
    another strategy is refused."""
    data = write_tiny_data(tmp_path / "tiny.npz")
    run = {**TINY_RUN, "pretrain": {**TINY_RUN["pretrain"], "mask_strategy": "attention"}}
    cfg = tmp_path / "attention.json"
    cfg.write_text(json.dumps(run))
    args = ["--data", str(data), "--config", str(cfg), "--stage", "pretrain", "--quiet"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run_main([*args, "--out", str(full)]) == 0
    script = killer_script(tmp_path / "killer.py", run["pretrain"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), *args, "--out", str(killed)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert ckpt.load(killed / "checkpoints" / "last.pt")["epoch"] == 1
    assert run_main(["--resume", str(killed), "--mask-strategy", "random", "--quiet"]) == 2
    assert run_main(["--resume", str(killed), "--stage", "pretrain", "--quiet"]) == 0
    assert losses(killed) == losses(full) and len(losses(full)) == 2
    assert json.loads((full / "config.json").read_text())["pretrain"]["mask_strategy"] == "attention"

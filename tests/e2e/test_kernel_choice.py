"""The run's side of `kernels.select`: `--kernels auto` (the default) records which ops ran fused in log.jsonl and
metrics.json, falls back per op with one warning line when an op fails its startup self-check, and `--kernels fused`
stops before anything is written when one does. A GPU is simulated on CPU: Triton's interpreter runs the kernels
and `kernels.select` is told the compiled kernels run here."""
from __future__ import annotations

import json
import logging

import pytest

import kernels.select
from kernels import _dispatch
from stvit.training import stages
from stvit.training.rundir import read_log

from helpers import TINY_RUN, break_scatter, run_main, write_tiny_data


@pytest.fixture
def gpu_like(monkeypatch, tmp_path):
    """The self-check runs on CPU (interpreted kernels), as it does on a GPU; a tiny one-step run."""
    if not (_dispatch.INTERPRETED and _dispatch.interpreting()):
        pytest.skip("needs the Triton interpreter (TRITON_INTERPRET=1 before triton is imported)")
    monkeypatch.setattr(kernels.select, "_compiled_here", lambda device: True)
    stages._select.cache_clear()
    data = write_tiny_data(tmp_path / "d.npz", n_train=8, n_test=4)  # 6 train volumes: one step of 4
    cfg = {**TINY_RUN, "pretrain": {**TINY_RUN["pretrain"], "epochs": 1}, "finetune": {**TINY_RUN["finetune"],
                                                                                        "epochs": 1}}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    yield ["--data", str(data), "--config", str(tmp_path / "c.json"), "--quiet"]
    stages._select.cache_clear()


def test_auto_falls_back_per_op_and_records_it(gpu_like, monkeypatch, tmp_path, caplog):
    break_scatter(monkeypatch)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="kernels.select"):
        assert run_main([*gpu_like, "--out", str(out)]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "kernels.select"]
    assert len(lines) == 1 and lines[0].startswith("kernels: mae_scatter falls back to the plain-torch reference")
    first = read_log(out / "log.jsonl")[0]["kernels"]
    assert first["mode"] == "auto" and first["checked"]
    assert {op: v["fused"] for op, v in first["ops"].items()} == {
        "patch_embed": True, "mae_gather": True, "mae_scatter": False, "norm_pix_mse": True}
    assert json.loads((out / "metrics.json").read_text())["kernels"]["ops"]["mae_scatter"]["fused"] is False


def test_forced_fused_stops_before_anything_is_written(gpu_like, monkeypatch, tmp_path, capsys):
    break_scatter(monkeypatch)
    out = tmp_path / "never"
    assert run_main([*gpu_like, "--out", str(out), "--kernels", "fused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --kernels fused: mae_scatter failed its startup self-check")
    assert not out.exists()


def test_on_a_cpu_auto_is_the_reference_without_a_check(tmp_path, capsys):
    stages._select.cache_clear()
    data = write_tiny_data(tmp_path / "d.npz", n_train=8, n_test=4)
    cfg = {**TINY_RUN, "pretrain": {**TINY_RUN["pretrain"], "epochs": 0}, "finetune": {**TINY_RUN["finetune"],
                                                                                        "epochs": 1}}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    out = tmp_path / "cpu"
    assert run_main(["--data", str(data), "--config", str(tmp_path / "c.json"), "--out", str(out), "--quiet"]) == 0
    rec = read_log(out / "log.jsonl")[0]["kernels"]
    assert rec["mode"] == "auto" and not rec["checked"] and not any(v["fused"] for v in rec["ops"].values())

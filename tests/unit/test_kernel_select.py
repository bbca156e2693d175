"""kernels.select: eager / fused / auto, and the self-check that decides per op, exercised on CPU under Triton's
interpreter (`check=True`): every op passes; an op made to fail falls back with one warning line naming it; the
forced "fused" mode raises for it instead."""
import json
import logging
import sys

import pytest
import torch

import kernels
from kernels import _dispatch, reference
from kernels.select import OPS, KernelCheckError, select

from helpers import break_scatter


@pytest.fixture
def interpreter():
    if not (_dispatch.INTERPRETED and _dispatch.interpreting()):
        pytest.skip("needs the Triton interpreter (TRITON_INTERPRET=1 before triton is imported)")


def test_eager_is_the_reference_everywhere():
    sel = select("eager", "cpu", torch.bfloat16)
    assert all(getattr(sel.ops, op) is getattr(reference, op) for op in OPS)
    assert sel.fused == [] and not sel.checked


def test_auto_on_cpu_is_the_reference_without_a_check(monkeypatch):
    monkeypatch.setattr("kernels.select.self_check", lambda *a: pytest.fail("auto on CPU must not check"))
    sel = select("auto", "cpu", torch.float32)
    assert all(getattr(sel.ops, op) is getattr(reference, op) for op in OPS)
    assert not sel.checked and "plain-torch reference" in sel.record["patch_embed"].reason


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown kernels mode 'triton'"):
        select("triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_self_check_passes_every_op(interpreter, caplog, dtype):
    with caplog.at_level(logging.WARNING, logger="kernels.select"):
        sel = select("auto", "cpu", dtype, check=True)
    assert sel.checked and sel.fused == list(OPS), sel.to_json()
    assert all(getattr(sel.ops, op) is getattr(kernels, op) for op in OPS)
    assert caplog.records == []
    rec = json.loads(json.dumps(sel.to_json()))  # what a run writes to its logs
    assert rec["ops"]["mae_scatter"] == {"fused": True, "reason": "self-check passed"}
    assert rec["mode"] == "auto" and rec["dtype"] == str(dtype).replace("torch.", "")


def test_self_check_at_the_demo_patch(interpreter):
    assert select("fused", "cpu", torch.bfloat16, patch=(21, 23), check=True).fused == list(OPS)


def test_a_failing_op_falls_back_with_one_warning_line(interpreter, monkeypatch, caplog):
    break_scatter(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="kernels.select"):
        sel = select("auto", "cpu", torch.float32, check=True)
    assert sel.fused == ["patch_embed", "mae_gather", "norm_pix_mse"]
    assert sel.ops.mae_scatter is reference.mae_scatter and sel.ops.patch_embed is kernels.patch_embed
    assert not sel.record["mae_scatter"].fused and "output" in sel.record["mae_scatter"].reason
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith("kernels: mae_scatter falls back to the plain-torch reference: output: ")


def test_an_op_that_raises_falls_back_naming_the_error(interpreter, monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("PTX too old\nfor this driver")

    monkeypatch.setattr(sys.modules["kernels.norm_pix_mse"], "launch", boom)
    with caplog.at_level(logging.WARNING, logger="kernels.select"):
        sel = select("auto", "cpu", torch.bfloat16, check=True)
    assert sel.ops.norm_pix_mse is reference.norm_pix_mse and "norm_pix_mse" not in sel.fused
    assert sel.record["norm_pix_mse"].reason == "self-check failed: RuntimeError: PTX too old for this driver"
    assert [r.getMessage() for r in caplog.records] == [
        "kernels: norm_pix_mse falls back to the plain-torch reference: RuntimeError: PTX too old for this driver"]


def test_forced_fused_raises_for_the_failing_op(interpreter, monkeypatch):
    break_scatter(monkeypatch)
    with pytest.raises(KernelCheckError, match="kernels: mae_scatter failed its self-check: output: ") as e:
        select("fused", "cpu", torch.float32, check=True)
    assert e.value.op == "mae_scatter" and "values off the reference" in e.value.reason


def test_forced_fused_without_a_check_keeps_every_fused_op():
    sel = select("fused", "cpu", torch.float32, check=False)
    assert sel.fused == list(OPS) and not sel.checked
    assert all(getattr(sel.ops, op) is getattr(kernels, op) for op in OPS)


def test_self_check_leaves_the_callers_random_stream_alone(interpreter):
    torch.manual_seed(3)
    want = torch.rand(4)
    torch.manual_seed(3)
    select("auto", "cpu", torch.float32, check=True)
    assert torch.equal(torch.rand(4), want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_self_check_passes_every_op(dtype):
    """On a GPU the default check runs the compiled kernels; forced fused mode raises if any op fails."""
    sel = select("fused", "cuda", dtype)
    assert sel.checked and sel.fused == list(OPS), sel.to_json()
    assert sel.check_seconds < 60  # compiling the kernels on first use included

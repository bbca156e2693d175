"""The precision policy: capability decides bf16 vs fp16 (not `is_bf16_supported`), GradScaler only for fp16."""
import logging

import pytest
import torch

from stvit.model.precision import Precision, resolve_precision

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend a GPU of a given capability is present; `is_bf16_supported` answers True as it does on a T4."""
    def install(cap):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    return install


@pytest.mark.parametrize("cap, expected, scaler, attention", [
    ((7, 5), "fp16", True, ("efficient",)),  # T4: bf16 "supported" (emulated) but fp16 is the policy
    ((8, 0), "bf16", False, ("flash", "efficient")),  # A100
    ((8, 6), "bf16", False, ("flash", "efficient")),
    ((9, 0), "bf16", False, ("flash", "efficient")),  # H100
])
def test_auto_reads_the_capability(fake_gpu, cap, expected, scaler, attention):
    fake_gpu(cap)
    p = Precision.resolve("auto", CUDA)
    assert (p.name, p.attention) == (expected, attention)
    assert p.uses_grad_scaler is scaler  # (a CUDA GradScaler disables itself without a GPU)
    assert p.storage_dtype == p.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[expected]
    # the explicit capability argument gives the same answer without a GPU query (forcing the T4 path)
    assert Precision.resolve("auto", CUDA, capability=cap) == p


def test_forced_t4_path_on_a_newer_gpu(fake_gpu):
    fake_gpu((9, 0))
    p = Precision.resolve("auto", CUDA, capability=(7, 5))
    assert (p.name, p.attention, p.uses_grad_scaler) == ("fp16", ("efficient",), True)


def test_cpu_is_fp32_by_default_bf16_on_request():
    p = Precision.resolve("auto", CPU)
    assert (p.name, p.dtype, p.storage_dtype, p.attention) == ("fp32", torch.float32, torch.float32, ("flash",))
    assert not p.grad_scaler().is_enabled()
    b = Precision.resolve("bf16", CPU)
    assert (b.name, b.dtype, b.storage_dtype) == ("bf16", torch.bfloat16, torch.float32)
    assert not b.grad_scaler().is_enabled()


def test_explicit_requests_are_kept(fake_gpu):
    fake_gpu((8, 0))
    for name in ("fp32", "bf16", "fp16"):
        assert resolve_precision(name, CUDA) == name
    assert Precision.resolve("fp16", CUDA).uses_grad_scaler
    assert not Precision.resolve("bf16", CUDA).uses_grad_scaler
    assert Precision.resolve("fp16", CPU).grad_scaler().is_enabled()


def test_bf16_on_t4_is_kept_but_warned(fake_gpu, caplog):
    fake_gpu((7, 5))
    with caplog.at_level(logging.WARNING, logger="stvit.model.precision"):
        assert resolve_precision("bf16", CUDA) == "bf16"
    assert "emulated" in caplog.text


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", CPU)


def test_autocast_follows_the_name():
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with Precision.resolve("bf16", CPU).autocast():
        assert lin(x).dtype == torch.bfloat16
    with Precision.resolve("fp32", CPU).autocast():
        assert lin(x).dtype == torch.float32

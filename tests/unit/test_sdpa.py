"""Which SDPA kernel runs: the policy table, the proof by restriction (`sdpa_kernel` raises instead of quietly
running math) and by the profiler (the aten op of each backend), the logged math fallback."""
from __future__ import annotations

import logging

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from stvit.model import attention
from stvit.training import steps
from stvit.model.attention import check_backends, preferred_backends, probe, sdpa_context
from stvit.model.vit import MAE, SpatioTemporalClassifier
from stvit.model.precision import Precision

from helpers import tiny_config

CUDA = torch.cuda.is_available()
OPS = {  # the aten op each backend runs, as the profiler names it
    ("cpu", "flash"): "aten::_scaled_dot_product_flash_attention_for_cpu",
    ("cuda", "flash"): "aten::_scaled_dot_product_flash_attention",
    ("cuda", "efficient"): "aten::_scaled_dot_product_efficient_attention",
}
MATH = "aten::_scaled_dot_product_attention_math"


def attention_ops(fn) -> dict[str, int]:
    """Run `fn` under the profiler; count the calls of each SDPA aten op (forward and backward)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    counts: dict[str, int] = {}
    for e in prof.events():
        if "attention" in e.name and e.name.startswith("aten::_scaled_dot_product"):
            counts[e.name] = counts.get(e.name, 0) + 1
    return counts


def train_step(kind: str, device: str, dtype: torch.dtype | None):
    """Forward + backward of the classifier (spatial + temporal attention) or the MAE (spatial + decoder)."""
    cfg = tiny_config(device)
    x = torch.randn(2, *cfg.volume, device=device)
    model = (MAE(cfg) if kind == "mae" else SpatioTemporalClassifier(cfg)).to(device)
    n_layers = cfg.depth + (cfg.decoder_depth if kind == "mae" else cfg.temporal_depth)

    def step():
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            out = model(x)[0] if kind == "mae" else model(x)
        out.float().sum().backward()

    return step, n_layers


def test_policy_table():
    assert preferred_backends("cpu") == ("flash",)
    assert preferred_backends("cuda", (7, 5)) == ("efficient",)
    assert preferred_backends("cuda", (8, 0)) == ("flash", "efficient")
    assert preferred_backends("cuda", (9, 0)) == ("flash", "efficient")
    assert preferred_backends("cuda", (12, 0)) == ("flash", "efficient")


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["classifier", "mae"])
def test_cpu_flash_runs_every_attention_layer(kind, dtype):
    step, n_layers = train_step(kind, "cpu", dtype)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        counts = attention_ops(step)
    flash = OPS["cpu", "flash"]
    assert counts.get(flash, 0) == n_layers, counts  # forward of every layer, spatial and temporal (or decoder)
    assert counts.get(flash + "_backward", 0) == n_layers, counts
    assert MATH not in counts, counts


@pytest.mark.filterwarnings("ignore:.*(kernel not used|do not support):UserWarning")
def test_restriction_raises_instead_of_running_math():
    """CPU flash has no attention dropout: restricted to it, a training step with dropout fails loudly."""
    cfg = tiny_config("cpu", dropout=0.1)
    model = SpatioTemporalClassifier(cfg).train()
    with sdpa_context(("flash",)), pytest.raises(RuntimeError, match="No available kernel"):
        model(torch.randn(2, *cfg.volume))


@pytest.fixture
def fresh_reports(monkeypatch):
    """Each fallback is logged once per process: start from none reported."""
    monkeypatch.setattr(attention, "_reported", set())


def test_math_fallback_is_logged(caplog, fresh_reports):
    with caplog.at_level(logging.INFO, logger="stvit.model.attention"):
        assert check_backends(("flash",), "cpu", torch.float32, [(2, 12, 0.0), (2, 8, 0.0)]) == ("flash",)
        assert not caplog.records
        assert check_backends(("flash",), "cpu", torch.float32, [(2, 12, 0.1)]) == ("flash", "math")
    assert "math fallback" in caplog.text and "dropout" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="stvit.model.attention"):
        check_backends(("flash",), "cpu", torch.float32, [(2, 12, 0.1)])
    assert not caplog.records  # reported once
    assert check_backends((), "cpu", torch.float32, [(2, 12, 0.1)]) == ()  # no restriction: nothing to check


def test_build_binds_the_checked_policy(caplog, fresh_reports):
    """`build` probes the model's attention shapes: dropout on CPU -> flash + logged math fallback."""
    prec = Precision.resolve("fp32", torch.device("cpu"))
    for dropout, expected in ((0.0, ("flash",)), (0.1, ("flash", "math"))):
        model = SpatioTemporalClassifier(tiny_config("cpu", dropout=dropout))
        with caplog.at_level(logging.INFO, logger="stvit"):
            fn = steps.build(steps.classifier_loss, model, prec, compile=False, name="clf")
        assert fn.fn.args[1].attention == expected
        assert ("math fallback" in caplog.text) == (dropout > 0)
    step = lambda: fn(torch.randn(2, *model.cfg.volume), torch.tensor([0, 1]))[0].backward()  # noqa: E731
    assert MATH in attention_ops(step)  # training with dropout on CPU: the logged fallback runs


# --- CUDA: the spatial and temporal attention run under the backend the policy names ----------------------------

def cuda_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.get_device_capability() >= (8, 0) else torch.float16


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["classifier", "mae"])
@pytest.mark.parametrize("backend", ["flash", "efficient"])
def test_cuda_backend_runs_every_attention_layer(backend, kind):
    if backend == "flash" and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("flash needs sm80+")
    step, n_layers = train_step(kind, "cuda", cuda_dtype())
    with sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]):
        counts = attention_ops(step)
        torch.cuda.synchronize()
    op = OPS["cuda", backend]
    assert counts.get(op, 0) == n_layers, counts
    assert counts.get(op + "_backward", 0) == n_layers, counts
    assert MATH not in counts, counts


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["auto", "t4"])
def test_cuda_policy_needs_no_math_and_reaches_the_compiled_step(precision):
    """The policy's kernels run the model's shapes without fallback, eager and compiled (same graph as parity)."""
    device = torch.device("cuda")
    cap = (7, 5) if precision == "t4" else None
    prec = Precision.resolve("auto", device, capability=cap)
    cfg = tiny_config("cuda")
    model = SpatioTemporalClassifier(cfg).to(device)
    for heads, head_dim, dropout in steps.attention_shapes(model):
        assert probe(prec.attention, device, prec.dtype, heads, head_dim, dropout) is None
    assert steps.build(steps.classifier_loss, model, prec, compile=False, name="clf").fn.args[1] == prec
    expected = OPS["cuda", prec.attention[0]] if prec.dtype != torch.float32 else OPS["cuda", "efficient"]
    x, y = torch.randn(2, *cfg.volume, device=device), torch.tensor([0, 1], device=device)
    for compiled in (False, True):
        torch._dynamo.reset()
        fn = steps.build(steps.classifier_loss, model, prec, compile=compiled, name=f"clf-{precision}")
        fn(x, y)[0].backward()  # compile outside the profile
        counts = attention_ops(lambda: fn(x, y)[0].backward())
        assert counts.get(expected, 0) >= cfg.depth + cfg.temporal_depth, (compiled, counts)
        assert MATH not in counts, (compiled, counts)

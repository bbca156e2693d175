"""Benchmarks of the four ops: `pytest bench --benchmark` (without the flag every benchmark is skipped).

Each op is timed in three phases (fwd: the forward with autograd recording; bwd: the backward alone, on a
fresh forward made outside the timed region; full: both) for three implementations: the plain-torch
reference, the fused op (`kernels`), and `torch.compile(reference, fullgraph=True)`. Paper shapes on CUDA
(S = 424 slices of 63x46, D = 192, P = 207, K = 72, Dd = 128), small shapes on CPU. On CPU the fused op runs
Triton's interpreter: a check that the harness and the kernels work, not a performance number. CUDA timings
synchronize. Each result carries the bytes an ideal single pass moves and the GB/s that makes, in
`benchmark.extra_info` (saved with --benchmark-json) and in a table at the end of the run.
"""
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

# Triton chooses compiled or interpreted kernels when first imported: without a GPU, ask for the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

BENCH_DIR = Path(__file__).resolve().parent
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE.type == "cuda"
RESULTS: list[dict] = []


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true", default=False,
                     help="run the op benchmarks in bench/ (they are skipped without this flag)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--benchmark"):
        return
    skip = pytest.mark.skip(reason="benchmarks run only with --benchmark (pytest bench --benchmark)")
    for item in items:
        if BENCH_DIR in Path(str(item.fspath)).parents:
            item.add_marker(skip)


@dataclass
class Case:
    """One op at one shape: how to call it, with which inputs, and how many bytes each phase must move."""

    name: str
    reference: Callable
    fused: Callable
    make_inputs: Callable[[], tuple]  # -> args on DEVICE; the inputs in grad_idx require grad
    grad_idx: tuple
    nbytes: dict  # phase -> bytes read + written by an ideal single pass
    shape: str
    compiled: dict = field(default_factory=dict)


def _sync():
    if ON_CUDA:
        torch.cuda.synchronize()


_COMPILED: dict[str, Callable] = {}


def _impl(case: Case, impl: str) -> Callable:
    if impl == "compiled":  # one compiled function per op, shared by its three phases
        if case.name not in _COMPILED:
            _COMPILED[case.name] = torch.compile(case.reference, fullgraph=True)
        return _COMPILED[case.name]
    return case.fused if impl == "fused" else case.reference


def run(benchmark, case: Case, impl: str, phase: str):
    fn = _impl(case, impl)
    args = case.make_inputs()
    leaves = [args[i] for i in case.grad_idx]
    out = fn(*args)  # warm-up: compiles, autotunes, fills caches
    grad = torch.randn_like(out)
    torch.autograd.grad(out, leaves, grad)
    _sync()

    def fwd():
        fn(*args)
        _sync()

    def bwd(out):
        torch.autograd.grad(out, leaves, grad)
        _sync()

    def full():
        torch.autograd.grad(fn(*args), leaves, grad)
        _sync()

    def fresh_forward():
        out = fn(*args)
        _sync()
        return (out,), {}

    interpreted = impl == "fused" and not ON_CUDA
    rounds = 50 if ON_CUDA else (3 if interpreted else 10)
    if phase == "bwd":
        benchmark.pedantic(bwd, setup=fresh_forward, rounds=rounds, warmup_rounds=1 if ON_CUDA else 0)
    else:
        benchmark.pedantic(fwd if phase == "fwd" else full, rounds=rounds, warmup_rounds=2 if ON_CUDA else 0)
    median = benchmark.stats.stats.median
    moved = case.nbytes[phase]
    info = dict(op=case.name, impl=impl, phase=phase, shape=case.shape, bytes=moved, gbps=moved / median / 1e9,
                median_ms=median * 1e3, interpreted=interpreted,
                device=torch.cuda.get_device_name() if ON_CUDA else "cpu")
    benchmark.extra_info.update(info)
    RESULTS.append(info)


@pytest.fixture
def bench_op(benchmark):
    """bench_op(impl, phase, **case): time one implementation of one op in one phase (fields of `Case`)."""
    return lambda impl, phase, **case: run(benchmark, Case(**case), impl, phase)


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section(f"op benchmarks on {RESULTS[0]['device']} (median; GB/s of an ideal single pass)")
    tr.write_line(f"{'op':<14}{'phase':<6}{'impl':<11}{'median ms':>11}{'MB':>9}{'GB/s':>9}  shape")
    for r in RESULTS:
        note = "  (Triton interpreter)" if r["interpreted"] else ""
        tr.write_line(f"{r['op']:<14}{r['phase']:<6}{r['impl']:<11}{r['median_ms']:>11.3f}{r['bytes'] / 1e6:>9.2f}"
                      f"{r['gbps']:>9.2f}  {r['shape']}{note}")

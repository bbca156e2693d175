"""Benchmarks: `pytest bench --benchmark` (without the flag every benchmark is skipped).

Two kinds: the four ops (`bench/test_<op>.py`, below) and the train steps (`bench/test_train_step.py`, the
`bench_step` fixture). At the end of the run both are printed as tables, the train steps with their ratios
against the seed-style baseline, and written as JSON to `--bench-summary` (default `.benchmarks/summary.json`).

Each op is timed in three phases (fwd: the forward with autograd recording; bwd: the backward alone, on a
fresh forward made outside the timed region; full: both) for three implementations: the plain-torch
reference, the fused op (`kernels`), and `torch.compile(reference, fullgraph=True)`. Paper shapes on CUDA
(S = 424 slices of 63x46, D = 192, P = 207, K = 72, Dd = 128), small shapes on CPU. On CPU the fused op runs
Triton's interpreter: a check that the harness and the kernels work, not a performance number. CUDA timings
synchronize. Each result carries the bytes an ideal single pass moves and the GB/s that makes, in
`benchmark.extra_info` (saved with --benchmark-json) and in a table at the end of the run.
"""
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from stvit.perf.report import environment, fmt, vs_baseline

# Triton chooses compiled or interpreted kernels when first imported: without a GPU, ask for the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

BENCH_DIR = Path(__file__).resolve().parent
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE.type == "cuda"
RESULTS: list[dict] = []  # op benchmarks
STEP_RESULTS: list[dict] = []  # train-step benchmarks
SUMMARY_PATH = [Path(".benchmarks/summary.json")]  # --bench-summary


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true", default=False,
                     help="run the benchmarks in bench/ (they are skipped without this flag)")
    parser.addoption("--bench-summary", default=".benchmarks/summary.json",
                     help="where the end-of-run summary (op and train-step tables) is written as JSON")


def pytest_configure(config):
    SUMMARY_PATH[0] = Path(config.getoption("--bench-summary"))


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
    write_summary(SUMMARY_PATH[0])


@pytest.fixture
def bench_op(benchmark):
    """bench_op(impl, phase, **case): time one implementation of one op in one phase (fields of `Case`)."""
    return lambda impl, phase, **case: run(benchmark, Case(**case), impl, phase)


def run_step(benchmark, runner, *, warmup: int, steps: int, rounds: int, shape: str) -> dict:
    """Time `runner.run(steps)` (a `stvit.perf.profiler.StepRunner`: optimizer steps through the training loop, which
    synchronizes at its end on CUDA) over `rounds` rounds, after `warmup` untimed steps that compile."""
    import time

    t0 = time.perf_counter()
    runner.run(warmup)
    warmup_s = time.perf_counter() - t0
    if ON_CUDA:
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(runner.run, args=(steps,), rounds=rounds, warmup_rounds=0)
    median = benchmark.stats.stats.median
    samples_per_s = steps * runner.batch_size / median
    info = dict(stage=runner.stage, variant=runner.variant_name, shape=shape, batch=runner.batch_size,
                steps_per_round=steps, step_ms=median / steps * 1e3, samples_per_s=samples_per_s,
                tokens_per_s=samples_per_s * runner.tokens_per_sample,
                tflops=samples_per_s * runner.flops_per_sample / 1e12, gflop_per_sample=runner.flops_per_sample / 1e9,
                peak_memory_gb=torch.cuda.max_memory_allocated() / 1e9 if ON_CUDA else None,
                compile_seconds=runner.compile_seconds, warmup_seconds=warmup_s, precision=runner.precision.name,
                device=torch.cuda.get_device_name() if ON_CUDA else "cpu")
    benchmark.extra_info.update(info)
    STEP_RESULTS.append(info)
    write_summary(SUMMARY_PATH[0])  # after every result: a run cut short keeps what it measured
    return info


@pytest.fixture
def bench_step(benchmark):
    """bench_step(runner, warmup=, steps=, rounds=, shape=): time one train-step variant (see `run_step`)."""
    return lambda runner, **kw: run_step(benchmark, runner, **kw)


def step_table(rows: list[dict]) -> list[str]:
    """The train-step table: one row per stage and variant, with samples/s as a ratio of the stage's baseline."""
    lines = [f"{'stage':<9}{'variant':<15}{'step ms':>10}{'samples/s':>11}{'x base':>8}{'tokens/s':>11}"
             f"{'TFLOP/s':>9}{'peak GB':>9}{'compile s':>11}"]
    for r in rows:
        lines.append(f"{r['stage']:<9}{r['variant']:<15}{r['step_ms']:>10.1f}{r['samples_per_s']:>11.2f}"
                     f"{fmt(vs_baseline(rows, r)):>8}{r['tokens_per_s']:>11.4g}{r['tflops']:>9.3f}"
                     f"{fmt(r['peak_memory_gb']):>9}{fmt(r['compile_seconds'], '.1f'):>11}")
    return lines


def write_summary(path: Path) -> None:
    env = environment(DEVICE, command="pytest " + " ".join(sys.argv[1:]))
    for r in STEP_RESULTS:
        r["vs_baseline"] = vs_baseline(STEP_RESULTS, r)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"env": env, "ops": RESULTS, "train_steps": STEP_RESULTS}, indent=2))


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own table: ours end the run
def pytest_terminal_summary(terminalreporter, config):
    tr = terminalreporter
    if RESULTS:
        tr.section(f"op benchmarks on {RESULTS[0]['device']} (median; GB/s of an ideal single pass)")
        tr.write_line(f"{'op':<14}{'phase':<6}{'impl':<11}{'median ms':>11}{'MB':>9}{'GB/s':>9}  shape")
        for r in RESULTS:
            note = "  (Triton interpreter)" if r["interpreted"] else ""
            tr.write_line(f"{r['op']:<14}{r['phase']:<6}{r['impl']:<11}{r['median_ms']:>11.3f}"
                          f"{r['bytes'] / 1e6:>9.2f}{r['gbps']:>9.2f}  {r['shape']}{note}")
    if STEP_RESULTS:
        r0 = STEP_RESULTS[0]
        tr.section(f"train steps on {r0['device']} ({r0['precision']}, {r0['shape']}; median of rounds; "
                   f"x base = samples/s over the seed-style baseline)")
        for line in step_table(STEP_RESULTS):
            tr.write_line(line)
    if RESULTS or STEP_RESULTS:
        write_summary(SUMMARY_PATH[0])
        tr.write_line(f"summary written to {SUMMARY_PATH[0]}")

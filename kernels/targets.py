"""Compile launch plans for GPU targets without a GPU, and read what each kernel costs an SM.

`compile_plan(plan, cc)` does what a launch does before it runs: Triton's own argument specialization (a scalar
equal to 1 becomes a constant, one divisible by 16 and every pointer get a divisibility hint), then
`triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))` down to a cubin with the ptxas bundled in the
triton wheel. `resources` reads registers, stack, local (spill) memory and static shared memory from the cubin
with the wheel's `cuobjdump -res-usage`; the dynamic shared memory is the compiled kernel's metadata.
`occupancy` is the theoretical occupancy (resident warps per SM / the SM's maximum) from registers, shared
memory, warps per block and the architecture's limits (`ARCHS`).

The specialization goes through Triton's own (private) JIT binder, `create_function_from_signature` and
`JITFunction._pack_args`, as in triton 3.6 to 3.9: a Triton that changes them shows up here as a compile error,
not as a silent drift. Compiling needs compiled `@triton.jit` functions: in a process where TRITON_INTERPRET=1 was set before triton
was imported (the CPU test suite), run it in a fresh process without it: `python -m kernels.targets --json F`
(what tests/e2e/test_kernel_targets.py and bench/kernel_report.py do).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from .plan import LaunchPlan

TARGETS = (75, 80, 89, 90)

# Per-architecture limits, from NVIDIA's CUDA C++ Programming Guide, "Technical Specifications per Compute
# Capability" (max resident warps, blocks and shared memory per SM, max shared memory per block with opt-in), and
# the CUDA occupancy calculator, cuda_occupancy.h (cudaOccRegAllocationGranularity: 256 registers, allocated
# per warp; cudaOccSubPartitionsPerMultiprocessor: 4, the register file split evenly between them;
# cudaOccSMemAllocationGranularity: 256 B on 7.x, 128 B on 8.x and 9.x; reservedSharedMemPerBlock: 1 KB from
# 8.0). 64K 32-bit registers per SM and at most 255 per thread on all four.
REGS_PER_SM = 65536
REG_ALLOC_UNIT = 256  # registers, per warp
SUB_PARTITIONS = 4
MAX_REGS_PER_THREAD = 255


@dataclass(frozen=True)
class Arch:
    cc: int
    gpu: str  # the card this report reads it for
    max_warps: int  # per SM
    max_blocks: int  # per SM
    smem_per_sm: int  # bytes, the largest carveout
    smem_per_block: int  # bytes, the opt-in maximum of one block
    smem_reserved: int  # bytes the system keeps per block
    smem_alloc_unit: int  # bytes


KB = 1024
ARCHS = {
    75: Arch(75, "T4", 32, 16, 64 * KB, 64 * KB, 0, 256),
    80: Arch(80, "A100", 64, 32, 164 * KB, 163 * KB, KB, 128),
    89: Arch(89, "L4 / RTX 4090", 48, 24, 100 * KB, 99 * KB, KB, 128),
    90: Arch(90, "H100 / H200", 64, 32, 228 * KB, 227 * KB, KB, 128),
}


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def occupancy(regs: int, shared: int, num_warps: int, cc: int) -> dict:
    """Theoretical occupancy of a kernel using `regs` registers per thread and `shared` bytes of shared memory
    per block of `num_warps` warps on architecture `cc`: resident blocks and warps per SM, the fraction of the
    SM's warps, and which limit binds (warps, blocks, registers or shared)."""
    a = ARCHS[cc]
    regs_per_warp = _round_up(max(regs, 1) * 32, REG_ALLOC_UNIT)
    warps_by_regs = (REGS_PER_SM // SUB_PARTITIONS // regs_per_warp) * SUB_PARTITIONS
    smem_block = _round_up(shared + a.smem_reserved, a.smem_alloc_unit)
    limits = {"warps": a.max_warps // num_warps, "blocks": a.max_blocks, "registers": warps_by_regs // num_warps,
              "shared": a.smem_per_sm // smem_block if smem_block else a.max_blocks}
    if shared > a.smem_per_block or regs_per_warp * _round_up(num_warps, SUB_PARTITIONS) > REGS_PER_SM:
        limits["launch"] = 0  # the block does not fit at all
    blocks = min(limits.values())
    bound = min(limits, key=limits.get)
    warps = blocks * num_warps
    return {"blocks_per_sm": blocks, "warps_per_sm": warps, "occupancy": warps / a.max_warps, "limited_by": bound}


def _tool(name: str) -> str:
    """A CUDA binary bundled in the triton wheel (ptxas, cuobjdump), else one on PATH."""
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.path.exists(path) else (shutil.which(name) or name)


def tool_versions() -> dict:
    import triton

    out = {"triton": triton.__version__}
    for name in ("ptxas", "cuobjdump"):
        try:
            text = subprocess.run([_tool(name), "--version"], capture_output=True, text=True, timeout=30).stdout
            out[name] = next((ln.strip() for ln in text.splitlines() if "release" in ln), text.strip()[-80:])
        except OSError as e:
            out[name] = f"unavailable: {e}"
    return out


def compile_plan(plan: LaunchPlan, cc: int):
    """The CompiledKernel (PTX and cubin) of `plan` for compute capability `cc`, specialized as a launch of the
    plan would be (Triton's JIT binder and argument packing, with 16-byte-aligned stand-ins for the tensors)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction, MockTensor, create_function_from_signature

    fn = plan.kernel
    if not isinstance(fn, JITFunction):
        raise RuntimeError(f"{plan.name} is not a compiled @triton.jit function (TRITON_INTERPRET was set when "
                           "triton was imported): compile in a process without it")
    target = GPUTarget("cuda", cc, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    args = [MockTensor(_DTYPES[spec]) if isinstance(spec, str) and spec.startswith("*") else spec
            for _, spec in plan.args]
    kwargs = {**dict(plan.constexprs), "num_warps": plan.num_warps, "num_stages": plan.num_stages}
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def _dtypes():
    import torch

    from .plan import POINTER

    return {v: k for k, v in POINTER.items()}


_DTYPES = _dtypes()

_RES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def resources(kernel) -> dict:
    """Registers per thread, stack and local bytes per thread, static shared bytes per block (cuobjdump
    -res-usage on the cubin), and the dynamic shared bytes per block a launch asks for (the metadata)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        text = subprocess.run([_tool("cuobjdump"), "-res-usage", path], capture_output=True, text=True,
                              timeout=60, check=True).stdout
    m = _RES.search(text)
    if m is None:
        raise RuntimeError(f"cannot read cuobjdump -res-usage output: {text.strip()[:200]}")
    regs, stack, static, local = map(int, m.groups())
    return {"registers": regs, "stack": stack, "local": local, "shared_static": static,
            "shared_dynamic": int(kernel.metadata.shared)}


def check(plan: LaunchPlan, cc: int) -> dict:
    """Compile `plan` for `cc` and read its resources and occupancy; on failure, {"error": ...}."""
    t = time.perf_counter()
    try:
        kernel = compile_plan(plan, cc)
        res = resources(kernel)
    except Exception as e:  # noqa: BLE001 - a target the kernel does not compile for is a result, not a crash
        return {"ok": False, "error": f"{type(e).__name__}: {str(e).strip()[:2000]}",
                "seconds": time.perf_counter() - t}
    shared = res["shared_static"] + res["shared_dynamic"]
    res.update(occupancy(res["registers"], shared, plan.num_warps, cc), ok=True, cubin_bytes=len(kernel.asm["cubin"]),
               seconds=time.perf_counter() - t, shared_limit=ARCHS[cc].smem_per_block)
    return res


def _key(plan: LaunchPlan, cc: int):
    return plan.name, plan.args, plan.constexprs, plan.num_warps, plan.num_stages, cc


_JOBS: list = []


def _run_job(i: int) -> dict:
    plan, cc = _JOBS[i]
    return check(plan, cc)


def check_all(launches, targets=TARGETS, jobs: int = 2) -> list[dict]:
    """One record per (launch, target): the launch's id and plan, the target, and `check`'s result. Identical
    compile jobs (the same kernel, arguments, constexprs and options for the same target) run once; `jobs`
    processes share them."""
    global _JOBS
    index, pairs = {}, []
    for la in launches:
        for cc in targets:
            pairs.append((la, cc, index.setdefault(_key(la.plan, cc), len(index))))
    _JOBS = [None] * len(index)
    for la, cc, i in pairs:
        _JOBS[i] = (la.plan, cc)
    if jobs > 1 and len(_JOBS) > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(jobs) as pool:  # forked after the imports: workers start at once
            results = pool.map(_run_job, range(len(_JOBS)), chunksize=1)
    else:
        results = [_run_job(i) for i in range(len(_JOBS))]
    return [{"id": la.id, "preset": la.preset, "precision": la.precision, "op": la.op, "variant": la.variant,
             "cc": cc, "plan": la.plan.describe(), **results[i]} for la, cc, i in pairs]


def main(argv=None) -> int:
    from .problems import PROBLEMS, all_launches

    ap = argparse.ArgumentParser(prog="python -m kernels.targets",
                                 description="compile every preset launch plan for GPU targets; JSON records")
    ap.add_argument("--json", required=True, help="output file")
    ap.add_argument("--presets", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    ap.add_argument("--cc", nargs="+", type=int, default=list(TARGETS), choices=list(ARCHS))
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args(argv)
    t = time.perf_counter()
    records = check_all(all_launches(a.presets), a.cc, a.jobs)
    out = {"versions": tool_versions(), "seconds": time.perf_counter() - t, "records": records}
    with open(a.json, "w") as f:
        json.dump(out, f, indent=1)
    bad = sum(not r["ok"] for r in records)
    print(f"{len(records)} launch x target records, {bad} failed to compile, {out['seconds']:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

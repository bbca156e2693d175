"""Every Triton kernel at every launch plan the presets make compiles for sm75, sm80, sm89 and sm90, with no
spills and with shared memory within the architecture's per-block limit. No GPU needed: `kernels.targets`
compiles each plan with `triton.compile(..., target=GPUTarget("cuda", cc, 32))` and the ptxas bundled in the
triton wheel, in one child process without TRITON_INTERPRET (this process has interpreted kernels), which
compiles each distinct job once on 2 processes (about 1-2 minutes on 2 cores, less with Triton's cache warm).
"""
import json
import os
import subprocess
import sys

import pytest

from kernels.targets import ARCHS, TARGETS

from helpers import ROOT
from unit.test_kernel_targets import LAUNCHES


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """{(launch id, cc): record} from `python -m kernels.targets` (see its `check`)."""
    out = tmp_path_factory.mktemp("targets") / "records.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "kernels.targets", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"python -m kernels.targets failed:\n{proc.stderr[-4000:]}"
    return {(r["id"], r["cc"]): r for r in json.loads(out.read_text())["records"]}


@pytest.mark.parametrize("cc", TARGETS, ids=lambda cc: f"sm{cc}")
@pytest.mark.parametrize("la", LAUNCHES, ids=lambda la: la.id)
def test_kernel_compiles_without_spills_within_shared_limit(compiled, la, cc):
    r = compiled[(la.id, cc)]
    where = f"{la.plan.name} for sm{cc} at launch {la.id}, plan {la.plan.describe()}"
    assert r["ok"], f"{where}: does not compile: {r['error']}"
    assert r["cubin_bytes"] > 0, f"{where}: no cubin"
    assert r["stack"] == 0 and r["local"] == 0, \
        f"{where}: spills ({r['registers']} registers, stack {r['stack']} B, local {r['local']} B per thread)"
    shared = r["shared_static"] + r["shared_dynamic"]
    assert shared <= ARCHS[cc].smem_per_block, \
        f"{where}: {shared} B of shared memory, over the {ARCHS[cc].smem_per_block} B a block may have"
    assert r["blocks_per_sm"] >= 1, f"{where}: a block does not fit on an SM ({r['limited_by']})"

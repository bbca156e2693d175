"""The launch plans the GPU-target checks compile (tests/e2e/test_kernel_targets.py): every kernel, precision and
variant covered, the presets' shapes written out right, the very plans the ops launch, a launch refusing a tensor of
another dtype, and the occupancy arithmetic against the documented limits.
"""
import sys

import pytest
import torch

import kernels
from kernels import problems
from kernels.plan import LaunchPlan, launch
from kernels.problems import PROBLEMS, Problem, all_launches
from kernels.targets import occupancy

LAUNCHES = all_launches()
OP_MODULES = [sys.modules[f"kernels.{op}"] for op in ("patch_embed", "mae_gather", "mae_scatter", "norm_pix_mse")]


def _kernels_defined() -> set[str]:
    """Every @triton.jit kernel the op modules launch (named _<op>_...; helpers like _normalized_target are
    called from kernels, not launched)."""
    names = set()
    for mod in OP_MODULES:
        op = mod.__name__.rsplit(".", 1)[1]
        names |= {n for n, v in vars(mod).items() if n.startswith(f"_{op}_") and hasattr(v, "arg_names")}
    return names


def test_launches_cover_every_kernel_precision_and_variant():
    assert {la.plan.name for la in LAUNCHES} == _kernels_defined()
    for preset in PROBLEMS:
        got = {(la.op, la.variant) for la in LAUNCHES if la.preset == preset and la.precision == "bf16"}
        assert {("patch_embed", "fwd+pos"), ("patch_embed", "fwd-pos"), ("patch_embed", "bwd"),
                ("patch_embed", "bwd.dx"), ("mae_scatter", "fwd+pos"), ("mae_scatter", "fwd-pos")} <= got
        assert {la.precision for la in LAUNCHES if la.preset == preset} == {"fp32", "bf16", "fp16"}


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_problem_shapes_are_the_presets(name):
    """kernels/problems.py writes the presets' shapes out (kernels never imports stvit): they must agree."""
    from stvit.config import PRESETS, preset

    assert set(PROBLEMS) == set(PRESETS)
    cfg = preset(name)
    m = cfg.model
    assert PROBLEMS[name] == Problem(cfg.train.batch_size * m.volume[0], m.volume[1], m.volume[2], tuple(m.patch),
                                     m.dim, m.decoder_dim, m.len_keep)


def test_plans_are_what_the_ops_launch(monkeypatch):
    """The launcher launches the plan its plan function gives for its tensors (patch_embed, under the
    interpreter: forward, then the backward's parameter-gradient kernel)."""
    from kernels import _dispatch

    if not (_dispatch.INTERPRETED and _dispatch.interpreting()):
        pytest.skip("needs the Triton interpreter (TRITON_INTERPRET=1 before triton is imported)")
    seen = []

    def spy(plan, *tensors):
        seen.append((plan, [(t.dtype, t.shape) for t in tensors]))
        return launch(plan, *tensors)

    for mod in OP_MODULES:
        monkeypatch.setattr(mod, "launch", spy)
    x = torch.randn(2, 14, 6)
    w, b, pos = torch.randn(8, 14, requires_grad=True), torch.randn(8, requires_grad=True), torch.randn(6, 8)
    kernels.patch_embed(x, w, b, pos).sum().backward()
    expect = problems.embed_fwd(x, w, b, pos, 7, 2)
    assert seen[0][0] == expect and seen[1][0].name == "_patch_embed_bwd"


def test_launch_refuses_a_tensor_of_another_dtype():
    plan = problems.gather_fwd(torch.empty(2, 6, 8, device="meta"), torch.empty(2, 3, dtype=torch.int64,
                                                                                 device="meta"))
    assert isinstance(plan, LaunchPlan) and dict(plan.args)["t_ptr"] == "*fp32"
    with pytest.raises(TypeError, match="t_ptr is torch.bfloat16, the launch plan says \\*fp32"):
        launch(plan, torch.zeros(2, 6, 8, dtype=torch.bfloat16), torch.zeros(2, 3, dtype=torch.int64),
               torch.zeros(2, 3, 8))


def test_occupancy_follows_the_documented_limits():
    # registers: 64 per thread, 4 warps -> 64 * 32 = 2048 per warp, 16384 per sub-partition -> 8 warps each
    assert occupancy(64, 0, 4, 80) == {"blocks_per_sm": 8, "warps_per_sm": 32, "occupancy": 0.5,
                                       "limited_by": "registers"}
    assert occupancy(65, 0, 4, 90)["warps_per_sm"] == 28  # 65 -> 2304 per warp -> 7 warps per sub-partition
    assert occupancy(32, 0, 4, 80)["occupancy"] == 1.0  # 64 warps: the SM's maximum
    assert occupancy(32, 0, 4, 75) == {"blocks_per_sm": 8, "warps_per_sm": 32, "occupancy": 1.0,
                                       "limited_by": "warps"}  # T4: 32 warps per SM
    assert occupancy(32, 0, 4, 89)["warps_per_sm"] == 48
    assert occupancy(16, 0, 1, 80)["limited_by"] == "blocks"  # 32 blocks of one warp
    # shared: 50 KB + 1 KB reserved per block on an A100's 164 KB -> 3 blocks
    assert occupancy(32, 50 * 1024, 8, 80)["blocks_per_sm"] == 3
    assert occupancy(32, 70 * 1024, 4, 75)["blocks_per_sm"] == 0  # over the T4's 64 KB per block
    assert occupancy(255, 0, 8, 80)["blocks_per_sm"] == 1  # 255 -> 8192 per warp: 2 per sub-partition

"""What both tiers share: Triton's interpreter on a CPU, the `e2e` marker by location, the seed, the tiny data set
and run config, and the checks of the fused ops. What only tests/e2e uses is in tests/e2e/conftest.py."""
import os
from pathlib import Path

import pytest
import torch

# Triton chooses compiled or interpreted kernels once, when it is first imported. Without a GPU, ask for the
# interpreter before anything imports it, so that the op tests run the Triton kernels on CPU (DESIGN.md 4).
# The model and training tests keep calling the plain-torch reference (kernels="eager"), at full speed.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


E2E = Path(__file__).parent / "e2e"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items):
    """Every test under tests/e2e is marked `e2e` by where it lives, so that a new one cannot forget the marker:
    `pytest -m "not e2e"` runs the unit tier, `pytest -m e2e` the end-to-end runs and slow compiles."""
    for item in items:
        if item.path.is_relative_to(E2E):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def _seed():
    """Each test draws fresh but reproducible inputs."""
    torch.manual_seed(0)


# --- a tiny training run: its files here, the finished run in tests/e2e/conftest.py --------------------------------

@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The tiny data set and run config of tests/helpers.py as files: (data .npz, config .json)."""
    import json

    from helpers import TINY_RUN, write_tiny_data

    d = tmp_path_factory.mktemp("tiny")
    cfg = d / "tiny.json"
    cfg.write_text(json.dumps(TINY_RUN))
    return write_tiny_data(d / "tiny.npz"), cfg


# --- fused-op tests ------------------------------------------------------------------------------------------

from helpers import assert_three_way  # noqa: E402 - one rule for every test


@pytest.fixture(params=["cpu", "cuda"])
def kernel_device(request):
    """Where the fused op runs its Triton kernels: 'cpu' through Triton's interpreter, 'cuda' natively."""
    from kernels import _dispatch

    if request.param == "cuda":
        if not (torch.cuda.is_available() and _dispatch.HAS_TRITON):
            pytest.skip("needs a CUDA GPU and triton")
        if _dispatch.INTERPRETED:
            pytest.skip("TRITON_INTERPRET is on: the CUDA run would be interpreted")
    elif not (_dispatch.INTERPRETED and _dispatch.interpreting()):
        pytest.skip("Triton interpreter off (TRITON_INTERPRET=1 must be set before triton is imported)")
    return torch.device(request.param)


def _prepare(args, dtype, device, grad_idx, float_idx):
    out = []
    for i, a in enumerate(args):
        if torch.is_tensor(a):
            a = a.to(device)
            if i in float_idx:
                a = a.to(dtype)
            a = a.detach().requires_grad_(i in grad_idx)
        out.append(a)
    return out


def check_fused(fused, reference, args, grad_idx=(), dtype=torch.float32, device="cpu", upstream="randn",
                float_idx=None):
    """Run `fused` on `device` and `reference` on CPU at `dtype`, and `reference` in fp32 from the same rounded
    inputs; compare the output and the gradient of every input in `grad_idx` by `assert_three_way`.

    args: fp32 tensors (cast to dtype where their index is in float_idx: default, every floating tensor), ints,
    tuples. upstream: 'randn' (a random gradient) or 'expanded' (a stride-0 gradient, as `out.sum()` gives).
    """
    from kernels import _dispatch

    if float_idx is None:
        float_idx = {i for i, a in enumerate(args) if torch.is_tensor(a) and a.is_floating_point()}
    rounded = [a.to(dtype).float() if i in float_idx else a for i, a in enumerate(args)]
    runs = {}
    for key, fn, dt, dev in (("fused", fused, dtype, device), ("pt", reference, dtype, "cpu"),
                             ("ref", reference, torch.float32, "cpu")):
        ins = _prepare(rounded, dt, dev, grad_idx, float_idx)
        if key == "fused":
            main = next(a for a in ins if torch.is_tensor(a))
            assert _dispatch.use_triton(main), "the fused op did not dispatch to Triton"
        out = fn(*ins)
        if key == "fused":
            g = torch.randn(out.shape).to(dtype).float()
        if upstream == "expanded":
            gu = torch.full((), 0.75, dtype=out.dtype, device=out.device).expand(out.shape)
            assert gu.stride() == (0,) * gu.dim()
        else:
            gu = g.to(out.dtype).to(out.device)
        grads = torch.autograd.grad(out, [ins[i] for i in grad_idx], gu, allow_unused=True) if grad_idx else ()
        runs[key] = (out, grads)
    (out, grads), (out_pt, grads_pt), (ref, grads_ref) = runs["fused"], runs["pt"], runs["ref"]
    assert_three_way(out, out_pt, ref, "output")
    for i, a, b, c in zip(grad_idx, grads, grads_pt, grads_ref):
        assert a is not None, f"no gradient for input {i}"
        assert_three_way(a, b, c, f"gradient of input {i}")
    return out


@pytest.fixture
def fused_check():
    """`check_fused` (see above) for the op tests."""
    return check_fused


@pytest.fixture
def three_way():
    return assert_three_way


@pytest.fixture
def opcheck(kernel_device):
    """torch.library.opcheck of a stvit op: schema (no hidden mutation or aliasing), autograd registration,
    fake-tensor propagation; on CUDA also the AOTAutograd trace that torch.compile uses."""
    utils = ["test_schema", "test_autograd_registration", "test_faketensor"]
    if kernel_device.type == "cuda":
        utils.append("test_aot_dispatch_static")

    def check(op, args, differentiable=True):
        args = tuple(a.to(kernel_device) if torch.is_tensor(a) else a for a in args)
        tests = [u for u in utils if differentiable or u != "test_autograd_registration"]
        result = torch.library.opcheck(op, args, test_utils=tests)
        assert all(v == "SUCCESS" for v in result.values()), result

    return check


@pytest.fixture
def inductor_code():
    """inductor_code(fn) -> (fn's result, the code Inductor generated while fn ran), with the FX-graph and
    AOTAutograd caches off so that the code is generated, not loaded."""
    from torch._functorch import config as functorch_config
    from torch._inductor import config as inductor_config
    from torch._inductor.utils import run_and_get_code

    def run(fn):
        torch._dynamo.reset()
        with inductor_config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
            result, code = run_and_get_code(fn)
        return result, "\n".join(code)

    return run

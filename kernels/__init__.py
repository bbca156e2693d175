"""Fused ops for stvit: one name per op, the same in `kernels/<op>.py`, `kernels/reference.py`,
`tests/unit/test_<op>.py` and `bench/test_<op>.py`.

This package is a leaf: it knows nothing about the model. Each public op decides per call (`_dispatch.py`):
CUDA tensors run the Triton kernels, registered as `torch.ops.stvit.<op>` (and `<op>_backward`) with
`torch.library.triton_op` and autograd, so `torch.compile(fullgraph=True)` sees into them; CPU tensors run the
plain-torch reference; with `TRITON_INTERPRET=1` (set before triton is imported) the Triton kernels run on CPU
through Triton's interpreter, except while `torch.compile` traces, which takes the reference. Without Triton,
every op is the reference.

Around the ops: `plan.py` (each kernel launch as data, from one plan function per kernel), `problems.py` (the
launches the engine's presets make), `targets.py` (compiling plans for sm75/80/89/90 without a GPU, registers,
spills, shared memory, occupancy) and `select.py` (which ops a run uses: eager, fused, or auto with a per-op
self-check on CUDA).

Dtypes: statistics and accumulation in fp32. Under autocast, `patch_embed` follows `F.linear` (weight and bias
cast to the autocast dtype, output in it); `mae_gather`, `mae_scatter` and `norm_pix_mse` keep their input
dtype (tokens / visible / pred), as the reference does. Gradients: every float input, except `norm_pix_mse`'s
x (the data) and mask (a selection), which get none; index tensors get none.
"""
from ._dispatch import HAS_TRITON
from .reference import patchify, random_masking, unpatchify

if HAS_TRITON:
    from .mae_gather import mae_gather
    from .mae_scatter import mae_scatter
    from .norm_pix_mse import norm_pix_mse
    from .patch_embed import patch_embed
else:  # pragma: no cover
    from .reference import mae_gather, mae_scatter, norm_pix_mse, patch_embed

__all__ = ["patch_embed", "mae_gather", "mae_scatter", "norm_pix_mse", "patchify", "unpatchify", "random_masking"]

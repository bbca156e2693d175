"""Fused ops for stvit: one name per op, the same in `kernels/<op>.py`, `kernels/reference.py`,
`tests/test_<op>.py` and `bench/test_<op>.py`.

This package is a leaf: it knows nothing about the model. Dispatch: CUDA tensors run the Triton kernels;
CPU tensors run the plain-torch reference; with `TRITON_INTERPRET=1` the Triton kernels run on CPU.
"""
from .reference import mae_gather, mae_scatter, norm_pix_mse, patch_embed, patchify, random_masking, unpatchify

__all__ = ["patch_embed", "mae_gather", "mae_scatter", "norm_pix_mse", "patchify", "unpatchify", "random_masking"]

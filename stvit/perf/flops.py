"""Analytic FLOP count of one training sample (one volume), from a `ModelConfig`.

Only matrix products are counted, at 2*m*n*k FLOPs each: the patch embedding, every linear layer of every block
(qkv, proj, the two MLP layers), attention's two products (Q K^T and A V), the decoder's embedding and
prediction, and the classifier head. Softmax, norms, GELU, dropout, the loss and the optimizer are left out
(they are memory-bound and small in FLOPs). A training step is counted as 3x its forward (the backward computes
two products per forward product: gradient of the input and of the weight), as is usual for MFU estimates.

Per volume of T slices (paper preset: T = 53, P = 207 patches, K = 72 visible, D = 192, Dd = 128):
- pretrain (the MAE): the patch embedding of all P patches (the fused op embeds every patch, then gathers K), the spatial
  encoder on 1 + K tokens, the decoder on 1 + P tokens (CLS kept, as in MAE): 25.9 GFLOP forward, 77.6 training.
- fine-tune: the spatial encoder on 1 + P tokens per slice, the temporal encoder on T tokens, the head:
  46.2 GFLOP forward, 138.6 training.
"""
from __future__ import annotations

from dataclasses import dataclass

from stvit.config import ModelConfig

TRAIN_FACTOR = 3  # forward + backward (input and weight gradients)


def linear(tokens: int, fan_in: int, fan_out: int) -> int:
    return 2 * tokens * fan_in * fan_out


def block(tokens: int, dim: int, mlp_ratio: float) -> int:
    """One pre-norm transformer block on one sequence of `tokens`: qkv, Q K^T, A V, proj, MLP."""
    hidden = int(dim * mlp_ratio)
    return (linear(tokens, dim, 3 * dim) + 2 * (2 * tokens * tokens * dim) + linear(tokens, dim, dim)
            + linear(tokens, dim, hidden) + linear(tokens, hidden, dim))


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one volume: `parts` name -> forward FLOPs; `forward` their sum; `train` = 3x forward."""

    parts: dict

    @property
    def forward(self) -> int:
        return sum(self.parts.values())

    @property
    def train(self) -> int:
        return TRAIN_FACTOR * self.forward


def pretrain_flops(cfg: ModelConfig) -> FlopCount:
    """One volume through the MAE (all of its slices, masked as configured)."""
    T, P, K, D, Dd = cfg.volume[0], cfg.num_patches, cfg.len_keep, cfg.dim, cfg.decoder_dim
    return FlopCount({
        "patch_embed": T * linear(P, cfg.patch_dim, D),
        "encoder": T * cfg.depth * block(1 + K, D, cfg.mlp_ratio),
        "decoder_embed": T * linear(1 + K, D, Dd),
        "decoder": T * cfg.decoder_depth * block(1 + P, Dd, cfg.decoder_mlp_ratio),
        "decoder_pred": T * linear(1 + P, Dd, cfg.patch_dim),
    })


def finetune_flops(cfg: ModelConfig) -> FlopCount:
    """One volume through the classifier (spatial encoder on every slice, temporal encoder, head)."""
    T, P, D = cfg.volume[0], cfg.num_patches, cfg.dim
    return FlopCount({
        "patch_embed": T * linear(P, cfg.patch_dim, D),
        "spatial": T * cfg.depth * block(1 + P, D, cfg.mlp_ratio),
        "temporal": cfg.temporal_depth * block(T, D, cfg.temporal_mlp_ratio),
        "head": linear(1, D, cfg.head_hidden) + linear(1, cfg.head_hidden, cfg.num_classes),
    })


def train_flops_per_sample(cfg: ModelConfig, stage: str) -> int:
    """Training FLOPs of one volume for `stage` ('pretrain' or 'finetune')."""
    if stage == "pretrain":
        return pretrain_flops(cfg).train
    if stage == "finetune":
        return finetune_flops(cfg).train
    raise ValueError(f"unknown stage '{stage}' (choose from pretrain, finetune)")

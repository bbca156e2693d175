"""The MAE masking noise of each pre-training step: random (MAE's), or guided by the encoder's own attention.

MAE masks a slice by sorting per-patch noise: the K patches with the smallest noise stay visible, the others are
removed (`kernels.reference.random_masking`). Each strategy is a way to draw that noise, so `ids_keep`,
`ids_restore` and the mask keep their meaning and shapes, the fused gather, scatter and loss run as they are, and
the compiled step sees the same graph (the noise is computed outside it, as an input).

- "random" (`MaskNoise`): uniform noise u, drawn for the whole global batch from the stage's MASK stream (seed,
  epoch) and sliced to this rank's slices.
- "attention" (`AttentionMaskNoise`, after TARDRL, MICCAI 2024): of the R patches a slice loses,
  G = round(mask_guide_ratio * R) are drawn without replacement with probabilities proportional to
  score ** (1 / mask_temperature), the score being the attention the patch receives in the current encoder
  (`SpatialEncoder.attention_received`, a no-grad pass in eval mode over every patch); the other R - G are
  removed uniformly at random among the rest (`guided_noise`).

Both strategies draw the same uniform u per patch, and nothing else: the guided noise is a function of the seed,
the epoch, the step and the weights (exact resume), a rank sees what one process sees for its slices, and with
equal scores the guided noise sorts exactly as u does, i.e. it IS random masking, draw for draw.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from stvit.config import Config
from stvit.data.batches import shard_bounds
from stvit.model.precision import Precision
from stvit.rng import Stream, device_generator

TINY_SCORE = 1e-30  # scores are sums of softmax weights (>= 0); the floor keeps log() finite


class MaskNoise:
    """The MAE masking noise of each step, drawn outside the compiled graph.

    Each step draws the noise of the whole global batch (B * T slices, P patches) from a device generator seeded
    by (stage seed, epoch) and keeps this rank's rows: one process and N processes mask every slice alike, and a
    resumed epoch draws the same masks as an uninterrupted one."""

    def __init__(self, cfg: Config, seed: int, device: torch.device, rank: int = 0, world: int = 1):
        m, self.batch = cfg.model, cfg.train.batch_size
        self.T, self.P = m.volume[0], m.num_patches
        self.seed, self.device = seed, device
        self.rows = tuple(v * self.T for v in shard_bounds(self.batch, rank, world))  # this rank's slices
        self.generator: torch.Generator | None = None

    def begin_epoch(self, epoch: int) -> None:
        self.generator = device_generator(self.seed, epoch, Stream.MASK, self.device)

    def __call__(self, x: Tensor | None = None) -> Tensor:
        """(S, P) uniform noise for this rank's S slices (`x`, this rank's volumes, is not needed)."""
        noise = torch.rand(self.batch * self.T, self.P, generator=self.generator, device=self.device)
        return noise[self.rows[0]:self.rows[1]]


class AttentionMaskNoise(MaskNoise):
    """Noise that removes the patches the encoder attends to, in part (`guided_noise`), from the same uniform
    draws as `MaskNoise`. Each rank scores its own volumes with its replica of the model (the weights are the
    same on every rank)."""

    def __init__(self, cfg: Config, seed: int, device: torch.device, model: nn.Module, precision: Precision,
                 rank: int = 0, world: int = 1):
        super().__init__(cfg, seed, device, rank, world)
        p = cfg.pretrain
        self.guided = guided_count(p.mask_guide_ratio, self.P - cfg.model.len_keep)
        self.temperature = p.mask_temperature
        self.model, self.precision = model, precision

    def __call__(self, x: Tensor | None = None) -> Tensor:
        """(S, P) noise for this rank's volumes `x` (B, T, H, W)."""
        u = super().__call__()
        if self.guided == 0:
            return u
        scores = patch_scores(self.model.encoder, x.reshape(-1, *x.shape[-2:]), self.precision)
        return guided_noise(u, scores, self.guided, self.temperature)


def mask_noise(cfg: Config, seed: int, device: torch.device, model: nn.Module, precision: Precision,
               rank: int = 0, world: int = 1) -> MaskNoise:
    """The masking noise of `cfg.pretrain.mask_strategy`."""
    if cfg.pretrain.mask_strategy == "attention":
        return AttentionMaskNoise(cfg, seed, device, model, precision, rank, world)
    return MaskNoise(cfg, seed, device, rank, world)


def guided_count(ratio: float, removed: int) -> int:
    """How many of the `removed` patches of a slice attention chooses: `ratio * removed`, rounded half up."""
    return min(removed, math.floor(ratio * removed + 0.5))


@torch.no_grad()
def patch_scores(encoder: nn.Module, slices: Tensor, precision: Precision) -> Tensor:
    """(S, H, W) -> (S, P) fp32 attention received per patch, from the current weights in eval mode.

    Eval mode (no dropout) makes the score a function of the weights and the slice alone, and the pass draws
    nothing from the global generators the training step's dropout draws from. Autocast as in training."""
    was_training = encoder.training
    encoder.eval()
    try:
        with precision.autocast():
            return encoder.attention_received(slices).float()
    finally:
        encoder.train(was_training)


def guided_noise(u: Tensor, scores: Tensor, guided: int, temperature: float) -> Tensor:
    """Masking noise (S, P) under which the `guided` patches of largest noise are drawn without replacement with
    probabilities proportional to scores ** (1 / temperature), and any further removed patches uniformly among
    the others. u: (S, P) uniform in [0, 1), the draw random masking would sort; scores: (S, P) >= 0.

    Gumbel top-k: with keys a + Gumbel(u), a = log(score) / temperature, the `guided` largest keys are such a draw.
    The other patches then rank by r = u / F(tau - a), F the Gumbel CDF and tau the smallest chosen key: given the
    draw, each of their keys is a Gumbel truncated below tau, so r is again uniform and independent, and the
    removal among them is uniform, from the same u (no second stream). With equal scores every step is monotone
    in u: the result sorts exactly as u. Computed in float64 (strictly monotone over float32 uniforms), returned
    as ranks / P in u's dtype: the order is all the mask takes from it, and ranks have no ties to round."""
    S, P = u.shape
    u64 = u.double()
    a = scores.double().clamp_min(TINY_SCORE).log() / temperature  # (S, P)
    key = a - torch.log(-torch.log(u64))  # + Gumbel; u = 0 -> -inf
    top = key.topk(guided, dim=1)
    tau = top.values[:, -1:]  # (S, 1)
    chosen = torch.zeros_like(u, dtype=torch.bool).scatter_(1, top.indices, True)
    # log r = log u - log F(tau - a) = log u + exp(a - tau); past exp(700) only u = 0 is below F, and log 0 = -inf
    log_r = torch.where(u64 > 0, u64.log() + (a - tau).clamp(max=700.0).exp(), -math.inf)  # < 0
    z = torch.where(chosen, 1.0 + (key - tau), log_r)  # chosen: >= 1, above every other patch
    ranks = z.argsort(dim=1, stable=True).argsort(dim=1)  # (S, P) 0..P-1
    return ranks.to(u.dtype) / P

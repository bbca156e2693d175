"""The model, one tree: a 2D ViT over each slice, a transformer over the slice sequence, a head; and the MAE.

A volume (53, 63, 46) is read as 53 slices of 63 x 46 along axis 0 (left-right: space, not time).
Shapes in comments: B volumes, T slices per volume, S = B*T slices, P patches per slice (207), K visible
patches (72), N tokens, D channels.

The four patch/mask ops (`patch_embed`, `mae_gather`, `mae_scatter`, `norm_pix_mse`) are called through one
seam, `self.ops`: the same tree and the same parameters whatever runs them. `kernels="eager"` gives the
plain-torch reference, `"fused"` the Triton kernels (`kernels`, which dispatch per call), `"auto"` the reference
until the stage setup installs what `kernels.select` chose for the run's device and dtype (`use_ops`: the fused
ops that pass their startup self-check on a GPU).
"""
from __future__ import annotations

import logging
import math
from types import ModuleType

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import kernels
import kernels.reference as reference

from stvit.config import ModelConfig

log = logging.getLogger(__name__)

OPS: dict[str, ModuleType] = {"eager": reference, "fused": kernels, "auto": reference}


def select_ops(name: str) -> ModuleType:
    if name not in OPS:
        raise ValueError(f"unknown kernels '{name}' (choose from {', '.join(OPS)})")
    return OPS[name]


class Attention(nn.Module):
    """Multi-head self-attention through `F.scaled_dot_product_attention` (flash / memory-efficient backends)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        assert dim % heads == 0, f"dim {dim} is not divisible by heads {heads}"
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = dropout
        self.proj_drop = nn.Dropout(dropout)

    def split_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, C) -> q, k, v, each (B, heads, N, C/heads)."""
        B, N, C = x.shape
        return self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.split_heads(x)  # (B, heads, N, C/heads)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))

    def weights(self, x: Tensor) -> Tensor:
        """(B, N, C) -> (B, heads, N, N) fp32: softmax(q k^T / sqrt(C/heads)) (SDPA's default scale), row = query.
        SDPA does not return its weights: this recomputes them from the same projection, apart from the training
        graph (no dropout), for attention rollout (`stvit.explain`) and guided masking (`stvit.masking`)."""
        q, k, _ = self.split_heads(x)
        return torch.softmax(q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1,
                             dtype=torch.float32)


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                         nn.Dropout(dropout))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _blocks(n: int, dim: int, heads: int, mlp_ratio: float, dropout: float, eps: float) -> nn.ModuleList:
    return nn.ModuleList(Block(dim, heads, mlp_ratio, dropout, eps) for _ in range(n))


def init_weights(module: nn.Module, std: float) -> None:
    """MAE's initialization: xavier-uniform linears (patch embedding viewed as a linear), zero biases,
    unit LayerNorms; tokens and position embeddings ~ N(0, std) (set by their owners)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """(n,) positions -> (n, dim): half sines, half cosines over geometric frequencies (MAE's embedding)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = positions.double()[:, None] * omega[None]  # (n, dim/2)
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def sincos_2d(dim: int, grid: tuple[int, int], cls: bool) -> Tensor:
    """(gh*gw [+1], dim) 2D sin-cos position embedding, half the channels per axis; a zero row for CLS first."""
    gh, gw = grid
    rows = torch.arange(gh).repeat_interleave(gw)  # row-major patch order
    cols = torch.arange(gw).repeat(gh)
    emb = torch.cat([sincos_1d(dim // 2, rows), sincos_1d(dim - dim // 2, cols)], dim=1)
    return torch.cat([torch.zeros(1, dim), emb]) if cls else emb


def init_pos_embed(param: nn.Parameter, cfg: ModelConfig, grid: tuple[int, int] | None) -> None:
    """Learnable position embedding, initialized as `cfg.pos_init` says: "sincos" (MAE's fixed 2D / 1D table,
    amplitude 1, so attention can tell positions apart from the first step) or "normal" (N(0, init_std))."""
    with torch.no_grad():
        if cfg.pos_init == "normal":
            nn.init.normal_(param, std=cfg.init_std)
        elif grid is not None:
            param.copy_(sincos_2d(param.shape[-1], grid, cls=True)[None])
        else:
            param.copy_(sincos_1d(param.shape[-1], torch.arange(param.shape[1]))[None])


class SpatialEncoder(nn.Module):
    """2D ViT over one slice: 7x2 patches -> D, CLS token, learnable position embedding, pre-norm blocks.

    The state of this module is what MAE pre-training hands to the classifier (`transfer_encoder`).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.ops = select_ops(cfg.kernels)
        D = cfg.dim
        # A Conv2d holds the patch weight so checkpoints match the usual ViT layout; the op reads it as (D, ph*pw).
        self.patch_embed = nn.Conv2d(1, D, cfg.patch, stride=cfg.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, D))  # [CLS, patches...]
        self.blocks = _blocks(cfg.depth, D, cfg.heads, cfg.mlp_ratio, cfg.dropout, cfg.norm_eps)
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        init_weights(self, cfg.init_std)
        nn.init.normal_(self.cls_token, std=cfg.init_std)
        init_pos_embed(self.pos_embed, cfg, cfg.grid)

    def embed(self, x: Tensor) -> Tensor:
        """(S, H, W) slices -> (S, P, D) patch tokens with their position embedding."""
        w = self.patch_embed.weight.flatten(1)  # (D, ph*pw)
        return self.ops.patch_embed(x, w, self.patch_embed.bias, self.pos_embed[0, 1:], self.cfg.patch)

    def with_cls(self, tokens: Tensor) -> Tensor:
        """(S, N, D) patch tokens -> (S, 1+N, D): the CLS token (with its position) prepended."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        return torch.cat([cls, tokens], dim=1)

    def forward_tokens(self, tokens: Tensor) -> Tensor:
        """(S, N, D) patch tokens (position already added) -> (S, 1+N, D): CLS prepended, blocks, final norm."""
        h = self.with_cls(tokens)
        for blk in self.blocks:
            h = blk(h)
        return self.norm(h)

    def attention_received(self, x: Tensor) -> Tensor:
        """(S, H, W) slices -> (S, P) fp32: the attention each patch receives from the other tokens of its slice
        (TARDRL's score: a column of the attention map summed over its queries, CLS and patches, minus the
        diagonal), averaged over heads and summed over the blocks. Every patch visible, as the classifier sees a
        slice. A side path for guided masking (`stvit.masking`); the forward above is untouched."""
        h = self.with_cls(self.embed(x))  # (S, 1+P, D)
        received = torch.zeros(h.shape[:2], device=h.device)  # (S, 1+P)
        for blk in self.blocks:
            a = blk.attn.weights(blk.norm1(h)).mean(1)  # (S, 1+P, 1+P), row = query
            received += a.sum(1) - a.diagonal(dim1=1, dim2=2)
            h = blk(h)
        return received[:, 1:]

    def forward(self, x: Tensor) -> Tensor:
        """(S, H, W) slices -> (S, D): the CLS output represents each slice."""
        return self.forward_tokens(self.embed(x))[:, 0]


class TemporalEncoder(nn.Module):
    """Transformer over the sequence of T slice vectors (the left-right axis), with a position embedding."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D = cfg.dim
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.volume[0], D))
        self.blocks = _blocks(cfg.temporal_depth, D, cfg.temporal_heads, cfg.temporal_mlp_ratio, cfg.dropout,
                              cfg.norm_eps)
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        init_weights(self, cfg.init_std)
        init_pos_embed(self.pos_embed, cfg, None)

    def forward(self, z: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D)."""
        h = z + self.pos_embed.to(z.dtype)
        for blk in self.blocks:
            h = blk(h)
        return self.norm(h)


class Head(nn.Sequential):
    """Mean-pooled sequence -> LayerNorm -> Linear -> GELU -> Dropout -> Linear -> class logits."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(nn.LayerNorm(cfg.dim, eps=cfg.norm_eps), nn.Linear(cfg.dim, cfg.head_hidden), nn.GELU(),
                         nn.Dropout(cfg.dropout), nn.Linear(cfg.head_hidden, cfg.num_classes))
        init_weights(self, cfg.init_std)


class SpatioTemporalClassifier(nn.Module):
    """Volumes (B, T, H, W) -> logits (B, num_classes)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.spatial = SpatialEncoder(cfg)
        self.temporal = TemporalEncoder(cfg)
        self.head = Head(cfg)

    def set_kernels(self, name: str) -> "SpatioTemporalClassifier":
        return self.use_ops(select_ops(name))

    def use_ops(self, ops) -> "SpatioTemporalClassifier":
        """Run the four ops through `ops` (a module or namespace with them, e.g. `kernels.select(...).ops`)."""
        self.spatial.ops = ops
        return self

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Volumes (B, T, H, W) -> (slice embeddings (B, T, D): the spatial encoder's CLS of each slice, volume
        embeddings (B, D): the temporal encoder's output mean-pooled over the slices, what the head reads)."""
        B, T, H, W = x.shape
        slices = self.spatial(x.reshape(B * T, H, W)).view(B, T, -1)  # (B, T, D)
        return slices, self.temporal(slices).mean(dim=1)  # (B, D)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x)[1])  # (B, num_classes)


class MAE(nn.Module):
    """Masked autoencoder over slices: the spatial encoder sees CLS + visible patches; a light decoder
    reconstructs the normalized pixels of the removed ones. Methods follow the algorithm's stages."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = SpatialEncoder(cfg)
        Dd = cfg.decoder_dim
        self.decoder_embed = nn.Linear(cfg.dim, Dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, Dd))
        self.decoder_blocks = _blocks(cfg.decoder_depth, Dd, cfg.decoder_heads, cfg.decoder_mlp_ratio, 0.0,
                                      cfg.norm_eps)
        self.decoder_norm = nn.LayerNorm(Dd, eps=cfg.norm_eps)
        self.decoder_pred = nn.Linear(Dd, cfg.patch_dim)
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            init_weights(m, cfg.init_std)
        nn.init.normal_(self.mask_token, std=cfg.init_std)
        init_pos_embed(self.decoder_pos_embed, cfg, cfg.grid)
        # Start predicting ~0 (the mean of a normalized patch): the loss starts near 1 instead of 1 + var(pred).
        nn.init.normal_(self.decoder_pred.weight, std=cfg.init_std)

    @property
    def ops(self) -> ModuleType:
        return self.encoder.ops

    def set_kernels(self, name: str) -> "MAE":
        return self.use_ops(select_ops(name))

    def use_ops(self, ops) -> "MAE":
        """Run the four ops through `ops` (a module or namespace with them, e.g. `kernels.select(...).ops`)."""
        self.encoder.ops = ops
        return self

    def patchify(self, x: Tensor) -> Tensor:
        """(S, H, W) -> (S, P, ph*pw)."""
        return reference.patchify(x, self.cfg.patch)

    def random_masking(self, S: int, device: torch.device, noise: Tensor | None = None):
        """-> ids_keep (S, K), ids_restore (S, P), mask (S, P) with 1 = removed. `noise` (S, P) fixes the draw."""
        if noise is None:
            noise = torch.rand(S, self.cfg.num_patches, device=device)
        return reference.random_masking(noise, self.cfg.mask_ratio)

    def forward_encoder(self, x: Tensor, ids_keep: Tensor) -> Tensor:
        """(S, H, W) slices -> (S, 1+K, D) latent of CLS + visible patches."""
        tokens = self.encoder.embed(x)  # (S, P, D)
        visible = self.ops.mae_gather(tokens, ids_keep)  # (S, K, D)
        return self.encoder.forward_tokens(visible)

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """(S, 1+K, D) -> (S, P, ph*pw) predicted pixels of every patch."""
        y = self.decoder_embed(latent)  # (S, 1+K, Dd)
        full = self.ops.mae_scatter(y[:, 1:], ids_restore, self.mask_token.view(-1), self.decoder_pos_embed[0, 1:])
        cls = y[:, :1] + self.decoder_pos_embed[:, :1].to(y.dtype)
        h = torch.cat([cls, full.to(cls.dtype)], dim=1)  # (S, 1+P, Dd)
        for blk in self.decoder_blocks:
            h = blk(h)
        return self.decoder_pred(self.decoder_norm(h))[:, 1:]

    def forward_loss(self, x: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Normalized-pixel MSE over removed patches; in fp32 whatever the autocast dtype."""
        return self.ops.norm_pix_mse(pred.float(), x, mask, self.cfg.patch, 1e-6)

    def forward(self, volumes: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Volumes (B, T, H, W) (or slices (S, H, W)) -> (loss, pred (S, P, ph*pw), mask (S, P))."""
        x = volumes.reshape(-1, *volumes.shape[-2:])  # (S, H, W)
        ids_keep, ids_restore, mask = self.random_masking(x.shape[0], x.device, noise)
        latent = self.forward_encoder(x, ids_keep)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(x, pred, mask), pred, mask


def transfer_encoder(mae: MAE, classifier: SpatioTemporalClassifier) -> None:
    """Copy every tensor of the MAE's spatial encoder (embedding, positions, CLS, blocks, norm) into the classifier."""
    classifier.spatial.load_state_dict(mae.encoder.state_dict(), strict=True)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def summary(cfg: ModelConfig) -> str:
    """Parameter counts of every part, for the classifier and the MAE."""
    clf, mae = SpatioTemporalClassifier(cfg), MAE(cfg)
    rows = [("classifier", clf), ("  spatial encoder", clf.spatial), ("  temporal encoder", clf.temporal),
            ("  head", clf.head), ("MAE", mae), ("  encoder", mae.encoder)]
    dec = count_parameters(mae) - count_parameters(mae.encoder)
    T, H, W = cfg.volume
    lines = [f"input volume (T, H, W) = {cfg.volume}: {T} slices of {H}x{W}, {cfg.patch[0]}x{cfg.patch[1]} patches "
             f"-> {cfg.grid[0]}x{cfg.grid[1]} = {cfg.num_patches} patches + CLS; MAE keeps {cfg.len_keep}"]
    lines += [f"{name:<20s}{count_parameters(m):>12,d}" for name, m in rows]
    lines.append(f"{'  decoder':<20s}{dec:>12,d}")
    return "\n".join(lines)

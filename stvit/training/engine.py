"""One epoch of training, one pass of evaluation, the optimizer and the learning-rate schedule.

The loop keeps running sums on the device and reads them (`.item()`, a sync point) only at log points:
every `log_every` steps on CUDA, every step on CPU where a read costs nothing.

Under torchrun (`stvit.distributed`) each rank runs the same loop on its shard of every global batch: the step's
loss is averaged over the ranks (so every rank logs, checks and skips on the global batch's loss), and `predict`
gathers the shards' predictions into the whole split on every rank.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from stvit.errors import NonFiniteLoss
from stvit.training import distributed as DIST
from stvit.config import OptimConfig

NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token")




def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices only; none on norms, biases, position embeddings and tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.split(".")[-1] in NO_DECAY_NAMES else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                             fused=device.type == "cuda")


def lr_at(cfg: OptimConfig, epoch: float) -> float:
    """The learning rate at a fractional epoch: linear warmup, then cosine to `min_lr` (MAE's schedule),
    StepLR (`gamma` every `step_size` epochs), or constant."""
    if epoch < cfg.warmup_epochs:
        return cfg.lr * epoch / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-8)
        t = min((epoch - cfg.warmup_epochs) / span, 1.0)
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** int(epoch // cfg.step_size)
    if cfg.schedule == "constant":
        return cfg.lr
    raise ValueError(f"unknown schedule '{cfg.schedule}'")


def guarded_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, finite: Tensor) -> None:
    """`optimizer.step()`, skipped when the loss is not finite, in every precision, without a host sync where the
    optimizer allows it:
    - fp16: the GradScaler skips steps whose gradients hold inf/NaN (a NaN loss gives NaN gradients);
    - a fused AdamW (CUDA): its kernel takes a `found_inf` flag on the device and leaves weights, moments and
      step count untouched when it is set (how GradScaler drives it);
    - any other optimizer: the flag is read on the host (free on a CPU)."""
    if scaler.is_enabled():
        scaler.step(optimizer)
    elif getattr(optimizer, "_step_supports_amp_scaling", False):
        optimizer.grad_scale, optimizer.found_inf = None, (~finite).float()
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
    elif bool(finite):
        optimizer.step()


@dataclass
class EpochStats:
    loss: float  # mean over the steps whose loss was finite
    acc: float | None
    samples: int
    seconds: float
    lr: float
    skipped: int = 0  # steps not taken: non-finite loss

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.seconds, 1e-9)


def train_one_epoch(step: Callable[[Tensor, Tensor], tuple[Tensor, Tensor | None]], model: nn.Module,
                    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, batches: Iterable,
                    steps: int, cfg: OptimConfig, epoch: int, *, log_every: int = 10, max_nonfinite: int = 3,
                    desc: str = "", quiet: bool = False) -> EpochStats:
    """Run `steps` optimizer steps over `batches` of (x, y, idx). `step(x, y)` returns (loss, logits or None).

    Distributed: `batches` yields this rank's shard of each global batch and `step` is data-parallel; the
    returned loss, accuracy and samples are those of the global batches, the same on every rank."""
    model.train()
    device = next(model.parameters()).device
    check_every = 1 if device.type == "cpu" else max(1, log_every)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    loss_sum = torch.zeros((), device=device)
    counted = torch.zeros((), device=device, dtype=torch.long)  # steps with a finite loss
    correct = torch.zeros((), device=device, dtype=torch.long)
    bad_run = torch.zeros((), device=device, dtype=torch.long)  # consecutive non-finite losses
    n = 0
    lr = cfg.lr
    t0 = time.perf_counter()
    bar = tqdm(total=steps, desc=desc, disable=quiet, leave=False, dynamic_ncols=True)
    i, logits = -1, None
    for i, (x, y, _) in enumerate(batches):
        if i >= steps:
            break
        lr = lr_at(cfg, epoch + i / steps)  # set every iteration from the fractional epoch
        for g in optimizer.param_groups:
            g["lr"] = lr
        loss, logits = step(x, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        loss = DIST.mean(loss.detach())  # the global batch's loss (equal shards); itself in one process
        finite = torch.isfinite(loss)
        bad_run = torch.where(finite, 0, bad_run + 1)
        guarded_step(optimizer, scaler, finite)  # a non-finite loss never reaches the weights
        scaler.update()
        loss_sum += torch.where(finite, loss.float(), 0.0)
        counted += finite
        if logits is not None:
            correct += (logits.detach().argmax(1) == y).sum()
        n += x.shape[0]
        if (i + 1) % check_every == 0 or i + 1 == steps:
            if int(bad_run) >= max_nonfinite:
                raise NonFiniteLoss(f"loss is not finite for {int(bad_run)} consecutive steps "
                                    f"(epoch {epoch + 1}, step {i + 1})")
        if not quiet and ((i + 1) % log_every == 0 or i + 1 == steps):
            bar.set_postfix(loss=f"{loss_sum.item() / max(counted.item(), 1):.4f}", lr=f"{lr:.2e}")
        bar.update(1)
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    done = min(steps, i + 1)
    good = int(counted.item())
    mean_loss = loss_sum.item() / good if good else float("nan")
    if DIST.is_distributed():
        correct, n = DIST.total(correct), n * DIST.world_size()  # training shards are all equal
    if not math.isfinite(mean_loss):
        raise NonFiniteLoss(f"no step of epoch {epoch + 1} had a finite loss")
    acc = correct.item() / max(n, 1) if n and logits is not None else None
    return EpochStats(loss=mean_loss, acc=acc, samples=n, seconds=seconds, lr=lr, skipped=done - good)


@torch.no_grad()
def predict(logits_fn: Callable[[Tensor], Tensor], model: nn.Module, batches: Iterable,
            batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Class probabilities of a whole split, batch by batch; the last partial batch is padded to `batch_size`
    so a compiled `logits_fn` sees one shape. Returns (probs (N, C), labels (N,), indices (N,), mean CE).

    Distributed: `batches` yields this rank's shards (`batch_size` is the per-rank size; a shard of the last
    batch may be empty) and every rank returns the whole split, each sample once, in index order."""
    model.eval()
    all_logits, all_y, all_idx = [], [], []
    for x, y, idx in batches:
        b = x.shape[0]
        if b == 0:  # an empty shard of the last batch: one zero batch keeps the compiled shape and gives (0, C)
            x = x.new_zeros(batch_size, *x.shape[1:])
        elif b < batch_size:
            x = torch.cat([x, x[-1:].expand(batch_size - b, *x.shape[1:])])
        all_logits.append(logits_fn(x)[:b].float())
        all_y.append(y)
        all_idx.append(idx)
    logits, y, idx = torch.cat(all_logits), torch.cat(all_y), torch.cat(all_idx)
    if DIST.is_distributed():
        logits, y, idx = DIST.gather_split(logits, y, idx)
    loss = F.cross_entropy(logits, y).item()
    probs = torch.softmax(logits, dim=1)
    return probs.cpu().numpy(), y.cpu().numpy(), idx.cpu().numpy(), loss

"""Data-parallel training over processes started by torchrun: process group, DDP wrapping, the few collectives.

    torchrun --nproc-per-node=N -m stvit.train ...   (multi-node: add --nnodes and the rendezvous flags)

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; with WORLD_SIZE > 1 `init` joins the process group (gloo for CPU
tensors, plus nccl for CUDA tensors when CUDA is present) and pins the process to cuda:LOCAL_RANK. Without
torchrun every helper here is a no-op (rank 0 of 1), so the single-process path runs no collective at all.

Every rank holds the whole split on its device and takes its contiguous shard of each global batch
(`DeviceSplit.batches(rank=, world_size=)`); the global batch is the configured one. Rank 0 alone writes files.
"""
from __future__ import annotations

import datetime as dt
import io
import os
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from stvit.errors import UserError


def init() -> None:
    """Join the process group when torchrun started more than one process (idempotent)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # Object collectives and barriers go over gloo (their objects live in CPU memory); CUDA tensors over nccl.
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=dt.timedelta(minutes=30))


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """cuda -> this process's GPU (cuda:LOCAL_RANK) under torchrun; anything else unchanged."""
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def rank_seed(seed: int, rank: int) -> int:
    """The seed of a rank's global RNGs (dropout): rank 0 keeps `seed`, so one process is unchanged; the other
    ranks get independent streams (equal seeds would give every rank the same dropout masks)."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**63, rank]).generate_state(1, np.uint32)[0])


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def mean(t: Tensor) -> Tensor:
    """The mean of `t` over the ranks (a new tensor; `t` itself when single-process)."""
    if not is_distributed():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def total(t: Tensor) -> Tensor:
    """The sum of `t` over the ranks (a new tensor; `t` itself when single-process)."""
    if not is_distributed():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj` (tensors, lists, dicts, plain values), in rank order. Serialized with torch.save and read
    back with weights_only=True: pickled tensors inside `dist.all_gather_object` do not unpickle in torch 2.13."""
    if not is_distributed():
        return [obj]
    buf = io.BytesIO()
    torch.save(obj, buf)
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, buf.getvalue())
    return [torch.load(io.BytesIO(b), weights_only=True) for b in out]


def gather_split(logits: Tensor, y: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Every rank's predictions of its shards -> the whole split on every rank, in index order.

    Shards never overlap (no padding duplicates, unlike a DistributedSampler): each index must appear exactly
    once, and that is checked. Returns (logits (N, C), y (N,), idx (N,) = 0..N-1) on the device of `logits`.
    """
    parts = all_gather_object((logits.cpu(), y.cpu(), idx.cpu()))
    logits_all, y_all, idx_all = (torch.cat([p[i] for p in parts]) for i in range(3))
    order = torch.argsort(idx_all)
    if not torch.equal(idx_all[order], torch.arange(len(idx_all))):
        raise RuntimeError(f"gathered predictions do not cover the split once: {len(idx_all)} rows, "
                           f"{len(torch.unique(idx_all))} distinct indices")
    device = logits.device
    return logits_all[order].to(device), y_all[order].to(device), idx_all[order].to(device)


def agree(error: UserError | None) -> None:
    """Collective: raise the first rank's UserError on every rank if any rank had one (so no rank waits in a later
    collective for a rank that stopped); do nothing when none did."""
    if not is_distributed():
        if error is not None:
            raise error
        return
    messages = all_gather_object(None if error is None else str(error))
    first = next((m for m in messages if m is not None), None)
    if first is not None:
        raise error if error is not None else UserError(first)


class _Step(nn.Module):
    """A stage step (forward + loss) as a module, so DistributedDataParallel can wrap it; `model` is a child, so
    DDP sees and synchronizes exactly the model's parameters."""

    def __init__(self, model: nn.Module, fn: Callable):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def data_parallel(fn: Callable, model: nn.Module) -> Callable:
    """`fn(*args)`, a (possibly compiled) step bound to `model`, made data-parallel: its backward averages the
    gradients over the ranks. Single-process: `fn` itself.

    DDP(step) runs DDP's own forward (bucket bookkeeping, eagerly) around the compiled forward + loss graph;
    the C++ reducer's hooks all-reduce gradients in buckets as the backward produces them. Dynamo's DDPOptimizer
    (`optimize_ddp="ddp_optimizer"`, the default) would split the graph at bucket boundaries so communication
    overlaps the backward; that conflicts with `fullgraph=True` (one graph, also our "nothing breaks" check) and
    gains nothing here: the gradients of the paper model are a few MB, one bucket. So "no_optimization": one graph,
    the same graph as one process, and the reduction runs when the backward graph ends.
    Construction broadcasts rank 0's parameters: every rank starts from the same weights.
    """
    if not is_distributed():
        return fn
    import torch._dynamo

    torch._dynamo.config.optimize_ddp = False  # "no_optimization"
    device = next(model.parameters()).device
    return DistributedDataParallel(_Step(model, fn), device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=False)

"""A split held on the device in the training dtype, and its batches: gathered by index, flipped on the fly.

On CUDA the whole split lives in GPU memory (the course file's 3200 volumes are about 2 GB in float32, 1 GB
in bf16): a batch is one `index_select`, with no DataLoader, no workers and no host-to-device copy per step.
On CPU the interface is the same (and a float32 numpy array is shared, not copied).

Order and flips depend only on `(seed, epoch)`, through private generators, so a resumed run sees exactly the
batches it would have seen. Each epoch a random `round(flip_fraction * len)` subset of the split is flipped
along `flip_axis` of the volume (0 = left-right) when gathered; the stored volumes never change.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from stvit.rng import Stream, epoch_generator

TRANSFER_VOLUMES = 64  # volumes per host-to-device copy while loading


def shard_bounds(m: int, rank: int, world_size: int) -> tuple[int, int]:
    """This rank's contiguous slice of a batch of `m`: equal shards, the first `m % world_size` one larger."""
    q, r = divmod(m, world_size)
    start = rank * q + min(rank, r)
    return start, start + q + (rank < r)


class DeviceSplit:
    """Volumes (N, 53, 63, 46) on `device` in `dtype` and labels (N,) int64; `index` picks rows while moving."""

    def __init__(self, X: np.ndarray | torch.Tensor, y, device, dtype: torch.dtype = torch.float32,
                 index: np.ndarray | None = None):
        self.device = torch.device(device)
        self.dtype = dtype
        y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).reshape(-1)
        if len(y) != len(X):
            raise ValueError(f"{len(X)} volumes but {len(y)} labels")
        rows = None if index is None else torch.as_tensor(np.asarray(index), dtype=torch.int64)
        self.y = (y if rows is None else y[rows]).to(self.device, torch.int64)
        self.X = self._move(X, rows)

    def _move(self, X, rows: torch.Tensor | None) -> torch.Tensor:
        if isinstance(X, torch.Tensor):
            X = X if rows is None else X.index_select(0, rows.to(X.device))
            return X.to(self.device, self.dtype)
        X = np.asarray(X)
        if rows is None and self.device.type == "cpu" and X.flags.c_contiguous and X.flags.writeable \
                and torch.from_numpy(X[:0]).dtype == self.dtype:
            return torch.from_numpy(X)  # shared with the numpy array: no copy
        n = len(X) if rows is None else len(rows)
        out = torch.empty((n,) + X.shape[1:], dtype=self.dtype, device=self.device)
        for s in range(0, n, TRANSFER_VOLUMES):
            part = X[s:s + TRANSFER_VOLUMES] if rows is None else X[rows[s:s + TRANSFER_VOLUMES].numpy()]
            out[s:s + len(part)] = torch.from_numpy(np.ascontiguousarray(part)).to(self.device, self.dtype)
        return out

    def __len__(self) -> int:
        return len(self.y)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def epoch_plan(self, epoch: int = 0, seed: int = 0, shuffle: bool = False,
                   flip_fraction: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(order (N,) int64, flipped (N,) bool) on the CPU: the visiting order and this epoch's flip set."""
        n = len(self)
        order = torch.randperm(n, generator=epoch_generator(seed, epoch, Stream.ORDER)) if shuffle else torch.arange(n)
        flipped = torch.zeros(n, dtype=torch.bool)
        k = round(flip_fraction * n)
        if k:
            flipped[torch.randperm(n, generator=epoch_generator(seed, epoch, Stream.FLIP))[:k]] = True
        return order, flipped

    def batches(self, batch_size: int, *, epoch: int = 0, seed: int = 0, shuffle: bool = False,
                drop_last: bool = False, flip_fraction: float = 0.0, flip_axis: int = 0,
                rank: int = 0, world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield (x (b, 53, 63, 46) in dtype, y (b,) int64, idx (b,) int64 positions in this split), all on the
        device. With `world_size` > 1 each global batch is cut into contiguous shards and this rank gets its
        own; every rank yields the same number of batches (a shard of the last batch may be empty)."""
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"batch size {batch_size} must be a positive multiple of world size {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        if not 0.0 <= flip_fraction <= 1.0:
            raise ValueError(f"flip fraction must be in [0, 1], got {flip_fraction}")
        if not -3 <= flip_axis < 3:
            raise ValueError(f"flip axis must be 0, 1 or 2 (a volume axis), got {flip_axis}")
        dim = flip_axis % 3 + 1
        order, flipped = self.epoch_plan(epoch, seed, shuffle, flip_fraction)
        order_dev, flipped_dev = order.to(self.device), flipped.to(self.device)
        n = len(self)
        for s in range(0, n, batch_size):
            m = min(batch_size, n - s)
            if m < batch_size and drop_last:
                break
            a, b = shard_bounds(m, rank, world_size)
            idx = order_dev[s + a:s + b]
            x = self.X.index_select(0, idx)
            if flipped[order[s + a:s + b]].any():  # decided on the CPU copy: no device sync
                f = flipped_dev.index_select(0, idx).view(-1, 1, 1, 1)
                x = torch.where(f, x.flip(dim), x)
            yield x, self.y.index_select(0, idx), idx

    def epoch_batches(self, batch_size: int, *, epoch: int, seed: int, flip_fraction: float = 0.0,
                      flip_axis: int = 0, rank: int = 0, world_size: int = 1):
        """The training batches of one epoch: shuffled and flipped by (seed, epoch), the last partial batch
        dropped (fixed shapes for a compiled step)."""
        return self.batches(batch_size, epoch=epoch, seed=seed, shuffle=True, drop_last=True,
                            flip_fraction=flip_fraction, flip_axis=flip_axis, rank=rank, world_size=world_size)

    def eval_batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1):
        """Every volume once, in order, unflipped; the last batch may be partial (`engine.predict` pads it)."""
        return self.batches(batch_size, rank=rank, world_size=world_size)

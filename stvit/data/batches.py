"""A split of a data set on the device, and its batches: gathered by index, flipped on the fly.

Three ways to hold a split, one batch order (`Split`):
- `DeviceSplit`: dense volumes (N, 53, 63, 46) in the training dtype on the device (the readers of MAT, npz, HDF5
  and NIfTI files). On CUDA the course file's 3200 volumes are about 2 GB in float32, 1 GB in bf16: a batch is
  one `index_select`, with no DataLoader, no workers and no host-to-device copy per step. On CPU the interface
  is the same (and a float32 numpy array is shared, not copied).
- `PackedSplit`: the in-brain voxels of a packed file (`stvit.data.packed`), rows (N, V) in float16 or float32,
  resident on the device (about a fifth of the dense float32 bytes for float16): a batch gathers its rows and
  unpacks them to dense volumes on the device with one `index_copy_` (`Unpacker`).
- `StreamSplit` (`stvit.data.stream`): the rows stay in the file; DataLoader workers read the rows of each batch
  and the batch is unpacked on the device by the same `Unpacker`.

Order and flips depend only on `(seed, epoch)`, through private generators, so a resumed run sees exactly the
batches it would have seen, and the three ways give the same batches bit for bit (float32 rows; float16 rows
give the float16-rounded volumes). Each epoch a random `round(flip_fraction * len)` subset of the split is
flipped along `flip_axis` of the volume (0 = left-right) when gathered; the stored volumes never change.
Distributed, each global batch is cut into contiguous shards (`shard_bounds`) and a rank gathers (or, streamed,
reads) only its own.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

from stvit.data.packed import PackedVolumes
from stvit.rng import Stream, epoch_generator

TRANSFER_VOLUMES = 64  # volumes per host-to-device copy while loading
TRANSFER_ROWS = 256  # packed rows per read and host-to-device copy while loading


def shard_bounds(m: int, rank: int, world_size: int) -> tuple[int, int]:
    """This rank's contiguous slice of a batch of `m`: equal shards, the first `m % world_size` one larger."""
    q, r = divmod(m, world_size)
    start = rank * q + min(rank, r)
    return start, start + q + (rank < r)


def batch_bounds(n: int, batch_size: int, drop_last: bool, rank: int = 0,
                 world_size: int = 1) -> Iterator[tuple[int, int]]:
    """(start, end) in the epoch's visiting order of this rank's shard of each batch."""
    for s in range(0, n, batch_size):
        m = min(batch_size, n - s)
        if m < batch_size and drop_last:
            break
        a, b = shard_bounds(m, rank, world_size)
        yield s + a, s + b


class Split:
    """Labels (N,) int64 on `device` and the batches of any epoch: the order, flips and shards; a subclass says how
    the volumes of a shard are made (`_volumes`)."""

    device: torch.device
    dtype: torch.dtype
    y: torch.Tensor

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
        bounds = list(batch_bounds(len(self), batch_size, drop_last, rank, world_size))
        for (a, b), x in zip(bounds, self._volumes(order, order_dev, bounds)):
            idx = order_dev[a:b]
            if flipped[order[a:b]].any():  # decided on the CPU copy: no device sync
                f = flipped_dev.index_select(0, idx).view(-1, 1, 1, 1)
                x = torch.where(f, x.flip(dim), x)
            yield x, self.y.index_select(0, idx), idx

    def _volumes(self, order: torch.Tensor, order_dev: torch.Tensor,
                 bounds: list[tuple[int, int]]) -> Iterable[torch.Tensor]:
        """The volumes (b, 53, 63, 46) of each shard `order[a:b]`, in the order of `bounds`, on the device."""
        raise NotImplementedError

    def epoch_batches(self, batch_size: int, *, epoch: int, seed: int, flip_fraction: float = 0.0,
                      flip_axis: int = 0, rank: int = 0, world_size: int = 1):
        """The training batches of one epoch: shuffled and flipped by (seed, epoch), the last partial batch
        dropped (fixed shapes for a compiled step)."""
        return self.batches(batch_size, epoch=epoch, seed=seed, shuffle=True, drop_last=True,
                            flip_fraction=flip_fraction, flip_axis=flip_axis, rank=rank, world_size=world_size)

    def eval_batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1):
        """Every volume once, in order, unflipped; the last batch may be partial (`engine.predict` pads it)."""
        return self.batches(batch_size, rank=rank, world_size=world_size)


def _labels(y, n: int, index: np.ndarray | None, device: torch.device) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).reshape(-1)
    if len(y) != n:
        raise ValueError(f"{n} volumes but {len(y)} labels")
    rows = None if index is None else torch.as_tensor(np.asarray(index), dtype=torch.int64)
    return (y if rows is None else y[rows]).to(device, torch.int64)


class DeviceSplit(Split):
    """Volumes (N, 53, 63, 46) on `device` in `dtype` and labels (N,) int64; `index` picks rows while moving.
    X: a numpy array, a tensor, or any array-like whose integer-array indexing gives dense volumes (a packed
    file's `PackedVolumes`, read a block at a time)."""

    def __init__(self, X, y, device, dtype: torch.dtype = torch.float32, index: np.ndarray | None = None):
        self.device = torch.device(device)
        self.dtype = dtype
        self.y = _labels(y, len(X), index, self.device)
        rows = None if index is None else torch.as_tensor(np.asarray(index), dtype=torch.int64)
        self.X = self._move(X, rows)

    def _move(self, X, rows: torch.Tensor | None) -> torch.Tensor:
        if isinstance(X, torch.Tensor):
            X = X if rows is None else X.index_select(0, rows.to(X.device))
            return X.to(self.device, self.dtype)
        if not isinstance(X, PackedVolumes):
            X = np.asarray(X)
            if rows is None and self.device.type == "cpu" and X.flags.c_contiguous and X.flags.writeable \
                    and torch.from_numpy(X[:0]).dtype == self.dtype:
                return torch.from_numpy(X)  # shared with the numpy array: no copy
        n = len(X) if rows is None else len(rows)
        out = torch.empty((n,) + tuple(X.shape[1:]), dtype=self.dtype, device=self.device)
        for s in range(0, n, TRANSFER_VOLUMES):
            part = np.asarray(X[s:s + TRANSFER_VOLUMES]) if rows is None else X[rows[s:s + TRANSFER_VOLUMES].numpy()]
            out[s:s + len(part)] = torch.from_numpy(np.ascontiguousarray(part)).to(self.device, self.dtype)
        return out

    def _volumes(self, order, order_dev, bounds):
        for a, b in bounds:
            yield self.X.index_select(0, order_dev[a:b])


# --- packed rows ---------------------------------------------------------------------------------------------


def resident_dtype(stored: np.dtype, dtype: torch.dtype) -> torch.dtype:
    """The dtype packed rows are kept in on the device: the file's (float16 or float32), or the training dtype when
    that is narrower (float32 rows trained in bf16 are kept as bf16, as a dense split would be)."""
    stored = torch.from_numpy(np.zeros(0, stored)).dtype
    return stored if stored.itemsize <= dtype.itemsize else dtype


class Unpacker:
    """Packed rows (b, V) -> dense volumes (b, *volume_shape) in `dtype` on `device`: zeros, then the rows put at
    the mask's flat positions with one `index_copy_`; NaN/Inf set to 0 first when the file's source asks
    (`data.nan_to_zero`)."""

    def __init__(self, source, device: torch.device, dtype: torch.dtype):
        self.flat = torch.from_numpy(source.index).to(device)
        self.volume_shape = tuple(source.volume_shape)
        self.numel = int(np.prod(self.volume_shape))
        self.device, self.dtype, self.nan_to_zero = device, dtype, source.nan_to_zero

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        if self.nan_to_zero:
            rows = torch.nan_to_num(rows, nan=0.0, posinf=0.0, neginf=0.0)
        out = torch.zeros((len(rows), self.numel), dtype=self.dtype, device=self.device)
        out.index_copy_(1, self.flat, rows.to(self.dtype))
        return out.view(len(rows), *self.volume_shape)


class PackedSplit(Split):
    """The rows of a packed file (`PackedVolumes`; `index` picks some) resident on `device` (N, V) in
    `resident_dtype`, labels (N,) int64; each batch is unpacked to dense volumes in `dtype` on the device."""

    def __init__(self, volumes, y, device, dtype: torch.dtype = torch.float32, index: np.ndarray | None = None):
        self.device = torch.device(device)
        self.dtype = dtype
        self.y = _labels(y, len(volumes), index, self.device)
        source = volumes.source
        rows = volumes.rows if index is None else volumes.rows[np.asarray(index)]
        self.resident_dtype = resident_dtype(source.dtype, dtype)
        self.rows = torch.empty((len(rows), source.width), dtype=self.resident_dtype, device=self.device)
        buf = np.empty((TRANSFER_ROWS, source.width), source.dtype)
        for s in range(0, len(rows), TRANSFER_ROWS):
            part = source.reader.read(rows[s:s + TRANSFER_ROWS], out=buf[:len(rows[s:s + TRANSFER_ROWS])])
            self.rows[s:s + len(part)] = torch.from_numpy(part).to(self.device, self.resident_dtype)
        self.unpack = Unpacker(source, self.device, dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of the resident rows."""
        return self.rows.numel() * self.rows.element_size()

    def _volumes(self, order, order_dev, bounds):
        for a, b in bounds:
            yield self.unpack(self.rows.index_select(0, order_dev[a:b]))
